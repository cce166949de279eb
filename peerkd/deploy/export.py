"""``peerkd export``: one ``predict`` key of a trained run as a file that runs without peerkd, and a JSON beside it.

``export_run(run_dir, key, fmt, out, normalize=False)`` rebuilds the run (:func:`peerkd.training.checkpoint.load_run`,
on the CPU, in eval mode), picks the module for ``key`` and writes it in one of four formats:

- ``state_dict``: the weights of one network. A network that mirrors a library model (``native_spec()``: the tv_*
  networks, ``tv:`` / ``timm:`` models) is written in that library's key layout (``native_state_dict()``), so it
  loads into ``torchvision.models.resnet18(num_classes=K)`` or ``timm.create_model(name, num_classes=K)`` with no
  peerkd; peerkd's own networks are written with their own keys, and the JSON gives the one-line constructor
  (``peerkd.build_model(...)``) that rebuilds them. An aggregate of several networks has no such constructor: it is
  refused here (export it in a graph format).
- ``torchscript``: ``torch.jit.trace`` of the module on a batch of the run's input size, saved with ``torch.jit.save``
  (loads with ``torch.jit.load``). Tracing, not scripting: peerkd's networks are plain feed-forward graphs, and
  tracing records them without the type annotations ``torch.jit.script`` would need; the price is that any Python
  control flow is frozen to the path the example batch took (none of peerkd's networks branch on the data) and the
  input's height and width are the traced ones. The batch size stays free. torch 2.10+ marks TorchScript deprecated
  in favour of torch.export: prefer ``exported_program`` where the consumer allows.
- ``exported_program``: ``torch.export.export`` with a free batch dimension, saved with ``torch.export.save``
  (loads with ``torch.export.load(path).module()``).
- ``onnx``: torch's exporter (``torch.onnx.export(..., dynamo=True)``; extra ``peerkd[onnx]``: onnx, onnxscript,
  onnxruntime), input ``input`` with a free batch dimension, output ``logits``.

The module for ``key``: what the method's ``export(key)`` returns when it is the network ``predict`` scored under
that key (the same logits on a check batch); otherwise, and for aggregates (``ensemble``, ONE's and OKDDip's leader
aggregates, CSS's networks when a method does not export them itself), :class:`PredictKey`, whose output is
``method.predict(x)[key]`` itself. Either way the export computes what the run was evaluated on.

Input normalisation: the run's images were fed as ``(pixel / 255 - mean) / std`` per RGB channel, with the run's
``mean`` and ``std`` (the JSON holds them). By default the export expects that normalised input, like the trained
network; with ``normalize=True`` (``--normalize``) the normalisation is built into the exported module
(:class:`Normalized`), which then takes ``pixel / 255`` (float RGB NCHW in [0, 1]). The JSON says which
(``input.normalization.built_in``).

Every export is checked before it is reported: the written file is read back (with torch, torch.export or
onnxruntime) and run on a check batch, and its largest difference from the in-process module is recorded in the JSON
(``check.max_abs_diff``).
"""
from __future__ import annotations

import copy
import json
import warnings
from pathlib import Path

import torch
from torch import nn

from peerkd.core.errors import ConfigError
from peerkd.core.run_files import CHECKPOINT, ENVIRONMENT_FILE, EXPORT_DIR

FORMATS = ("state_dict", "torchscript", "onnx", "exported_program")
SUFFIXES = {"state_dict": ".pt", "torchscript": ".torchscript.pt", "onnx": ".onnx", "exported_program": ".pt2"}
CHECK_BATCH = 4  # images in the batch that traces, exports and checks the module
CHECK_SEED = 0  # the check batch's generator seed: the same batch on every export
MATCH_TOLERANCE = 1e-4  # largest |difference| (relative to the logits' scale, at least 1) for "the same logits"


class PredictKey(nn.Module):
    """One ``predict`` key of a method as a module: ``forward(x) = method.predict(x)[key]`` (a copy of the method)."""

    def __init__(self, method: nn.Module, key: str):
        super().__init__()
        self.method = method
        self.key = key

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.method.predict(x)[self.key]


