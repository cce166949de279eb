"""peerkd export: every format read back WITHOUT peerkd (a clean interpreter, peerkd unimportable, cwd outside the
repository) and compared with the run's own predict(); aggregates; torchvision's native keys; --normalize; refusals.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.helpers import short_run
from peerkd.cli import main
from peerkd.training.checkpoint import load_checkpoint
from peerkd.deploy.export import export_run
from peerkd.training.checkpoint import load_run

# A child interpreter that cannot import peerkd: isolated mode (-I: no PYTHONPATH, no cwd on sys.path), the editable
# install's finder removed, and peerkd blocked in sys.modules, so any pickled peerkd class would fail to load.
CLEAN_PREAMBLE = """
import sys
sys.meta_path[:] = [f for f in sys.meta_path if '__editable__' not in str(getattr(f, '__module__', type(f).__module__))]
sys.modules['peerkd'] = None
import importlib.util, json, numpy as np, torch
try:
    import peerkd
    raise SystemExit('peerkd is importable')
except ImportError:
    pass
"""

LOADERS = """
def run_file(fmt, path, x, constructor=None):
    with torch.no_grad():
        if fmt == 'torchscript':
            return torch.jit.load(path)(x)
        if fmt == 'exported_program':
            return torch.export.load(path).module()(x)
        if fmt == 'onnx':
            import onnxruntime
            session = onnxruntime.InferenceSession(path, providers=['CPUExecutionProvider'])
            return torch.from_numpy(session.run(None, {'input': x.numpy()})[0])
        import torchvision
        model = eval(constructor, {'torchvision': torchvision})
        model.load_state_dict(torch.load(path, weights_only=True))
        return model.eval()(x)

jobs = json.load(open(sys.argv[1]))
outputs = {}
for name, job in jobs.items():
    x = torch.from_numpy(np.load(job['input']))
    outputs[name] = run_file(job['format'], job['file'], x, job.get('constructor')).numpy().tolist()
json.dump(outputs, open(sys.argv[2], 'w'))
"""


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Three one-epoch runs on generated data: a DML pair, a CSS pair (2 x 2 branches), a torchvision ResNet-18."""
    root = tmp_path_factory.mktemp("runs")
    small = dict(epochs=1, train_size=64, overrides=("data.synthetic.test_size=64", "data.eval_batch_size=64"))
    short_run({"name": "dml", "models": ["resnet8", "resnet8"]}, root / "dml", **small)
    short_run({"name": "css", "models": ["resnet8", "resnet8"], "branches": 2}, root / "css", **small)
    short_run({"name": "vanilla", "models": ["tv_resnet18"]}, root / "tv", **small)
    return root


# (job name, run, key, format, --normalize)
JOBS = [
    ("dml_peer0_torchscript", "dml", "peer0", "torchscript", False),
    ("dml_peer1_onnx", "dml", "peer1", "onnx", False),
    ("dml_ensemble_onnx_normalized", "dml", "ensemble", "onnx", True),
    ("css_net1_exported", "css", "net1", "exported_program", False),
    ("css_net2_branch1_torchscript", "css", "net2_branch1", "torchscript", False),
    ("tv_peer0_state_dict", "tv", "peer0", "state_dict", False),
]
SUFFIX = {"torchscript": ".pt", "exported_program": ".pt2", "onnx": ".onnx", "state_dict": ".pt"}


