"""``peerkd tune``: hyper-parameter search over named config keys with Optuna (``pip install peerkd[tune]``).

Each trial is an ordinary ``peerkd train`` run of the base config (``-c``) with the trial's values as ``--set``
overrides, in its own folder ``<out>/trials/t<number>``, launched as a process like a sweep's runs
(:mod:`peerkd.experiments.plan`). A trial trains on the training set less a **validation split carved from it**
(``data.heldout_per_class`` images per class, ``--heldout-per-class``) and is scored on that split
(``data.eval_split: heldout``: the run builds no test loader, so no test image or label is read during the study).
The objective is the last epoch's validation metric (``--metric`` of predict key ``--key``) read from the run's
``summary.json``; while a trial trains, the study polls its ``metrics.jsonl`` and reports each epoch's validation
value to the pruner (median or Hyperband), and a trial the pruner stops gets SIGTERM, so it saves a checkpoint and
keeps it.

The study lives in ``<out>/study.journal``, Optuna's journal file storage (no database server): the same command
again continues it up to ``--trials`` finished (complete or pruned) trials. SIGTERM or Ctrl-C stops the study: each
running trial gets SIGTERM and saves its checkpoint, finished trials stay in the journal, and the next start gives
each interrupted trial's values and folder to a new trial, which continues from that checkpoint.

At the end the best trial's values are written over the base config as ``<out>/best.yaml`` (``data.eval_split:
test``, the base config's own held-out split, so all the training images train it) and, unless ``--no-final``, that
config is trained once as ``<out>/final``: the only run of the study that reads the test set. ``--final`` trains it
without starting new trials. The report (trial table, each key's importance from :mod:`optuna.importance`, the best
values, the final test numbers) is printed and written to ``<out>/report.txt``.
"""
from __future__ import annotations

import dataclasses
import json
import math
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import yaml

from peerkd.config import Config, build_config, flatten_tree, load_yaml, read_yaml
from peerkd.core.errors import ConfigError
from peerkd.core.process import EXIT_CTRL_C, EXIT_INTERRUPTED, is_main_thread
from peerkd.core.run_files import METRICS_LOG, SUMMARY_FILE, SWEEP_LOG
from peerkd.experiments.plan import RunSpec, child_env, run_state
from peerkd.experiments.slurm import SIGNAL_DELAY_S
from peerkd.experiments.sweep import FAILED_LOG_LINES, STOP_WAIT_S, last_lines

STUDY_NAME = "peerkd-tune"  # one study per --out folder, under this name in the journal
JOURNAL_FILE = "study.journal"  # Optuna's journal file storage: every trial's values, states and reports
BEST_CONFIG = "best.yaml"  # the base config with the best trial's values: `peerkd train -c` runs it
REPORT_FILE = "report.txt"  # the study's report as printed
TRIALS_DIR = "trials"  # the trials' run folders, t0000, t0001, ...
FINAL_DIR = "final"  # the run of best.yaml: the only one that evaluates on the test set
POLL_S = 0.1  # seconds between looks at a trial's metrics.jsonl and process (a pruned trial stops this soon after)
PRUNE_STARTUP_TRIALS = 3  # the median pruner prunes nothing before this many trials finished (Optuna's default 5
# would prune nothing in a small study of 8)
MAXIMIZE = {"top1": True, "top5": True, "nll": False, "ece": False, "aurc": False}  # the metrics a study can
# optimise, and whether higher is better
SPACE_KINDS = ("float", "int", "cat")


def _optuna():
    try:
        import optuna
    except ImportError:
        raise ConfigError("peerkd tune needs Optuna: pip install 'peerkd[tune]' (or pip install optuna)") from None
    return optuna


# ---------------------------------------------------------------------------------------------------- the space

@dataclasses.dataclass(frozen=True)
class SpaceKey:
    """One ``--space`` entry: a dotted config key and the values a trial may give it."""

    key: str
    kind: str  # float, int or cat
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    choices: tuple = ()
    text: str = ""  # the --space text as given

    def distribution(self):
        optuna = _optuna()
        if self.kind == "float":
            return optuna.distributions.FloatDistribution(self.low, self.high, log=self.log)
        if self.kind == "int":
            return optuna.distributions.IntDistribution(self.low, self.high, log=self.log)
        return optuna.distributions.CategoricalDistribution(self.choices)

    def suggest(self, trial):
        if self.kind == "float":
            return trial.suggest_float(self.key, self.low, self.high, log=self.log)
        if self.kind == "int":
            return trial.suggest_int(self.key, self.low, self.high, log=self.log)
        return trial.suggest_categorical(self.key, list(self.choices))

    def samples(self) -> list:
        """The values that stand for the whole range when the schema checks the key: its ends, or every choice."""
        return list(self.choices) if self.kind == "cat" else [self.low, self.high]


