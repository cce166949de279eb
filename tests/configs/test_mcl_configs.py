"""MCL (Yang et al., AAAI 2022): the CIFAR-100 tables of the authors' README (winycg/MCL @ 236da2f, README.md
"Results of MCL on CIFAR-100" = readme-1 and "Results of MCL combined with logit distillation on CIFAR-100" =
readme-2; mean ± std of three runs, top-1 %) as configs under configs/mcl/yang2022_readme/, one per cell (a baseline
run printed in both tables carries both cells). Every number and setting below is typed from the README and the
authors' scripts, so a config with another value fails."""
from pathlib import Path

import pytest
import torch

from tests.paper_configs import check_predict_keys, configs_under, header, header_numbers, load

CONFIGS = configs_under("mcl")
PAPER = "mcl2022"

# README.md, typed: (table, row, column) -> (top-1 %, ±)
README = {
    ("readme-1", "ResNet-32", "Baseline"): (70.91, 0.14), ("readme-1", "ResNet-32", "MCL(×2)"): (72.96, 0.28),
    ("readme-1", "ResNet-32", "MCL(×4)"): (74.04, 0.07),
    ("readme-1", "ResNet-56", "Baseline"): (73.15, 0.23), ("readme-1", "ResNet-56", "MCL(×2)"): (74.48, 0.23),
    ("readme-1", "ResNet-56", "MCL(×4)"): (75.74, 0.16),
    ("readme-1", "ResNet-110", "Baseline"): (75.29, 0.16), ("readme-1", "ResNet-110", "MCL(×2)"): (77.12, 0.20),
    ("readme-1", "ResNet-110", "MCL(×4)"): (78.82, 0.14),
    ("readme-1", "WRN-16-2", "Baseline"): (72.55, 0.24), ("readme-1", "WRN-16-2", "MCL(×2)"): (74.56, 0.11),
    ("readme-1", "WRN-16-2", "MCL(×4)"): (75.79, 0.07),
    ("readme-1", "WRN-40-2", "Baseline"): (76.89, 0.29), ("readme-1", "WRN-40-2", "MCL(×2)"): (77.51, 0.42),
    ("readme-1", "WRN-40-2", "MCL(×4)"): (78.84, 0.22),
    ("readme-1", "HCGNet-A1", "Baseline"): (77.42, 0.16), ("readme-1", "HCGNet-A1", "MCL(×2)"): (78.62, 0.26),
    ("readme-1", "HCGNet-A1", "MCL(×4)"): (79.50, 0.15),
    ("readme-1", "ShuffleNetV2 0.5×", "Baseline"): (67.39, 0.35),
    ("readme-1", "ShuffleNetV2 0.5×", "MCL(×2)"): (69.55, 0.22),
    ("readme-1", "ShuffleNetV2 0.5×", "MCL(×4)"): (70.92, 0.28),
    ("readme-1", "ShuffleNetV2 1×", "Baseline"): (70.93, 0.24),
    ("readme-1", "ShuffleNetV2 1×", "MCL(×2)"): (73.26, 0.18),
    ("readme-1", "ShuffleNetV2 1×", "MCL(×4)"): (75.18, 0.25),
    ("readme-2", "WRN-16-2", "Baseline"): (72.55, 0.24), ("readme-2", "WRN-16-2", "MCL(×4)+Logit KD"): (76.34, 0.22),
    ("readme-2", "WRN-40-2", "Baseline"): (76.89, 0.29), ("readme-2", "WRN-40-2", "MCL(×4)+Logit KD"): (80.02, 0.45),
    ("readme-2", "WRN-28-4", "Baseline"): (79.17, 0.29), ("readme-2", "WRN-28-4", "MCL(×4)+Logit KD"): (81.68, 0.31),
    ("readme-2", "ShuffleNetV2 1×", "Baseline"): (70.93, 0.24),
    ("readme-2", "ShuffleNetV2 1×", "MCL(×4)+Logit KD"): (77.02, 0.32),
    ("readme-2", "HCGNet-A2", "Baseline"): (79.00, 0.41), ("readme-2", "HCGNet-A2", "MCL(×4)+Logit KD"): (82.47, 0.20),
}
NOT_RUN: dict[tuple[str, str], str] = {}  # (table, row) -> why it has no config: every row has one
# README row -> (peerkd model, model_options): the networks tests/golden/test_mcl.py holds against the code's
NETWORK = {"ResNet-32": ("resnet32", {}), "ResNet-56": ("resnet56", {}), "ResNet-110": ("resnet110_okddip", {}),
           "WRN-16-2": ("wrn16_2", {}), "WRN-40-2": ("wrn40_2", {}), "WRN-28-4": ("wrn28_4", {}),
           "HCGNet-A1": ("hcgnet_a1", {}), "HCGNet-A2": ("hcgnet_a2", {}),
           "ShuffleNetV2 0.5×": ("shufflenetv2", {"width": 0.5}), "ShuffleNetV2 1×": ("shufflenetv2", {})}
