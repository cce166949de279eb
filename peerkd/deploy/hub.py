"""``peerkd export --format hf`` and ``peerkd push``: one network of a run as a Hugging Face Hub folder.

The folder (:func:`export_hf`) holds

- ``model.safetensors``: the network's weights (safetensors, never pickle);
- ``config.json``: the architecture and its arguments, the number of classes, the input size and the normalisation
  the run trained with, and a ``peerkd`` block (the run, the predict key, the commit, the load line);
- ``README.md``: a model card generated from the run: method and paper, the training config, last and best metrics
  (best is chosen on the test set), the ``paper:`` cells it reproduces with the difference, commit and command.

Who loads it:

- a ``timm:<name>`` network: the folder is written by timm's own ``save_for_hf`` (timm's config layout, the run's
  mean / std / input size in its ``pretrained_cfg``), so ``timm.create_model("local-dir:DIR", pretrained=True)`` (or
  ``"hf-hub:USER/NAME"`` once pushed) rebuilds it with no peerkd;
- a ``tv:<name>`` / ``tv_*`` network: ``torchvision.models.get_model(architecture, **model_args)`` and
  ``load_state_dict(safetensors.torch.load_file("model.safetensors"))`` (the weights carry torchvision's own keys);
- peerkd's own networks: :func:`from_pretrained` (``peerkd.from_pretrained(DIR)``), which also reads the two
  library layouts above.

Only one plain network is written: an aggregate (``ensemble``, a leader's mix of branches) has no architecture a
loader could rebuild, and is refused with a pointer to ``--format onnx``. Every folder is read back with its loader
before it is reported, and its largest difference from the run's ``predict()`` recorded (``peerkd.check``).

:func:`push` writes the folder and uploads it with ``huggingface_hub`` (``HfApi.create_repo`` + ``upload_folder``).
"""
from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import torch
from torch import nn

from peerkd.core.errors import ConfigError, RunError
from peerkd.core.registry import METHODS
from peerkd.core.run_files import CONFIG_FILE, ENVIRONMENT_FILE, EXPORT_DIR
from peerkd.deploy.export import (CHECK_BATCH, _close, _normalisation, _run_facts, load_for_export, missing_modules,
                                  module_for_key)

WEIGHTS_FILE = "model.safetensors"  # the name timm, transformers and the Hub look for
CONFIG_JSON = "config.json"
CARD_FILE = "README.md"  # the Hub shows a repository's README.md as its model card
HUB_EXTRA = "pip install 'peerkd[hub]'"
BEST_NOTE = ("best: the epoch with the highest test top-1, a choice made on the test set (an optimistic number); "
             "last: the final epoch, the number to compare")


def _need(*modules: str) -> None:
    missing = missing_modules(*modules)
    if missing:
        raise ConfigError(f"the Hugging Face Hub format needs {', '.join(missing)}: {HUB_EXTRA}")


# ------------------------------------------------------------------------------------------------ loading

def _peerkd_block(folder: Path) -> dict:
    path = folder / CONFIG_JSON
    if not path.is_file():
        raise RunError(f"'{folder}' holds no {CONFIG_JSON}; give a folder `peerkd export --format hf` wrote")
    return json.loads(path.read_text())


def _resolve(path_or_repo: str | Path) -> Path:
    """A local folder as is; ``USER/NAME`` that is no folder here: the Hub repository, downloaded by
    ``huggingface_hub.snapshot_download`` (cached)."""
    folder = Path(path_or_repo)
    if folder.is_dir():
        return folder
    name = str(path_or_repo)
    if name.count("/") != 1 or name.startswith((".", "/")):
        raise RunError(f"'{name}' is neither a folder nor a Hub repository id USER/NAME")
    _need("huggingface_hub")
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(repo_id=name))