def parse_space(text: str) -> SpaceKey:
    """``key=float:LOW:HIGH[:log]``, ``key=int:LOW:HIGH[:log]`` or ``key=cat:A,B,...`` (choices read as YAML
    scalars: ``cat:0.1,0.5`` gives numbers) -> a :class:`SpaceKey`; a text that does not parse, or an empty range, is
    a ConfigError naming it."""
    usage = "give key=float:LOW:HIGH[:log], key=int:LOW:HIGH[:log] or key=cat:A,B,..."
    key, sep, spec = text.partition("=")
    key = key.strip()
    if not sep or not key or ":" not in spec:
        raise ConfigError(f"--space '{text}' does not parse; {usage}")
    kind, _, rest = spec.partition(":")
    kind = kind.strip()
    if kind not in SPACE_KINDS:
        raise ConfigError(f"--space '{text}': '{kind}' is not one of {', '.join(SPACE_KINDS)}; {usage}")
    if kind == "cat":
        choices = tuple(_scalar(c.strip()) for c in rest.split(",") if c.strip())
        if not choices:
            raise ConfigError(f"--space '{text}': the choices are empty; {usage}")
        if len(set(map(repr, choices))) != len(choices):
            raise ConfigError(f"--space '{text}': a choice is given twice")
        return SpaceKey(key, kind, choices=choices, text=text)
    parts = [p.strip() for p in rest.split(":")]
    log = parts[2:] == ["log"]
    if len(parts) not in (2, 3) or (len(parts) == 3 and not log):
        raise ConfigError(f"--space '{text}' does not parse; {usage}")
    number = int if kind == "int" else float
    try:
        low, high = number(parts[0]), number(parts[1])
    except ValueError:
        raise ConfigError(f"--space '{text}': '{parts[0]}' and '{parts[1]}' must be {kind} numbers; {usage}") from None
    if not (math.isfinite(low) and math.isfinite(high)):
        raise ConfigError(f"--space '{text}': the range must be finite")
    if low > high:
        raise ConfigError(f"--space '{text}': the range {low}..{high} is empty (LOW must not exceed HIGH)")
    if log and low <= 0:
        raise ConfigError(f"--space '{text}': a log range must start above 0, got {low}")
    return SpaceKey(key, kind, low, high, log, text=text)


def _scalar(text: str):
    try:
        value = read_yaml(text)
    except (yaml.YAMLError, ConfigError):
        return text
    return value if isinstance(value, (str, int, float, bool)) else text


def _set(key: str, value) -> str:
    """A ``--set`` override that reads back as ``value`` (YAML, so a string choice stays a string)."""
    return f"{key}={yaml.safe_dump(value, default_flow_style=True).strip().removesuffix('...').strip()}"


# ---------------------------------------------------------------------------------------------------- the study

@dataclasses.dataclass
class TuneOptions:
    config: str  # the base config file
    space: Sequence[str]  # the --space texts
    out: str
    overrides: Sequence[str] = ()  # --set for every trial and the final run
    trials: int = 8  # finished (complete or pruned) trials the study reaches; 8 is a small study, raise it for more
    jobs: int = 1  # trials at once; 1 leaves the machine's cores to one run
    heldout_per_class: int | None = None  # None: the base config's data.heldout_per_class
    metric: str = "top1"  # the papers' headline metric
    key: str | None = None  # the predict key scored; None: the first the run reports
    pruner: str = "median"  # median, hyperband or none; median is Optuna's default and needs no resource budget
    sampler_seed: int = 0  # TPE's seed (offset by the trials already in the study, so a continued study repeats none)
    final: str = "auto"  # auto: train best.yaml after the trials; only: no new trials; skip: no final run
    executor: str = "local"  # local (this machine), slurm or submitit-local (workers as jobs on one journal)
    slurm: Any = None  # peerkd.experiments.slurm.SlurmOptions for the workers' jobs
    wait: bool = False  # slurm: wait for the workers, then train the final run as one more job


