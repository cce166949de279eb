"""DLB (Shen et al., CVPR 2022): configs/dlb/shen2022_cifar100/, a baseline and a DLB config per network of the
authors' code that peerkd holds (tests/golden/test_dlb.py); every config loads and builds; the settings are the ones
typed here (dlb.py's defaults, the CutnMix paper's schedule, the paper's T and alpha), so a wrong setting fails.

The cells' numbers are not typed yet (PENDING): the configs carry no paper: block until they are."""
from pathlib import Path

import pytest

from peerkd.core.registry import MODELS
from tests.paper_configs import configs_under, header, load

CONFIGS = configs_under("dlb")
NETWORKS = {"vgg16": "vgg16_okddip", "vgg19": "vgg19_okddip", "resnet32": "resnet32", "resnet110": "resnet110_okddip",
            "wrn20_8": "wide_resnet20_8"}  # file stem -> peerkd's network of DLB's models/ (held in test_dlb.py)
COLUMNS = {"vgg16": "VGG-16", "vgg19": "VGG-19", "resnet32": "ResNet-32", "resnet110": "ResNet-110",
           "wrn20_8": "WRN-20-8"}
# (row, column) -> the paper's top-1 error: not typed (the paper's table was not readable in the writing session)
PENDING = {(row, column) for row in ("Baseline", "DLB") for column in COLUMNS.values()}
NOT_RUN = {
    "DenseNet-40-12": "DLB's models/densenet.py densenetd40k12 is not held against peerkd's densenet40_12 (not in the "
                      "dlb_networks fixture); add it there before a config names it",
    "CIFAR-10 / TinyImageNet tables": "not CIFAR-100 (the issue asks for the CIFAR-100 table)",
}


def name(path: Path) -> str:
    return path.stem


def test_a_baseline_and_a_dlb_config_per_network():
    assert sorted(p.stem for p in CONFIGS) == sorted(f"{k}_{n}" for k in ("baseline", "dlb") for n in NETWORKS)
    assert all(p.parent.name == "shen2022_cifar100" for p in CONFIGS)


@pytest.mark.parametrize("path", CONFIGS, ids=name)
def test_the_recipe_and_the_method_settings(path):
    config, text = load(path), header(path)
    kind, stem = path.stem.split("_", 1)
    assert (config.seed, config.data.dataset, config.data.batch_size) == (95, "cifar100", 64)
    assert (config.data.crop_padding, config.data.flip, config.data.normalize) == (4, True, "dataset")
    assert (config.optim.lr, config.optim.momentum, config.optim.nesterov, config.optim.weight_decay) == (
        0.05, 0.9, True, 5e-4)
    assert (config.schedule.kind, config.schedule.epochs, config.schedule.milestones, config.schedule.gamma) == (
        "multistep", 240, [150, 180, 210], 0.1)
    options = config.method.options
    if kind == "baseline":
        assert config.method.name == "vanilla" and options.models == [NETWORKS[stem]]
    else:
        assert config.method.name == "dlb" and options.model == NETWORKS[stem]
        assert (options.alpha, options.temperature, options.form) == (1.0, 3.0, "released")
    row = "Baseline" if kind == "baseline" else "DLB"
    assert f"row '{row}', column {COLUMNS[stem]}" in " ".join(text.split()) and (row, COLUMNS[stem]) in PENDING
    assert config.paper is None and "No paper: block yet" in text  # until the number is typed
    assert text.count("deviation from") == 2, path  # the dropped partial batch; last / best instead of best


def test_every_network_is_registered_and_every_config_builds_with_the_key_its_cell_will_name():
    """Each config's method builds (networks swapped for small ones of the same method structure) and predicts the
    key its paper cell will name: peer0 for the baseline, net for DLB."""
    import torch

    from peerkd.core.method import TaskInfo
    from peerkd.methods import build_method
    from tests.paper_configs import _small

    assert set(NETWORKS.values()) <= set(MODELS.names())
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for path in CONFIGS:
            config = load(path)
            method = build_method(config.method.name, _small(config.method.options, config.method.name),
                                  TaskInfo(num_classes=10, num_train=16))
            with torch.no_grad():
                keys = set(method.eval().predict(torch.randn(2, 3, 32, 32)))
            assert keys == ({"peer0"} if path.stem.startswith("baseline") else {"net"}), path
    finally:
        torch.set_num_threads(threads)