def from_pretrained(path_or_repo: str | Path) -> nn.Module:
    """The network in a folder ``peerkd export --format hf`` wrote (or a Hub repository ``USER/NAME`` holding one),
    in eval mode, on the CPU, with ``pretrained_cfg`` (input size, mean, std) attached. Its input is
    ``(pixel / 255 - mean) / std``, NCHW RGB."""
    _need("safetensors")
    from safetensors.torch import load_file

    folder = _resolve(path_or_repo)
    config = _peerkd_block(folder)
    library = config.get("peerkd", {}).get("library")
    if library == "timm":
        _need("timm")
        import timm

        model = timm.create_model(f"local-dir:{folder}", pretrained=True)
    elif library in ("torchvision", "peerkd"):
        if library == "torchvision":
            import torchvision

            model = torchvision.models.get_model(config["architecture"], **config["model_args"])
        else:
            from peerkd.models import build_model

            model = build_model(config["architecture"], config["num_classes"], **config["model_args"])
        model.load_state_dict(load_file(str(folder / WEIGHTS_FILE)))
        model.pretrained_cfg = {key: config[key] for key in ("input_size", "mean", "std", "num_classes")}
    else:
        raise RunError(f"'{folder}/{CONFIG_JSON}' names no library peerkd can load (peerkd.library: {library!r})")
    return model.eval()


# ------------------------------------------------------------------------------------------------ writing

def _write_timm(module: nn.Module, out: Path, data: dict) -> dict:
    import timm
    from timm.models import save_for_hf

    spec = module.native_spec()
    native = timm.create_model(spec["name"], pretrained=False, **spec["kwargs"])
    native.load_state_dict(module.native_state_dict())
    save_for_hf(native.eval(), str(out), model_args=dict(spec["kwargs"]), safe_serialization=True,
                data_config={"input_size": tuple(data["input_size"]), "mean": tuple(data["mean"]),
                             "std": tuple(data["std"]), "crop_pct": 1.0, "interpolation": "bilinear"})
    config = json.loads((out / CONFIG_JSON).read_text())
    config.update({key: data[key] for key in ("input_size", "mean", "std")})  # also at the top, as the others have
    return config


def _write_state(state: dict, out: Path) -> None:
    from safetensors.torch import save_file

    save_file({name: value.detach().clone().contiguous() for name, value in state.items()}, str(out / WEIGHTS_FILE),
              metadata={"format": "pt"})


def _library_and_config(module: nn.Module, key: str, out: Path, data: dict) -> tuple[str, dict]:
    """Write the weights (and, for timm, timm's config) of ``module``; return its library and config.json."""
    if hasattr(module, "native_spec"):
        spec = module.native_spec()
        if spec["library"] == "timm":
            _need("timm")
            return "timm", _write_timm(module, out, data)
        _write_state(module.native_state_dict(), out)
        return "torchvision", {"architecture": spec["name"], "model_args": dict(spec["kwargs"]), **data}
    spec = getattr(module, "peerkd_spec", None)
    if spec is None:
        raise ConfigError(f"--format hf: '{key}' is not one network but an aggregate (an ensemble, a leader's mix, "
                          "a masked path), which no model constructor rebuilds; export one peer / branch, or this key "
                          "with --format onnx or exported_program")
    _write_state(module.state_dict(), out)
    return "peerkd", {"architecture": spec["name"], "model_args": dict(spec["kwargs"]), **data}


LOAD_LINES = {  # {source}: the folder, or the Hub repository once pushed
    "timm": "import timm\nmodel = timm.create_model('{timm_source}', pretrained=True).eval()",
    "torchvision": "import torchvision\nfrom safetensors.torch import load_file\n{fetch}"
                   "model = torchvision.models.get_model({arch!r}{args})\n"
                   "model.load_state_dict(load_file({weights}))\nmodel.eval()",
    "peerkd": "import peerkd\nmodel = peerkd.from_pretrained('{source}')",
}


def _load_line(library: str, config: dict, folder: str, repo: str | None = None) -> str:
    """The Python lines that load the folder (``repo``: the Hub repository it is pushed to) with its library."""
    args = "".join(f", {k}={v!r}" for k, v in config.get("model_args", {}).items())
    if repo:
        fetch = f"from huggingface_hub import hf_hub_download\nweights = hf_hub_download({repo!r}, {WEIGHTS_FILE!r})\n"
        weights, timm_source = "weights", f"hf-hub:{repo}"
    else:
        fetch, weights, timm_source = "", repr(f"{folder}/{WEIGHTS_FILE}"), f"local-dir:{folder}"
    return LOAD_LINES[library].format(source=repo or folder, timm_source=timm_source, fetch=fetch, weights=weights,
                                      arch=config.get("architecture"), args=args)


