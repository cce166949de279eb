"""Every config of paper 001's tables loads (no training)."""
from pathlib import Path

import pytest

import peerkd

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs" / "mde").rglob("*.yaml"))


def test_there_is_a_config_per_cell():
    tables = {p.parent.name for p in CONFIGS}
    assert tables == {"table1", "table2", "table4", "table6"} and len(CONFIGS) == 48


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_config_loads(path):
    config = peerkd.load_config(path)
    assert config.schedule.epochs == 300 and config.schedule.milestones == [150, 225]
    assert config.optim.nesterov and config.data.batch_size == 128
    assert path.read_text().startswith("# Paper 001")
    if config.method.name in ("one", "okddip", "mde"):
        assert config.method.options.branches == 4