class Normalized(nn.Module):
    """``model((x - mean) / std)``: takes ``pixel / 255`` (float RGB NCHW in [0, 1]) and normalises it as the run's
    data pipeline did."""

    def __init__(self, model: nn.Module, mean, std):
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model((x - self.mean) / self.std)


# ------------------------------------------------------------------------------------------------ choosing a module

def _close(a: torch.Tensor, b: torch.Tensor) -> tuple[bool, float]:
    diff = float((a.float() - b.float()).abs().max())
    return diff <= MATCH_TOLERANCE * max(1.0, float(b.abs().max())), diff


def module_for_key(method: nn.Module, key: str, sample: torch.Tensor) -> tuple[nn.Module, bool]:
    """The module that computes ``method.predict(x)[key]`` and whether it is the method's own plain export (one
    network) rather than a :class:`PredictKey` copy of the method."""
    with torch.no_grad():
        predictions = method.predict(sample)
        if key not in predictions:
            raise ConfigError(f"--key: '{key}' is not a predict key of this run; choose one of: "
                              f"{', '.join(predictions)}")
        try:
            plain = method.export(key)
        except (KeyError, NotImplementedError):
            plain = None
        if plain is not None:
            plain = plain.cpu().eval()
            if _close(plain(sample), predictions[key])[0]:
                return plain, True
    return PredictKey(copy.deepcopy(method).cpu().eval(), key).eval(), False


# ------------------------------------------------------------------------------------------------ writing formats

def missing_modules(*modules: str) -> list[str]:
    """The names among ``modules`` that do not import here (an optional extra not installed)."""
    missing = []
    for module in modules:
        try:
            __import__(module)
        except ImportError:
            missing.append(module)
    return missing


def _require(fmt: str) -> None:
    if fmt not in FORMATS:
        raise ConfigError(f"--format: '{fmt}' is not one of {', '.join(FORMATS)}")
    if fmt != "onnx":
        return
    missing = missing_modules("onnx", "onnxscript", "onnxruntime")
    if missing:
        raise ConfigError(f"--format onnx needs {', '.join(missing)}: pip install 'peerkd[onnx]'")


def _constructor(module: nn.Module, key: str):
    """The state dict to write, the one-line constructor that rebuilds the network it fits, and that constructor as
    a function (to check the written file)."""
    if hasattr(module, "native_spec"):
        spec = module.native_spec()
        kwargs = ", ".join(f"{k}={v!r}" for k, v in spec["kwargs"].items())
        if spec["library"] == "timm":
            line = f"timm.create_model({spec['name']!r}, pretrained=False{', ' + kwargs if kwargs else ''})"
            rebuild = lambda: __import__("timm").create_model(spec["name"], pretrained=False,  # noqa: E731
                                                              **spec["kwargs"])
        else:
            import torchvision

            line = f"torchvision.models.{spec['name']}({kwargs})"
            rebuild = lambda: getattr(torchvision.models, spec["name"])(**spec["kwargs"])  # noqa: E731
        return module.native_state_dict(), line, rebuild
    spec = getattr(module, "peerkd_spec", None)
    if spec is None:
        raise ConfigError(f"--format state_dict: '{key}' is not one registered network but a composite (an "
                          "aggregate, or a path with a mask), which no one-line constructor rebuilds; export it as "
                          "torchscript, onnx or exported_program")
    from peerkd.models import build_model

    kwargs = "".join(f", {k}={v!r}" for k, v in spec["kwargs"].items())
    line = f"peerkd.build_model({spec['name']!r}, num_classes={spec['num_classes']}{kwargs})"
    return module.state_dict(), line, lambda: build_model(spec["name"], spec["num_classes"], **spec["kwargs"])


