"""peerkd's trainer optimises exactly like a plain PyTorch loop.

The trainer runs every step through :class:`peerkd.training.step.FastStep`: ``torch.optim.SGD`` with ``foreach=True``
reading its learning rate from a 0-dim float32 tensor that the trainer fills every step from ``learning_rate()``.
Here that real trainer (``Trainer(config).fit()``: vanilla ResNet-20 on CIFAR-100, fp32, CPU, 20 steps over two
epochs) is held against a loop written with nothing of peerkd but the network's architecture and the batches:

- the same initial weights (the state of peerkd's freshly built network, copied before training);
- the same batches in the same order (recorded from the trainer's own loader while it trains: this checks the
  optimisation, not the data pipeline);
- ``torch.optim.SGD(params, lr=<python float>, momentum=0.9, nesterov=True, weight_decay=5e-4)`` in its default
  per-parameter (for-loop) implementation, ``F.cross_entropy``, ``zero_grad`` / ``backward`` / ``step``;
- the schedule written with torch's schedulers, stepped once per step: ``LinearLR`` (warm-up) chained with
  ``MultiStepLR`` (milestone after epoch 1), and ``CosineAnnealingLR`` over all steps.

After the N steps every parameter and every BatchNorm buffer (running mean, running var, num_batches_tracked) must
be bitwise equal (``torch.equal``). That holds on CPU in fp32 because the two optimisers do the same float32 arithmetic:

- the foreach and the for-loop SGD apply the same operations per tensor, in the same order (``grad + wd * p``,
  ``buf * momentum + grad``, ``grad + momentum * buf``, ``p - lr * grad``), only batched differently;
- the learning rate reaches the kernels as a float32 number either way: the tensor lr is float32, and the python
  float lr is rounded to the parameters' float32 when the kernel takes it as ``alpha``. peerkd's closed-form
  schedule and torch's recursive schedulers may differ in the last bit of a float64 lr; that almost never survives
  the rounding to float32, and the per-step check of the learning rates below would name the step where it did.

Also checked: the loss the trainer logs for step 0 is the reference's cross-entropy of the first batch.
Real CIFAR-100 from ``tests.helpers.SHARED_CIFAR100`` (a 320-image subset) when that copy exists, else the
generated dataset at 100 classes.
"""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from peerkd.config import build_config
from peerkd.models import build_model
from peerkd.training.trainer import Trainer
from tests.helpers import SHARED_CIFAR100

BATCH = 32  # images per step
TRAIN_IMAGES = 320  # 10 steps an epoch: 20 steps over two epochs, so the schedule changes the lr within and across
EPOCHS = 2  # the milestone after epoch 1 needs a second epoch
BASE_LR = 0.05  # peak lr: moves the weights well within 20 steps and keeps a fresh ResNet-20 far from divergence
WARMUP_EPOCHS = 0.5  # 5 warm-up steps: the warm-up ends inside the first epoch, the milestone starts the second
MILESTONE, GAMMA = 1, 0.1  # lr x 0.1 from epoch 1 on (the second epoch)
MEMBER = "models.0."  # a one-network cohort's state_dict prefix of its network (peerkd.methods.parts.cohort)

SCHEDULES = {
    "multistep_warmup": {"kind": "multistep", "milestones": [MILESTONE], "gamma": GAMMA,
                         "warmup_epochs": WARMUP_EPOCHS},
    "cosine": {"kind": "cosine"},
}


def _data_tree() -> dict:
    if SHARED_CIFAR100.is_dir():
        return {"dataset": "cifar100", "root": str(SHARED_CIFAR100), "download": False, "train_subset": TRAIN_IMAGES,
                "test_subset": 100}  # evaluation does not touch the weights: a token test set
    return {"dataset": "synthetic", "synthetic": {"num_classes": 100, "train_size": TRAIN_IMAGES, "test_size": 100}}


def _config(schedule: dict):
    return build_config({
        "name": "sgd-reference", "seed": 0,
        "data": {**_data_tree(), "batch_size": BATCH, "eval_batch_size": 100},
        "method": {"name": "vanilla", "models": ["resnet20"]},
        "optim": {"lr": BASE_LR, "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4},
        "schedule": {"epochs": EPOCHS, **schedule},
        # fp32 eager steps on the CPU (the setting where peerkd promises equality); log_every 1: the logged loss of
        # step 0 is that step's alone; one thread: the test's time budget is one core
        "trainer": {"device": "cpu", "precision": "fp32", "step": "eager", "members": "separate",
                    "channels_last": "off", "progress": "off", "log_every": 1, "threads": 1},
    })


def _torch_schedulers(name: str, optimizer: torch.optim.Optimizer, steps_per_epoch: int):
    """The reference schedule with torch's own schedulers, stepped once after every optimiser step."""
    total = EPOCHS * steps_per_epoch
    if name == "cosine":  # 0.5 lr (1 + cos(pi step / total)), per step down to 0 at the end
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total, eta_min=0.0)
    warm = round(WARMUP_EPOCHS * steps_per_epoch)
    # linear warm-up: step k (0-based) of the first `warm` trains with lr (k + 1) / warm, then the full lr
    warmup = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=1 / warm, end_factor=1.0, total_iters=warm - 1)
    decay = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=[MILESTONE * steps_per_epoch], gamma=GAMMA)
    return torch.optim.lr_scheduler.ChainedScheduler([warmup, decay])


