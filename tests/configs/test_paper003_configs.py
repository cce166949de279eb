"""Paper 003 (CutnMix-OD, Shen et al.): every cell of Tables 1-2 has a config with its paper: block, Fig. 1's DML +
CutMix curves have configs; the lint holds tau, the peer / branch count and the schedule to sec. 3.1-3.2."""
from pathlib import Path

import pytest

from tests.paper_configs import (check_block, check_coverage, check_predict_keys, configs_under, header, load,
                           notes_deviation)

CONFIGS = configs_under("cutnmix")
NO_CELL = {"fig1", "tfkd"}  # Fig. 1 is a curve; Tf-KD is named in sec. 3.2 but has no row in Table 1


def name(path: Path) -> str:
    return f"{path.parent.name}/{path.stem}"


def test_every_table_cell_has_a_config():
    check_coverage("003", CONFIGS)
    fig1 = [p for p in CONFIGS if p.parent.name == "fig1"]
    assert len(fig1) == 6  # one DML + CutMix config per Table 1 network


@pytest.mark.parametrize("path", [p for p in CONFIGS if p.parent.name not in NO_CELL], ids=name)
def test_block_matches_the_paper_and_the_header(path):
    check_block(path, "003")  # "the average and standard deviation ... over three runs" (sec. 3.2): mean_of 3


def test_configs_of_no_cell_have_no_block():
    for path in CONFIGS:
        if path.parent.name in NO_CELL:
            assert load(path).paper is None, path


def test_fig1_is_dml_on_one_shared_cutmix_batch():
    """Sec. 2.1: 'assigning identically the same batch of images after mixed operation to each network'."""
    for path in CONFIGS:
        if path.parent.name == "fig1":
            config = load(path)
            twin = load(path.parents[1] / "table1" / path.name.replace("dml_cutmix", "dml"))
            cutmix = load(path.parents[1] / "table1" / path.name.replace("dml_cutmix", "cutmix"))
            assert config.method.name == "dml" and not config.method.options.separate_views
            assert config.method.options == twin.method.options  # the Table 1 DML row, plus CutMix
            mixing = (config.data.mixing, config.data.mixing_alpha, config.data.mixing_prob)
            assert mixing == (cutmix.data.mixing, cutmix.data.mixing_alpha, cutmix.data.mixing_prob)
            assert config.data.mixing == "cutmix"


def test_predict_keys_exist():
    check_predict_keys(CONFIGS)


@pytest.mark.parametrize("path", CONFIGS, ids=name)
def test_temperature_branches_and_schedule_are_the_papers(path):
    """Sec. 3.1: tau = 3, J = 2 peers, 240 epochs x0.1 at 150, 180, 210, lr 0.05, Nesterov; sec. 3.2: two peers in
    DML, 2 branches in KDCL / ONE / OKDDip, the other methods' own hyper-parameters."""
    config, text = load(path), header(path)
    options, method = config.method.options, config.method.name
    if method in ("dml", "cutnmix", "one", "okddip"):
        assert options.temperature == 3.0 or notes_deviation(text), path
    if method in ("dml", "cutnmix", "kdcl"):
        assert len(options.models) == 2, path
    if method == "one":
        assert options.branches == 2, path
    if method == "okddip":  # 2 peers + the leader; the header explains the reading
        assert options.branches == 3 and "'Branches = 2' (section 3.2) is read as two auxiliary peers" in text, path
    assert (config.schedule.epochs, config.schedule.milestones, config.optim.lr) == (240, [150, 180, 210], 0.05), path
    assert config.optim.nesterov and config.optim.weight_decay == 5e-4, path
    assert config.data.batch_size == 64 and "batch 64 assumed" in text, f"{path}: the paper gives no batch size"
