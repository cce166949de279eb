"""Configuration: dataclasses are the schema, YAML files and ``--set a.b=c`` overrides fill them.

A wrong key or a value of the wrong type raises :class:`ConfigError` before any work starts; its message names the
dotted key and, for a misspelt key, the nearest valid one. A choice is a ``typing.Literal[...]`` field: a value
outside it is refused naming the key, the allowed values and the nearest one, the one way choices are checked. The
options of the method (``method.*``) are validated against the ``Options`` dataclass of the registered method named
by ``method.name``, their choices likewise. Ranges are checked here too, before any work (no run folder yet): sizes
positive, rates and paddings not negative, every float finite, and, by naming convention over every method's
``Options``, each ``temperature`` / ``*_temperature`` positive. A YAML mapping that names a key twice is refused
(plain YAML would keep the last silently).

Field metadata tags what a key says besides what a run computes (``RESUMABLE``: a ``--resume`` may change it;
``PLACEMENT``: where and how visibly the run ran, ignored when ``peerkd report`` groups runs); :func:`config_keys`
lists the dotted keys of a tag.
"""
from __future__ import annotations

import copy
import dataclasses
import difflib
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from peerkd.core.errors import ConfigError
from peerkd.core.registry import DATASETS, METHODS

# Field metadata: what a key says about a run besides what it computes (:func:`config_keys` lists the keys of a tag).
# resumable: a --resume may change it; it decides how far and how the run goes on, what is evaluated or logged, and
# where and how fast it runs, not what the weights so far were trained with (peerkd/training/run_folder.py).
RESUMABLE = {"resumable": True}
# placement: where and how visibly a run ran, not what it computed; `peerkd report` groups runs that differ only here
# (and in the seed) as seeds of one config (peerkd/experiments/aggregate.py). Where a run runs may change on resume.
PLACEMENT = {"placement": True, **RESUMABLE}


@dataclass
class SyntheticConfig:
    """The generated dataset (``data.dataset: synthetic``): CIFAR-shaped, learnable, deterministic given its seed."""

    num_classes: int = 10  # classes; 10 keeps the quickstart quick
    train_size: int = 5000  # images in the training split
    test_size: int = 2000  # images in the test split
    seed: int = 0  # the generator's seed: the same seed gives the same bytes
    noise: float = 0.6  # pixel noise std relative to the class pattern's amplitude (0.6: ~70 % for the quickstart)
    distractor: float = 1.0  # largest amplitude of another class's pattern mixed in (1.0: as strong as the class's)
    label_noise: float = 0.0  # fraction of training labels replaced by another class at random (0: clean labels;
    # the test labels are never changed)


@dataclass
class DataConfig:
    dataset: str = "synthetic"  # a name from `peerkd list datasets`
    root: str | None = field(default=None, metadata=PLACEMENT)  # folder holding the dataset (CLI: --data-dir); None
    # means the cache folder
    download: bool = field(default=True, metadata=PLACEMENT)  # let torchvision download into the cache folder when
    # the dataset is missing
    batch_size: int = 128  # images per optimiser step, summed over all DDP ranks
    eval_batch_size: int = field(default=500, metadata=RESUMABLE)  # images per evaluation batch
    crop_padding: int = 4  # pixels of zero padding before the random crop (0 disables the crop)
    flip: bool = True  # random horizontal flip with probability 0.5
    normalize: Literal["dataset", "imagenet", "none"] = "dataset"  # its own mean/std, ImageNet's, or none
    train_subset: int | None = None  # use only this many training images (seeded choice) for quick runs
    test_subset: int | None = field(default=None, metadata=RESUMABLE)  # evaluate on only the first N test images
    heldout_per_class: int = 0  # images per class moved from training to a held-out split (methods may ask more)
    eval_split: Literal["test", "heldout"] = "test"  # what each evaluation scores: the test set, or the held-out
    # split (needs data.heldout_per_class > 0; `peerkd tune` scores its trials there, so no test loader is built and
    # the test set is never read while a config is chosen); not resumable: one run's records score one split
    # image-file datasets (ImageNet, Tiny-ImageNet, CUB, Dogs, Cars); 0 / "default" keep the dataset's own recipe
    train_transform: Literal["default", "random_resized_crop", "resize_crop", "pad_crop"] = "default"  # the train
    # pipeline (peerkd/data/folder.py)
    image_size: int = 0  # training crop and evaluated image side, pixels
    resize: int = 0  # shorter side before the evaluation centre crop, pixels
    photometric: bool = False  # colour jitter 0.4 + PCA lighting 0.1, the ImageNet recipe of KDCL
    workers: int = field(default=8, metadata=PLACEMENT)  # DataLoader worker processes decoding and augmenting image
    # files
    mixing: Literal["none", "mixup", "cutmix", "cutnmix"] = "none"  # batch mixing for any method (peerkd.data.mixing)
    mixing_alpha: float = 1.0  # lam ~ Beta(alpha, alpha); 1 (uniform) is CutMix's and CutnMix's choice
    mixing_prob: float = 1.0  # probability that a batch is mixed (CutMix's CIFAR recipe uses 0.5)
    mixing_box: Literal["clip", "inside"] = "clip"  # CutMix / CutnMix box: "clip" (Yun et al.'s, clipped at the
    # border) or "inside"
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)