def export_hf(run_dir: str | Path, key: str | None = None, out: str | Path | None = None,
              trust_imports: bool = False, repo: str | None = None) -> dict:
    """Write ``key`` of the run in ``run_dir`` (default: its first predict key) as a Hub folder ``out`` (default
    ``<run>/export/<key>-hf``): weights, config.json, model card (its load lines name ``repo``, the Hub repository,
    when given, else the folder). The folder is read back with its library's loader and compared with the run's
    network; returns config.json's ``peerkd`` block."""
    _need("safetensors")
    run, key, sample = load_for_export(run_dir, key, trust_imports)
    mean, std, size = _normalisation(run)
    channels = run.method.task.in_channels
    module, _plain = module_for_key(run.method, key, sample)
    with torch.no_grad():
        expected = run.method.predict(sample)[key]
    num_classes = int(expected.shape[-1])
    out = Path(out) if out else Path(run.path) / EXPORT_DIR / f"{key}-hf"
    if out.exists() and any(out.iterdir()):
        raise RunError(f"--out: '{out}' exists and is not empty; give a new folder (nothing was written)")
    out.mkdir(parents=True, exist_ok=True)
    data = {"num_classes": num_classes, "input_size": [channels, size, size], "mean": mean, "std": std}
    try:
        library, config = _library_and_config(module, key, out, data)
    except Exception:
        shutil.rmtree(out, ignore_errors=True)
        raise
    facts = _run_facts(run, key)
    block = {"library": library, "key": key, "dataset": run.config.data.dataset,
             "input": "float32 NCHW RGB, (pixel / 255 - mean) / std", "run": facts,
             "load": _load_line(library, config, str(out), repo)}
    config["peerkd"] = block
    (out / CONFIG_JSON).write_text(json.dumps(config, indent=2) + "\n")
    with torch.no_grad():
        got = from_pretrained(out)(sample)
    matches, diff = _close(got, expected)
    if not matches:
        shutil.rmtree(out, ignore_errors=True)
        raise RuntimeError(f"the Hub folder for '{key}' does not reproduce the run's predict() (max |diff| {diff:.3g})")
    block["check"] = {"batch": CHECK_BATCH, "max_abs_diff": diff}
    (out / CONFIG_JSON).write_text(json.dumps(config, indent=2) + "\n")
    (out / CARD_FILE).write_text(model_card(run, key, library, config))
    return block


# ------------------------------------------------------------------------------------------------ the model card

def _metric_rows(entry: dict) -> list[str]:
    last, best = entry.get("last") or {}, entry.get("best") or {}
    rows = []
    for name, value in last.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool) and name != "epoch":
            best_value = best.get(name)
            best_text = f"{best_value:.4g}" if isinstance(best_value, (int, float)) else "—"
            rows.append(f"| {name} | {value:.4g} | {best_text} |")
    return rows


def _paper_rows(run, key: str, entry: dict) -> list[str]:
    paper = run.config.paper
    if paper is None:
        return []
    rows = []
    last = entry.get("last") or {}
    for cell in paper.cells:
        if key not in cell.predict_keys():
            continue
        if cell.metric == "error":
            ours = None if last.get("top1") is None else 100.0 - last["top1"]
        else:
            ours = last.get(cell.metric)
        diff = "—" if ours is None or cell.value is None else f"{ours - cell.value:+.2f}"
        ours_text = "—" if ours is None else f"{ours:.2f}"
        paper_text = "—" if cell.value is None else f"{cell.value}" + (f" ± {cell.std}" if cell.std else "")
        rows.append(f"| {paper.id} | {cell.table or paper.table} | {cell.row} | {cell.column} | {cell.metric} | "
                    f"{paper_text} | {ours_text} | {diff} |")
    return rows


