"""Every config under configs/cutnmix/ loads and validates (no training)."""
from pathlib import Path

import pytest

import peerkd

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs" / "cutnmix").rglob("*.yaml"))


def test_there_is_a_config_per_table_cell():
    names = {p.stem for p in CONFIGS}
    assert len([n for n in names if n.startswith(("cifar10_", "cifar100_")) and "tfkd" not in n]) == 72
    assert {"cutnmix_only", "cutnmix_mmd", "cutnmix_pt", "cutnmix_mmd_pt"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_config_loads(path):
    config = peerkd.load_config(path)
    assert config.schedule.epochs == 240 and config.optim.lr == 0.05 and config.data.batch_size == 64
    assert config.schedule.milestones == [150, 180, 210]
    assert path.read_text().startswith("# ")
