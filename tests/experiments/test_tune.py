"""peerkd tune on generated data: the space parsed and checked against the schema, bad input refused before any run,
trials scored on the held-out split (data.eval_split: heldout) with the test split never read (a sentinel dataset
records every read of its test arrays, in every process), a study stopped by SIGTERM and continued (the stopped trial
resumed from its checkpoint), the best config trained as the final run, and a lagging trial pruned with its
checkpoint kept."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

optuna = pytest.importorskip("optuna")

from peerkd.cli import main  # noqa: E402
from peerkd.config import load_config  # noqa: E402
from peerkd.core.errors import ConfigError  # noqa: E402
from peerkd.experiments import tune  # noqa: E402
from peerkd.training.trainer import train  # noqa: E402
from tests.helpers import TINY_VANILLA, tiny_config  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
SENTINEL_ENV = "PEERKD_TEST_SENTINEL"

# a dataset whose test split records each read (with the reading process's argv) in the file $PEERKD_TEST_SENTINEL
SENTINEL_PLUGIN = '''
import os, sys
from peerkd.core.registry import register_dataset
from peerkd.data.datasets import ArrayDataset, synthetic


class SentinelDataset(ArrayDataset):
    def __getattribute__(self, name):
        if name in ("test_images", "test_labels"):
            with open(os.environ["PEERKD_TEST_SENTINEL"], "a") as f:
                f.write(" ".join(sys.argv) + "\\n")
        return super().__getattribute__(name)


@register_dataset("tune_sentinel", "generated data whose test split records every read")
def tune_sentinel(config):
    data = synthetic(config)
    return SentinelDataset(*[object.__getattribute__(data, f) for f in ArrayDataset.__dataclass_fields__])
'''

TINY = {"data": {"dataset": "synthetic", "batch_size": 32, "eval_batch_size": 200,
                 "synthetic": {"num_classes": 4, "train_size": 160, "test_size": 64, "noise": 0.3,
                               "distractor": 0.4}},
        "schedule": {"epochs": 2, "kind": "cosine"}, "optim": {"lr": 0.05},
        "trainer": {"progress": "off", "log_every": 2, "threads": 1, "device": "cpu"},
        "method": {"name": "dml", "models": ["resnet8", "resnet8"]}}


def write_config(folder: Path, **changes) -> Path:
    tree = json.loads(json.dumps(TINY))
    for section, values in changes.items():
        tree[section] = {**tree.get(section, {}), **values} if isinstance(values, dict) else values
    path = folder / "base.yaml"
    path.write_text(yaml.safe_dump({"name": "tiny", **tree}))
    return path


def env() -> dict:
    return dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")


# ----------------------------------------------------------------------------------------------------- the space

def test_parse_space_kinds():
    entry = tune.parse_space("method.temperature=float:1:8:log")
    assert (entry.key, entry.kind, entry.low, entry.high, entry.log) == ("method.temperature", "float", 1.0, 8.0, True)
    entry = tune.parse_space("method.branches=int:2:5")
    assert (entry.kind, entry.low, entry.high, entry.log) == ("int", 2, 5, False)
    entry = tune.parse_space("method.x=cat:a,0.5,true")
    assert entry.choices == ("a", 0.5, True)


@pytest.mark.parametrize("text, says", [
    ("method.temperature", "does not parse"), ("method.temperature=float:1", "does not parse"),
    ("method.temperature=float:a:b", "must be float numbers"), ("method.temperature=real:1:2", "not one of"),
    ("method.temperature=float:8:1", "is empty"), ("method.branches=int:5:2", "is empty"),
    ("method.temperature=float:0:8:log", "log range"), ("method.x=cat:", "empty"),
    ("method.temperature=float:1:8:lin", "does not parse"), ("method.x=cat:a,a", "twice"),
])
def test_parse_space_refuses(text, says):
    with pytest.raises(ConfigError, match=says):
        tune.parse_space(text)


def test_set_reads_back_as_the_value():
    for value in (3.5, 2, "a b", "true", True, 1e-5):
        key, _, text = tune._set("method.x", value).partition("=")
        assert yaml.safe_load(text) == value


# --------------------------------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("space, extra, says", [
    ("method.temprature=float:1:8", [], "did you mean 'method.temperature'"),  # an unknown key, from the schema
    ("optim=float:1:8", [], "optim"),  # a section
    ("method.temperature=float:0:8", [], "temperature must be positive"),  # a range the schema refuses at an end
    ("method.temperature=float:8:1", [], "is empty"),
    ("method.temperature=float:1:8", ["--heldout-per-class", "40"], "cannot hold out 40"),  # 40 of 40 per class
    ("method.temperature=float:1:8", ["--heldout-per-class", "0"], "validation split"),
])
def test_bad_input_is_one_line_before_any_run(tmp_path, capsys, space, extra, says):
    base = write_config(tmp_path)
    out = tmp_path / "study"
    code = main(["tune", "-c", str(base), "--space", space, "--out", str(out), "--trials", "2",
                 *(extra or ["--heldout-per-class", "5"])])
    err = capsys.readouterr().err
    assert code == 2
    assert says in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists()  # nothing started, not even the journal


def test_a_continued_study_must_be_the_same(tmp_path):
    base = write_config(tmp_path)
    options = tune.TuneOptions(config=str(base), space=["method.temperature=float:1:8"], out=str(tmp_path / "s"),
                               heldout_per_class=5)
    tune.open_study(tune.check(options))
    other = tune.TuneOptions(**{**options.__dict__, "space": ["method.temperature=float:1:4"]})
    with pytest.raises(ConfigError, match="another space"):
        tune.open_study(tune.check(other))


# ------------------------------------------------------------------------------- data.eval_split in the trainer

class _Sentinel:
    """Wraps an ArrayDataset; records each read of its test split."""

    def __init__(self, reads: list):
        self.reads = reads

    def wrap(self, data):
        reads = self.reads

        class Watched(type(data)):
            def __getattribute__(self, name):
                if name in ("test_images", "test_labels"):
                    reads.append(name)
                return super().__getattribute__(name)

        return Watched(**{f: getattr(data, f) for f in type(data).__dataclass_fields__})


@pytest.mark.parametrize("split", ["heldout", "test"])
def test_eval_split_heldout_never_reads_the_test_split(tmp_path, monkeypatch, split):
    import peerkd.data.pipeline as pipeline

    reads: list = []
    sentinel = _Sentinel(reads)
    load = pipeline.load_dataset
    monkeypatch.setattr(pipeline, "load_dataset", lambda config: sentinel.wrap(load(config)))
    config = tiny_config(TINY_VANILLA, epochs=1, train_size=160,
                         overrides=("data.heldout_per_class=5", f"data.eval_split={split}", "trainer.threads=1"))
    summary = train(config, run_dir=tmp_path / "run")
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if r["kind"] == "eval"]
    assert summary["eval_split"] == split and [r["split"] for r in evals] == [split]
    if split == "heldout":
        assert reads == []
        assert config.data.heldout_per_class * 4 == 20  # scored on the 20 held-out images: top-1 a multiple of 5 %
        assert summary["keys"]["peer0"]["last"]["top1"] % 5 == pytest.approx(0, abs=1e-6)
    else:
        assert reads  # the sentinel sees a read where there is one


def test_eval_split_heldout_needs_a_split_of_its_own(tmp_path):
    config = tiny_config(TINY_VANILLA, epochs=1, train_size=160, overrides=("data.eval_split=heldout",))
    with pytest.raises(ConfigError, match="heldout_per_class"):
        train(config, run_dir=tmp_path / "run")
    kdcl = {"name": "kdcl", "models": ["resnet8", "resnet8"], "target": "general", "heldout_per_class": 5}
    config = tiny_config(kdcl, epochs=1, train_size=160,
                         overrides=("data.eval_split=heldout", "data.heldout_per_class=5"))
    with pytest.raises(ConfigError, match="fits on the held-out split itself"):
        train(config, run_dir=tmp_path / "run2")


# ------------------------------------------------------------------------------------------------ a whole study

@pytest.mark.slow
def test_study_stopped_continued_final_and_the_test_set_unread(tmp_path):
    """SIGTERM during trial 0: exit 143, trial 0 keeps its checkpoint; the same command again continues it from
    there, runs trial 1, writes best.yaml and trains it; only that final run reads the test split."""
    plugin = tmp_path / "sentinel_data.py"
    plugin.write_text(SENTINEL_PLUGIN)
    sentinel = tmp_path / "test_reads.txt"
    base = write_config(tmp_path, data={"dataset": "tune_sentinel"}, schedule={"epochs": 3}, imports=[str(plugin)])
    out = tmp_path / "study"
    argv = [sys.executable, "-m", "peerkd", "tune", "-c", str(base), "--space", "method.temperature=float:1:8:log",
            "--space", "optim.lr=cat:0.02,0.05", "--heldout-per-class", "8", "--trials", "2", "--out", str(out)]
    run_env = dict(env(), **{SENTINEL_ENV: str(sentinel)})
    first = subprocess.Popen(argv, env=run_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    checkpoint = out / "trials" / "t0000" / "checkpoint.pt"
    deadline = time.time() + 240
    while not checkpoint.exists() and first.poll() is None and time.time() < deadline:
        time.sleep(0.1)
    first.send_signal(signal.SIGTERM)
    text = first.communicate(timeout=240)[0]
    assert first.returncode == 143, text
    assert "stopped with a checkpoint" in text
    assert checkpoint.exists() and not (out / "trials" / "t0000" / "summary.json").exists()
    assert not (out / "best.yaml").exists()

    second = subprocess.run(argv, env=run_env, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "1 continued" in second.stdout and "continuing from its checkpoint" in second.stdout
    history = [json.loads(line) for line in (out / "trials" / "t0000" / "history.jsonl").read_text().splitlines()]
    assert len(history) == 2  # started once, resumed once: the stopped trial's epochs were not trained again
    study = optuna.load_study(study_name=tune.STUDY_NAME, storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(out / tune.JOURNAL_FILE))))
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == 2
    assert study.trials[0].user_attrs["interrupted"] and study.trials[0].state == optuna.trial.TrialState.FAIL
    for trial in complete:  # each objective is the run's held-out top-1 (last epoch)
        summary = json.loads((Path(trial.user_attrs["run_dir"]) / "summary.json").read_text())
        assert summary["eval_split"] == "heldout"
        assert trial.value == pytest.approx(summary["keys"]["peer0"]["last"]["top1"])
    # the best config trains as an ordinary run: the final one, on the test set, with the best trial's values
    best = load_config(out / "best.yaml")
    assert best.data.eval_split == "test" and best.data.heldout_per_class == 0
    assert best.method.options.temperature == pytest.approx(study.best_trial.params["method.temperature"])
    assert best.optim.lr == study.best_trial.params["optim.lr"]
    final = json.loads((out / "final" / "summary.json").read_text())
    assert final["eval_split"] == "test" and final["epochs"] == 3
    report = (out / "report.txt").read_text()
    assert "importance" in report and "read by this run only" in report
    # the test split: read by the final run alone, never by a trial nor the study process
    reads = sentinel.read_text().splitlines()
    assert reads and all(str(out / "final") in line for line in reads), reads


@pytest.mark.slow
def test_a_lagging_trial_is_pruned_and_keeps_its_checkpoint(tmp_path):
    base = write_config(tmp_path, schedule={"epochs": 6}, method={"name": "vanilla", "models": ["resnet8"]})
    options = tune.TuneOptions(config=str(base), space=["optim.lr=float:0.01:0.1"], out=str(tmp_path / "s"),
                               heldout_per_class=5, trials=tune.PRUNE_STARTUP_TRIALS + 1, final="skip")
    study = tune.open_study(tune.check(options))
    distributions = {"optim.lr": tune.parse_space(options.space[0]).distribution()}
    for lr in (0.02, 0.03, 0.04)[:tune.PRUNE_STARTUP_TRIALS]:  # finished trials at 100 % every epoch
        study.add_trial(optuna.trial.create_trial(params={"optim.lr": lr}, distributions=distributions, value=100.0,
                                                  intermediate_values={e: 100.0 for e in range(6)}))
    lines: list[str] = []
    assert tune.tune(options, say=lines.append) == 0
    trial = tune.open_study(tune.check(options)).trials[-1]
    assert trial.state == optuna.trial.TrialState.PRUNED, lines
    run = Path(trial.user_attrs["run_dir"])
    evals = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in evals if r["kind"] == "eval"]
    assert (run / "checkpoint.pt").exists() and not (run / "summary.json").exists()
    assert 1 <= len(evals) < 6  # stopped by SIGTERM well before its last epoch
    assert any("pruned after epoch" in line for line in lines)
    assert (tmp_path / "s" / "best.yaml").exists() and not (tmp_path / "s" / "final").exists()  # --no-final



def test_a_slurm_worker_runs_the_same_study(tmp_path):
    """--executor slurm: each job runs `peerkd tune` with this study's arguments on the same journal (one trial at a
    time, no final run), and pickles without a process; the submitit-local path ran by hand (README)."""
    import pickle

    from peerkd.cli import _parser

    base = write_config(tmp_path)
    argv = ["tune", "-c", str(base), "--space", "method.temperature=float:1:8:log", "--space", "optim.lr=cat:0.02,0.05",
            "--set", "schedule.epochs=1", "--out", str(tmp_path / "s"), "--trials", "6", "--metric", "nll", "--key",
            "peer1", "--pruner", "hyperband", "--heldout-per-class", "5", "--executor", "slurm"]
    options = tune.options_from_args(_parser().parse_args(argv))
    worker = tune.worker_argv(options)
    again = tune.options_from_args(_parser().parse_args(worker[3:]))
    assert worker[1:3] == ["-m", "peerkd"]
    assert again.executor == "local" and again.jobs == 1 and again.final == "skip"
    same = ("space", "overrides", "trials", "metric", "key", "pruner", "heldout_per_class", "sampler_seed")
    assert {k: getattr(again, k) for k in same} == {k: getattr(options, k) for k in same}
    assert Path(again.config) == base.resolve() and Path(again.out) == (tmp_path / "s").resolve()
    final = tune.worker_argv(options, final=True)
    assert "--final" in final and "--no-final" not in final
    job = pickle.loads(pickle.dumps(tune.TuneWorker(worker)))
    assert job.argv == worker and job._process is None
