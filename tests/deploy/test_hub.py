"""peerkd export --format hf / peerkd push / peerkd.from_pretrained: each folder loads with its library's own loader
(timm's local-dir, torchvision's constructor + safetensors, peerkd.from_pretrained) in a fresh process and gives the
run's predict() to 1e-4; the model card says where the numbers come from; push sends that folder (the upload
monkeypatched: it needs a network)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

from pathlib import Path

import numpy as np
import pytest
import torch

from tests.helpers import short_run
from peerkd.cli import main
from peerkd.core.errors import ConfigError
from peerkd.deploy.hub import export_hf, from_pretrained, push
from peerkd.training.checkpoint import load_run

pytest.importorskip("safetensors")
pytest.importorskip("huggingface_hub")
pytest.importorskip("timm")

ROOT = str(Path(__file__).resolve().parents[2])  # this checkout, for the child's `import peerkd`
PAPER = {"id": "test-paper", "table": "1", "cells": [{"row": "vanilla", "metric": "top1", "value": 50.0,
                                                      "predict": "peer0"}]}

# the three loaders as a user would write them, none of them peerkd's for timm and torchvision
CHILD = """
import json, sys
import numpy as np, torch
jobs = json.load(open(sys.argv[1]))
outputs = {}
for name, job in jobs.items():
    x = torch.from_numpy(np.load(job['input']))
    if job['loader'] == 'timm':
        import timm
        model = timm.create_model('local-dir:' + job['folder'], pretrained=True)
    elif job['loader'] == 'torchvision':
        import torchvision
        from safetensors.torch import load_file
        config = json.load(open(job['folder'] + '/config.json'))
        model = torchvision.models.get_model(config['architecture'], **config['model_args'])
        model.load_state_dict(load_file(job['folder'] + '/model.safetensors'))
    else:
        import peerkd
        model = peerkd.from_pretrained(job['folder'])
    with torch.no_grad():
        outputs[name] = model.eval()(x).numpy().tolist()
    outputs[name + ':peerkd_loaded'] = 'peerkd' in sys.modules
json.dump(outputs, open(sys.argv[2], 'w'))
"""


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One-epoch runs on generated data: a ResNet-8 pair (peerkd's network, with a paper block), a torchvision
    ResNet-18 (tv:resnet18) and timm's test_resnet."""
    root = tmp_path_factory.mktemp("hubruns")
    small = dict(epochs=1, train_size=64, overrides=("data.synthetic.test_size=64", "data.eval_batch_size=64"))
    short_run({"name": "vanilla", "models": ["resnet8", "resnet8"]}, root / "peerkd", paper=PAPER, **small)
    short_run({"name": "vanilla", "models": ["tv:resnet18"]}, root / "tv", **small)
    short_run({"name": "vanilla", "models": ["timm:test_resnet"]}, root / "timm", **small)
    return root


@pytest.mark.slow
def test_hf_folders_load_with_their_library_in_a_fresh_process_and_equal_predict(runs, tmp_path):
    gen = torch.Generator().manual_seed(5)
    jobs, expected = {}, {}
    for run, key, loader in (("tv", "peer0", "torchvision"), ("timm", "peer0", "timm"),
                             ("peerkd", "peer1", "peerkd")):  # peerkd's last: the others load before it is imported
        folder = tmp_path / f"{run}-hf"
        block = export_hf(runs / run, key, folder)
        assert block["library"] == loader and block["key"] == key
        assert sorted(p.name for p in folder.iterdir()) == ["README.md", "config.json", "model.safetensors"]
        assert not list(folder.glob("*.bin")) and not list(folder.glob("*.pt"))  # no pickle beside the safetensors
        config = json.loads((folder / "config.json").read_text())
        assert config["num_classes"] == 4 and config["input_size"] == [3, 32, 32]
        assert len(config["mean"]) == len(config["std"]) == 3
        x = torch.randn(3, 3, 32, 32, generator=gen)
        np.save(tmp_path / f"{run}.npy", x.numpy())
        with torch.no_grad():
            expected[run] = load_run(runs / run).method.predict(x)[key]
        jobs[run] = {"loader": loader, "folder": str(folder), "input": str(tmp_path / f"{run}.npy")}
    (tmp_path / "jobs.json").write_text(json.dumps(jobs))
    (tmp_path / "child.py").write_text(CHILD)
    child = subprocess.run([sys.executable, str(tmp_path / "child.py"), str(tmp_path / "jobs.json"),
                            str(tmp_path / "out.json")], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                           env=dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT))
    assert child.returncode == 0, child.stderr[-2000:]
    outputs = json.loads((tmp_path / "out.json").read_text())
    for run in jobs:
        got = torch.tensor(outputs[run])
        assert got.shape == expected[run].shape
        assert float((got - expected[run]).abs().max()) <= 1e-4 * max(1.0, float(expected[run].abs().max())), run
    assert not outputs["timm:peerkd_loaded"] and not outputs["tv:peerkd_loaded"]  # the libraries' loaders alone
    # peerkd.from_pretrained reads the library layouts too, with the normalisation attached
    model = from_pretrained(tmp_path / "tv-hf")
    assert model.pretrained_cfg["input_size"] == [3, 32, 32]


