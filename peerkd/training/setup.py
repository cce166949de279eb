"""The process a run trains in: DDP ranks (``torchrun``), the device, the precision, the seeds and every random
number generator's state (saved in checkpoints so that a resume draws the same numbers)."""
from __future__ import annotations

import dataclasses
import os
import random

import numpy as np
import torch
import torch.distributed as dist

from peerkd.core.errors import ConfigError


@dataclasses.dataclass
class Distributed:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device_kind: str) -> Distributed:
    """Join the process group when started by ``torchrun`` (gloo on CPU, nccl on CUDA)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Distributed()
    if not dist.is_initialized():
        backend = "nccl" if device_kind == "cuda" else "gloo"
        store = _attempt_store(world)
        if store is None:
            dist.init_process_group(backend=backend)
        else:
            dist.init_process_group(backend=backend, store=store, rank=int(os.environ["RANK"]), world_size=world)
    return Distributed(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def _attempt_store(world: int):
    """The process group's store under ``torchrun``, its keys prefixed by the restart attempt. torchrun (torch 2.14)
    shares its rendezvous TCPStore with the workers of every attempt with unprefixed keys, so after a fault the
    restarted ranks find the dead attempt's addresses and a rank may dial a dead peer (gloo: "connectFullMesh
    failed ... Connection refused"); with the attempt in the prefix each attempt sees only its own keys."""
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return None
    from peerkd.training.run_folder import elastic_restart_count

    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world, is_master=False)
    return dist.PrefixStore(f"peerkd/attempt-{elastic_restart_count()}", store)


def resolve_device(name: str, ddp: Distributed) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"trainer.device: '{name}' asked for, but torch sees no CUDA device; use cpu or auto")
        if device.index is None:
            device = torch.device("cuda", ddp.local_rank)
        torch.cuda.set_device(device)
    return device


PRECISIONS = ("bf16", "fp16", "fp32")  # what trainer.precision resolves to


def resolve_precision(choice: str, device: torch.device) -> str:
    """``trainer.precision`` on ``device``: "auto" is bf16 on a CUDA device that supports it
    (``torch.cuda.is_bf16_supported``: Ampere and later), fp16 (with a gradient scaler) on one that does not (V100,
    T4, RTX 20xx), fp32 on CPU; an explicit bf16 on a CUDA device without it is refused."""
    if choice == "auto":
        if device.type != "cuda":
            return "fp32"
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if choice == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError(f"trainer.precision: bf16 asked for, but {torch.cuda.get_device_name(device)} has no bf16; "
                          "use fp16 (autocast with a gradient scaler) or auto")
    if choice not in PRECISIONS:
        raise ConfigError(f"trainer.precision: expected auto, {', '.join(PRECISIONS)}, got {choice!r}")
    return choice


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict:
    """Every RNG's state in tensors and plain containers (a checkpoint loads with ``weights_only=True``)."""
    kind, keys, pos, has_gauss, cached_gaussian = np.random.get_state()
    numpy_state = (kind, keys.tolist(), pos, has_gauss, cached_gaussian)
    state = {"python": random.getstate(), "numpy": numpy_state, "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