# README column -> (peers, shared stages, logit_distill, contrastive weights alpha, gamma, beta, lam):
# scripts/train_cifar_baseline.sh (weights at main_cifar.py's argparse default 0), train_cifar_mcl.sh
# (--alpha 0.1 --gamma 1. --beta 0.1 --lam 1.; number_net 4 builds the *_b networks: stem + first stage shared),
# train_cifar_mcl_logit.sh (the same with --logit-distill)
COLUMN = {"Baseline": (2, 0, "off", (0.0, 0.0, 0.0, 0.0)), "MCL(×2)": (2, 0, "off", (0.1, 1.0, 0.1, 1.0)),
          "MCL(×4)": (4, 1, "off", (0.1, 1.0, 0.1, 1.0)),
          "MCL(×4)+Logit KD": (4, 1, "reference", (0.1, 1.0, 0.1, 1.0))}
# parameters of the code's x4 networks (models/*.py at number_net 4: the *_b classes, counted from the reference
# checkout at 236da2f): peerkd's shared-stem layouts must have as many (the projection heads aside)
X4_PARAMETERS = {("resnet32", "{}"): 1_819_552, ("resnet110_okddip", "{}"): 4_517_344,
                 ("wrn16_2", "{}"): 2_712_864, ("wrn40_2", "{}"): 8_697_632, ("shufflenetv2", "{}"): 5_331_752,
                 ("hcgnet_a1", "{}"): 4_057_426, ("hcgnet_a2", "{}"): 11_169_209}


def cells(path: Path):
    paper = load(path).paper
    return [(cell.table or paper.table, cell) for cell in paper.cells]


def test_every_readme_cell_has_a_config_or_a_reason():
    covered = {(table, cell.row, cell.column) for path in CONFIGS for table, cell in cells(path)}
    wanted = {key for key in README if (key[0], key[1]) not in NOT_RUN}
    assert covered == wanted, f"missing {sorted(wanted - covered)}, extra {sorted(covered - wanted)}"
    assert len(CONFIGS) == 31


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_block_holds_the_readme_numbers_and_the_header_states_them(path):
    paper, numbers, text = load(path).paper, header_numbers(path), " ".join(header(path).split())
    assert paper.id == PAPER and paper.mean_of == 3, path  # "with three runs"
    for table, cell in cells(path):
        assert (cell.value, cell.std) == README[(table, cell.row, cell.column)], f"{path}: {cell.row} / {cell.column}"
        assert cell.metric == "top1" and cell.predict == "peer0", path
        assert cell.value in numbers and cell.std in numbers, f"{path}: header does not state {cell.value}"
    assert "236da2f54075119a5bdbac272b0b5011b8ddd4a6" in text and text.count("a deviation from") >= 3, path


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_settings_are_the_scripts(path):
    config = load(path)
    o = config.method.options
    row, column = cells(path)[0][1].row, cells(path)[0][1].column
    peers, shared, logit, weights = COLUMN[column]
    model, model_options = NETWORK[row]
    assert config.method.name == "mcl" and o.models == [model] * peers and o.model_options == model_options, path
    assert (o.shared_stages, o.logit_distill, o.positives) == (shared, logit, "class_pairs"), path
    assert (o.vcl_weight, o.soft_vcl_weight, o.icl_weight, o.soft_icl_weight) == weights, path
    assert (o.tau, o.temperature, o.embedding_dim) == (0.1, 3.0, 128), path  # --tau 0.1 --kd_T 3 --feat-dim 128
    # main_cifar.py: SGD(lr 0.1, momentum 0.9, weight decay 5e-4, nesterov), cosine; 128-image batches as 64 pairs
    assert (config.optim.lr, config.optim.momentum, config.optim.weight_decay, config.optim.nesterov) == (
        0.1, 0.9, 5e-4, True), path
    assert (config.schedule.kind, config.schedule.epochs, config.data.batch_size) == ("cosine", 150, 64), path
    assert (config.data.crop_padding, config.data.flip, config.data.normalize) == (4, True, "dataset"), path


def test_every_config_builds_its_method():
    """Each distinct layout of the folder (networks, peers, shared stages) built as its config says, on the meta device
    (no weights: the shapes and the capability check are what a build can get wrong)."""
    from peerkd.core.method import TaskInfo
    from peerkd.core.registry import build_method

    seen = set()
    for path in CONFIGS:
        config = load(path)
        o = config.method.options
        key = (tuple(o.models), repr(o.model_options), o.shared_stages)
        if key in seen:
            continue
        seen.add(key)
        with torch.device("meta"):
            method = build_method("mcl", config.method.options, TaskInfo(num_classes=100, num_train=50000))
        assert len(method.heads) == len(config.method.options.models), path
        expected = X4_PARAMETERS.get((o.models[0], repr(o.model_options))) if o.shared_stages else None
        if expected is not None:
            assert sum(p.numel() for p in method.net.parameters()) == expected, path


def test_predict_keys_exist():
    check_predict_keys(CONFIGS)