@dataclass
class OptimConfig:
    lr: float = 0.1  # peak learning rate for batch 128 (the CIFAR recipe of every paper here)
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4  # L2 on every trained parameter, BatchNorm included, as the papers' code does


@dataclass
class ScheduleConfig:
    epochs: int = field(default=300, metadata=RESUMABLE)  # a resume may train longer (not fewer epochs than done)
    kind: Literal["multistep", "cosine"] = "multistep"  # lr x gamma at each milestone epoch, or cosine to 0 per step
    milestones: list[int] = field(default_factory=lambda: [150, 225], metadata=RESUMABLE)  # epochs at which lr is
    # multiplied by gamma; a resume may move those not yet passed
    gamma: float = 0.1
    warmup_epochs: float = 0.0  # linear warm-up from 0 over this many epochs (fractions allowed), per step


LoggerName = Literal["jsonl", "tensorboard", "wandb", "mlflow", "trackio"]  # trainer.loggers' choices


@dataclass
class TrainerConfig:
    device: str = field(default="auto", metadata=PLACEMENT)  # "auto" (cuda if present, else cpu), "cpu", "cuda",
    # "cuda:1", ...
    precision: Literal["auto", "bf16", "fp16", "fp32"] = field(default="auto", metadata=RESUMABLE)  # "auto": bf16
    # autocast on a CUDA device that supports it, fp16 autocast with a gradient scaler on one that does not (V100, T4,
    # RTX 20xx), fp32 on CPU; or "bf16", "fp16" (with the scaler), "fp32"
    channels_last: Literal["auto", "on", "off"] = field(default="auto", metadata=RESUMABLE)  # "auto": on for CUDA
    # how a method's identical members execute (peerkd/models/execution.py): "auto" measures the four on CUDA on the
    # run's first batch and keeps the fastest (they differ by tens of percent with the shape), and is "separate" on
    # CPU without measuring (grouped convolutions are slower there); "separate" (modules one by one, the reference),
    # "grouped" (one fused module: grouped convolutions), "streams" (CUDA side streams), "vmap" (torch.func); the same
    # numbers and the same state_dict keys in every mode, so a resume may change it
    members: Literal["auto", "separate", "grouped", "streams", "vmap"] = field(default="auto", metadata=RESUMABLE)
    # how the training step runs (peerkd/training/step.py): "auto" is torch.compile "reduce-overhead" on CUDA (CUDA
    # graphs: a CIFAR step is launch-bound), falling back to eager with a warning if compiling fails, and eager on CPU
    # (nothing to capture); "eager"; "compile" (reduce-overhead on CUDA, torch's default mode elsewhere; a failure is
    # an error); "graph" (the whole step as one CUDA graph: CUDA only, one process)
    step: Literal["auto", "eager", "compile", "graph"] = field(default="auto", metadata=RESUMABLE)
    cudnn_benchmark: bool = field(default=True, metadata=RESUMABLE)  # CUDA: cuDNN times its convolution algorithms
    # once per shape and keeps the fastest (the shapes are static); false gives bitwise-repeatable runs on one machine,
    # slower
    eval_every: int = field(default=1, metadata=RESUMABLE)  # evaluate every N epochs (and always after the last)
    ece_bins: int = 15  # equal-width confidence bins of the ECE (Guo et al. 2017: 15; PS-KD's code, paper 004: 10)
    log_every: int = field(default=50, metadata=PLACEMENT)  # steps between training-log lines (one host sync each)
    out: str = field(default="runs", metadata=PLACEMENT)  # parent folder of run folders; a run writes to <out>/<name>
    progress: Literal["auto", "on", "off"] = field(default="auto", metadata=PLACEMENT)  # progress bar; "auto": only
    # on a terminal
    threads: int = field(default=0, metadata=PLACEMENT)  # CPU threads for torch (0 keeps torch's default)
    # where records go (peerkd/training/loggers.py): jsonl (metrics.jsonl, always: peerkd's own tools read it) and
    # tensorboard write into the run folder; wandb, mlflow, trackio are trackers (pip install 'peerkd[wandb]' etc.)
    loggers: list[LoggerName] = field(default_factory=lambda: ["jsonl", "tensorboard"], metadata=PLACEMENT)
    loggers_required: bool = field(default=True, metadata=PLACEMENT)  # a tracker that cannot start stops the run
    # before any work; false: one warning, and the run goes on without it
    tracker_project: str = field(default="peerkd", metadata=PLACEMENT)  # the wandb project / MLflow experiment /
    # trackio project of the run


