"""Self-KD-Lib's training recipe (winycg/Self-KD-Lib @ ede3062d ``main.py`` defaults), shared by the config tests
of the README table's rows."""
from pathlib import Path

from tests.paper_configs import header, load, notes_deviation


def check_main_py_recipe(path: Path) -> None:
    """main.py: SGD (Nesterov, momentum 0.9, lr 0.1, wd 5e-4), batch 128, 200 epochs, 5 warm-up epochs, then
    milestones [100, 150] counted after the warm-up (epochs 105 and 155), crop 32 pad 4, flip."""
    config = load(path)
    optim, schedule, data = config.optim, config.schedule, config.data
    assert (optim.lr, optim.momentum, optim.nesterov, optim.weight_decay) == (0.1, 0.9, True, 5e-4)
    assert (schedule.epochs, schedule.kind, schedule.milestones, schedule.gamma, schedule.warmup_epochs) == (
        200, "multistep", [105, 155], 0.1, 5.0)
    assert (data.batch_size, data.crop_padding, data.flip) == (128, 4, True)


def check_main_py_data(path: Path) -> None:
    """main.py's CIFAR-100 and seed 0; normalised with CIFAR-100's own statistics, a deviation the header states (the
    code's are typed to 4 decimals)."""
    config = load(path)
    data = config.data
    assert (data.dataset, data.batch_size, data.crop_padding, data.flip, config.seed) == ("cifar100", 128, 4, True, 0)
    assert data.normalize == "dataset" and notes_deviation(header(path)), path
