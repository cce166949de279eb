"""What a sweep runs: every config file x seed as a :class:`RunSpec` (its folder, the command that starts or continues
it, its state on disk). Shared by the local executor (:mod:`peerkd.experiments.sweep`) and SLURM
(:mod:`peerkd.experiments.slurm`)."""
from __future__ import annotations

import dataclasses
import json
import os
import re
import sys
from pathlib import Path
from typing import Sequence

from peerkd.config import Config, load_config
from peerkd.core.errors import ConfigError
from peerkd.core.process import SWEEP_GROUP_ENV
from peerkd.core.run_files import CHECKPOINT, SUMMARY_FILE


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """One run of a sweep: a config file, its overrides and a seed, and the folder they train into."""

    config_path: str
    overrides: tuple[str, ...]
    seed: int
    run_dir: str
    name: str  # the run folder's name, <config name>-s<seed>
    epochs: int  # the config's schedule.epochs: a summary with fewer epochs is continued, not skipped
    group: str = ""  # the sweep's group: its runs' tracked runs join it (trainer.loggers; "" for none)

    def env(self) -> dict[str, str]:
        """What the run's process gets in its environment besides the sweep's: the tracker group."""
        return {SWEEP_GROUP_ENV: self.group} if self.group else {}

    def train_argv(self, nproc: int = 1) -> list[str]:
        """The command that trains (or, when the folder holds a checkpoint, continues) this run."""
        sets = [a for o in (*self.overrides, f"seed={self.seed}") for a in ("--set", o)]
        run = Path(self.run_dir)
        where = ["--resume", str(run)] if run_state(self) == "partial" else ["--out", str(run)]
        train = ["-m", "peerkd", "train", "-c", self.config_path, *sets, *where]
        if nproc > 1:
            return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
                    *train]
        return [sys.executable, *train]


def run_state(spec: RunSpec) -> str:
    """``done`` (a summary of all the config's epochs), ``partial`` (a checkpoint to continue from) or ``new``."""
    run = Path(spec.run_dir)
    summary = run / SUMMARY_FILE
    if summary.is_file():
        try:
            if json.loads(summary.read_text()).get("epochs", 0) >= spec.epochs:
                return "done"
        except (OSError, ValueError):
            pass  # a summary being written or broken: the checkpoint decides
    return "partial" if (run / CHECKPOINT).is_file() else "new"


def config_files(paths: Sequence[str]) -> list[Path]:
    """The YAML files named, a folder standing for every ``*.yaml`` below it (sorted)."""
    files: list[Path] = []
    for text in paths:
        path = Path(text)
        if path.is_dir():
            found = sorted(path.rglob("*.yaml"))
            if not found:
                raise ConfigError(f"sweep: folder '{path}' holds no .yaml config")
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            raise ConfigError(f"sweep: config '{path}' does not exist; give YAML files or folders of them")
    return files


MAX_SEEDS = 10_000  # seeds one sweep may name: far above any paper's protocol, far below what fills the memory


def parse_seeds(text: str) -> list[int]:
    """``"0,1,2"`` or a range ``"0-4"`` -> the seeds, each once (at most :data:`MAX_SEEDS`)."""
    seeds: list[int] = []
    for part in text.split(","):
        part = part.strip()
        span = re.fullmatch(r"(\d+)-(\d+)", part)
        if span:
            first, last = int(span[1]), int(span[2])
            if last - first >= MAX_SEEDS:
                raise ConfigError(f"--seeds: '{part}' is {last - first + 1} seeds; a sweep takes at most {MAX_SEEDS}")
            seeds.extend(range(first, last + 1))
        elif part:
            if not re.fullmatch(r"\d+", part):
                raise ConfigError(f"--seeds: '{text}' is not a list of integers like 0,1,2 or 0-4")
            seeds.append(int(part))
    if not seeds:
        raise ConfigError("--seeds: give at least one seed, e.g. --seeds 0,1,2")
    if len(seeds) > MAX_SEEDS:
        raise ConfigError(f"--seeds: {len(seeds)} seeds; a sweep takes at most {MAX_SEEDS}")
    return list(dict.fromkeys(seeds))


def plan(configs: Sequence[str], seeds: Sequence[int], overrides: Sequence[str] = (), out: str = "runs",
         group: str = "") -> list[RunSpec]:
    """Every config x seed as a :class:`RunSpec`; each config is validated (with its overrides) before any run
    starts, and two configs that would share a run folder are refused. ``group``: the trackers' group of the runs."""
    specs: list[RunSpec] = []
    owner: dict[str, Path] = {}
    for path in config_files(configs):
        config: Config = load_config(path, [*overrides, f"seed={seeds[0]}"])
        if config.name in owner:
            raise ConfigError(f"sweep: {owner[config.name]} and {path} both have name '{config.name}', so their "
                              "runs would share folders; give one of them another name")
        owner[config.name] = path
        for seed in seeds:
            name = f"{config.name}-s{seed}"
            specs.append(RunSpec(str(path), tuple(overrides), seed, str(Path(out) / name), name,
                                 config.schedule.epochs, group))
    return specs


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a run: this one, with the ``peerkd`` that runs the sweep first on the path (so every run
    uses the same code, whatever the working folder)."""
    import peerkd

    root = str(Path(peerkd.__file__).resolve().parent.parent)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([root, *filter(None, [env.get("PYTHONPATH")])])
    env.update(extra or {})
    return env
