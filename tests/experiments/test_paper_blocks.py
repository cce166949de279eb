"""The paper: block's schema additions (a cell's own table, a mean over predict keys, foundation blocks), the rule
that every config under configs/ names the paper cells it reproduces, or is listed here as a config of no cell, and
this project's rule for paper ids (the library takes any non-empty id): a paper of ../shared/papers, or foundation."""
from functools import lru_cache
from pathlib import Path

import pytest

import peerkd
from peerkd.config import FOUNDATION_PAPER, ConfigError, build_config
from tests.paper_tables import TABLES

ROOT = Path(__file__).resolve().parents[2] / "configs"
PAPERS = Path(__file__).resolve().parents[3] / "shared" / "papers"  # ../shared/papers/<id>_<hash>.txt
# configs that reproduce no printed number: figure curves, methods named but not tabulated, methods on their own
NO_CELL = {"css/fig3", "cutnmix/fig1", "cutnmix/tfkd", "pskd/baselines",
           "dlb/shen2022_cifar100"}  # DLB Table 2: numbers not readable here (test_dlb_configs)
# their blocks and tests are the MDE ablation's (tests/configs/test_configs_mde.py)
OTHER_HELPER = {"mde/table6", "mde/fig3"}
# issue 21: tables outside ../shared/papers, typed from the authors' READMEs (Self-KD-Lib; winycg/MCL;
# hfutqian/SwitOKD), cited in each config's header
ISSUE21_IDS = {"selfkdlib", "switokd2022", "mcl2022"}


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


@lru_cache(maxsize=None)
def load(path: Path):
    return peerkd.load_config(path)


def project_paper_ids() -> set[str]:
    """The ids of this project's papers: the ``<id>`` of every ``../shared/papers/<id>_*.txt``; in a checkout without
    that folder, the papers whose tables tests/paper_tables.py transcribes from it."""
    if PAPERS.is_dir():
        return {path.name.split("_", 1)[0] for path in PAPERS.glob("*_*.txt")}
    return set(TABLES)


def test_the_transcribed_tables_are_of_papers_in_shared_papers():
    if not PAPERS.is_dir():
        pytest.skip(f"{PAPERS} is absent (a checkout outside the project's folder)")
    assert set(TABLES) <= project_paper_ids()


def test_every_paper_block_names_a_paper_of_this_project_or_foundation():
    ids = project_paper_ids() | {FOUNDATION_PAPER} | ISSUE21_IDS
    blocks = [(path, load(path).paper) for path in sorted(ROOT.rglob("*.yaml"))]
    assert any(paper is not None and paper.id != FOUNDATION_PAPER for _, paper in blocks)
    for path, paper in blocks:
        if paper is not None:
            assert paper.id in ids, f"{path}: paper.id '{paper.id}' is none of {sorted(ids)}"


def test_every_config_names_its_cells_or_is_a_config_of_no_cell():
    for path in sorted(ROOT.rglob("*.yaml")):
        folder = path.parent.relative_to(ROOT).as_posix()
        if folder in OTHER_HELPER:
            continue
        paper = load(path).paper
        if folder in NO_CELL:
            assert paper is None, f"{path}: a config of no cell carries a paper: block"
        else:
            assert paper is not None, f"{path}: no paper: block (give the cells it reproduces, or id: foundation)"
            tail = path.read_text().split("\npaper:", 1)[1].splitlines()[1:]
            assert all(line.startswith(" ") for line in tail), f"{path}: keep the paper: block at the end of the file"