def _run_peerkd(config, run_dir):
    """Train with peerkd's trainer; return its initial network state, the batches it trained on, the lr each step
    used (the float32 the optimiser read), its final network state and its metrics records."""
    trainer = Trainer(config, run_dir=run_dir)
    initial = {key: value.clone() for key, value in trainer.method.state_dict().items()}
    loader, batches, used_lrs = trainer.train_loader, [], []
    epoch_of = loader.epoch

    def recording_epoch(epoch, start_step=0):
        for batch in epoch_of(epoch, start_step=start_step):
            batches.append((batch.x.clone(), batch.y.clone()))
            yield batch

    loader.epoch = recording_epoch  # the trainer iterates its loader through this instance attribute
    trainer.on_step = lambda t: used_lrs.append(t.step.lr.item())
    trainer.fit()
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return initial, batches, used_lrs, trainer.method.state_dict(), metrics, len(loader)


def _network_state(method_state: dict) -> dict:
    state = {key[len(MEMBER):]: value for key, value in method_state.items() if key.startswith(MEMBER)}
    assert len(state) == len(method_state), f"a one-network vanilla method holds only {MEMBER}*: {list(method_state)}"
    return state


def _run_reference(name: str, initial: dict, batches, steps_per_epoch: int):
    """The plain PyTorch loop; returns the final state, the lr of every step and the loss of every step."""
    model = build_model("resnet20", num_classes=100)
    model.load_state_dict(initial)
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=BASE_LR, momentum=0.9, nesterov=True, weight_decay=5e-4,
                                foreach=False)  # the per-parameter loop (CPU's default), not peerkd's foreach
    scheduler = _torch_schedulers(name, optimizer, steps_per_epoch)
    lrs, losses = [], []
    for x, y in batches:
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        scheduler.step()
        losses.append(loss.item())
    return model.state_dict(), lrs, losses


@pytest.fixture(scope="module", params=sorted(SCHEDULES))
def runs(request, tmp_path_factory):
    name = request.param
    config = _config(SCHEDULES[name])
    threads = torch.get_num_threads()  # trainer.threads sets torch's process-wide count: given back below
    try:
        initial, batches, used_lrs, final, metrics, steps = _run_peerkd(config, tmp_path_factory.mktemp(name) / "run")
        reference, reference_lrs, losses = _run_reference(name, _network_state(initial), batches, steps)
    finally:
        torch.set_num_threads(threads)
    return {"name": name, "steps": steps, "batches": batches, "used_lrs": used_lrs, "metrics": metrics,
            "initial": _network_state(initial), "final": _network_state(final), "reference": reference,
            "reference_lrs": reference_lrs, "losses": losses}


def test_the_trainer_equals_plain_torch_sgd_with_a_torch_scheduler(runs):
    steps, name = runs["steps"], runs["name"]
    assert steps == TRAIN_IMAGES // BATCH and len(runs["batches"]) == EPOCHS * steps, "the run is not 2 x 10 steps"
    lrs = runs["reference_lrs"]
    assert len(set(lrs)) > 2 and lrs[steps] != lrs[steps - 1], f"{name}: the lr must change, also across the epoch"
    # the schedules agree step by step, as the float32 number the SGD kernels multiply by
    for step, (used, reference) in enumerate(zip(runs["used_lrs"], lrs)):
        assert used == torch.tensor(reference, dtype=torch.float32).item(), f"{name}: lr of step {step}"
    final, reference, initial = runs["final"], runs["reference"], runs["initial"]
    assert final.keys() == reference.keys() == initial.keys()
    tracked = [key for key in reference if key.endswith("num_batches_tracked")]
    assert tracked and all(int(reference[key]) == len(runs["batches"]) for key in tracked)
    moved = [key for key in reference if key.endswith("weight") and not torch.equal(reference[key], initial[key])]
    assert "head.fc.weight" in moved, "the reference loop did not train"
    for key, value in reference.items():  # parameters and BatchNorm buffers (running mean/var, batches tracked)
        assert torch.equal(final[key], value), \
            f"{name}: {key} differs after {len(runs['batches'])} steps (max |diff| " \
            f"{(final[key].double() - value.double()).abs().max().item():.3g})"


def test_the_logged_loss_of_step_0_is_the_cross_entropy_of_the_first_batch(runs):
    train = [record for record in runs["metrics"] if record.get("kind") == "train"]
    first = train[0]
    assert (first["epoch"], first["step"], first["global_step"]) == (0, 1, 1), "log_every 1 logs step 0 alone"
    assert first["loss"] == pytest.approx(runs["losses"][0], abs=1e-6, rel=0)
    assert first["loss"] > 4.0, "a fresh 100-class network starts near ln(100) = 4.6"
