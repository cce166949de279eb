"""The Self-KD-Lib README's ResNet-18 CIFAR-100 rows of DKS and SAD (winycg/Self-KD-Lib @ ede3062d, README table
"Top-1 accuracy(%) of Self-KD and Data Augmentation (DA) methods on ResNet-18"): each config loads and builds, its
``paper:`` block holds the README's number (typed here), its method settings are the code's (``main.py`` defaults,
``methods/dks.py``, ``methods/sad.py``, ``models/resnet.py``; typed here) and its recipe main.py's."""
from pathlib import Path

import pytest
import torch

from peerkd.core.method import TaskInfo
from peerkd.methods import build_method
from tests.configs.selfkdlib_recipe import check_main_py_data, check_main_py_recipe
from tests.paper_configs import configs_under, header, header_numbers, load

CONFIGS = configs_under("dks", "sad")
README = {"dks": ("DKS", 78.64), "sad": ("SAD", 76.40)}  # the README's rows (method -> row label, top-1 %)
SETTINGS = {  # the code's settings (Self-KD-Lib main.py --T 4; methods/dks.py weights 1; CIFAR_ResNet18_dks
    # branch_layers [[1, 2], [2]]; methods/sad.py 1000 * AT, Attention.p = 2, bilinear interpolation)
    "dks": {"model": "preact_resnet18", "branch_blocks": [[1, 2], [2]], "temperature": 4.0, "ce_weight": 1.0,
            "synergy_weight": 1.0},
    "sad": {"model": "preact_resnet18", "weight": 1000.0, "power": 2.0, "resize": "bilinear"},
}
NOT_RUN = {
    "selfkdlib/readme-resnet18 Cross-entropy (76.24)": "the README's baseline row is plain vanilla preact_resnet18 "
    "under the same recipe; shared by every Self-KD-Lib method (FRSKD, BAKE, MixSKD, DKS, SAD): left to one config for "
    "all, not duplicated here",
    "DKS (Sun et al. 2019), sundw2014/DKS README CIFAR-100 (test error, mean of 5): WRN-28-10 DKS 17.24 +/- 0.22, "
    "WRN-28-10-dropout DKS 16.71 +/- 0.17": "the official code's branches (wrn_DKS/resnet.py) are not copies of the "
    "backbone's stages: ep2 is a stage of twice the backbone's last width (widths[2] * 2) with its own BN-ReLU, ep1 "
    "copies group1 and half of group2; branch_blocks cannot build the wider one, and its loss (wrn_DKS/main.py, "
    "KL_divergence.py) was not read or held against",
    "SAD paper (Hou et al. 2019)": "lane detection (TuSimple, CULane, BDD100K): no CIFAR-100 table",
}


def name(path: Path) -> str:
    return f"{path.parent.parent.name}/{path.stem}"


def test_one_config_per_readme_row():
    assert sorted(load(p).method.name for p in CONFIGS) == ["dks", "sad"]


@pytest.mark.parametrize("path", CONFIGS, ids=name)
def test_config_builds_and_predicts_its_cells_keys(path):
    """Built as configured but at 4-32 channels (the full network is built by the contract and golden tests)."""
    config = load(path)
    options = config.method.options
    small = type(options)(**{**vars(options), "model_options": {"width": 4}})
    method = build_method(config.method.name, small, TaskInfo(num_classes=100)).eval()
    with torch.no_grad():
        keys = set(method.predict(torch.randn(2, 3, 32, 32)))
    assert {k for c in config.paper.cells for k in c.predict_keys()} <= keys, path


@pytest.mark.parametrize("path", CONFIGS, ids=name)
def test_block_holds_the_readme_number(path):
    config = load(path)
    row, value = README[config.method.name]
    paper = config.paper
    assert (paper.id, paper.table, paper.mean_of, paper.median_of) == ("selfkdlib", "readme-resnet18", 0, 0)
    assert [(c.row, c.column, c.metric, c.value, c.predict) for c in paper.cells] == [
        (row, "Accuracy(%)", "top1", value, "net")]
    assert value in header_numbers(path) and "ede3062d1193626da2bc8a1ceba535d84fb0a08c" in header(path)


@pytest.mark.parametrize("path", CONFIGS, ids=name)
def test_method_settings_are_the_codes(path):
    config = load(path)
    options = config.method.options
    for key, value in SETTINGS[config.method.name].items():
        assert getattr(options, key) == value, f"{path}: method.{key} {getattr(options, key)} != {value}"


@pytest.mark.parametrize("path", CONFIGS, ids=name)
def test_recipe_is_main_py(path):
    check_main_py_recipe(path)
    check_main_py_data(path)