@dataclasses.dataclass
class _Plan:
    """The checked inputs of a study: everything is validated before any run starts."""

    options: TuneOptions
    space: list[SpaceKey]
    config: Config  # the base config with the trials' held-out split and one sample of the space
    heldout_per_class: int
    base_heldout: int  # the base config's own data.heldout_per_class (kept in best.yaml)
    out: Path

    @property
    def split_overrides(self) -> list[str]:
        return [f"data.heldout_per_class={self.heldout_per_class}", "data.eval_split=heldout"]

    def record(self) -> dict:
        """What a study is: a continued study must give the same (the journal keeps it)."""
        return {"config": str(Path(self.options.config).resolve()), "overrides": list(self.options.overrides),
                "space": [k.text for k in self.space], "heldout_per_class": self.heldout_per_class,
                "eval_split": "heldout", "metric": self.options.metric, "key": self.options.key,
                "epochs": self.config.schedule.epochs, "seed": self.config.seed}


def check(options: TuneOptions, check_data: Callable[[Config], None] | None = None) -> _Plan:
    """Every input checked before any run: the space parses and each key takes its sample values in the schema
    (built as a config), the held-out split is given, and ``check_data`` (the interface's: the dataset's split
    sizes, without reading the test set) accepts the trials' config. Raises ConfigError with one line."""
    if options.trials < 0 or options.jobs < 1:
        raise ConfigError("--trials must be >= 0 and --jobs >= 1")
    if options.metric not in MAXIMIZE:
        raise ConfigError(f"--metric: '{options.metric}' is not one of {', '.join(MAXIMIZE)}")
    if not options.space:
        raise ConfigError("tune: give at least one --space KEY=SPEC, e.g. --space 'method.temperature=float:1:8:log'")
    space = [parse_space(text) for text in options.space]
    seen = [k.key for k in space]
    twice = sorted({k for k in seen if seen.count(k) > 1})
    if twice:
        raise ConfigError(f"--space: key '{twice[0]}' is given twice")
    tree = load_yaml(options.config)
    base = build_config(tree, options.overrides)
    heldout = options.heldout_per_class if options.heldout_per_class is not None else base.data.heldout_per_class
    if heldout <= 0:
        raise ConfigError("tune: trials are scored on a validation split carved from the training set; give "
                          "--heldout-per-class N (images per class) or set data.heldout_per_class in the config")
    split = [f"data.heldout_per_class={heldout}", "data.eval_split=heldout"]
    config = base
    for entry in space:
        for value in entry.samples():
            try:
                config = build_config(tree, [*options.overrides, *split, _set(entry.key, value)])
            except ConfigError as err:
                raise ConfigError(f"--space '{entry.text}': {err}") from None
            if _flat(config).get(entry.key, _MISSING) is _MISSING:
                raise ConfigError(f"--space '{entry.text}': '{entry.key}' is a section, not a key")
    if check_data is not None:
        check_data(config)
    return _Plan(options, space, config, heldout, base.data.heldout_per_class, Path(options.out))


_MISSING = object()


def _flat(config: Config) -> dict:
    return flatten_tree(config.to_dict())


class _Stop:
    """SIGTERM / Ctrl-C asked the study to stop (set by the main thread's handler, read by the trials' threads)."""

    def __init__(self):
        self.event = threading.Event()
        self.signum: int | None = None

    def __call__(self, signum, frame):
        self.signum = signum
        self.event.set()


class TrialFailed(RuntimeError):
    """A trial's run ended with an error (the end of its log is in the message)."""


class TrialInterrupted(RuntimeError):
    """The study was stopped while this trial trained; its run saved a checkpoint that a later start continues."""


def open_study(plan: _Plan):
    optuna = _optuna()
    try:
        from optuna.storages.journal import JournalFileBackend
    except ImportError:  # Optuna 3.x
        from optuna.storages import JournalFileStorage as JournalFileBackend
    plan.out.mkdir(parents=True, exist_ok=True)
    storage = optuna.storages.JournalStorage(JournalFileBackend(str(plan.out / JOURNAL_FILE)))
    epochs = plan.config.schedule.epochs
    if plan.options.pruner == "median":
        pruner = optuna.pruners.MedianPruner(n_startup_trials=PRUNE_STARTUP_TRIALS, n_warmup_steps=0)
    elif plan.options.pruner == "hyperband":
        pruner = optuna.pruners.HyperbandPruner(min_resource=1, max_resource=epochs)
    else:
        pruner = optuna.pruners.NopPruner()
    direction = "maximize" if MAXIMIZE[plan.options.metric] else "minimize"
    study = optuna.create_study(storage=storage, study_name=STUDY_NAME, direction=direction, pruner=pruner,
                                load_if_exists=True)
    recorded = study.user_attrs.get("study")
    if recorded is None:
        study.set_user_attr("study", plan.record())
    elif recorded != plan.record():
        changed = [k for k in plan.record() if recorded.get(k) != plan.record()[k]]
        raise ConfigError(f"tune: {plan.out} holds a study started with another {', '.join(changed)} "
                          f"({', '.join(f'{k}={recorded.get(k)!r}' for k in changed)}); give the same, or another "
                          "--out")
    study.sampler = optuna.samplers.TPESampler(seed=plan.options.sampler_seed + len(study.trials))
    return study