def _write(module: nn.Module, fmt: str, out: Path, sample: torch.Tensor, state: dict | None) -> None:
    """Write ``module`` (for a state dict: ``state``, its weights in the layout its constructor expects) to ``out``."""
    if fmt == "state_dict":
        torch.save({name: value.detach().clone().contiguous() for name, value in state.items()}, out)
        return
    batch = torch.export.Dim("batch", min=1)
    if fmt == "torchscript":
        with torch.no_grad(), warnings.catch_warnings():  # TorchScript's deprecation notice in torch >= 2.10
            warnings.simplefilter("ignore", FutureWarning)
            traced = torch.jit.trace(module, sample, check_trace=False)
            torch.jit.save(traced, str(out))
    elif fmt == "exported_program":
        program = torch.export.export(module, (sample,), dynamic_shapes=({0: batch},))
        torch.export.save(program, str(out))
    else:
        torch.onnx.export(module, (sample,), str(out), dynamo=True, input_names=["input"], output_names=["logits"],
                          dynamic_shapes=({0: batch},), verbose=False)


def _read_back(fmt: str, out: Path, rebuild, x: torch.Tensor) -> torch.Tensor:
    """The written file, loaded as a deployer would (no peerkd class for the graph formats; for a state dict the
    network its constructor line builds), run on ``x``."""
    with torch.no_grad():
        if fmt == "torchscript":
            with warnings.catch_warnings():  # torch >= 2.10 marks TorchScript deprecated in favour of torch.export
                warnings.simplefilter("ignore", FutureWarning)
                return torch.jit.load(str(out))(x)
        if fmt == "exported_program":
            return torch.export.load(str(out)).module()(x)
        if fmt == "onnx":
            import onnxruntime

            session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
            return torch.from_numpy(session.run(None, {"input": x.numpy()})[0])
        model = rebuild()
        model.load_state_dict(torch.load(out, weights_only=True))
        return model.eval()(x)


# ------------------------------------------------------------------------------------------------ the run's facts

def _normalisation(run) -> tuple[list[float], list[float], int]:
    """The run's mean, std and image size: as recorded in its checkpoint, or (a run saved before they were
    recorded) from its dataset."""
    if run.input:
        return list(run.input["mean"]), list(run.input["std"]), int(run.input["image_size"])
    from peerkd.data.datasets import load_dataset
    from peerkd.data.pipeline import normalization

    data = load_dataset(run.config.data)
    mean, std = normalization(run.config.data, data.mean, data.std)
    return [float(m) for m in mean], [float(s) for s in std], int(run.method.task.image_size)


def _run_facts(run, key: str) -> dict:
    environment_path = run.path / ENVIRONMENT_FILE
    environment = json.loads(environment_path.read_text()) if environment_path.is_file() else {}
    entry = (run.summary or {}).get("keys", {}).get(key) or {}
    best = entry.get("best") or {}
    return {"path": str(run.path.resolve()), "name": run.config.name, "method": run.config.method.name,
            "epochs": run.epoch, "commit": environment.get("git_sha"), "commit_dirty": environment.get("git_dirty"),
            "top1_last": (entry.get("last") or {}).get("top1"), "top1_best": best.get("top1"),
            "best_epoch": None if best.get("epoch") is None else best["epoch"] + 1,
            "imports": list(run.config.imports)}


def load_for_export(run_dir, key: str | None, trust_imports: bool) -> tuple:
    """The run in ``run_dir`` on the CPU in eval mode, ``key`` (None: the first key the method predicts, a cohort's
    peer0, ...) and the seeded check batch of the run's input size; RunError for a folder that is not a run."""
    from peerkd.training.checkpoint import load_run
    from peerkd.core.errors import RunError

    if not (Path(run_dir) / CHECKPOINT).is_file():
        raise RunError(f"'{run_dir}' is not a run folder (no {CHECKPOINT}); give a folder `peerkd train` wrote")
    run = load_run(run_dir, device="cpu", trust_imports=trust_imports)
    _mean, _std, size = _normalisation(run)
    channels = run.method.task.in_channels
    sample = torch.randn(CHECK_BATCH, channels, size, size, generator=torch.Generator().manual_seed(CHECK_SEED))
    if key is None:
        with torch.no_grad():
            key = next(iter(run.method.predict(sample)))
    return run, key, sample


