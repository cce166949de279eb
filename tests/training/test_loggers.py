"""Experiment trackers (trainer.loggers: wandb, mlflow, trackio), all without a network: each test trains a tiny run
with one tracker, reads what the tracker stored back through the tracker's own store, and compares it with the run's
metrics.jsonl; then resumes the run for one more epoch and checks that the same tracked run went on."""
from __future__ import annotations

import glob
import json
import os
import struct
import sys
import tempfile
import warnings
from pathlib import Path

import pytest

from peerkd.config import build_config
from peerkd.core.errors import ConfigError
from peerkd.core.process import SWEEP_GROUP_ENV
from peerkd.training.trainer import train
from tests.helpers import tiny_config

if "trackio" not in sys.modules:  # trackio reads TRACKIO_DIR once, when it is imported: a folder of this session's
    os.environ.setdefault("TRACKIO_DIR", tempfile.mkdtemp(prefix="peerkd-trackio-"))

DML = {"name": "dml", "models": ["resnet8", "resnet8"]}  # two peers: an ensemble key and a diversity group


def tracked_config(tracker: str, epochs: int, project: str):
    config = tiny_config(DML, epochs=epochs, train_size=128, name="tracked")
    config.data.synthetic.test_size = config.data.eval_batch_size  # one evaluation batch
    config.trainer.threads, config.trainer.log_every = 1, 2
    config.trainer.loggers = ["jsonl", tracker]
    config.trainer.tracker_project = project
    return config


def expected(run_dir: Path) -> dict[tuple[str, int], float]:
    """What metrics.jsonl says each tracker must hold: ``{(tag, global step): value}`` for the train losses, the
    learning rate, images/s, every predict key's metrics and the diversity groups of each evaluation."""
    out = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        step = record["global_step"]
        if record["kind"] == "train":
            for key in ("loss", "ce0", "kl1", "lr", "images_per_s"):
                out[(f"train/{key}", step)] = record[key]
        elif record["kind"] == "eval":
            for key, metrics in record["metrics"].items():
                for name, value in metrics.items():
                    out[(f"eval/metrics/{key}/{name}", step)] = value
    assert any(tag.startswith("eval/metrics/diversity/") for tag, _ in out)  # the groups are there to compare
    assert {"eval/metrics/ensemble/top1", "eval/metrics/peer1/ece"} <= {tag for tag, _ in out}
    return out


def assert_same(logged: dict[tuple[str, int], float], run_dir: Path) -> None:
    want = expected(run_dir)
    missing = sorted(set(want) - set(logged))
    assert not missing, f"the tracker lacks {missing[:5]}"
    for key, value in want.items():
        assert logged[key] == pytest.approx(value, rel=1e-6, abs=1e-9), key


def train_and_resume(tmp_path, tracker: str, project: str) -> tuple[Path, str, str]:
    """A 1-epoch tracked run in a sweep group, then its resume to 2 epochs; returns (run dir, first id, kept id)."""
    import torch

    run_dir = tmp_path / "run"
    threads = torch.get_num_threads()
    try:
        os.environ[SWEEP_GROUP_ENV] = "sweep-g1"
        train(tracked_config(tracker, 1, project), run_dir=run_dir)
        first = _ids(run_dir)[tracker]
        train(tracked_config(tracker, 2, project), run_dir=run_dir, resume=True)
    finally:
        os.environ.pop(SWEEP_GROUP_ENV, None)
        torch.set_num_threads(threads)
    return run_dir, first, _ids(run_dir)[tracker]


def _ids(run_dir: Path) -> dict:
    from peerkd.training.checkpoint import load_checkpoint

    return load_checkpoint(run_dir / "checkpoint.pt", map_location="cpu")["trackers"]


# ------------------------------------------------------------------------------------------------------ wandb