@dataclass
class MethodConfig:
    name: str = "vanilla"
    options: Any = None  # the method's own Options dataclass instance


FOUNDATION_PAPER = "foundation"  # paper.id of a config that matches no paper's table: its block may list no cells
PAPER_MEAN_PREFIX = "mean:"  # predict: mean:branch0,branch1 = the paper's number is the mean over those members
PaperMetric = Literal["top1", "error", "top5", "top5_error", "nll", "ece", "aurc", "eaurc", "agreement", "diversity"]
PAPER_METRICS = typing.get_args(PaperMetric)  # the metrics a paper cell may name (`peerkd report --metric`)


@dataclass
class PaperCell:
    """One number of a paper's table that a run is compared with (``peerkd report``)."""

    row: str = ""  # the table's row label as printed (the method, or the network for a one-method table)
    column: str = ""  # the table's column label (the network, the dataset, ...); "" when the table has one column
    metric: PaperMetric = "top1"  # "error" = 100 - top-1 (%); nll/ece/aurc in the paper's units
    value: float | None = None  # the paper's number, as printed
    std: float | None = None  # the paper's ± (one standard deviation as printed), None when it gives none
    predict: str = "net1"  # the predict() key this number describes, or "mean:k1,k2,..": the paper's mean over keys
    table: str = ""  # this cell's table when it is not paper.table (one run printed in two tables); "" = paper.table

    def predict_keys(self) -> list[str]:
        """The predict() keys this number is compared with: one, or several whose metric the paper averages."""
        if self.predict.startswith(PAPER_MEAN_PREFIX):
            return self.predict[len(PAPER_MEAN_PREFIX):].split(",")
        return [self.predict]


@dataclass
class PaperConfig:
    """The paper cells a config reproduces: machine-readable, validated, read by ``peerkd report``."""

    id: str = ""  # names the paper (any non-empty string; which ids exist is the project's business), or
    # FOUNDATION_PAPER for a config of no paper table
    table: str = ""  # the table (or figure) as the paper numbers it: "1", "6", "fig3", "imagenet-2"
    mean_of: int = 0  # the paper reports the mean of this many runs (papers 001, 003: 3; 000 prints ± but no count)
    median_of: int = 0  # ... or the median of this many (paper 002's CIFAR tables: 5); both 0: the paper does not say
    cells: list[PaperCell] = field(default_factory=list)  # every number of the table this config produces