def default_out(run_dir: Path, key: str, fmt: str) -> Path:
    return Path(run_dir) / EXPORT_DIR / f"{key}{SUFFIXES[fmt]}"


def export_run(run_dir: str | Path, key: str | None = None, fmt: str = "exported_program",
               out: str | Path | None = None, normalize: bool = False, trust_imports: bool = False) -> dict:
    """Export ``key`` of the run in ``run_dir`` as ``fmt`` to ``out`` (default ``<run>/export/<key><suffix>``), with
    the input normalisation built in when ``normalize``; write ``<out>.json`` and return what it holds. A run naming
    user code not loaded in this process is refused unless ``trust_imports`` (:func:`peerkd.load_run`)."""
    from peerkd.training.checkpoint import write_json

    _require(fmt)
    if normalize and fmt == "state_dict":
        raise ConfigError("--normalize: a state_dict holds a network's weights only; build the normalisation in with "
                          "--format torchscript, onnx or exported_program, or apply the JSON's mean/std yourself")
    if fmt == "exported_program" and out is not None and not str(out).endswith(".pt2"):
        raise ConfigError(f"--out: torch.export.save writes a .pt2 archive (torch.export.load reads only those); name "
                          f"the file ending in .pt2, not '{out}'")
    run, key, sample = load_for_export(run_dir, key, trust_imports)
    mean, std, size = _normalisation(run)
    channels = run.method.task.in_channels
    module, plain = module_for_key(run.method, key, sample)
    state, line, rebuild = _constructor(module, key) if fmt == "state_dict" else (None, None, None)
    with torch.no_grad():
        num_classes = int(module(sample).shape[-1])
    if normalize:
        module = Normalized(module, mean, std).eval()
        sample = sample * torch.tensor(std).view(1, -1, 1, 1) + torch.tensor(mean).view(1, -1, 1, 1)  # pixel / 255
    out = Path(out) if out else default_out(run.path, key, fmt)
    out.parent.mkdir(parents=True, exist_ok=True)
    _write(module, fmt, out, sample, state)
    check = sample[:CHECK_BATCH - 1]  # another batch size than the traced one: the batch dimension is free
    with torch.no_grad():
        expected = module(check)
    matches, diff = _close(_read_back(fmt, out, rebuild, check), expected)
    if not matches:
        raise RuntimeError(f"the exported {fmt} file {out} does not reproduce the model (max |diff| {diff:.3g})")
    info = {
        "file": out.name, "format": fmt, "key": key,
        "module": f"the method's export({key!r})" if plain else f"the method's predict(x)[{key!r}]",
        "load": _load_line(fmt, out.name, line),
        "constructor": line,
        "input": {"shape": ["batch", channels, size, size], "dtype": "float32", "layout": "NCHW, RGB",
                  "normalization": {"mean": mean, "std": std, "built_in": normalize,
                                    "feed": "pixel / 255 (floats in [0, 1])" if normalize
                                    else "(pixel / 255 - mean) / std"}},
        "output": {"shape": ["batch", num_classes], "meaning": "class scores (logits, or log-probabilities for an "
                   "aggregate of probabilities): argmax is the predicted class"},
        "num_classes": num_classes,
        "run": _run_facts(run, key),
        "check": {"batch": CHECK_BATCH - 1, "max_abs_diff": diff, "tolerance": MATCH_TOLERANCE},
        "torch": torch.__version__,
    }
    write_json(Path(f"{out}.json"), info)
    return info


def _load_line(fmt: str, name: str, constructor: str | None) -> str:
    if fmt == "torchscript":
        return f"model = torch.jit.load({name!r})"
    if fmt == "exported_program":
        return f"model = torch.export.load({name!r}).module()"
    if fmt == "onnx":
        return f"session = onnxruntime.InferenceSession({name!r}); session.run(None, {{'input': x}})"
    return f"model = {constructor}; model.load_state_dict(torch.load({name!r}, weights_only=True))"


__all__ = ["FORMATS", "Normalized", "PredictKey", "default_out", "export_run", "module_for_key"]
