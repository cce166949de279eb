"""The paper: block's schema additions (a cell's own table, a mean over predict keys, foundation blocks) and the rule
that every config under configs/ names the paper cells it reproduces, or is listed here as a config of no cell."""
from pathlib import Path

import pytest

import peerkd
from peerkd.config import ConfigError, build_config

ROOT = Path(__file__).resolve().parents[2] / "configs"
# configs that reproduce no printed number: figure curves, methods named but not tabulated, methods on their own
NO_CELL = {"css/fig3", "cutnmix/fig1", "cutnmix/tfkd", "pskd/baselines"}
OTHER_HELPER = {"mde/table6", "mde/fig3"}  # their blocks and tests are the MDE ablation's (tests/configs/test_configs_mde.py)


def block(**cell):
    return {"paper": {"id": "000", "table": "1", "cells": [{"row": "ResNet-110", "value": 80.71, **cell}]}}


def test_a_cell_may_name_its_own_table_and_a_mean_over_keys():
    paper = build_config(block(predict="mean:net1,net2", table="fig4")).paper
    cell = paper.cells[0]
    assert cell.predict_keys() == ["net1", "net2"] and cell.table == "fig4" and paper.table == "1"
    assert build_config(block(predict="leader")).paper.cells[0].predict_keys() == ["leader"]


@pytest.mark.parametrize("predict", ["mean:", "mean:net1,,net2", ""])
def test_an_empty_predict_key_is_refused(predict):
    with pytest.raises(ConfigError, match="predict"):
        build_config(block(predict=predict))


def test_a_foundation_block_needs_no_cells_but_a_paper_block_does():
    assert build_config({"paper": {"id": "foundation"}}).paper.cells == []
    with pytest.raises(ConfigError, match="table"):
        build_config({"paper": {"id": "001"}})


def test_every_config_names_its_cells_or_is_a_config_of_no_cell():
    for path in sorted(ROOT.rglob("*.yaml")):
        folder = path.parent.relative_to(ROOT).as_posix()
        if folder in OTHER_HELPER:
            continue
        paper = peerkd.load_config(path).paper
        if folder in NO_CELL:
            assert paper is None, f"{path}: a config of no cell carries a paper: block"
        else:
            assert paper is not None, f"{path}: no paper: block (give the cells it reproduces, or id: foundation)"
            tail = path.read_text().split("\npaper:", 1)[1].splitlines()[1:]
            assert all(line.startswith(" ") for line in tail), f"{path}: keep the paper: block at the end of the file"
