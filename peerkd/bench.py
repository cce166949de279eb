"""``peerkd bench``: the speed of a training step, published-code style against peerkd's fast path, side by side.

For each cohort shape (vanilla ResNet-32, DML 2 x ResNet-32, DML 2 x ResNet-110, a CSS-shaped pair of ResNet-110s
with 3 branches each) one process measures:

(a) reference: separate models, eager fp32, a torchvision DataLoader whose CPU workers crop and flip each image
    (``RandomCrop(32, 4)``, ``RandomHorizontalFlip``, ``ToTensor``, ``Normalize``) from synthetic uint8 data of
    CIFAR's shape, ``torch.optim.SGD`` with default settings;
(b) fast: the device loader, identical peers and branch tails fused, and on CUDA bf16 autocast, channels_last and
    the compiled (or graph-captured) :class:`peerkd.fast.FastStep`; on CPU the fused step, eager fp32.

It prints ms per step, seconds per CIFAR epoch (390 steps of 128), images/s, the compile warm-up, peak device memory,
the ratio (a / b) and the fraction of the device's peak FLOP rate reached (FLOPs counted with
``torch.utils.flop_counter.FlopCounterMode``; the peak is ``--peak-tflops``). On CPU only the ratio is printed:
absolute CPU timings say nothing about the GPU runs this harness is for.
"""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from peerkd.data.batch import Batch
from peerkd.data.device_loader import DeviceLoader
from peerkd.fast import FastStep
from peerkd.losses import hard_ce, kd_kl
from peerkd.methods.base import StepOutput
from peerkd.models import branched, build_model
from peerkd.models.fused import fuse, fuse_branches

CIFAR_STEPS_PER_EPOCH = 390  # 50,000 training images in batches of 128, last partial batch dropped
CIFAR_MEAN, CIFAR_STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)  # CIFAR-100's channel statistics
NUM_CLASSES = 100  # CIFAR-100
TEMPERATURE = 3.0  # the KL's softening, as in the DML/CSS recipes


@dataclass
class Shape:
    """A cohort to time: ``peers`` networks named ``model``, each with ``branches`` tails (0: a plain network)."""

    name: str
    model: str
    peers: int
    branches: int = 0
    split_at: int = 2  # branched networks share stem + stages[:split_at] (CSS branches the last stage)


def shapes(quick: bool) -> list[Shape]:
    """The four shapes of issue 3; ``quick`` swaps in the smallest CIFAR ResNets so a CPU test takes seconds."""
    small, large = ("resnet8", "resnet14") if quick else ("resnet32", "resnet110")
    return [Shape(f"vanilla {small}", small, 1), Shape(f"dml 2x{small}", small, 2),
            Shape(f"dml 2x{large}", large, 2), Shape(f"css-like 2x{large}x3", large, 2, branches=3)]


class CohortStep(nn.Module):
    """The step's loss for a cohort of networks: CE on every output plus, for two or more outputs, each output's
    KL to the detached mean of all outputs' logits (the launch pattern of DML / CSS; not either paper's loss)."""

    def __init__(self, networks: nn.ModuleList, fused: bool):
        super().__init__()
        self.networks, self.fused = networks, fused

    def outputs(self, x: torch.Tensor) -> list[torch.Tensor]:
        logits = []
        for net in self.networks:
            out = net(x)
            logits.extend(out.unbind(0) if isinstance(out, torch.Tensor) and out.dim() == 3 else
                          (out if isinstance(out, list) else [out]))
        return logits

    def forward(self, batch: Batch) -> StepOutput:
        logits = self.outputs(batch.x)
        loss = sum(hard_ce(z, batch) for z in logits)
        if len(logits) > 1:
            target = torch.stack(logits).mean(0).detach()
            loss = loss + sum(kd_kl(z, target, TEMPERATURE) for z in logits) / len(logits)
        return StepOutput(loss)


