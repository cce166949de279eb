"""Every config of paper 001's tables loads (no training)."""
from pathlib import Path

import pytest

import peerkd

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs" / "mde").rglob("*.yaml"))


def test_there_is_a_config_per_cell():
    tables = {p.parent.name for p in CONFIGS}
    assert tables == {"table1", "table2", "table4", "table6", "fig3"} and len(CONFIGS) == 56


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_config_loads(path):
    config = peerkd.load_config(path)
    assert config.schedule.epochs == 300 and config.schedule.milestones == [150, 225]
    assert config.optim.nesterov and config.data.batch_size == 128
    assert path.read_text().startswith("# Paper 001")
    if config.method.name in ("one", "okddip", "mde"):
        assert config.method.options.branches == 4


def test_table6_gate_and_sa_rows_are_one_and_okddip_and_fig3_sweeps_gamma():
    """Table 6's Gate / SA rows equal ONE's / OKDDip's Table 2 numbers (25.76, 25.45): those baselines, not MDE."""
    table6 = Path(__file__).resolve().parents[2] / "configs" / "mde" / "table6"
    expected = {"gate_nocd": ("one", 0.0), "gate_cd": ("one", 5e-8), "attention_nocd": ("okddip", 0.0),
                "attention_cd": ("okddip", 5e-8), "ffm_nocd": ("mde", 0.0), "ffm_cd": ("mde", 5e-8)}
    for stem, (method, gamma) in expected.items():
        config = peerkd.load_config(table6 / f"{stem}.yaml")
        assert (config.method.name, config.method.options.cd_weight) == (method, gamma), stem
        assert config.paper.table == "6" and config.paper.mean_of == 3
        assert {c.metric for c in config.paper.cells} == {"error", "top5_error"}
    fig3 = sorted(p for p in CONFIGS if p.parent.name == "fig3")
    gammas = sorted(peerkd.load_config(p).method.options.cd_weight for p in fig3)
    assert gammas == [1e-10, 1e-9, 1e-8, 5e-8, 1e-7, 1e-6, 1e-5, 1e-4]