@pytest.mark.slow
def test_every_format_runs_without_peerkd_and_equals_the_runs_predict(runs, tmp_path):
    import numpy as np

    gen = torch.Generator().manual_seed(3)
    jobs, expected, infos = {}, {}, {}
    methods = {name: load_run(runs / name).method for name in ("dml", "css", "tv")}
    for name, run, key, fmt, normalize in JOBS:
        out = tmp_path / f"{name}{SUFFIX[fmt]}"
        info = export_run(runs / run, key, fmt, out, normalize=normalize)
        infos[name] = info
        normalized = torch.randn(5, 3, 32, 32, generator=gen)  # another batch size than the export traced (4)
        mean = torch.tensor(info["input"]["normalization"]["mean"]).view(1, 3, 1, 1)
        std = torch.tensor(info["input"]["normalization"]["std"]).view(1, 3, 1, 1)
        fed = normalized * std + mean if normalize else normalized  # --normalize: the file takes pixel / 255
        np.save(tmp_path / f"{name}.npy", fed.numpy())
        with torch.no_grad():
            expected[name] = methods[run].predict(normalized)[key]
        jobs[name] = {"format": fmt, "file": str(out), "input": str(tmp_path / f"{name}.npy"),
                      "constructor": info["constructor"]}
    (tmp_path / "jobs.json").write_text(json.dumps(jobs))
    (tmp_path / "child.py").write_text(CLEAN_PREAMBLE + LOADERS)
    child = subprocess.run([sys.executable, "-I", str(tmp_path / "child.py"), str(tmp_path / "jobs.json"),
                            str(tmp_path / "outputs.json")], cwd=tmp_path, capture_output=True, text=True,
                           timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert child.returncode == 0, child.stderr[-2000:]
    outputs = json.loads((tmp_path / "outputs.json").read_text())
    for name, *_ in JOBS:
        got = torch.tensor(outputs[name])
        assert got.shape == expected[name].shape, name
        assert (got - expected[name]).abs().max() < 1e-4, name  # the bound, for every format

    # what the JSON tells a deployer
    tv = infos["tv_peer0_state_dict"]
    assert tv["constructor"] == "torchvision.models.resnet18(num_classes=4)"  # loaded above by torchvision alone
    ensemble = infos["dml_ensemble_onnx_normalized"]
    assert ensemble["module"] == "the method's predict(x)['ensemble']"
    assert ensemble["input"]["normalization"]["built_in"] is True
    assert infos["dml_peer0_torchscript"]["input"]["normalization"]["built_in"] is False
    assert infos["css_net1_exported"]["module"] == "the method's export('net1')"  # CSS's own eq. 3-4 module
    summary = json.loads((runs / "dml" / "summary.json").read_text())
    peer0 = infos["dml_peer0_torchscript"]
    assert peer0["run"]["top1_last"] == summary["keys"]["peer0"]["last"]["top1"]
    assert peer0["run"]["commit"] == json.loads((runs / "dml" / "environment.json").read_text())["git_sha"]
    assert peer0["input"]["shape"] == ["batch", 3, 32, 32] and peer0["num_classes"] == 4
    recorded = load_checkpoint(runs / "dml" / "checkpoint.pt")["input"]
    assert peer0["input"]["normalization"]["mean"] == recorded["mean"]
    assert json.loads(Path(f"{tmp_path / 'dml_peer0_torchscript.pt'}.json").read_text()) == peer0


def test_a_peerkd_network_state_dict_comes_with_its_constructor(runs, tmp_path, capsys):
    assert main(["export", str(runs / "dml"), "--key", "peer1", "--format", "state_dict", "--out",
                 str(tmp_path / "p1.pt")]) == 0
    info = json.loads((tmp_path / "p1.pt.json").read_text())
    assert info["constructor"] == "peerkd.build_model('resnet8', num_classes=4)"
    import peerkd

    model = eval(info["constructor"], {"peerkd": peerkd})
    model.load_state_dict(torch.load(tmp_path / "p1.pt", weights_only=True))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model.eval()(x), load_run(runs / "dml").method.predict(x)["peer1"], atol=1e-5)
    assert "rebuild: peerkd.build_model('resnet8', num_classes=4)" in capsys.readouterr().out


def _refused(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def test_bad_input_is_one_line_and_exit_2(runs, tmp_path, capsys, monkeypatch):
    dml = str(runs / "dml")
    err = _refused(capsys, ["export", dml, "--key", "peer7", "--format", "torchscript"])
    assert "'peer7' is not a predict key" in err and "peer0, peer1, ensemble" in err
    err = _refused(capsys, ["export", str(tmp_path / "absent"), "--key", "peer0", "--format", "onnx"])
    assert "not a run folder" in err
    err = _refused(capsys, ["export", dml, "--key", "ensemble", "--format", "state_dict"])
    assert "torchscript, onnx or exported_program" in err
    err = _refused(capsys, ["export", dml, "--format", "state_dict", "--normalize"])
    assert "--normalize" in err
    err = _refused(capsys, ["export", dml, "--format", "exported_program", "--out", str(tmp_path / "x.pt")])
    assert ".pt2" in err
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # the extra not installed
    err = _refused(capsys, ["export", dml, "--format", "onnx"])
    assert "onnxruntime" in err and "pip install 'peerkd[onnx]'" in err
    assert not (runs / "dml" / "export").exists()  # nothing written by a refusal


def test_a_run_saved_before_its_normalisation_was_recorded_takes_it_from_its_dataset(runs):
    from peerkd.deploy.export import _normalisation

    run = load_run(runs / "dml")
    recorded = _normalisation(run)
    assert recorded[2] == 32 and len(recorded[0]) == 3 and all(s > 0 for s in recorded[1])
    run.input = None  # as load_run gives it for a checkpoint without "input"
    assert _normalisation(run) == recorded