def wandb_records(path: str):
    """The records of an offline wandb run file (``run-<id>.wandb``): wandb's LevelDB-style log (a 7-byte header
    ``:W&B`` + magic + version, then 32 KiB blocks of chunks: crc32 (4), length (2), type (1: full, 2: first,
    3: middle, 4: last)), each record a ``wandb_internal_pb2.Record``."""
    from wandb.proto import wandb_internal_pb2

    data, block = Path(path).read_bytes(), 32 * 1024
    assert data[:4] == b":W&B"
    position, chunks = 7, []
    while position + 7 <= len(data):
        left = block - position % block
        if left < 7:  # a block's tail too short for a header is padding
            position += left
            continue
        _, length, kind = struct.unpack("<IHB", data[position:position + 7])
        if kind == 0 and length == 0:
            position += left
            continue
        chunks.append(data[position + 7:position + 7 + length])
        position += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(b"".join(chunks))
            chunks = []
            yield record


@pytest.mark.slow
def test_wandb_offline_holds_the_runs_numbers_and_a_resume_continues_it(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    run_dir, first, kept = train_and_resume(tmp_path, "wandb", "peerkd-test")
    assert kept == first
    files = sorted(glob.glob(str(tmp_path / "wandb" / "offline-run-*" / f"run-{first}.wandb")))
    assert len(files) == 2, files  # the first session and the resumed one, both of run `first`
    logged, runs = {}, []
    for path in files:
        for record in wandb_records(path):
            kind = record.WhichOneof("record_type")
            if kind == "run":
                runs.append(record.run)
            elif kind == "history":
                row = {item.key or "/".join(item.nested_key): json.loads(item.value_json)
                       for item in record.history.item}
                step = row["global_step"]
                logged.update({(tag, step): value for tag, value in row.items() if not tag.startswith("_")})
    assert [run.run_id for run in runs] == [first, first] and runs[1].resume
    assert runs[0].run_group == "sweep-g1" and runs[0].display_name == "run" and runs[0].project == "peerkd-test"
    config = {item.key: json.loads(item.value_json) for item in runs[0].config.update}
    assert config["method"]["name"] == "dml" and config["environment"]["torch"]
    assert_same(logged, run_dir)
    assert logged[("params/trained", 8)] > 0 and ("params/keys/peer0", 8) in logged


# ----------------------------------------------------------------------------------------------------- mlflow

@pytest.mark.slow
def test_mlflow_sqlite_store_holds_the_runs_numbers_and_a_resume_continues_it(tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    run_dir, first, kept = train_and_resume(tmp_path, "mlflow", "peerkd-test")
    assert kept == first
    client = MlflowClient(uri)
    run = client.get_run(first)
    assert run.info.status == "FINISHED" and run.info.run_name == "run"
    assert run.data.tags["peerkd.sweep_group"] == "sweep-g1"
    assert run.data.params["method.name"] == "dml" and run.data.params["environment.torch"]
    experiment = client.get_experiment_by_name("peerkd-test")
    assert len(client.search_runs([experiment.experiment_id])) == 1  # the resume made no second run
    logged = {}
    for tag in run.data.metrics:
        logged.update({(tag, m.step): m.value for m in client.get_metric_history(first, tag)})
    assert_same(logged, run_dir)
    assert logged[("params/trained", 8)] > 0


# ---------------------------------------------------------------------------------------------------- trackio

@pytest.mark.slow
def test_trackio_local_store_holds_the_runs_numbers_and_a_resume_continues_it(tmp_path):
    pytest.importorskip("trackio")
    from trackio.sqlite_storage import SQLiteStorage

    project = f"peerkd-test-{tmp_path.name}"[:60]
    run_dir, first, kept = train_and_resume(tmp_path, "trackio", project)
    assert kept == first and first.startswith("run-")
    assert SQLiteStorage.get_runs(project) == [first]  # the resume made no second run
    assert SQLiteStorage.get_run_config(project, first)["_Group"] == "sweep-g1"
    logged = {}
    for row in SQLiteStorage.get_logs(project, first):
        logged.update({(tag, row["step"]): value for tag, value in row.items() if tag not in ("step", "timestamp")})
    assert_same(logged, run_dir)


# ------------------------------------------------------------------------------------------ failures, config

def test_a_tracker_that_cannot_start_stops_the_run_before_any_work(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb fails: as if it were not installed
    config = tracked_config("wandb", 1, "peerkd-test")
    with pytest.raises(ConfigError) as caught:
        train(config, run_dir=tmp_path / "run")
    message = str(caught.value)
    assert "\n" not in message and "pip install 'peerkd[wandb]'" in message and "loggers_required" in message
    assert not (tmp_path / "run").exists()  # the folder made for the run is gone again: nothing was started


@pytest.mark.slow
def test_loggers_required_false_warns_once_and_trains(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)
    config = tracked_config("mlflow", 1, "peerkd-test")
    config.trainer.loggers_required = False
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        summary = train(config, run_dir=tmp_path / "run")
    mine = [w for w in caught if "trainer.loggers" in str(w.message)]
    assert len(mine) == 1 and "going on without it" in str(mine[0].message)
    assert summary["epochs"] == 1 and (tmp_path / "run" / "metrics.jsonl").is_file()


@pytest.mark.slow
def test_tracker_error_is_one_line_and_exit_2_from_the_cli(tmp_path):
    import subprocess

    path = tmp_path / "c.yaml"
    tree = tracked_config("wandb", 1, "p").to_dict()
    path.write_text(json.dumps(tree))
    # wandb online with no key and no network: refused before any work (WANDB_API_KEY unset, a folder of no login)
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB")}
    env.update(WANDB_MODE="online", WANDB_DIR=str(tmp_path), WANDB_CONFIG_DIR=str(tmp_path / "cfg"),
               NETRC=str(tmp_path / "netrc"), HOME=str(tmp_path), WANDB_INIT_TIMEOUT="20")
    pytest.importorskip("wandb")
    done = subprocess.run([sys.executable, "-m", "peerkd", "train", "-c", str(path), "--out", str(tmp_path / "r")],
                          capture_output=True, text=True, timeout=240, env=env, stdin=subprocess.DEVNULL)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2, done.stderr[-2000:]
    assert lines[-1].startswith("peerkd: config error: trainer.loggers: wandb could not start")
    assert "wandb login" in lines[-1]
    assert not (tmp_path / "r").exists()


def test_loggers_config_is_checked_before_any_work():
    assert build_config({}).trainer.loggers == ["jsonl", "tensorboard"]
    assert build_config({}, ["trainer.loggers=[jsonl,wandb,mlflow,trackio]"]).trainer.loggers[-1] == "trackio"
    with pytest.raises(ConfigError, match=r"did you mean 'mlflow'"):
        build_config({}, ["trainer.loggers=[jsonl,mlfow]"])
    with pytest.raises(ConfigError, match="lacks jsonl"):
        build_config({}, ["trainer.loggers=[wandb]"])
    with pytest.raises(ConfigError, match="wandb named twice"):
        build_config({}, ["trainer.loggers=[jsonl,wandb,wandb]"])


def test_a_sweep_gives_its_runs_the_group(tmp_path):
    from peerkd.experiments.plan import plan

    config = tmp_path / "a.yaml"
    config.write_text("name: a\n")
    spec, = plan([str(config)], [0], out=str(tmp_path / "runs"), group="cifar-sweep")
    assert spec.env() == {SWEEP_GROUP_ENV: "cifar-sweep"}


def test_a_tracker_failing_while_logging_is_dropped_with_one_warning(monkeypatch):
    from peerkd.training import loggers

    class Broken(loggers.Tracker):
        name, module = "broken", "json"
        resumed_from = None

        def start(self, config, environment, resume_id):
            Broken.resumed_from = resume_id
            return "id-1"

        def log(self, record, step):
            raise OSError("the server went away")

        def finish(self, ok=True):
            raise AssertionError("a dropped tracker is not finished")

    monkeypatch.setitem(loggers.TRACKERS, "broken", Broken)
    trackers = loggers.Trackers(["jsonl", "broken"], True, "p", "run", resume_ids={"broken": "id-0", "old": "k"})
    trackers.start({}, {})
    assert Broken.resumed_from == "id-0" and trackers.ids == {"broken": "id-1", "old": "k"}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for step in (1, 2):
            trackers.log({"kind": "train", "global_step": step, "loss": 1.0}, step)
    assert len(caught) == 1 and "broken failed while logging" in str(caught[0].message)
    trackers.finish()
    assert loggers.scalars({"kind": "eval", "epoch": 0, "metrics": {"a": {"top1": 5.0}, "diversity": {"g": 0.5}},
                            "flag": None}) == {"eval/metrics/a/top1": 5.0, "eval/metrics/diversity/g": 0.5}