def build_networks(shape: Shape, fused: bool) -> nn.ModuleList:
    """Separate networks (``fused=False``) or peerkd's fused form: peers in one FusedCohort, branch tails fused."""
    if shape.branches:
        nets = [branched(shape.model, NUM_CLASSES, split_at=shape.split_at, branches=shape.branches)
                for _ in range(shape.peers)]
        return nn.ModuleList([fuse_branches(n) for n in nets] if fused else nets)
    models = [build_model(shape.model, NUM_CLASSES) for _ in range(shape.peers)]
    return nn.ModuleList([fuse(models)] if fused and shape.peers > 1 else models)


# ------------------------------------------------------------------------------------------------------- data

class _UInt8Images(torch.utils.data.Dataset):
    """CIFAR's storage: uint8 HWC arrays turned into PIL images per item, as torchvision's CIFAR datasets do."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform):
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i):
        from PIL import Image

        return self.transform(Image.fromarray(self.images[i])), int(self.labels[i])


def reference_loader(images, labels, batch_size: int, workers: int, pin_memory: bool):
    from torchvision import transforms

    transform = transforms.Compose([transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(),
                                    transforms.ToTensor(), transforms.Normalize(CIFAR_MEAN, CIFAR_STD)])
    return torch.utils.data.DataLoader(_UInt8Images(images, labels, transform), batch_size=batch_size, shuffle=True,
                                       num_workers=workers, drop_last=True, pin_memory=pin_memory,
                                       persistent_workers=workers > 0)


def _forever(make_iter):
    while True:
        yield from make_iter()


# ---------------------------------------------------------------------------------------------------- timing

@dataclass
class Timing:
    ms_per_step: float
    warmup_s: float  # the first steps (compilation, graph capture, cuDNN autotuning), not in ms_per_step
    peak_memory_mb: float | None


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _measure(step, batches, device: torch.device, warmup: int, steps: int) -> Timing:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    tick = time.perf_counter()
    for _ in range(warmup):
        step(next(batches))
    _sync(device)
    warm = time.perf_counter() - tick
    tick = time.perf_counter()
    for _ in range(steps):
        step(next(batches))
    _sync(device)
    elapsed = time.perf_counter() - tick
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    return Timing(1000 * elapsed / steps, warm, peak)


def time_reference(shape: Shape, images, labels, args, device: torch.device) -> Timing:
    module = CohortStep(build_networks(shape, fused=False), fused=False).to(device).train()
    optimizer = torch.optim.SGD(module.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
    loader = reference_loader(images, labels, args.batch_size, args.workers, device.type == "cuda")

    def step(item):
        x, y = item
        batch = Batch(x=x.to(device, non_blocking=True), y=y.to(device, non_blocking=True), index=y)
        out = module(batch)
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        optimizer.step()

    return _measure(step, _forever(lambda: iter(loader)), device, args.warmup, args.steps)


def time_fast(shape: Shape, images, labels, args, device: torch.device) -> Timing:
    on_cuda = device.type == "cuda"
    module = CohortStep(build_networks(shape, fused=True), fused=True).to(device).train()
    if on_cuda:
        module.to(memory_format=torch.channels_last)
    loader = DeviceLoader(images, labels, batch_size=args.batch_size, mean=CIFAR_MEAN, std=CIFAR_STD, device=device,
                          channels_last=on_cuda)
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if on_cuda else None
    mode = args.fast_mode if on_cuda else "eager"
    fast = FastStep(module, list(module.parameters()), lr=0.1, device=device, autocast=autocast, mode=mode,
                    compile_mode="reduce-overhead" if mode == "compile" else None)
    epochs = iter(range(10**9))
    return _measure(fast, _forever(lambda: loader.epoch(next(epochs))), device, args.warmup, args.steps)


def count_step_flops(shape: Shape, batch_size: int) -> int:
    """FLOPs of one forward and backward of the cohort (the same for fused and separate networks)."""
    from torch.utils.flop_counter import FlopCounterMode

    module = CohortStep(build_networks(shape, fused=False), fused=False).train()
    batch = Batch(x=torch.randn(batch_size, 3, 32, 32), y=torch.zeros(batch_size, dtype=torch.int64),
                  index=torch.zeros(batch_size, dtype=torch.int64))
    with FlopCounterMode(display=False) as counter:
        module(batch).loss.backward()
    return counter.get_total_flops()


# ------------------------------------------------------------------------------------------------------- main

def run(args) -> list[dict]:
    device = torch.device(args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (args.images, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, NUM_CLASSES, args.images).astype(np.int64)
    rows = []
    for shape in shapes(args.quick):
        if args.only and args.only not in shape.name:
            continue
        torch.manual_seed(0)
        reference = time_reference(shape, images, labels, args, device)
        fast = time_fast(shape, images, labels, args, device)
        flops = count_step_flops(shape, args.batch_size)
        row = {"shape": shape.name, "device": str(device), "batch_size": args.batch_size, "flops_per_step": flops,
               "ratio": reference.ms_per_step / fast.ms_per_step}
        for label, timing in (("reference", reference), ("fast", fast)):
            row[label] = dict(asdict(timing), s_per_epoch=timing.ms_per_step * CIFAR_STEPS_PER_EPOCH / 1000,
                              images_per_s=1000 * args.batch_size / timing.ms_per_step,
                              peak_fraction=(flops / (timing.ms_per_step / 1000) / (args.peak_tflops * 1e12)
                                             if args.peak_tflops else None))
        rows.append(row)
        print(format_row(row), flush=True)
    if args.out:
        with open(args.out, "w") as file:
            json.dump(rows, file, indent=2)
    return rows


def format_row(row: dict) -> str:
    if row["device"] == "cpu":
        return f"{row['shape']:<24} fast is {row['ratio']:.2f}x the reference (CPU: ratios only)"
    parts = [f"{row['shape']:<24} ratio {row['ratio']:.2f}x"]
    for label in ("reference", "fast"):
        t = row[label]
        peak = "" if t["peak_fraction"] is None else f", {100 * t['peak_fraction']:.1f}% of peak"
        memory = "" if t["peak_memory_mb"] is None else f", {t['peak_memory_mb']:.0f} MiB"
        parts.append(f"  {label:<9} {t['ms_per_step']:7.2f} ms/step  {t['s_per_epoch']:6.1f} s/epoch  "
                     f"{t['images_per_s']:8.0f} img/s  warm-up {t['warmup_s']:.1f} s{memory}{peak}")
    return "\n".join(parts)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="peerkd bench", description=__doc__.split("\n")[0])
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 ... (auto: cuda if present)")
    p.add_argument("--quick", action="store_true", help="tiny settings for a CPU smoke run (small models, few steps)")
    p.add_argument("--steps", type=int, help="timed steps per path (default 50; 3 with --quick)")
    p.add_argument("--warmup", type=int, help="untimed first steps per path (default 10: compile, capture; 1 quick)")
    p.add_argument("--batch-size", type=int, help="images per step (default 128, the CIFAR recipe; 16 quick)")
    p.add_argument("--images", type=int, help="synthetic training images (default 50000, CIFAR's; 256 quick)")
    p.add_argument("--workers", type=int, help="reference DataLoader workers (default 4, as published code; 0 quick)")
    p.add_argument("--fast-mode", default="compile", choices=["compile", "graph", "eager"],
                   help="CUDA fast path: torch.compile reduce-overhead, one captured CUDA graph, or eager")
    p.add_argument("--peak-tflops", type=float, default=None,
                   help="the device's peak TFLOP/s for the fraction column (H100 SXM: 989 dense bf16, 67 fp32)")
    p.add_argument("--only", help="run only shapes whose name contains this text")
    p.add_argument("--out", help="write the rows as JSON here")
    return p


def parse_args(argv: list[str] | None = None):
    args = parser().parse_args(argv)
    quick_or_full = {"steps": (3, 50), "warmup": (1, 10), "batch_size": (16, 128), "images": (256, 50000),
                     "workers": (0, 4)}
    for name, (quick, full) in quick_or_full.items():
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else full)
    return args


def main(argv: list[str] | None = None) -> int:
    run(parse_args(argv))
    return 0
