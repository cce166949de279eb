"""``python benchmarks/bench.py``: every method's training step timed, published-code style against the fast path.

Each row is a real method of the registry (``peerkd.methods``): the explicit rows (``ROWS``) with the options of one of
the papers' configs under ``configs/`` (the row names the file), and one derived row for every other registered
method (:func:`derived_rows`: a new method file is timed without an edit here). One process measures, per row:

(a) reference: the method built with separate members (``trainer.members: separate``), eager fp32, a torchvision
    DataLoader whose CPU workers crop and flip each image (``RandomCrop(32, 4)``, ``RandomHorizontalFlip``,
    ``ToTensor``, ``Normalize``) from synthetic uint8 data of CIFAR's shape and yield the Batch fields the method asks
    for (V independently augmented views, the sample index, a same-class partner image for CS-KD, batch mixing with
    peerkd's own mixing code), and a plain ``torch.optim.SGD`` step (zero_grad, forward, backward, step);
(b) fast: the method built with grouped members (``trainer.members: grouped``: one fused module per member group,
    where the method has member groups; the record says ``members: "n/a"`` where it has none), the device loader, and
    on CUDA bf16 autocast, channels_last and :class:`peerkd.training.step.FastStep` compiled (or graph-captured, or
    eager: ``--step``); on CPU the same FastStep, eager fp32. ``--members-compare`` also times the fast path with
    separate, streamed and vmapped members (``trainer.members``' other choices), for methods with member groups.

Both paths run what the trainer runs around a step: ``on_epoch_start`` before the timed steps (at a mid-training
epoch, so ramp-ups and PS-KD's memory are in use), the learning rate set every step, and for the fast path the log
drain every ``trainer.log_every`` steps. ``on_epoch_end`` (KDCL-General's held-out pass) is per epoch and not timed;
no images are held out.

It prints ms per step, seconds per CIFAR epoch (50,000 images), images/s, the warm-up (first steps: compilation,
capture, worker start), peak device memory, the ratio (a / b) and the fraction of the device's peak FLOP rate reached
(FLOPs of one forward and backward of the method, counted with ``torch.utils.flop_counter.FlopCounterMode``; the
peak is ``--peak-tflops``). On CPU only the ratio is printed: absolute CPU timings say nothing about the GPU runs this
harness is for. A row that fails to build or step in one path prints its error and the run goes on.
"""
from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

from peerkd.config import Config, TrainerConfig, build_config, load_yaml
from peerkd.core.errors import ConfigError
from peerkd.core.method import TaskInfo
from peerkd.core.process import EXIT_BAD_INPUT
from peerkd.core.registry import build_method, method_class, method_names
from peerkd.data import augment
from peerkd.data.batch import Batch
from peerkd.data.device_loader import DeviceLoader
from peerkd.data.mixing import MixingSpec, apply_mixing, sample_step, step_generator
from peerkd.data.pipeline import mixing_spec, normalization
from peerkd.data.previous import PreviousBatchLoader, with_previous
from peerkd.training.step import FastStep
from peerkd.models.execution import member_execution
from peerkd.training.execution import member_groups

CIFAR_TRAIN_IMAGES = 50_000  # images in a CIFAR training split: an epoch is CIFAR_TRAIN_IMAGES // batch steps
NUM_CLASSES = 100  # CIFAR-100, the dataset of every row's config
IMAGE_SIZE = 32  # CIFAR's side, pixels
LOG_EVERY = TrainerConfig().log_every  # steps between the trainer's log drains (one host sync each)
ERROR_CHARS = 300  # longest error message kept in a row (characters)
CONFIGS = Path(__file__).resolve().parents[1] / "configs"  # the papers' configs of a source checkout
QUICK_MODELS = {  # --quick: each row's backbone -> (a tiny one of the same family, factory keywords)
    "resnet32": ("resnet8", {}),
    "resnet110": ("resnet14", {}),
    "resnet110_one": ("resnet14", {}),  # CSS's bottleneck ResNet-110: a 14-layer basic ResNet keeps the smoke run small
    "resnet18": ("resnet18", {"width": 8}),  # 4-stage CIFAR ResNet-18 with 8-16-32-64 planes instead of 64-512
}


# --------------------------------------------------------------------------------------------------------- rows

