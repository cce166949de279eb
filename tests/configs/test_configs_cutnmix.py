"""Every config under configs/cutnmix/ loads and validates (no training), and names its Table 1 cell's number."""
import re
from pathlib import Path

import pytest
import torch

import peerkd

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs" / "cutnmix").rglob("*.yaml"))


def test_there_is_a_config_per_table_cell():
    names = {p.stem for p in CONFIGS}
    assert len([p for p in CONFIGS if p.parent.name == "table1"]) == 108
    assert {"cutnmix_only", "cutnmix_mmd", "cutnmix_pt", "cutnmix_mmd_pt"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_config_loads(path):
    config = peerkd.load_config(path)
    assert config.schedule.epochs == 240 and config.optim.lr == 0.05 and config.data.batch_size == 64
    assert config.schedule.milestones == [150, 180, 210]
    assert path.read_text().startswith("# ")


# Table 1 of paper 003 typed from the paper: columns Vgg-16, Vgg-19, ResNet-32, ResNet-110, WideResNet, DenseNet
COLUMNS = ["vgg16", "vgg19", "resnet32", "resnet110", "wrn20_8", "densenet40_12"]
TABLE1 = {
    "cifar10": {
        "baseline": "93.89 93.93 93.51 94.83 94.47 92.89", "dml": "94.13 93.93 93.91 94.46 95.34 93.26",
        "cutmix": "94.71 94.59 94.04 95.18 95.11 93.24", "cskd": "93.72 93.54 93.21 93.90 95.03 92.13",
        "ddgsd": "94.35 94.27 94.05 95.24 95.29 93.18", "kdcl": "93.67 93.49 93.71 94.91 94.57 92.99",
        "one": "93.70 93.73 94.03 95.24 94.54 92.92", "okddip": "93.57 93.33 93.55 95.21 94.47 92.28",
        "cutnmix": "94.84 94.81 94.24 95.76 95.90 93.64"},
    "cifar100": {
        "baseline": "73.72 72.83 71.71 76.28 77.71 71.62", "dml": "75.39 74.14 72.66 77.90 79.57 72.36",
        "cutmix": "75.43 74.34 72.69 78.58 79.43 71.74", "cskd": "74.53 73.59 70.85 76.79 78.39 70.50",
        "ddgsd": "75.65 75.32 73.68 77.45 79.17 72.32", "kdcl": "73.04 72.19 72.26 78.37 79.49 72.16",
        "one": "73.33 72.09 73.71 78.91 78.62 71.45", "okddip": "73.97 71.71 72.34 78.17 79.34 70.62",
        "cutnmix": "76.56 75.68 73.84 79.32 80.09 72.64"},
}
# the network each column names: the OKDDip-file networks of the authors' DLB code (models/vgg.py, cifar_resnet_one.py)
COLUMN_MODELS = {"vgg16": "vgg16_okddip", "vgg19": "vgg19_okddip", "resnet110": "resnet110_okddip",
                 "wrn20_8": "wide_resnet20_8"}
ALIASES = {"resnet110_one": "resnet110_okddip"}  # the earlier name of the same network, still registered
TABLE1_FILES = [(ds, row, col) for ds in TABLE1 for row in TABLE1[ds] for col in COLUMNS]


@pytest.mark.parametrize("cell", TABLE1_FILES, ids=lambda c: "_".join(c))
def test_table1_cell_comment_names_the_papers_number(cell):
    dataset, row, column = cell
    path = Path(__file__).resolve().parents[2] / "configs" / "cutnmix" / "table1" / f"{dataset}_{row}_{column}.yaml"
    text = path.read_text()
    number = re.search(r": (\d+\.\d+) \+-", text.splitlines()[0]).group(1)
    assert number == TABLE1[dataset][row].split()[COLUMNS.index(column)]
    config = peerkd.load_config(path)
    assert config.data.dataset == dataset and config.method.name == {"baseline": "vanilla", "cutmix": "vanilla"}.get(
        row, row)
    models = getattr(config.method.options, "models", None) or [config.method.options.model]
    assert {ALIASES.get(m, m) for m in models} == {COLUMN_MODELS.get(column, column)}


@pytest.mark.parametrize("row", ["kdcl", "one", "okddip"])
def test_added_online_rows_build_their_method(row):
    from tests.helpers import tiny_task
    from peerkd.methods import build_method

    config = peerkd.load_config(Path(__file__).resolve().parents[2] / "configs" / "cutnmix" / "table1"
                                / f"cifar100_{row}_resnet32.yaml")
    method = build_method(config.method.name, config.method.options, tiny_task(num_classes=100))
    keys = set(method.predict(torch.randn(2, 3, 32, 32)))
    assert keys >= {"kdcl": {"peer0", "peer1"}, "one": {"branch0", "branch1"}, "okddip": {"leader"}}[row]