def _finished(study) -> int:
    optuna = _optuna()
    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    return len(study.get_trials(deepcopy=False, states=states))


def requeue_interrupted(study) -> int:
    """Give each trial an earlier stop interrupted (its values, its run folder with the checkpoint) to a new trial;
    returns how many."""
    done = set(study.user_attrs.get("requeued", []))
    fresh = [t for t in study.trials if t.user_attrs.get("interrupted") and t.number not in done]
    for trial in fresh:
        study.enqueue_trial(trial.params, user_attrs={"run_dir": trial.user_attrs["run_dir"],
                                                      "continues": trial.number})
    if fresh:
        study.set_user_attr("requeued", sorted(done | {t.number for t in fresh}))
    return len(fresh)


def _start(spec: RunSpec) -> tuple[subprocess.Popen, Any]:
    run_dir = Path(spec.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    log = open(run_dir / SWEEP_LOG, "a")
    argv = spec.train_argv()
    log.write(f"\n# peerkd tune {time.strftime('%Y-%m-%d %H:%M:%S')}: {' '.join(argv)}\n")
    log.flush()
    # own session: a Ctrl-C at the terminal reaches the study alone, which then stops each trial with SIGTERM
    return subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=child_env(), start_new_session=True), log


def _stop(process: subprocess.Popen) -> None:
    """SIGTERM (the trainer saves a checkpoint and exits 143), then kill after STOP_WAIT_S."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=STOP_WAIT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


class _MetricsTail:
    """The eval records a run appends to its ``metrics.jsonl``, read as the file grows."""

    def __init__(self, path: Path):
        self.path, self.offset, self.partial = path, 0, ""

    def new_evals(self) -> list[dict]:
        try:
            with open(self.path) as f:
                f.seek(self.offset)
                text = f.read()
                self.offset = f.tell()
        except OSError:
            return []
        text, self.partial = self.partial + text, ""
        lines = text.split("\n")
        self.partial = lines.pop()  # a line being written
        records = []
        for line in lines:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if record.get("kind") == "eval":
                records.append(record)
        return records


def _score(metrics: dict, key: str | None, metric: str, where: str) -> tuple[str, float]:
    keys = [k for k in metrics if k != "diversity"]
    key = key or (keys[0] if keys else None)
    if key not in metrics or metric not in metrics[key]:
        raise TrialFailed(f"{where} has no {metric} of predict key '{key}' (its keys: {', '.join(keys)}); "
                          "give --key")
    return key, float(metrics[key][metric])


class Objective:
    """One trial: its run launched, its epochs reported to the pruner, its validation metric returned."""

    def __init__(self, plan: _Plan, stop: _Stop, say: Callable[[str], None]):
        self.plan, self.stop, self.say = plan, stop, say

    def __call__(self, trial) -> float:
        optuna = _optuna()
        plan = self.plan
        if self.stop.event.is_set():
            trial.study.stop()
            trial.set_user_attr("interrupted", True)
            trial.set_user_attr("run_dir", trial.user_attrs.get("run_dir") or self._run_dir(trial))
            raise TrialInterrupted("the study was stopped before this trial started")
        run_dir = trial.user_attrs.get("run_dir") or self._run_dir(trial)
        trial.set_user_attr("run_dir", run_dir)
        values = {entry.key: entry.suggest(trial) for entry in plan.space}
        sets = [*plan.options.overrides, *plan.split_overrides, *(_set(k, v) for k, v in values.items())]
        spec = RunSpec(str(plan.options.config), tuple(sets), plan.config.seed, run_dir, Path(run_dir).name,
                       plan.config.schedule.epochs)
        how = "continuing from its checkpoint" if run_state(spec) == "partial" else "started"
        shown = ", ".join(f"{k}={_show(v)}" for k, v in values.items())
        self.say(f"[trial {trial.number}] {shown}: {how}, log {Path(run_dir) / SWEEP_LOG}")
        tail = _MetricsTail(Path(run_dir) / METRICS_LOG)
        started = time.perf_counter()
        process, log = _start(spec)
        try:
            while True:
                ended = process.poll() is not None
                for record in tail.new_evals():
                    where = f"trial {trial.number}'s epoch {record['epoch'] + 1}"
                    _, value = _score(record["metrics"], plan.options.key, plan.options.metric, where)
                    trial.report(value, record["epoch"])
                    trial.set_user_attr("epochs", record["epoch"] + 1)
                    last = record["epoch"] + 1 >= plan.config.schedule.epochs  # done training: let it finish
                    if not ended and not last and trial.should_prune():
                        _stop(process)
                        trial.set_user_attr("seconds", round(time.perf_counter() - started, 1))
                        self.say(f"[trial {trial.number}] pruned after epoch {record['epoch'] + 1} (validation "
                                 f"{plan.options.metric} {value:.2f}); its checkpoint is kept in {run_dir}")
                        raise optuna.TrialPruned(f"validation {plan.options.metric} {value:.4g} at epoch "
                                                 f"{record['epoch'] + 1}")
                if ended:
                    break
                if self.stop.event.is_set():
                    _stop(process)
                    trial.study.stop()
                    trial.set_user_attr("interrupted", True)
                    self.say(f"[trial {trial.number}] stopped with a checkpoint; the next start continues it")
                    raise TrialInterrupted("the study was stopped")
                time.sleep(POLL_S)
        finally:
            if process.poll() is None:
                _stop(process)
            log.close()
        seconds = time.perf_counter() - started
        trial.set_user_attr("seconds", round(seconds, 1))
        if process.returncode != 0:
            text = last_lines(Path(run_dir) / SWEEP_LOG, FAILED_LOG_LINES)[-400:]
            self.say(f"[trial {trial.number}] FAILED (exit {process.returncode}) after {seconds:.0f} s: {text}")
            raise TrialFailed(f"exit {process.returncode}: {text}")
        summary = json.loads((Path(run_dir) / SUMMARY_FILE).read_text())
        if summary.get("eval_split") != "heldout":
            raise TrialFailed(f"{run_dir}: the run was not scored on the held-out split")
        key, value = _score({k: v["last"] for k, v in summary["keys"].items()}, plan.options.key,
                            plan.options.metric, f"{run_dir}/{SUMMARY_FILE}")
        trial.set_user_attr("key", key)
        self.say(f"[trial {trial.number}] finished in {seconds:.0f} s: validation {plan.options.metric} of {key} "
                 f"{value:.2f}")
        return value

    def _run_dir(self, trial) -> str:
        return str(self.plan.out / TRIALS_DIR / f"t{trial.number:04d}")


def _show(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


# -------------------------------------------------------------------------------------------- best config, final

def write_best_config(plan: _Plan, study) -> Path:
    """The base config with the best trial's values, the base config's own held-out split and ``data.eval_split:
    test``, as ``<out>/best.yaml`` (a resolved config that ``peerkd train -c`` runs)."""
    best = study.best_trial
    tree = load_yaml(plan.options.config)
    sets = [*plan.options.overrides, *(_set(k, v) for k, v in best.params.items()),
            f"data.heldout_per_class={plan.base_heldout}", "data.eval_split=test"]
    config = build_config(tree, sets)
    config.name = f"{config.name}-tuned"
    header = [f"# peerkd tune: the best of {_finished(study)} trial(s) of {plan.out / JOURNAL_FILE} (trial "
              f"{best.number}, validation {plan.options.metric} {best.value:.4g} on {plan.heldout_per_class} "
              "held-out training images per class)"]
    header += [f"#   {k}: {_show(v)}" for k, v in best.params.items()]
    header += [f"# trains on every training image (data.heldout_per_class {plan.base_heldout}) and scores the test "
               "set: peerkd train -c best.yaml"]
    path = plan.out / BEST_CONFIG
    path.write_text("\n".join(header) + "\n" + config.to_yaml())
    return path


def run_final(plan: _Plan, best_yaml: Path, stop: _Stop, say) -> tuple[int, dict | None]:
    """Train ``best.yaml`` in ``<out>/final`` (continued from its checkpoint if an earlier start was stopped);
    returns its exit code and summary."""
    config = build_config(load_yaml(best_yaml))
    run_dir = plan.out / FINAL_DIR
    spec = RunSpec(str(best_yaml), (), config.seed, str(run_dir), FINAL_DIR, config.schedule.epochs)
    state = run_state(spec)
    if state != "done":
        how = "continuing from its checkpoint" if state == "partial" else "started"
        say(f"[final] {best_yaml} on the test set: {how}, log {run_dir / SWEEP_LOG}")
        process, log = _start(spec)
        try:
            while process.poll() is None:
                if stop.event.is_set():
                    _stop(process)
                    break
                time.sleep(POLL_S)
        finally:
            if process.poll() is None:
                _stop(process)
            log.close()
        if process.returncode != 0:
            say(f"[final] exit {process.returncode}: {last_lines(run_dir / SWEEP_LOG, FAILED_LOG_LINES)[-400:]}")
            return process.returncode, None
    return 0, json.loads((run_dir / SUMMARY_FILE).read_text())


# -------------------------------------------------------------------------------------------------------- report

def importances(study) -> dict[str, float] | str:
    """Each key's importance (:func:`optuna.importance.get_param_importances`, fANOVA), or why there is none."""
    optuna = _optuna()
    evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)  # seeded: the same study, the same numbers
    try:
        return optuna.importance.get_param_importances(study, evaluator=evaluator)
    except (RuntimeError, ValueError) as err:
        return f"n/a ({err})"