@dataclass(frozen=True)
class BenchRow:
    """One method to time: ``config`` (a path under ``configs/``) gives its ``method`` section, or without one the
    registered method ``method`` with its default Options (on CIFAR-100's shape); ``options`` replace some of it
    (e.g. a ResNet-32 backbone for a ResNet-110 config); ``skip`` says why it is not timed."""

    name: str
    config: str = ""
    options: dict = field(default_factory=dict)
    skip: str = ""
    method: str = ""


ROWS = (  # the cells of the published tables (BENCHMARKS.md) and the shapes that decide the design (fusion, views)
    BenchRow("vanilla R32", "cifar100/vanilla_resnet32.yaml"),
    BenchRow("DML 2xR32", "cifar100/dml_resnet32.yaml"),
    BenchRow("DML 2xR110", "cifar100/dml_resnet110.yaml"),
    BenchRow("ONE R32x4", "mde/table2/one_resnet32.yaml"),
    BenchRow("CL R32x4", "css/table2/cl_resnet110_4.yaml", {"model": "resnet32"}),
    BenchRow("OKDDip R32x4", "mde/table2/okddip_resnet32.yaml"),
    BenchRow("MDE R32x4", "mde/table2/mde_resnet32.yaml"),
    BenchRow("CSS 2xR110x3", "css/table1/css_resnet110.yaml"),
    BenchRow("PCL R32x3", "css/table1/pcl_resnet110.yaml", {"model": "resnet32"}),
    BenchRow("KDCL 2xR32 general+ICL", "cutnmix/table1/cifar100_kdcl_resnet32.yaml"),
    BenchRow("CutnMix-OD 2xR32", "cutnmix/table1/cifar100_cutnmix_resnet32.yaml"),
    BenchRow("CS-KD R32", "cutnmix/table1/cifar100_cskd_resnet32.yaml"),
    BenchRow("Tf-KD reg R32", "cutnmix/tfkd/cifar100_tfkd_reg_resnet32.yaml"),
    BenchRow("Tf-KD self R32", "cutnmix/tfkd/cifar100_tfkd_self_resnet32.yaml", {"teacher_run": ""}),  # the
    # config's teacher is a run of the paper's sweep: --teacher-run gives one, else the row is skipped
    BenchRow("DDGSD R32", "cutnmix/table1/cifar100_ddgsd_resnet32.yaml"),
    BenchRow("BYOT R18", "pskd/baselines/byot_resnet18.yaml"),
    BenchRow("PS-KD R18", "pskd/baselines/pskd_resnet18.yaml"),
    BenchRow("PS-KD+BYOT+DMFL R18", "pskd/table1/resnet18_pskd_byot_dmfl.yaml"),
)


def covered_methods(rows, configs: Path = CONFIGS) -> set[str]:
    """The registered methods the rows time or skip: a row's ``method``, else its config's ``method.name``."""
    covered = {row.method for row in rows if row.method}
    for row in rows:
        if not row.method and row.config and (configs / row.config).is_file():
            covered.add(str((load_yaml(configs / row.config).get("method") or {}).get("name", "vanilla")))
    return covered


def derived_rows(rows=ROWS, configs: Path = CONFIGS) -> list[BenchRow]:
    """A row for every registered method that ``rows`` do not cover: the config its class names in a
    ``bench_config`` attribute (a path under ``configs/``), else its default Options; named after the method."""
    derived, covered = [], covered_methods(rows, configs)
    for name in method_names():
        if name in covered:
            continue
        config = getattr(method_class(name), "bench_config", "") or ""
        label = f"{name} ({Path(config).with_suffix('').as_posix()})" if config else f"{name} (default options)"
        derived.append(BenchRow(label, config, method=name))
    return derived


def all_rows(configs: Path = CONFIGS) -> list[BenchRow]:
    """ROWS, then a derived row for every registered method they do not cover."""
    return [*ROWS, *derived_rows(ROWS, configs)]


def select_rows(rows, only: str | None) -> list[BenchRow]:
    """The rows whose name contains ``only`` (case-insensitive); all rows without it."""
    return [row for row in rows if not only or only.lower() in row.name.lower()]


# ----------------------------------------------------------------------------------------------------- building

