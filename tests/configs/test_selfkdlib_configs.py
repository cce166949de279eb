"""The Self-KD-Lib README's ResNet-18 CIFAR-100 rows of DDGSD, BYOT, Tf-KD-reg, CS-KD and PS-KD (winycg/Self-KD-Lib
@ ede3062d, README table "Top-1 accuracy(%) of Self-KD and Data Augmentation (DA) methods on ResNet-18"): each config
loads and builds, its ``paper:`` block holds the README's number (typed here), its method settings are the code's
(``main.py`` defaults, ``methods/ddsgd.py``, ``byot.py``, ``tf_kd_reg.py``, ``cs_kd.py``, ``ps_kd.py``; typed here,
or the nearest peerkd setting where the header states the deviation) and its recipe main.py's. PS-KD's config is
``configs/selfkdlib/`` (``configs/pskd/`` holds paper 004's, checked as that paper's)."""
import dataclasses
from pathlib import Path

import pytest
import torch

from peerkd.core.method import TaskInfo
from peerkd.methods import build_method
from tests.configs.selfkdlib_recipe import check_main_py_data, check_main_py_recipe
from tests.paper_configs import header, header_numbers, load

ROOT = Path(__file__).resolve().parents[2] / "configs"
CONFIGS = [ROOT / "ddgsd/selfkdlib/preact_resnet18_ddgsd.yaml", ROOT / "byot/selfkdlib/preact_resnet18_byot.yaml",
           ROOT / "tfkd/selfkdlib/preact_resnet18_tfkd_reg.yaml", ROOT / "cskd/selfkdlib/preact_resnet18_cskd.yaml",
           ROOT / "selfkdlib/preact_resnet18_pskd.yaml"]
# the README's rows: method -> (row label, top-1 %, the predict key of the classifier main.py's test() scores)
README = {"ddgsd": ("DDGSD", 76.61, "net"), "byot": ("BYOT", 77.88, "classifier4"), "tfkd": ("Tf-KD-reg", 76.61, "net"),
          "cskd": ("CS-KD", 78.66, "net"), "pskd": ("PS-KD", 79.31, "net")}
SETTINGS = {
    # methods/ddsgd.py: one forward of both views, CE over both / 2, DistillKL(T = 4) each way with the other side
    # detached, 5e-4 (mean f1 - mean f2)^2
    "ddgsd": {"model": "preact_resnet18", "views_forward": "joint", "ce_weight": 0.25, "temperature": 4.0,
              "kl_weight": 1.0, "detach_targets": True, "mmd_form": "scalar_mean", "mmd_weight": 5e-4},
    # methods/byot.py: CE weight 1 and T^2 KL (T = 4) weight 1 -> the paper recipe's 1 - a : a at a = 0.5; the
    # hint 0.5 x 0.1 = 0.05 per (channel, position) mean -> 0.5 x 0.05 / 512 per channel; KL and hint on the two
    # branches (classifiers after stages 2 and 3)
    "byot": {"model": "preact_resnet18", "recipe": "paper", "kl_weight": 0.5, "temperature": 4.0,
             "hint_weight": 0.5 * 0.05 / 512, "distil_blocks": [2, 3]},
    # main.py TF_KD_reg(epsilon=0.1, T=20): CE + CE_soft(q, softmax(z / 20)) / 20, q unsoftened
    "tfkd": {"variant": "reg", "model": "preact_resnet18", "temperature": 20.0, "correct_prob": 1 - 0.1,
             "multiplier": 1.0, "kl_reduction": "batchmean", "virtual_softening": "none", "soften_student": True},
    # methods/cs_kd.py: CE + DistillKL(T = 4) of the same-class pair, weight 1
    "cskd": {"model": "preact_resnet18", "temperature": 4.0, "cls_weight": 1.0},
    # main.py --alpha-T 0.8
    "pskd": {"model": "preact_resnet18", "alpha_final": 0.8},
}
DEVIATES = {"byot", "tfkd"}  # peerkd runs a form near the code's, each difference said in the header
NOT_RUN = {
    "selfkdlib/readme-resnet18 Cross-entropy (76.24)": "configs/bake/selfkdlib/preact_resnet18_baseline.yaml",
}


def name(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def test_one_config_per_readme_row():
    assert sorted(load(p).method.name for p in CONFIGS) == sorted(README)


@pytest.mark.parametrize("path", CONFIGS, ids=name)
def test_config_builds_and_predicts_its_cells_keys(path):
    """Built as configured but at 4-32 channels (the full network is built by the contract and golden tests)."""
    config = load(path)
    small = dataclasses.replace(config.method.options, model_options={"width": 4})
    task = TaskInfo(num_classes=100, num_train=8)  # PS-KD's per-sample memory needs a training-set size
    with torch.no_grad():
        keys = set(build_method(config.method.name, small, task).eval().predict(torch.randn(2, 3, 32, 32)))
    assert {k for c in config.paper.cells for k in c.predict_keys()} <= keys, path


@pytest.mark.parametrize("path", CONFIGS, ids=name)
def test_block_holds_the_readme_number(path):
    """One cell: the README's row, its number (also in the header) and the classifier main.py's test() scores."""
    config = load(path)
    block = config.paper
    cells = [{"row": c.row, "column": c.column, "metric": c.metric, "value": c.value, "predict": c.predict}
             for c in block.cells]
    row, value, key = README[config.method.name]
    assert cells == [{"row": row, "column": "Accuracy(%)", "metric": "top1", "value": value, "predict": key}]
    assert (block.id, block.table, block.mean_of, block.median_of) == ("selfkdlib", "readme-resnet18", 0, 0)
    assert "ede3062d1193626da2bc8a1ceba535d84fb0a08c" in header(path) and value in header_numbers(path)


@pytest.mark.parametrize("path", CONFIGS, ids=name)
def test_method_settings_are_the_codes(path):
    config = load(path)
    options = config.method.options
    for key, value in SETTINGS[config.method.name].items():
        assert getattr(options, key) == pytest.approx(value) if isinstance(value, float) else \
            getattr(options, key) == value, f"{path}: method.{key} {getattr(options, key)} != {value}"


def test_tfkd_weights_are_the_codes_up_to_one_factor():
    """(1 - alpha) CE + alpha KL = c (CE + KL / T): alpha / (1 - alpha) = 1 / 20 (main.py's T = 20)."""
    options = load(CONFIGS[2]).method.options
    assert options.alpha / (1 - options.alpha) == pytest.approx(1 / 20, rel=1e-12)


@pytest.mark.parametrize("path", CONFIGS, ids=name)
def test_recipe_is_main_py(path):
    """main.py's recipe, as for the DKS / SAD rows (SGD Nesterov lr 0.1, wd 5e-4, batch 128, 200 epochs, 5 warm-up,
    milestones 105 / 155, crop + flip, seed 0; the normalisation's deviation said)."""
    check_main_py_recipe(path)
    check_main_py_data(path)


@pytest.mark.parametrize("path", [p for p in CONFIGS if load(p).method.name in DEVIATES], ids=name)
def test_deviations_from_the_codes_form_are_said(path):
    text = header(path)
    assert text.lower().count("a deviation from") >= 2, path  # the normalisation's and the form's
