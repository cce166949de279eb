"""User code from the CLI: --import, imports: in YAML, the peerkd.plugins entry points, and runs made with user code
re-opened by eval, --resume and load_run in fresh processes when trusted (every step a new interpreter: the registry
starts empty).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from peerkd.cli import main
from tests.helpers import tiny_config

ROOT = Path(__file__).resolve().parents[2]
PLUGINS = Path(__file__).resolve().parent / "plugins"


def peerkd_cli(*args, cwd=ROOT, env=None):
    """``python -m peerkd ARGS`` in a new process, from the worktree root (its peerkd first on sys.path)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", **(env or {}))
    return subprocess.run([sys.executable, "-m", "peerkd", *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=300, env=env)


def user_config(folder: Path, epochs: int = 1) -> Path:
    """A YAML config for the user method ``my_ml`` on two ``tiny_cnn`` peers; the method file is named relative to
    the YAML file's folder (where it is copied), the model file is left for --import."""
    shutil.copy(PLUGINS / "my_method.py", folder / "my_method.py")
    tree = tiny_config({"name": "vanilla"}, epochs=epochs, train_size=160).to_dict()
    tree.update(imports=["my_method.py"], method={"name": "my_ml", "models": ["tiny_cnn", "tiny_cnn"]})
    tree["data"]["eval_batch_size"] = 100
    tree["data"]["synthetic"]["test_size"] = 100
    path = folder / "user.yaml"
    path.write_text(yaml.safe_dump(tree))
    return path


@pytest.mark.slow
def test_user_method_and_model_train_eval_resume_and_load_in_new_processes(tmp_path):
    run = tmp_path / "run"
    trained = peerkd_cli("train", "-c", user_config(tmp_path), "--import", PLUGINS / "my_model.py", "--out", run)
    assert trained.returncode == 0, trained.stderr
    recorded = yaml.safe_load((run / "config.yaml").read_text())["imports"]
    assert recorded == [str(tmp_path / "my_method.py"), str(PLUGINS / "my_model.py")]  # absolute, in order
    assert (run / "summary.json").is_file()

    refused = peerkd_cli("train", "--resume", run, "--set", "schedule.epochs=2")  # the run names code: not run
    assert refused.returncode == 2 and "names code to import" in refused.stderr, refused.stderr
    resumed = peerkd_cli("train", "--resume", run, "--set", "schedule.epochs=2", "--trust-imports")  # the run knows
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads((run / "summary.json").read_text())["epochs"] == 2

    script = ("import sys, torch; from peerkd.cli import main; assert main(['eval', sys.argv[1], '--trust-imports']) "
              "== 0; from peerkd import load_run; r = load_run(sys.argv[1], trust_imports=True); "
              "print(type(r.method).__name__, sorted(r.method.predict(torch.zeros(2, 3, 32, 32))))")
    fresh = subprocess.run([sys.executable, "-c", script, str(run)], cwd=ROOT, capture_output=True, text=True,
                           timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert fresh.returncode == 0, fresh.stderr
    assert "MyMutualLearning ['ensemble', 'peer0', 'peer1']" in fresh.stdout
    assert (run / "eval.json").is_file()


def test_installed_package_registers_through_the_entry_point_group(tmp_path):
    site = tmp_path / "site"
    (site / "peerkd_test_plugin-0.1.dist-info").mkdir(parents=True)
    (site / "peerkd_test_plugin-0.1.dist-info" / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: peerkd-test-plugin\nVersion: 0.1\n")
    (site / "peerkd_test_plugin-0.1.dist-info" / "entry_points.txt").write_text(
        "[peerkd.plugins]\ntiny = peerkd_test_plugin_models\n")
    shutil.copy(PLUGINS / "my_model.py", site / "peerkd_test_plugin_models.py")
    script = ("import peerkd; print(type(peerkd.build_model('tiny_cnn', 3)).__name__); "  # the Python API finds it
              "from peerkd.cli import main; main(['list', 'models'])")
    listed = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300,
                            env=dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(site)))
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.startswith("TinyCNN\n")
    assert "tiny_cnn" in listed.stdout and "a user's small CNN" in listed.stdout


def _one_line_error(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def test_a_missing_or_broken_import_is_a_one_line_config_error(tmp_path, capsys):
    err = _one_line_error(capsys, ["list", "models", "--import", str(tmp_path / "absent.py")])
    assert "config error" in err and "absent.py" in err
    err = _one_line_error(capsys, ["list", "methods", "--import", "peerkd_no_such_module"])
    assert "no module named 'peerkd_no_such_module'" in err
    broken = tmp_path / "broken.py"
    broken.write_text("import torch\nraise RuntimeError('the user code is broken\\nover two lines')\n")
    err = _one_line_error(capsys, ["list", "models", "--import", str(broken)])
    assert "broken.py" in err and "RuntimeError: the user code is broken over two lines" in err
    config = tmp_path / "c.yaml"
    config.write_text("imports: [missing_here.py]\n")
    err = _one_line_error(capsys, ["train", "-c", str(config)])
    assert str(tmp_path / "missing_here.py") in err  # resolved against the YAML file's folder