def test_model_card_names_method_metrics_paper_cell_commit_and_config(runs, tmp_path):
    block = export_hf(runs / "peerkd", "peer0", tmp_path / "card")
    card = (tmp_path / "card" / "README.md").read_text()
    summary = json.loads((runs / "peerkd" / "summary.json").read_text())
    environment = json.loads((runs / "peerkd" / "environment.json").read_text())
    last = summary["keys"]["peer0"]["last"]["top1"]
    assert card.startswith("---\nlibrary_name: pytorch\n")
    assert "Independent networks on hard labels" in card  # the method's description
    assert f"| top1 | {last:.4g} |" in card
    assert "a choice made on the test set" in card
    assert f"| test-paper | 1 | vanilla |  | top1 | 50.0 | {last:.2f} | {last - 50.0:+.2f} |" in card
    assert environment["git_sha"] and environment["git_sha"] in card
    assert environment["processor"] in card
    assert "method:\n  name: vanilla" in card or "name: vanilla" in card  # the training config, as the run saved it
    assert block["check"]["max_abs_diff"] <= 1e-4


def test_aggregate_and_non_empty_folder_are_refused_before_writing(runs, tmp_path, capsys):
    with pytest.raises(ConfigError, match="aggregate"):
        export_hf(runs / "peerkd", "ensemble", tmp_path / "ens")
    assert not (tmp_path / "ens").exists()
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    assert main(["export", str(runs / "peerkd"), "--key", "peer0", "--format", "hf", "--out",
                 str(tmp_path / "full")]) == 2
    assert "not empty" in capsys.readouterr().err
    assert [p.name for p in (tmp_path / "full").iterdir()] == ["keep.txt"]


def test_cli_export_hf_prints_the_load_line(runs, tmp_path, capsys):
    out = tmp_path / "cli-hf"
    assert main(["export", str(runs / "tv"), "--format", "hf", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "torchvision.models.get_model('resnet18'" in printed and (out / "model.safetensors").is_file()


def test_push_creates_the_repo_and_uploads_the_exported_folder(runs, monkeypatch):
    from huggingface_hub import HfApi

    calls = {}

    def create_repo(self, repo_id, **kwargs):
        calls["create"] = (repo_id, kwargs)

    def upload_folder(self, folder_path, repo_id, **kwargs):
        files = {p.name: p.read_bytes() for p in __import__("pathlib").Path(folder_path).iterdir()}
        calls["upload"] = (repo_id, kwargs, files)

        class Info:
            commit_url = f"https://huggingface.co/{repo_id}/commit/abc"
        return Info()

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    url = push(runs / "timm", "someone/peerkd-test", "peer0", private=True)
    assert url == "https://huggingface.co/someone/peerkd-test/commit/abc"
    assert calls["create"] == ("someone/peerkd-test", {"repo_type": "model", "private": True, "exist_ok": True})
    repo_id, kwargs, files = calls["upload"]
    assert repo_id == "someone/peerkd-test" and kwargs["repo_type"] == "model"
    assert "peerkd vanilla peer0" in kwargs["commit_message"]
    assert set(files) == {"README.md", "config.json", "model.safetensors"}
    assert json.loads(files["config.json"])["architecture"] == "test_resnet"
    assert b"library_name: timm" in files["README.md"]
    assert b"timm.create_model('hf-hub:someone/peerkd-test', pretrained=True)" in files["README.md"]
    with pytest.raises(ConfigError, match="USER/NAME"):
        push(runs / "timm", "no-slash", "peer0")


def test_from_pretrained_takes_a_hub_id_through_snapshot_download(runs, tmp_path, monkeypatch):
    import huggingface_hub

    folder = tmp_path / "dl"
    export_hf(runs / "peerkd", "peer0", folder)
    asked = []
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda repo_id: asked.append(repo_id) or str(folder))
    model = from_pretrained("someone/model")
    assert asked == ["someone/model"] and model.pretrained_cfg["num_classes"] == 4