def row_config(row: BenchRow, configs: Path, quick: bool, teacher_run: str | None = None) -> Config:
    """The row's config file (or the row's method with its default Options on CIFAR-100) with the row's option
    replacements, validated like ``peerkd train`` does; with ``quick`` its backbones swapped for tiny ones
    (QUICK_MODELS); ``teacher_run`` fills an empty ``teacher_run`` option (KD, Tf-KD self)."""
    if row.config:
        tree = load_yaml(configs / row.config)
    else:
        tree = {"data": {"dataset": "cifar100"}, "method": {"name": row.method}}  # the shape of every row
    tree["method"] = {**(tree.get("method") or {}), **row.options}
    config = build_config(tree)
    if quick:
        config.method.options = quick_options(config.method.options)
    if teacher_run and getattr(config.method.options, "teacher_run", None) == "":
        config.method.options = dataclasses.replace(config.method.options, teacher_run=str(teacher_run))
    return config


def quick_options(options):
    """``options`` with every backbone named in QUICK_MODELS (in ``model``, ``models`` or ``student``) swapped for
    its tiny one, the tiny one's factory keywords added to ``model_options``."""
    changes, keywords = {}, {}
    for key in ("model", "models", "student"):
        value = getattr(options, key, None)
        names = [value] if isinstance(value, str) else value if isinstance(value, list) else []
        swaps = [QUICK_MODELS.get(name, (name, {})) for name in names]
        for _, extra in swaps:
            keywords.update(extra)
        if swaps:
            changes[key] = swaps[0][0] if isinstance(value, str) else [name for name, _ in swaps]
    if keywords:
        changes["model_options"] = {**options.model_options, **keywords}
    return dataclasses.replace(options, **changes)


def missing_teacher(config: Config) -> str:
    """Why the row's method cannot be built without a trained run, or "": probed (one build on the CPU, random state
    untouched) only where its Options has an empty ``teacher_run`` and the build refuses exactly that key."""
    options = config.method.options
    if getattr(options, "teacher_run", None) != "":
        return ""
    try:
        with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            build_method(config.method.name, options, TaskInfo(num_classes=NUM_CLASSES, image_size=IMAGE_SIZE))
    except ConfigError as err:
        if str(err).startswith("method.teacher_run"):
            return f"{err} (time it with --teacher-run RUN_DIR: any run of {NUM_CLASSES} classes)"
    return ""


def backbones(options) -> list[str]:
    """The backbone names a method's options hold (for the row's record)."""
    for key in ("models", "model"):
        value = getattr(options, key, None)
        if value:
            return list(value) if isinstance(value, list) else [value]
    return []