def report(plan: _Plan, study, final: dict | None) -> str:
    optuna = _optuna()
    metric, keys = plan.options.metric, [k.key for k in plan.space]
    lines = [f"study {plan.out / JOURNAL_FILE}: {len(study.trials)} trial(s), {_finished(study)} finished; each "
             f"trained on the training set less {plan.heldout_per_class} held-out images per class and scored on "
             f"those (validation {metric}, {'higher' if MAXIMIZE[metric] else 'lower'} is better); the test set "
             "was not read by any trial"]
    head = ["trial", "state", *keys, f"val {metric}", "epochs", "time s", "run"]
    rows = []
    for t in study.trials:
        value = t.value if t.value is not None else (list(t.intermediate_values.values()) or [None])[-1]
        state = "stopped" if t.user_attrs.get("interrupted") else t.state.name.lower()  # continued by a later trial
        rows.append([str(t.number), state, *(_show(t.params[k]) if k in t.params else "-" for k in keys),
                     "-" if value is None else f"{value:.2f}", str(t.user_attrs.get("epochs", "-")),
                     str(t.user_attrs.get("seconds", "-")), t.user_attrs.get("run_dir", "-")])
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    for row in [head, *rows]:
        lines.append("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
    found = importances(study)
    if isinstance(found, str) or not found:
        lines.append(f"importance: {found or 'n/a (no completed trial)'}")
    else:
        lines.append("importance (fANOVA, sums to 1): " + ", ".join(f"{k} {v:.2f}" for k, v in found.items()))
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if complete:
        best = study.best_trial
        lines.append(f"best: trial {best.number}, validation {metric} {best.value:.2f}: "
                     + ", ".join(f"{k}={_show(v)}" for k, v in best.params.items()) + f" -> {plan.out / BEST_CONFIG}")
    if final is not None:
        scored = ", ".join(f"{k} {v['last']['top1']:.2f}" for k, v in final["keys"].items())
        lines.append(f"final: {plan.out / BEST_CONFIG} trained on the whole training set, {final['epochs']} epochs, "
                     f"test top-1 % (last epoch): {scored}; the test set was read by this run only")
    else:
        lines.append("final: not run yet (the test set has not been read); `--final` trains best.yaml and scores it "
                     "on the test set")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------- main

def tune(options: TuneOptions, check_data: Callable[[Config], None] | None = None,
         say: Callable[[str], None] | None = None) -> int:
    """Run (or continue) the study of ``options``; returns the exit code (0, 1 when trials or the final run failed,
    143 / 130 when SIGTERM / Ctrl-C stopped it)."""
    say = say or (lambda line: print(line, flush=True))
    optuna = _optuna()
    plan = check(options, check_data)
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # the study prints its own lines
    study = open_study(plan)
    stop = _Stop()
    handlers = {}
    if is_main_thread():
        handlers = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    if options.executor != "local" and options.final != "only":
        requeue_interrupted(study)
        return submit_workers(plan, say)
    try:
        if options.final != "only":
            continued = requeue_interrupted(study)
            left = max(options.trials - _finished(study), 0)
            say(f"[tune] {plan.out / JOURNAL_FILE}: {_finished(study)} of {options.trials} trial(s) finished, "
                f"{left} to run ({options.jobs} at once){f', {continued} continued' if continued else ''}; "
                f"validation split: {plan.heldout_per_class} training images per class")
            if left:
                states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
                study.optimize(Objective(plan, stop, say), n_trials=left, n_jobs=options.jobs,
                               catch=(TrialFailed, TrialInterrupted),
                               callbacks=[optuna.study.MaxTrialsCallback(options.trials, states=states)])
        complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        final, code = None, 0
        if stop.event.is_set():
            code = EXIT_CTRL_C if stop.signum == signal.SIGINT else EXIT_INTERRUPTED
        elif not complete:
            say("[tune] no trial completed: no best config")
            code = 1
        else:
            best_yaml = write_best_config(plan, study)
            if options.final != "skip":
                code, final = run_final(plan, best_yaml, stop, say)
                if stop.event.is_set():
                    code = EXIT_CTRL_C if stop.signum == signal.SIGINT else EXIT_INTERRUPTED
        text = report(plan, study, final)
        (plan.out / REPORT_FILE).write_text(text + "\n")
        say(text)
        if stop.event.is_set():
            say(f"[tune] stopped: finished trials are kept in {plan.out / JOURNAL_FILE}; run the same command again "
                "to continue (stopped runs continue from their checkpoints)")
        failed = [t for t in study.trials if t.state == optuna.trial.TrialState.FAIL
                  and not t.user_attrs.get("interrupted")]
        return code or (1 if failed else 0)
    finally:
        for sig, previous in handlers.items():
            signal.signal(sig, previous)


# ------------------------------------------------------------------------------------------------ SLURM workers

def worker_argv(options: TuneOptions, final: bool = False) -> list[str]:
    """The ``peerkd tune`` command a SLURM job runs: this study on this machine's executor, one trial at a time
    (``final``: no new trial, the final run only)."""
    argv = [sys.executable, "-m", "peerkd", "tune", "-c", str(Path(options.config).resolve()),
            "--out", str(Path(options.out).resolve()), "--trials", str(options.trials), "--jobs", "1",
            "--metric", options.metric, "--pruner", options.pruner, "--sampler-seed", str(options.sampler_seed),
            "--heldout-per-class", str(options.heldout_per_class), "--final" if final else "--no-final"]
    argv += [a for text in options.space for a in ("--space", text)]
    argv += [a for text in options.overrides for a in ("--set", text)]
    return argv + (["--key", options.key] if options.key else [])


class TuneWorker:
    """A submitit callable: one ``peerkd tune`` worker process on the study's journal file. On SLURM's requeue
    signal it stops its worker (whose running trial saves a checkpoint and is marked interrupted) and resubmits a
    fresh worker, which continues that trial from its checkpoint."""

    def __init__(self, argv: list[str]):
        self.argv = argv
        self._process: subprocess.Popen | None = None

    def __getstate__(self) -> dict:
        return {"argv": self.argv, "_process": None}  # a process does not travel

    def __call__(self) -> int:
        self._process = subprocess.Popen(self.argv, env=child_env())
        while self._process.poll() is None:  # a poll loop: submitit's signal handler may run meanwhile
            time.sleep(0.5)
        if self._process.returncode not in (0, EXIT_INTERRUPTED, EXIT_CTRL_C):
            raise RuntimeError(f"peerkd tune worker exited {self._process.returncode}; see this job's log")
        return self._process.returncode

    def checkpoint(self, *args, **kwargs):
        from peerkd.experiments.slurm import _submitit, stop_for_requeue

        stop_for_requeue(self._process)  # the worker stops its trial with a checkpoint, marked interrupted
        return _submitit().helpers.DelayedSubmission(type(self)(self.argv))


def submit_workers(plan: _Plan, say) -> int:
    """``--jobs`` SLURM jobs (or submitit's local executor), each a worker on ``<out>/study.journal`` until the
    study has ``--trials`` finished trials; with ``--wait``, then the final run as one more job."""
    from peerkd.experiments.slurm import SlurmOptions, _submitit

    options = plan.options
    submitit = _submitit()
    slurm = options.slurm or SlurmOptions()
    cluster = "local" if options.executor == "submitit-local" else "slurm"
    executor = submitit.AutoExecutor(folder=str(plan.out / ".submitit"), cluster=cluster,
                                     slurm_max_num_timeout=slurm.max_requeues)
    params = dict(timeout_min=slurm.time_min, name="peerkd-tune", cpus_per_task=slurm.cpus, tasks_per_node=1,
                  nodes=1, mem_gb=slurm.mem_gb, gpus_per_node=slurm.gpus)
    if cluster == "slurm":
        params["slurm_signal_delay_s"] = SIGNAL_DELAY_S
    if slurm.partition:
        params["slurm_partition"] = slurm.partition
    executor.update_parameters(**params)
    options = dataclasses.replace(options, heldout_per_class=plan.heldout_per_class)
    jobs = [executor.submit(TuneWorker(worker_argv(options))) for _ in range(options.jobs)]
    say(f"[tune] {len(jobs)} worker job(s) on {plan.out / JOURNAL_FILE}: {', '.join(j.job_id for j in jobs)}; logs "
        f"in {plan.out / '.submitit'}")
    if not options.wait:
        say("[tune] the same command with --final (or --wait) trains the best config once the workers end")
        return 0
    failed = 0
    for job in jobs:
        try:
            job.result()
        except Exception as err:  # submitit re-raises the job's error here
            failed += 1
            say(f"[tune] worker job {job.job_id} FAILED: {str(err).strip().splitlines()[-1][:300]}")
    if options.final == "skip":
        return 1 if failed else 0
    final = executor.submit(TuneWorker(worker_argv(options, final=True)))
    say(f"[tune] the workers ended; final run: job {final.job_id}")
    try:
        final.result()
    except Exception as err:
        say(f"[tune] final job {final.job_id} FAILED: {str(err).strip().splitlines()[-1][:300]}")
        return 1
    say((plan.out / REPORT_FILE).read_text().rstrip())
    return 1 if failed else 0


# ------------------------------------------------------------------------------------------------------------ CLI

def add_arguments(parser) -> None:
    parser.add_argument("-c", "--config", required=True, help="the base YAML config every trial starts from")
    parser.add_argument("--space", action="append", default=[], metavar="KEY=SPEC",
                        help="a key to search (repeatable): KEY=float:LOW:HIGH[:log], KEY=int:LOW:HIGH[:log] or "
                        "KEY=cat:A,B,...")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a key in every trial and the final run (repeatable), as peerkd train --set")
    parser.add_argument("--out", help="the study's folder: journal, trials/, best.yaml, final/ "
                                      "(default <trainer.out>/tune-<name>)")
    parser.add_argument("--trials", type=int, default=8, help="finished trials the study reaches (default 8)")
    parser.add_argument("--jobs", type=int, default=1, help="trials at once on this machine (default 1)")
    parser.add_argument("--heldout-per-class", type=int,
                        help="training images per class held out as the validation split (default: the config's "
                             "data.heldout_per_class)")
    parser.add_argument("--metric", choices=list(MAXIMIZE), default="top1",
                        help="the validation metric optimised (default top1, maximised)")
    parser.add_argument("--key", help="the predict key scored (default: the first the run reports)")
    parser.add_argument("--pruner", choices=["median", "hyperband", "none"], default="median",
                        help="stop trials whose per-epoch validation metric lags (default median)")
    parser.add_argument("--sampler-seed", type=int, default=0, help="the TPE sampler's seed (default 0)")
    parser.add_argument("--executor", choices=["local", "slurm", "submitit-local"], default="local",
                        help="local processes (default), or --jobs worker jobs on SLURM through submitit sharing the "
                             "journal file (submitit-local: the same on this machine, for testing)")
    from peerkd.experiments.slurm import add_job_arguments

    add_job_arguments(parser, "job").add_argument(
        "--wait", action="store_true", help="wait for the worker jobs, then train the final run as a job")
    final = parser.add_mutually_exclusive_group()
    final.add_argument("--final", action="store_const", dest="final", const="only", default="auto",
                       help="start no new trial: train best.yaml and score it on the test set")
    final.add_argument("--no-final", action="store_const", dest="final", const="skip",
                       help="write best.yaml but do not train it (the test set stays unread)")


def options_from_args(args) -> TuneOptions:
    out = args.out
    if out is None:
        config = build_config(load_yaml(args.config), args.overrides)
        out = str(Path(config.trainer.out) / f"tune-{config.name}")
    return TuneOptions(config=args.config, space=args.space, out=out, overrides=args.overrides, trials=args.trials,
                       jobs=args.jobs, heldout_per_class=args.heldout_per_class, metric=args.metric, key=args.key,
                       pruner=args.pruner, sampler_seed=args.sampler_seed, final=args.final, executor=args.executor,
                       wait=args.wait, slurm=_slurm_options(args))


def _slurm_options(args):
    if args.executor == "local":
        return None
    from peerkd.experiments.slurm import SlurmOptions

    return SlurmOptions(partition=args.partition, time_min=args.time, gpus=args.gpus_per_job,
                        cpus=args.cpus_per_job, mem_gb=args.mem_gb, max_requeues=args.max_requeues)