@dataclass
class Config:
    name: str = "run"  # run folder name under trainer.out
    seed: int = 0  # seeds weights, data order, augmentation and every method's randomness
    imports: list[str] = field(default_factory=list)  # user modules / .py files registering methods, models or
    # datasets, loaded before the method is validated (peerkd/core/plugins.py); recorded resolved (absolute paths)
    import_digests: dict[str, str] = field(default_factory=dict, metadata=RESUMABLE)  # written by peerkd: the
    # SHA-256 of each imported file as the run loaded it, so code that changed since is reported (a resume that
    # changes a file is allowed and recorded in history.jsonl)
    data: DataConfig = field(default_factory=DataConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    paper: PaperConfig | None = None  # the paper's numbers this config reproduces; None for configs of no table

    def to_dict(self) -> dict:
        out = dataclasses.asdict(dataclasses.replace(self, method=MethodConfig()))
        method = {"name": self.method.name}
        if self.method.options is not None:
            method.update(dataclasses.asdict(self.method.options))
        out["method"] = method
        return out

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


# ----------------------------------------------------------------------------------------------- typed conversion

def _type_name(tp) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _convert(value, tp, key: str):
    """Return ``value`` converted to type ``tp`` or raise ConfigError naming ``key``."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin is typing.Literal:  # a choice: the schema lists the allowed values, checked here before any work
        allowed = typing.get_args(tp)
        choice = _convert(value, type(allowed[0]), key)
        if choice not in allowed:
            close = difflib.get_close_matches(str(choice), [str(a) for a in allowed], n=1, cutoff=0.5)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigError(f"{key}: '{choice}' is not one of {', '.join(map(str, allowed))}{hint}")
        return choice
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, key)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0] if errors else f"{key}: cannot be {value!r}")
    if origin is list:
        (item_tp,) = typing.get_args(tp) or (Any,)
        if isinstance(value, tuple):
            value = list(value)
        if not isinstance(value, list):
            value = [value] if not isinstance(value, (dict, str)) or item_tp is str else value
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [_convert(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping of {tp.__name__} fields, got {value!r}")
        return from_dict(tp, value, prefix=f"{key}.")
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "on", "off"):
            return value.lower() in ("true", "yes", "on")
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        number = None
        if isinstance(value, (int, float)):
            number = float(value)
        elif isinstance(value, str):  # YAML 1.1 reads "5e-4" as a string
            try:
                number = float(value)
            except ValueError:
                pass
        if number is None:
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        if not math.isfinite(number):  # NaN passes every range check (its comparisons are all false)
            raise ConfigError(f"{key}: expected a finite number, got {value!r}")
        return number
    if tp is str:
        if isinstance(value, bool):  # YAML 1.1 reads a bare on/off as a boolean
            return "on" if value else "off"
        if isinstance(value, (str, int, float)):
            return str(value)
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    raise ConfigError(f"{key}: unsupported type {_type_name(tp)}")


def unknown_key_error(key: str, valid: typing.Iterable[str], prefix: str = "") -> ConfigError:
    valid = list(valid)
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    hint = f"; did you mean '{prefix}{close[0]}'?" if close else f"; valid keys: {', '.join(valid)}"
    return ConfigError(f"unknown key '{prefix}{key}'{hint}")


def from_dict(cls, data: dict | None, prefix: str = ""):
    """Build dataclass ``cls`` from ``data``; unknown keys and wrong types raise ConfigError."""
    data = data or {}
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        if key not in names:
            raise unknown_key_error(str(key), names, prefix)
        kwargs[key] = _convert(value, hints[key], f"{prefix}{key}")
    return cls(**kwargs)


# ----------------------------------------------------------------------------------------------- overrides, files

def parse_override(text: str) -> tuple[list[str], Any]:
    """``"a.b=c"`` -> (["a", "b"], value); the value is read as YAML so lists and numbers work."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' must look like key.sub=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override '{text}' has no key before '='")
    try:
        value = read_yaml(raw) if raw.strip() else ""
    except DuplicateKeyError as err:
        raise ConfigError(f"override '{text}': {err}") from None
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def apply_override(tree: dict, path: list[str], value) -> None:
    node = tree
    for part in path[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"override '{'.'.join(path)}': '{part}' is not a section")
        node = child
    node[path[-1]] = value


class DuplicateKeyError(yaml.YAMLError):
    """A YAML mapping names one key twice."""


class UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a mapping that names one key twice (plain YAML keeps the last one silently)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                line = key_node.start_mark.line + 1
                raise DuplicateKeyError(f"key '{key}' is given twice in one mapping (line {line}): keep one")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def read_yaml(text: str):
    """``text`` read by :class:`UniqueKeyLoader` (a duplicated key raises :class:`DuplicateKeyError`); a text nested
    deeply enough to exhaust Python's recursion (thousands of levels; a peerkd config has 4) is a ConfigError."""
    try:
        return yaml.load(text, Loader=UniqueKeyLoader)
    except RecursionError:
        raise ConfigError("the YAML text nests too deeply to read; a peerkd config has 4 levels") from None