def build_for_path(config: Config, task: TaskInfo, device: torch.device, channels_last: bool,
                   members: str = "separate"):
    """The method as the trainer builds it (seeded, its member groups executing as ``members``, on the device, train
    mode), and the warnings building raised (e.g. a cohort that cannot be grouped and runs separately)."""
    torch.manual_seed(config.seed)
    with warnings.catch_warnings(record=True) as caught, member_execution(members):
        warnings.simplefilter("always")
        method = build_method(config.method.name, config.method.options, task).to(device)
    if channels_last:
        method.to(memory_format=torch.channels_last)
    epochs = config.schedule.epochs
    method.on_epoch_start(epochs // 2, epochs)  # mid-training: ramp-ups at weight, PS-KD's memory read
    method.train()
    return method, [str(w.message) for w in caught]


# --------------------------------------------------------------------------------------------------------- data

@dataclass
class DataSpec:
    """What both paths' loaders produce for a method: from its DataRequest and its config's data section."""

    views: int
    class_pairs: int  # same-class partners per sample (DataRequest.class_pairs)
    mixing: MixingSpec
    mean: tuple
    std: tuple
    crop_padding: int
    flip: bool
    seed: int
    previous_batch: bool = False  # every batch carries the one before it (DataRequest.previous_batch: DLB)


def data_spec(config: Config) -> DataSpec:
    request = method_class(config.method.name).data_request(config.method.options)
    mean, std = normalization(config.data, augment.CIFAR100_MEAN, augment.CIFAR100_STD)
    return DataSpec(request.views, request.class_pairs, mixing_spec(config.data, request), tuple(mean), tuple(std),
                    config.data.crop_padding, config.data.flip, config.seed, request.previous_batch)


def synthetic_cifar(count: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``count`` random uint8 HWC images of CIFAR's shape and random CIFAR-100 labels (timing needs no content)."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (count, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    return images, rng.integers(0, NUM_CLASSES, count).astype(np.int64)


class ReferenceImages(torch.utils.data.Dataset):
    """CIFAR's storage (uint8 HWC arrays made PIL images per item, as torchvision's CIFAR datasets do), with
    ``views`` independent augmentations per image and, for k class pairs, k augmented same-class partners."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform, views: int, class_pairs: int):
        self.images, self.labels, self.transform = images, labels, transform
        self.views, self.class_pairs = views, class_pairs
        self.rows_of_class = {c: np.flatnonzero(labels == c) for c in np.unique(labels)}

    def __len__(self) -> int:
        return len(self.labels)

    def _image(self, i: int):
        from PIL import Image

        return Image.fromarray(self.images[i])

    def partner(self, i: int) -> int:
        """Another row of ``i``'s class, uniformly (``i`` itself when its class has one row); torch's RNG, which
        the DataLoader seeds per worker."""
        rows = self.rows_of_class[self.labels[i]]
        others = rows[rows != i]
        return int(others[torch.randint(len(others), ()).item()]) if len(others) else i

    def __getitem__(self, i: int) -> dict:
        image = self._image(i)
        sample = {"views": [self.transform(image) for _ in range(self.views)], "y": int(self.labels[i]), "index": i}
        if self.class_pairs:  # (k, C, H, W) and (k,): made block-major (k * B) in to_batch
            rows = [self.partner(i) for _ in range(int(self.class_pairs))]
            sample["pair_x"] = torch.stack([self.transform(self._image(j)) for j in rows])
            sample["pair_index"] = torch.tensor(rows)
        return sample


def reference_loader(images, labels, spec: DataSpec, batch_size: int, workers: int, pin_memory: bool):
    """The published-code loader: a shuffled torchvision-transform DataLoader with ``workers`` CPU processes."""
    from torchvision import transforms

    steps = [transforms.RandomCrop(IMAGE_SIZE, padding=spec.crop_padding)] if spec.crop_padding else []
    steps += [transforms.RandomHorizontalFlip()] if spec.flip else []
    steps += [transforms.ToTensor(), transforms.Normalize(spec.mean, spec.std)]
    dataset = ReferenceImages(images, labels, transforms.Compose(steps), spec.views, spec.class_pairs)
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers,
                                       drop_last=True, pin_memory=pin_memory, persistent_workers=workers > 0)


def to_batch(sample: dict, device: torch.device) -> Batch:
    """A collated reference sample as the Batch the device loader would give (views stacked ``(V, B, C, H, W)``)."""
    move = (lambda t: t.to(device, non_blocking=True))
    views = [move(v) for v in sample["views"]]
    batch = Batch(x=views[0] if len(views) == 1 else torch.stack(views), y=move(sample["y"]),
                  index=move(sample["index"]))
    if "pair_x" in sample:  # (B, k, ...) -> (k * B, ...): block j holds every sample's j-th partner
        batch.pair_x = move(sample["pair_x"].transpose(0, 1).flatten(0, 1))
        batch.pair_index = move(sample["pair_index"].t().reshape(-1))
    return batch


def mix_batch(batch: Batch, spec: MixingSpec, seed: int, step: int) -> Batch:
    """Batch mixing with peerkd's own numbers and tensor ops (what the device loader does per step)."""
    size, views = batch.y.shape[0], batch.views
    draw = sample_step(spec, step_generator(seed, 0, step), size, views, IMAGE_SIZE, IMAGE_SIZE)
    device = batch.x.device
    partner = torch.as_tensor(draw.partner, dtype=torch.int64).to(device)
    lam = torch.tensor(draw.lam, dtype=torch.float32).to(device)
    boxes = torch.as_tensor(draw.boxes, dtype=torch.int64).to(device)
    batch.x, batch.y_b, batch.lam = apply_mixing(spec.kind, batch.x, batch.y, partner, lam, boxes)
    return batch


def reference_batches(loader, spec: DataSpec, device: torch.device) -> Iterator[Batch]:
    """Endless batches of the reference loader on the device, epoch after epoch, mixed where the method asks, each
    carrying the one before where the method asks (as DLB's dlb.py keeps ``pre_data`` in its loop)."""
    step, previous = 0, None
    while True:
        for sample in loader:
            batch = to_batch(sample, device)
            batch = mix_batch(batch, spec.mixing, spec.seed, step) if spec.mixing.active else batch
            if spec.previous_batch:
                batch, previous = with_previous(batch, previous), batch
            yield batch
            step += 1


def device_batches(images, labels, spec: DataSpec, batch_size: int, device: torch.device,
                   channels_last: bool) -> Iterator[Batch]:
    """Endless batches of peerkd's device loader (data on the device, batched crop/flip/mixing/pairs)."""
    loader = DeviceLoader(images, labels, batch_size=batch_size, mean=spec.mean, std=spec.std, device=device,
                          seed=spec.seed, views=spec.views, crop_padding=spec.crop_padding, flip=spec.flip,
                          channels_last=channels_last, mixing=spec.mixing, class_pairs=spec.class_pairs)
    loader = PreviousBatchLoader(loader) if spec.previous_batch else loader
    epoch = 0
    while True:
        yield from loader.epoch(epoch)
        epoch += 1


# ------------------------------------------------------------------------------------------------------- timing

@dataclass
class Timing:
    ms_per_step: float
    warmup_s: float  # the first steps (compilation, graph capture, cuDNN autotuning, worker start): not in ms_per_step
    peak_memory_mb: float | None


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def release(device: torch.device) -> None:
    """Free the device memory the last path left (its models, optimiser state, compiled graphs) before the next one.
    Only on CUDA: a full collection takes about half a second of CPU, and host memory does not limit the next path."""
    if device.type == "cuda":
        gc.collect()
        torch.cuda.empty_cache()


PROFILE_STEPS = 5  # steps recorded by --profile, after the timed ones (enough to average out one step's noise)


def profile_steps(step: Callable[[Batch], None], batches: Iterator[Batch], device: torch.device, path: Path,
                  label: str) -> None:
    """Append torch.profiler's operator table of PROFILE_STEPS more steps to ``path`` (``--profile``), the operators
    sorted by device time on CUDA (CPU time elsewhere): where a step's time goes, outside the timed steps."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(PROFILE_STEPS):
            step(next(batches))
        _sync(device)
    sort = "cuda_time_total" if device.type == "cuda" else "cpu_time_total"
    with open(path, "a") as out:
        out.write(f"== {label}: {PROFILE_STEPS} steps, sorted by {sort}\n")
        out.write(prof.key_averages().table(sort_by=sort, row_limit=30) + "\n\n")


def measure(step: Callable[[Batch], None], batches: Iterator[Batch], device: torch.device, warmup: int,
            steps: int, profile_to: tuple[Path, str] | None = None) -> Timing:
    """Run ``warmup`` untimed then ``steps`` timed calls of ``step`` on the next batches (data time included);
    with ``profile_to = (file, label)``, profile a few more steps into that file afterwards."""
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
    if profile_to is not None:
        profile_steps(step, batches, device, *profile_to)
    return Timing(1000 * elapsed / steps, warm, peak)


def time_reference(config: Config, task: TaskInfo, data, spec: DataSpec, args, device: torch.device) -> Timing:
    """Path (a): separate members, eager fp32, the DataLoader of published code, plain ``torch.optim.SGD``."""
    method, _ = build_for_path(config, task, device, channels_last=False)
    optim = config.optim
    optimizer = torch.optim.SGD(method.trainable_parameters(), lr=optim.lr, momentum=optim.momentum,
                                nesterov=optim.nesterov, weight_decay=optim.weight_decay)
    loader = reference_loader(*data, spec, args.batch_size, args.workers, pin_memory=device.type == "cuda")

    def step(batch: Batch) -> None:
        for group in optimizer.param_groups:
            group["lr"] = optim.lr  # the trainer sets the scheduled rate every step
        optimizer.zero_grad(set_to_none=True)
        method(batch).loss.backward()
        optimizer.step()

    batches = reference_batches(loader, spec, device)
    try:
        return measure(step, batches, device, args.warmup, args.steps, profile_target(args, "reference"))
    finally:
        batches.close()  # drops the epoch iterator; the loader and its workers go with this frame (release())


def fast_step(method, config: Config, device: torch.device, step_mode: str) -> FastStep:
    """The trainer's FastStep for ``method``: bf16 autocast and ``step_mode`` (``--step``) on CUDA, eager fp32
    elsewhere."""
    on_cuda = device.type == "cuda"
    mode = step_mode if on_cuda else "eager"
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if on_cuda else None
    if mode == "compile":
        torch._dynamo.reset()  # every FastStep compiles the same function: a fresh cache per row, no recompile limit
    optim = config.optim
    return FastStep(method, method.trainable_parameters(), lr=optim.lr, momentum=optim.momentum,
                    nesterov=optim.nesterov, weight_decay=optim.weight_decay, device=device, autocast=autocast,
                    mode=mode, compile_mode="reduce-overhead" if mode == "compile" else None,
                    update_scales=method.update_scales())


def time_fast(config: Config, task: TaskInfo, data, spec: DataSpec, args, device: torch.device,
              members: str = "grouped") -> tuple[Timing, list[str], str]:
    """Path (b): the method built with ``members`` member groups, the device loader, FastStep; returns the timing, the
    warnings its build raised and the members label (``members``, or "n/a" for a method without member groups)."""
    channels_last = device.type == "cuda"
    method, notes = build_for_path(config, task, device, channels_last, members)
    label = members if member_groups(method) else "n/a"
    step_fn = fast_step(method, config, device, args.step)
    calls = iter(range(1, 2**62))

    def step(batch: Batch) -> None:
        step_fn.set_lr(config.optim.lr)
        step_fn(batch)
        if next(calls) % LOG_EVERY == 0:
            step_fn.drain_logs()  # the trainer's one host sync per log interval

    batches = device_batches(*data, spec, args.batch_size, device, channels_last)
    timing = measure(step, batches, device, args.warmup, args.steps, profile_target(args, f"fast, members {label}"))
    return timing, notes, label


def profile_target(args, label: str) -> tuple[Path, str] | None:
    """Where ``--profile`` writes this path's operator table, or None without the flag."""
    return (Path(args.profile), label) if getattr(args, "profile", None) else None


def count_step_flops(config: Config, task: TaskInfo, data, spec: DataSpec, batch_size: int,
                     device: torch.device) -> int:
    """FLOPs of one forward and backward of the method (separate members, fp32; grouping does not change them)."""
    from torch.utils.flop_counter import FlopCounterMode

    method, _ = build_for_path(config, task, device, channels_last=False)
    batch = next(device_batches(*data, spec, batch_size, device, channels_last=False))
    with FlopCounterMode(display=False) as counter:
        method(batch).loss.backward()
    return counter.get_total_flops()


# --------------------------------------------------------------------------------------------------------- rows

def attempt(fn: Callable, device: torch.device):
    """``(fn(), None)``, or ``(None, "Type: message")`` when it raises: one path's failure never ends the run."""
    try:
        return fn(), None
    except Exception as err:  # noqa: BLE001  (any failure of a method belongs in its row)
        return None, f"{type(err).__name__}: {err}"[:ERROR_CHARS]
    finally:
        release(device)


def path_summary(timing: Timing, flops: int | None, args) -> dict:
    """A path's timing with the derived columns: s per CIFAR epoch, images/s, fraction of the peak FLOP rate."""
    seconds = timing.ms_per_step / 1000
    steps_per_epoch = CIFAR_TRAIN_IMAGES // args.batch_size
    fraction = flops / seconds / (args.peak_tflops * 1e12) if args.peak_tflops and flops else None
    return dict(asdict(timing), s_per_epoch=seconds * steps_per_epoch, images_per_s=args.batch_size / seconds,
                peak_fraction=fraction)


FAST_VARIANTS = (("fast", "grouped"), ("fast_separate", "separate"), ("fast_streams", "streams"),
                 ("fast_vmap", "vmap"))  # (record label, trainer.members): "fast", then --members-compare's others


def fast_variants(members_compare: bool) -> tuple[tuple[str, str], ...]:
    """The fast-path runs of a row as ``(label, members)``: grouped, and with ``--members-compare`` also separate,
    streams and vmap (run only for a method with member groups: time_row)."""
    return FAST_VARIANTS if members_compare else FAST_VARIANTS[:1]


def time_row(row: BenchRow, data, args, device: torch.device) -> dict:
    """Every measurement of one row; failures are recorded as ``error`` entries, never raised."""
    record = {"shape": row.name, "config": f"configs/{row.config}" if row.config else None, "device": str(device),
              "batch_size": args.batch_size}
    if row.skip:
        return dict(record, skipped=row.skip)
    prepared, error = attempt(lambda: prepare(row, args), device)
    if error:
        return dict(record, error=error)
    config, spec = prepared
    skip, error = attempt(lambda: missing_teacher(config), device)
    if skip or error:
        return dict(record, method=config.method.name, **({"skipped": skip} if skip else {"error": error}))
    task = TaskInfo(num_classes=NUM_CLASSES, image_size=IMAGE_SIZE, num_train=len(data[1]))
    record.update(method=config.method.name, models=backbones(config.method.options), views=spec.views,
                  mixing=spec.mixing.kind, class_pairs=spec.class_pairs)
    flops, error = attempt(lambda: count_step_flops(config, task, data, spec, args.batch_size, device), device)
    record["flops_per_step"] = flops
    if error:
        record["flops_error"] = error
    reference, error = attempt(lambda: time_reference(config, task, data, spec, args, device), device)
    record["reference"] = path_summary(reference, flops, args) if reference else {"error": error}
    for label, members in fast_variants(args.members_compare):
        if label != "fast" and record["fast"].get("members") == "n/a":
            break  # no member group: every execution builds the same method
        result, error = attempt(lambda members=members: time_fast(config, task, data, spec, args, device, members),
                                device)
        record[label] = dict(path_summary(result[0], flops, args), members=result[2], notes=result[1]) if result \
            else {"error": error, "members": members}
    record["ratio"] = ratio(record, "fast")
    return record


def prepare(row: BenchRow, args) -> tuple[Config, DataSpec]:
    """The row's validated config and what its loaders must produce (raises what a broken config raises)."""
    config = row_config(row, Path(args.configs), args.quick, args.teacher_run)
    return config, data_spec(config)


def ratio(record: dict, label: str) -> float | None:
    """Reference ms/step over the ``label`` path's (> 1: the fast path is faster); None when either failed."""
    reference, other = record.get("reference", {}), record.get(label, {})
    if "ms_per_step" not in reference or "ms_per_step" not in other:
        return None
    return reference["ms_per_step"] / other["ms_per_step"]


# ------------------------------------------------------------------------------------------------------- output

FAST_LABELS = tuple(label for label, _ in FAST_VARIANTS)


def format_row(record: dict) -> str:
    """The printed lines of a row: every column on CUDA; ratios only on CPU; the reason or error where there is one."""
    name = f"{record['shape']:<24} "
    if "skipped" in record:
        return f"{name}skipped: {record['skipped']}"
    if "error" in record:
        return f"{name}error: {record['error']}"
    paths = [label for label in ("reference", *FAST_LABELS) if label in record]
    if record["device"] == "cpu":
        return name + _cpu_cells(record, paths[1:])
    header = name + (f"ratio {record['ratio']:.2f}x" if record["ratio"] else "ratio n/a")
    return "\n".join([header, *(_cuda_line(record, label) for label in paths)])


def _cpu_cells(record: dict, labels: list[str]) -> str:
    """CPU: each fast variant's ratio to the reference, or what failed."""
    if "error" in record["reference"]:
        return f"reference failed: {record['reference']['error']}"
    cells = []
    for label in labels:
        tag = "fast" if label == "fast" else label.replace("fast_", "members ")
        path = record[label]
        cells.append(f"{tag} failed: {path['error']}" if "error" in path else f"{tag} {ratio(record, label):.2f}x")
    return f"speed-up over the reference: {', '.join(cells)} (CPU: ratios only)"


def _cuda_line(record: dict, label: str) -> str:
    t = record[label]
    members = f" [members {t['members']}]" if "members" in t else ""
    if "error" in t:
        return f"  {label:<17} failed{members}: {t['error']}"
    peak = "" if t["peak_fraction"] is None else f", {100 * t['peak_fraction']:.1f}% of peak"
    memory = "" if t["peak_memory_mb"] is None else f", {t['peak_memory_mb']:.0f} MiB"
    return (f"  {label:<17} {t['ms_per_step']:7.2f} ms/step  {t['s_per_epoch']:6.1f} s/epoch  "
            f"{t['images_per_s']:8.0f} img/s  warm-up {t['warmup_s']:.1f} s{memory}{peak}{members}")


def list_rows(rows) -> str:
    """The table of rows (``--list``): name, config, option replacements or why it is skipped."""
    lines = []
    for row in rows:
        source = f"configs/{row.config}" if row.config else f"the default options of '{row.method}'"
        what = f"skipped: {row.skip}" if row.skip else source + (f" with {row.options}" if row.options else "")
        lines.append(f"{row.name:<24} {what}")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------------- main

def resolve_device(name: str) -> torch.device:
    return torch.device(name if name != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))


def run(args, rows=None) -> list[dict]:
    """Time every selected row (default: :func:`all_rows`), print each as it finishes, write the JSON; returns the
    records. ``--only`` that selects no row is a ConfigError (a renamed row must not pass as an empty run)."""
    rows = all_rows(Path(args.configs)) if rows is None else rows
    selected = select_rows(rows, args.only)
    if not selected:
        raise ConfigError(f"--only {args.only!r} matches no bench row; `python benchmarks/bench.py --list` prints them")
    if args.list:
        print(list_rows(selected))
        return []
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # both paths: published CIFAR code sets it, and peerkd runs do (auto)
    data = synthetic_cifar(args.images)
    records = []
    for row in selected:
        record = time_row(row, data, args, device)
        records.append(record)
        print(format_row(record), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(records, indent=2))
    return records


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python benchmarks/bench.py", description=__doc__.split("\n")[0])
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 ... (auto: cuda if present)")
    p.add_argument("--quick", action="store_true",
                   help="tiny settings for a CPU smoke run (ResNet-8/14 and an 8-wide ResNet-18, few steps)")
    p.add_argument("--steps", type=int, help="timed steps per path (default 50; 3 with --quick)")
    p.add_argument("--warmup", type=int, help="untimed first steps per path (default 10: compile, capture; 1 quick; "
                                              "--step graph captures after 3 eager steps: keep it >= 4)")
    p.add_argument("--batch-size", type=int, help="images per step for every row (default 128, the CIFAR recipe; "
                                                  "16 quick)")
    p.add_argument("--images", type=int, help="synthetic training images (default 50000, CIFAR's; 256 quick)")
    p.add_argument("--workers", type=int, help="reference DataLoader workers (default 4, as published code; 0 quick)")
    p.add_argument("--step", default="compile", choices=["compile", "graph", "eager"],
                   help="CUDA fast path's step (trainer.step): torch.compile reduce-overhead, one captured CUDA graph, "
                        "or eager")
    p.add_argument("--members-compare", action="store_true",
                   help="also time the fast path with separate, streamed and vmapped members (trainer.members; "
                        "methods with member groups)")
    p.add_argument("--peak-tflops", type=float, default=None,
                   help="the device's peak TFLOP/s for the fraction column (H100 SXM: 989 dense bf16, 67 fp32)")
    p.add_argument("--only", help="run only rows whose name contains this text (case-insensitive)")
    p.add_argument("--list", action="store_true", help="print the rows and their configs, time nothing")
    p.add_argument("--threads", type=int, default=0, help="CPU threads for torch (0 keeps torch's default)")
    p.add_argument("--configs", default=str(CONFIGS), help="folder of the papers' configs (default: the checkout's)")
    p.add_argument("--teacher-run", help="run folder of a trained run of 100 classes: the teacher of the rows that "
                                         "need one (KD, Tf-KD self); without it they are skipped")
    p.add_argument("--out", help="write the rows as JSON here")
    p.add_argument("--profile", help="append torch.profiler's operator table of a few steps of every path to this "
                                     "text file (after the timed steps; the timings are unaffected)")
    return p


def parse_args(argv: list[str] | None = None):
    args = parser().parse_args(argv)
    quick_or_full = {"steps": (3, 50), "warmup": (1, 10), "batch_size": (16, 128), "images": (256, CIFAR_TRAIN_IMAGES),
                     "workers": (0, 4)}
    for name, (quick, full) in quick_or_full.items():
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else full)
    return args


def main(argv: list[str] | None = None) -> int:
    try:
        run(parse_args(argv))
    except ConfigError as err:
        print(f"bench: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return 0
