"""FRSKD as winycg/Self-KD-Lib runs it: the README's ResNet-18 CIFAR-100 row as a config with a ``paper:`` block; it
loads and builds, its block holds the README's number (typed here), the header states it, and the method's settings
and the recipe are the code's (typed here), so a wrong one fails. The baseline row is configs/bake/selfkdlib/."""
import pytest

from tests.configs.selfkdlib_recipe import check_main_py_recipe
from tests.paper_configs import check_predict_keys, configs_under, header_numbers, load

CONFIGS = configs_under("frskd/selfkdlib")
# winycg/Self-KD-Lib README.md @ ede3062d1193626da2bc8a1ceba535d84fb0a08c, "Top-1 accuracy(%) of Self-KD and Data
# Augmentation (DA) methods on ResNet-18" (CIFAR-100)
README = {"FRSKD": 76.60}
NOT_RUN = {
    "FRSKD paper (Ji et al. 2021) CIFAR-100 rows": "the paper's table was not available to type from (not in "
    "../shared/papers, not found by search), and its authors' code (MingiJi/FRSKD) is not mirrored; only the "
    "Self-KD-Lib README row, whose code is held in tests/golden, is a config",
}


def test_the_readme_row_has_a_config():
    assert {cell.row for p in CONFIGS for cell in load(p).paper.cells} == set(README)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_block_recipe_and_settings_are_the_codes(path):
    """main.py: Nesterov SGD lr 0.1, momentum 0.9, wd 5e-4, batch 128, 200 epochs, 5 warm-up epochs, milestones 100 /
    150 after the warm-up (= 105 / 155); methods/frskd.py: 2 x KL at T 4, 100 x attention, the KL undetached;
    CIFAR_ResNet18_BiFPN: BiFPNc(repeat 1, depth [2, 2, 2], width 2), preact maps."""
    config = load(path)
    paper = config.paper
    assert (paper.id, paper.table, paper.mean_of, paper.median_of) == ("selfkdlib", "readme-resnet18", 0, 0)
    for cell in paper.cells:
        assert (cell.value, cell.metric, cell.predict) == (README[cell.row], "top1", "net"), path
        assert cell.value in header_numbers(path), f"{path}: the header does not state {cell.value}"
    check_main_py_recipe(path)
    o = config.method.options
    assert (config.method.name, o.model, o.temperature, o.kd_weight, o.attention_weight) == (
        "frskd", "preact_resnet18", 4.0, 2.0, 100.0)
    assert (o.width, o.depth, o.repeat, o.preact, o.teacher_gradient) == (2, [2, 2, 2], 1, True, "both")


def test_predict_keys_exist():
    check_predict_keys(CONFIGS)
