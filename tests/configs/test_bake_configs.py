"""BAKE as winycg/Self-KD-Lib runs it: the README's ResNet-18 CIFAR-100 rows (BAKE and the cross-entropy baseline)
as configs with ``paper:`` blocks; every config loads and builds, its block holds the README's number (typed here),
the header states it, and the method's settings and the recipe are main.py's (typed here), so a wrong one fails."""
from pathlib import Path

import pytest

from tests.configs.selfkdlib_recipe import check_main_py_recipe
from tests.paper_configs import check_predict_keys, configs_under, header_numbers, load

CONFIGS = configs_under("bake/selfkdlib")
# winycg/Self-KD-Lib README.md @ ede3062d1193626da2bc8a1ceba535d84fb0a08c, "Top-1 accuracy(%) of Self-KD and Data
# Augmentation (DA) methods on ResNet-18" (CIFAR-100): row -> (method, accuracy %)
README = {"BAKE": ("bake", 76.93), "Cross-entropy": ("vanilla", 76.24)}
NOT_RUN = {  # rows of the paper itself: its text was not at hand (not in ../shared/papers, not found by search)
    "BAKE paper (Ge et al. 2021) CIFAR-100 rows": "the paper's table was not available to type from; only the "
    "Self-KD-Lib README row, whose code is held in tests/golden, is a config",
}


def _name(path: Path) -> str:
    return path.stem


def test_every_readme_row_has_a_config():
    rows = {cell.row for p in CONFIGS for cell in load(p).paper.cells}
    assert rows == set(README)


@pytest.mark.parametrize("path", CONFIGS, ids=_name)
def test_block_holds_the_readme_number_and_the_header_states_it(path):
    config = load(path)
    paper = config.paper
    assert (paper.id, paper.table, paper.mean_of, paper.median_of) == ("selfkdlib", "readme-resnet18", 0, 0)
    for cell in paper.cells:
        method, value = README[cell.row]
        assert config.method.name == method and (cell.value, cell.metric) == (value, "top1"), path
        assert cell.value in header_numbers(path), f"{path}: the header does not state {cell.value}"
    assert "ede3062d1193626da2bc8a1ceba535d84fb0a08c" in path.read_text()


@pytest.mark.parametrize("path", CONFIGS, ids=_name)
def test_recipe_and_settings_are_selfkdlib_main_py(path):
    """main.py: Nesterov SGD lr 0.1, momentum 0.9, wd 5e-4, batch 128, 200 epochs, 5 warm-up epochs, milestones 100 /
    150 after the warm-up (= 105 / 155); CIFAR_ResNet18; BAKE at T 4, omega 0.5, --intra-imgs 3, unweighted KL,
    DistillKL's re-softened target."""
    config = load(path)
    check_main_py_recipe(path)
    options = config.method.options
    if config.method.name == "bake":
        assert options.model == "preact_resnet18"
        assert (options.temperature, options.omega, options.intra_images, options.kd_weight, options.target) == (
            4.0, 0.5, 3, 1.0, "resoftened")
    else:
        assert options.models == ["preact_resnet18"]


def test_predict_keys_exist():
    check_predict_keys(CONFIGS)