def model_card(run, key: str, library: str, config: dict) -> str:
    """The README.md of the Hub folder: front matter the Hub reads, then what the network is and where it came from."""
    method = run.config.method.name
    description = METHODS.descriptions().get(method, "")
    environment_path = Path(run.path) / ENVIRONMENT_FILE
    environment = json.loads(environment_path.read_text()) if environment_path.is_file() else {}
    config_path = Path(run.path) / CONFIG_FILE
    config_text = config_path.read_text() if config_path.is_file() else ""
    entry = (run.summary or {}).get("keys", {}).get(key) or {}
    facts = config["peerkd"]["run"]
    commit = facts.get("commit") or "unknown"
    if facts.get("commit_dirty"):
        commit += " (+ uncommitted changes)"
    command = " ".join(environment.get("argv") or []) or "unknown"
    lines = [
        "---",
        f"library_name: {'timm' if library == 'timm' else 'pytorch'}",
        "tags:", "- image-classification", "- knowledge-distillation", "- online-distillation", "- peerkd",
        f"- {method}",
        "metrics:", "- accuracy",
        "---", "",
        f"# {config.get('architecture', 'network')} — `{key}` of a peerkd `{method}` run",
        "",
        f"Trained from scratch with peerkd (online knowledge distillation), method `{method}`: "
        f"{description}",
        "",
        f"The network is the run's predict key `{key}` on `{run.config.data.dataset}` ({config['num_classes']} "
        f"classes), {facts.get('epochs')} epochs.",
        "",
        "## Load",
        "",
        "```python", config["peerkd"]["load"], "```",
        "",
        f"Input: float32 NCHW RGB of size {config['input_size']}, normalised as `(pixel / 255 - mean) / std` with "
        f"mean {config['mean']} and std {config['std']}. Output: {config['num_classes']} class logits.",
        "",
        "## Results (this run, test set)",
        "",
        "| metric | last epoch | best epoch |", "| --- | --- | --- |",
        *(_metric_rows(entry) or ["| — | — | — |"]),
        "",
        f"{BEST_NOTE}" + (f" (best epoch {facts['best_epoch']})." if facts.get("best_epoch") else "."),
        "",
    ]
    paper_rows = _paper_rows(run, key, entry)
    lines += ["## The paper cell it reproduces", ""]
    if paper_rows:
        lines += ["| paper | table | row | column | metric | paper | ours (last) | difference |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- |", *paper_rows,
                  "", "One run (one seed); the paper's number is a mean or median over several runs where it says so."]
    else:
        lines += ["The run's config names no paper cell for this key (no `paper:` block, or none with this key)."]
    lines += ["", "## Provenance", "",
              f"- commit: {commit}", f"- command: `{command}`",
              f"- peerkd {environment.get('peerkd', '?')}, torch {environment.get('torch', '?')}, "
              f"device {environment.get('device', '?')}, processor {environment.get('processor', 'not recorded')}",
              f"- check: the folder read back with its loader gives the run's predict() to "
              f"{config['peerkd']['check']['max_abs_diff']:.2g} (max |difference| on {CHECK_BATCH} images)",
              "", "## Training config", "", "```yaml", config_text.rstrip(), "```", ""]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ pushing

def push(run_dir: str | Path, repo: str, key: str | None = None, private: bool = False, token: str | None = None,
         trust_imports: bool = False) -> str:
    """Write ``key`` of the run as a Hub folder and upload it to the model repository ``repo`` (``USER/NAME``,
    created when missing); return the URL ``upload_folder`` reports. ``token``: None uses the logged-in one
    (``hf auth login`` or ``HF_TOKEN``)."""
    _need("safetensors", "huggingface_hub")
    if repo.count("/") != 1 or not all(repo.split("/")):
        raise ConfigError(f"--repo: a Hub model repository is USER/NAME, got '{repo}'")
    from huggingface_hub import HfApi

    with tempfile.TemporaryDirectory(prefix="peerkd-hf-") as tmp:
        folder = Path(tmp) / "model"
        block = export_hf(run_dir, key, folder, trust_imports=trust_imports, repo=repo)
        api = HfApi(token=token)
        api.create_repo(repo_id=repo, repo_type="model", private=private, exist_ok=True)
        facts = block["run"]
        message = f"peerkd {facts['method']} {block['key']} from run {facts['name']} (commit {facts['commit']})"
        result = api.upload_folder(folder_path=str(folder), repo_id=repo, repo_type="model", commit_message=message)
    return str(getattr(result, "commit_url", result))


__all__ = ["export_hf", "from_pretrained", "model_card", "push"]