def flatten_tree(tree: dict, prefix: str = "") -> dict:
    """A nested config tree as ``{"a.b.c": value}`` (the dotted keys of ``--set``)."""
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(flatten_tree(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def config_keys(tag: str, schema: type | None = None, prefix: str = "") -> tuple[str, ...]:
    """The dotted keys (as ``--set`` writes them) of the fields of ``schema`` (default :class:`Config`) and of its
    sections whose metadata carries ``tag``: ``config_keys("resumable")``, ``config_keys("placement")``."""
    schema = schema or Config
    hints = typing.get_type_hints(schema)
    keys = []
    for f in dataclasses.fields(schema):
        if f.metadata.get(tag):
            keys.append(f"{prefix}{f.name}")
        hint = hints[f.name]
        options = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
        for section in options:  # a section (a dataclass, or one that may be None), not a list's items
            if dataclasses.is_dataclass(section):
                keys.extend(config_keys(tag, section, f"{prefix}{f.name}."))
    return tuple(keys)


def load_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file '{path}' does not exist; pass an existing YAML file with -c")
    try:
        tree = read_yaml(path.read_text()) or {}
    except DuplicateKeyError as err:
        raise ConfigError(f"config file '{path}': {err}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"config file '{path}' is not valid YAML: {err}") from None
    if not isinstance(tree, dict):
        raise ConfigError(f"config file '{path}' must hold a mapping at its top level")
    imports = tree.get("imports")
    if isinstance(imports, list) and all(isinstance(spec, str) for spec in imports):
        from peerkd.core.plugins import resolve_import

        tree["imports"] = [resolve_import(spec, path.parent) for spec in imports]  # relative to the file's folder
    return tree


# keys that moved: a config naming one is refused with one line saying where it went (before any work)
MOVED_KEYS = {
    "method.fuse": "method.fuse moved to trainer.members (off -> separate, on -> grouped, streams, vmap, auto)",
    "trainer.fast": "trainer.fast moved to trainer.step (auto -> auto, on -> compile, off -> eager)",
    "trainer.fast_mode": "trainer.fast_mode moved to trainer.step (compile -> compile, graph -> graph)",
    "trainer.compile": "trainer.compile moved to trainer.step (true -> compile, false -> eager)",
}
# method.fuse -> trainer.members
_OLD_FUSE = {"off": "separate", "on": "grouped", False: "separate", True: "grouped"}


def _refuse_moved_keys(tree: dict) -> None:
    for key, message in MOVED_KEYS.items():
        section, name = key.split(".")
        node = tree.get(section)
        if isinstance(node, dict) and name in node:
            raise ConfigError(message)


def _old_step(fast, fast_mode, compile_step) -> str:
    """trainer.step for a saved config's trainer.fast / fast_mode / compile (their defaults: auto, compile, false)."""
    fast = {True: "on", False: "off"}.get(fast, "auto" if fast is None else fast)
    if fast == "off":
        return "compile" if compile_step else "eager"
    if fast_mode == "graph":
        return "graph"
    return "compile" if fast == "on" else "auto"


def upgrade_saved_config(tree: dict) -> dict:
    """A config tree saved by an older peerkd (a checkpoint's) with the values of :data:`MOVED_KEYS` under their new
    keys, so that its run still resumes, evaluates and exports; a config a user writes is refused instead."""
    method, trainer = dict(tree.get("method") or {}), dict(tree.get("trainer") or {})
    if "fuse" not in method and not {"fast", "fast_mode", "compile"} & trainer.keys():
        return tree
    fuse = method.pop("fuse", None)
    if fuse is not None:
        trainer.setdefault("members", _OLD_FUSE.get(fuse, fuse))
    fast, fast_mode, compile_step = (trainer.pop(k, None) for k in ("fast", "fast_mode", "compile"))
    if (fast, fast_mode, compile_step) != (None, None, None):
        trainer.setdefault("step", _old_step(fast, fast_mode, compile_step))
    return {**tree, "method": method, "trainer": trainer}


def build_config(tree: dict | None = None, overrides: typing.Sequence[str] = ()) -> Config:
    """Validate a raw config tree (from YAML) plus ``--set`` overrides into a :class:`Config`."""
    tree = copy.deepcopy(tree or {})  # the overrides write into nested sections: never into the caller's tree
    for text in overrides:
        path, value = parse_override(text)
        apply_override(tree, path, value)
    _refuse_moved_keys(tree)
    method_tree = tree.pop("method", None) or {}
    if not isinstance(method_tree, dict):
        raise ConfigError("method: expected a mapping with at least 'name'")
    config = from_dict(Config, tree)
    from peerkd.core.plugins import import_digests, load_imports

    config.imports = load_imports(config.imports)  # the user's code registers its method before it is looked up
    config.import_digests = import_digests(config.imports)  # what was loaded, not what a tree claimed
    method_tree = dict(method_tree)
    name = _convert(method_tree.pop("name", "vanilla"), str, "method.name")
    options_cls = METHODS.get(name).Options
    config.method = MethodConfig(name=name, options=from_dict(options_cls, method_tree, prefix="method."))
    _check_values(config)
    check_method_options(config.method.options)
    return config


MAX_SEED = 2**63 - 1  # the largest seed torch.manual_seed and torch.Generator take (a signed 64-bit integer)
DEVICE_FORM = re.compile(r"auto|cpu|mps|cuda(:\d+)?")  # the device strings trainer.device accepts



def build_saved_config(tree: dict, overrides: typing.Sequence[str] = (), source: str | Path = "the run",
                       trust_imports: bool = False) -> Config:
    """:func:`build_config` for a config a run folder saved (its checkpoint's or ``config.yaml``): the code it names
    (``imports``) runs only if already loaded in this process or trusted
    (:func:`peerkd.core.plugins.check_recorded_imports`); moved keys of an older peerkd are read under their new
    names."""
    from peerkd.core.plugins import check_recorded_imports

    tree = upgrade_saved_config(tree if isinstance(tree, dict) else {})
    check_recorded_imports(tree.get("imports"), tree.get("import_digests"), source, trust_imports)
    return build_config(tree, overrides)

def _check_values(config: Config) -> None:
    if not DEVICE_FORM.fullmatch(config.trainer.device):
        raise ConfigError(f"trainer.device: '{config.trainer.device}' is not a device peerkd can train on; use auto, "
                          "cpu, cuda, cuda:N (N: the GPU's index) or mps")
    if config.data.mixing_alpha <= 0:
        raise ConfigError(f"data.mixing_alpha: must be positive, got {config.data.mixing_alpha}")
    if not 0.0 <= config.data.mixing_prob <= 1.0:
        raise ConfigError(f"data.mixing_prob: must lie in [0, 1], got {config.data.mixing_prob}")
    if not 0.0 <= config.data.synthetic.label_noise <= 1.0:
        raise ConfigError(f"data.synthetic.label_noise: a fraction of the training labels, in [0, 1], got "
                          f"{config.data.synthetic.label_noise}")
    data, synthetic = config.data, config.data.synthetic
    positive = {"data.batch_size": data.batch_size, "data.eval_batch_size": data.eval_batch_size,
                "schedule.epochs": config.schedule.epochs, "trainer.eval_every": config.trainer.eval_every,
                "trainer.log_every": config.trainer.log_every, "optim.lr": config.optim.lr,
                "trainer.ece_bins": config.trainer.ece_bins,
                "schedule.gamma": config.schedule.gamma, "data.synthetic.num_classes": synthetic.num_classes,
                "data.synthetic.train_size": synthetic.train_size, "data.synthetic.test_size": synthetic.test_size}
    if data.train_subset is not None:
        positive["data.train_subset"] = data.train_subset
    if data.test_subset is not None:
        positive["data.test_subset"] = data.test_subset
    for key, value in positive.items():
        if value <= 0:
            raise ConfigError(f"{key}: must be positive, got {value}")
    not_negative = {"seed": config.seed, "optim.momentum": config.optim.momentum,
                    "optim.weight_decay": config.optim.weight_decay, "data.crop_padding": data.crop_padding,
                    "data.heldout_per_class": data.heldout_per_class, "data.image_size": data.image_size,
                    "data.resize": data.resize, "data.workers": data.workers,
                    "data.synthetic.seed": synthetic.seed, "data.synthetic.noise": synthetic.noise,
                    "data.synthetic.distractor": synthetic.distractor,
                    "schedule.warmup_epochs": config.schedule.warmup_epochs, "trainer.threads": config.trainer.threads}
    for key, value in not_negative.items():
        if value < 0:
            hint = " (0 keeps torch's default)" if key == "trainer.threads" else ""
            raise ConfigError(f"{key}: must not be negative, got {value}{hint}")
    for key, value in {"seed": config.seed, "data.synthetic.seed": synthetic.seed}.items():
        if value > MAX_SEED:
            raise ConfigError(f"{key}: at most {MAX_SEED} (torch's generators take 64-bit seeds), got {value}")
    if config.optim.momentum >= 1:
        raise ConfigError(f"optim.momentum: must be below 1 (the velocity would never decay), got "
                          f"{config.optim.momentum}")
    if config.optim.nesterov and config.optim.momentum == 0:
        raise ConfigError("optim.nesterov: Nesterov momentum needs optim.momentum > 0; set optim.nesterov=false "
                          "for plain SGD")
    for i, milestone in enumerate(config.schedule.milestones):
        if milestone < 0:
            raise ConfigError(f"schedule.milestones[{i}]: must not be negative, got {milestone}")
    _check_loggers(config.trainer)
    if config.paper is not None:
        check_paper_block(config.paper)
    if config.data.dataset not in DATASETS:
        raise DATASETS.unknown(config.data.dataset)


def _check_loggers(trainer: TrainerConfig) -> None:
    """trainer.loggers: each name once, jsonl among them (the metrics log is the run's own record: peerkd plot and a
    resume read it); trainer.tracker_project not empty."""
    from peerkd.core.run_files import METRICS_LOG

    if "jsonl" not in trainer.loggers:
        raise ConfigError(f"trainer.loggers: {trainer.loggers} lacks jsonl; {METRICS_LOG} is the run's own record "
                          "(peerkd plot and --resume read it): keep jsonl and add the trackers you want")
    twice = sorted({name for name in trainer.loggers if trainer.loggers.count(name) > 1})
    if twice:
        raise ConfigError(f"trainer.loggers: {', '.join(twice)} named twice; name each logger once")
    if not trainer.tracker_project.strip():
        raise ConfigError("trainer.tracker_project: must not be empty (the tracker's project / experiment name)")


def check_method_options(options) -> None:
    """Ranges shared by every method's ``Options``, by naming convention: a field named ``temperature`` or ending in
    ``_temperature`` divides logits or features and must be positive (T = 0 gives inf / NaN, T < 0 inverts the
    softmax)."""
    if options is None or not dataclasses.is_dataclass(options):
        return
    for f in dataclasses.fields(options):
        value = getattr(options, f.name)
        if (f.name == "temperature" or f.name.endswith("_temperature")) and isinstance(value, (int, float)) \
                and not value > 0:
            raise ConfigError(f"method.{f.name}: a softmax temperature must be positive, got {value}")


def check_paper_block(paper: PaperConfig) -> None:
    """The ranges and completeness of a ``paper:`` block (its cells' metrics are choices of the schema): ConfigError
    naming the key. Which paper ids exist is the project's rule, not the library's: any non-empty id is taken."""
    if not paper.id.strip():
        raise ConfigError("paper.id: name the paper this config reproduces (a non-empty id), or "
                          f"'{FOUNDATION_PAPER}' for a config of no paper table")
    if paper.id == FOUNDATION_PAPER and not paper.cells:
        return  # a config that reproduces no paper's cell, and says so
    if not paper.table:
        raise ConfigError("paper.table: name the table (or figure) this config reproduces, e.g. table: '1'")
    if paper.mean_of < 0 or paper.median_of < 0 or (paper.mean_of and paper.median_of):
        raise ConfigError("paper: give mean_of: N or median_of: N (not both, not negative) as the paper reports")
    if not paper.cells:
        raise ConfigError("paper.cells: list at least one cell (row, column, metric, value, predict)")
    for i, cell in enumerate(paper.cells):
        if cell.value is None:
            raise ConfigError(f"paper.cells[{i}].value: the paper's number is missing")
        if not cell.row:
            raise ConfigError(f"paper.cells[{i}].row: give the table row's label")
        if cell.std is not None and cell.std < 0:
            raise ConfigError(f"paper.cells[{i}].std: must not be negative, got {cell.std}")
        if not all(cell.predict_keys()):
            raise ConfigError(f"paper.cells[{i}].predict: give a predict() key, or mean:key1,key2 for a mean over "
                              f"keys, got '{cell.predict}'")


def load_config(path: str | Path | None = None, overrides: typing.Sequence[str] = ()) -> Config:
    """Read a YAML file (or nothing: all defaults) and apply overrides."""
    tree = load_yaml(path) if path else {}
    return build_config(tree, overrides)
