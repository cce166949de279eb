"""A run folder is data, not code: the imports a run's config records (user .py files, module names) run only when
this process already loaded them or the user trusts the run (--trust-imports / trust_imports=True). The crafted
artifacts are real run folders re-saved with peerkd's own save_checkpoint (checksum valid): a checksum protects
against damage, not against an author."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from peerkd.cli import main
from peerkd.core import plugins
from peerkd.core.errors import RunError
from peerkd.core.run_files import CHECKPOINT, CONFIG_FILE
from peerkd.training.checkpoint import load_checkpoint, load_run, save_checkpoint
from tests.helpers import tiny_teacher_run

ROOT = Path(__file__).resolve().parents[2]
EVIL = "from pathlib import Path\nPath(__file__).with_name('EXECUTED').write_text('ran')\n"  # leaves a trace if run


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    return tiny_teacher_run(tmp_path_factory.mktemp("trust") / "run", num_classes=4)


def crafted(trained_run: Path, folder: Path, imports: list[str]) -> Path:
    """A copy of the trained run under ``folder`` whose checkpoint's config records ``imports``."""
    run = folder / "victim2"
    shutil.copytree(trained_run, run)
    state = load_checkpoint(run / CHECKPOINT)
    state["config"]["imports"] = imports
    save_checkpoint(run / CHECKPOINT, state)
    return run


def one_line_error(capsys, argv, cwd: Path) -> str:
    previous = os.getcwd()
    os.chdir(cwd)
    try:
        assert main(argv) == 2
    finally:
        os.chdir(previous)
        plugins.trust_recorded_imports(False)  # the CLI sets the process-wide flag from its arguments
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def test_a_relative_recorded_import_is_never_resolved_even_when_trusted(trained_run, tmp_path, capsys):
    run = crafted(trained_run, tmp_path, ["victim2/evil.py"])  # the crafted checkpoint of the issue
    (run / "evil.py").write_text(EVIL)
    for argv in (["eval", "victim2"], ["eval", "victim2", "--trust-imports"],
                 ["export", "victim2", "--format", "state_dict"], ["train", "--resume", "victim2"]):
        err = one_line_error(capsys, argv, cwd=tmp_path)
        assert "relative path (victim2/evil.py)" in err and "--import PATH" in err, err
    assert not (run / "EXECUTED").exists()


def test_an_absolute_recorded_file_runs_only_when_trusted_or_imported(trained_run, tmp_path, capsys):
    run = crafted(trained_run, tmp_path, [str(tmp_path / "evil.py")])
    (tmp_path / "evil.py").write_text(EVIL)
    for argv in (["eval", str(run)], ["export", str(run), "--format", "state_dict"], ["plot", "reliability", str(run)],
                 ["train", "--resume", str(run), "--set", "schedule.epochs=2"]):
        err = one_line_error(capsys, argv, cwd=tmp_path)
        assert f"names code to import: {tmp_path / 'evil.py'}" in err and "--trust-imports" in err, err
    with pytest.raises(RunError, match="names code to import"):
        load_run(run)
    assert not (tmp_path / "EXECUTED").exists()  # nothing ran

    # allowed: the same file given with --import (in a new process: the registry and imports start empty)
    allowed = subprocess.run([sys.executable, "-m", "peerkd", "eval", str(run), "--import", str(tmp_path / "evil.py")],
                             cwd=ROOT, capture_output=True, text=True, timeout=300,
                             env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert allowed.returncode == 0, allowed.stderr
    assert (tmp_path / "EXECUTED").read_text() == "ran"


def test_trust_imports_in_python_and_a_changed_file_is_reported(trained_run, tmp_path):
    plugin = tmp_path / "plugin_ok.py"
    plugin.write_text("VALUE = 1\n")
    run = crafted(trained_run, tmp_path, [str(plugin)])
    state = load_checkpoint(run / CHECKPOINT)
    state["config"]["import_digests"] = {str(plugin): plugins.file_digest(plugin)}
    save_checkpoint(run / CHECKPOINT, state)
    plugin.write_text("VALUE = 2\n")  # the user's file changed since the run was made
    with pytest.warns(UserWarning, match="changed since the run was made"):
        loaded = load_run(run, trust_imports=True)
    assert loaded.config.import_digests == {str(plugin): plugins.file_digest(plugin)}  # what was loaded now


def test_a_recorded_module_name_is_refused_without_trust(trained_run, tmp_path, capsys):
    run = crafted(trained_run, tmp_path, ["peerkd_evil_module_for_tests"])
    (tmp_path / "peerkd_evil_module_for_tests.py").write_text(EVIL)  # on sys.path when Python runs from tmp_path
    sys.path.insert(0, str(tmp_path))
    try:
        err = one_line_error(capsys, ["eval", str(run)], cwd=tmp_path)
    finally:
        sys.path.remove(str(tmp_path))
    assert "names code to import: peerkd_evil_module_for_tests" in err
    assert not (tmp_path / "EXECUTED").exists() and "peerkd_evil_module_for_tests" not in sys.modules


def test_a_crafted_config_yaml_is_read_as_data_by_report(trained_run, tmp_path, capsys):
    run = tmp_path / "runs" / "victim"
    shutil.copytree(trained_run, run)
    tree = yaml.safe_load((run / CONFIG_FILE).read_text())
    (run / "evil.py").write_text(EVIL)
    tree["imports"] = [str(run / "evil.py")]
    (run / CONFIG_FILE).write_text(yaml.safe_dump(tree))
    main(["report", str(tmp_path / "runs")])
    capsys.readouterr()
    assert not (run / "EXECUTED").exists()


def test_a_run_records_the_digest_of_each_imported_file(tmp_path):
    from peerkd.config import build_config

    plugin = tmp_path / "plugin_digest.py"
    plugin.write_text("VALUE = 3\n")
    config = build_config({"imports": [str(plugin)]})
    assert config.import_digests == {str(plugin): "sha256:" + __import__("hashlib").sha256(b"VALUE = 3\n").hexdigest()}
