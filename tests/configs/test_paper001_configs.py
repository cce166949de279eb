"""Paper 001 (MDE, Li et al.): every cell of Tables 1-5 has a config with its paper: block (Table 6 and Fig. 3 have
their own test, tests/configs/test_configs_mde.py); the lint holds T, m and the schedule to sec. 4.1's setting."""
from pathlib import Path

import pytest

from tests.paper_configs import (ROOT, check_block, check_coverage, check_predict_keys, configs_under, header, load,
                           notes_deviation)

CONFIGS = configs_under("mde")
FOUNDATION_CELL = ROOT / "cifar100" / "vanilla_resnet32.yaml"  # the same run as mde/table2/vanilla_resnet32


def name(path: Path) -> str:
    return f"{path.parent.name}/{path.stem}"


def test_every_table_cell_has_a_config():
    check_coverage("001", CONFIGS)


@pytest.mark.parametrize("path", CONFIGS + [FOUNDATION_CELL], ids=name)
def test_block_matches_the_paper_and_the_header(path):
    check_block(path, "001")  # "All the reported results are averaged based on three runs" (sec. 4): mean_of 3


def test_predict_keys_exist():
    check_predict_keys(CONFIGS)


@pytest.mark.parametrize("path", CONFIGS + [FOUNDATION_CELL], ids=name)
def test_temperature_branches_and_schedule_are_the_papers(path):
    """Sec. 4.1: m = 4 (three auxiliary branches and a leader), T = 3, lr 0.1 /10 at 150 and 225 of 300, Nesterov."""
    config, text = load(path), header(path)
    options = config.method.options
    if config.method.name != "vanilla":
        assert options.branches == 4 or notes_deviation(text), path
        assert options.temperature == 3.0 or notes_deviation(text), path
    assert (config.schedule.epochs, config.schedule.milestones, config.optim.lr) == (300, [150, 225], 0.1), path
    assert config.optim.nesterov and config.optim.weight_decay == 5e-4 and config.data.batch_size == 128, path
