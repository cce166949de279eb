"""peerkd held against lgcnsai/PS-KD-Pytorch (Kim et al., ICCV 2021): ``tools/golden/pskd.py`` wrote the fixtures.

``pskd_train``: peerkd's ``pskd`` method, three epochs of two steps on the reference's own small PyramidNet (depth 8,
alpha 4, 10 classes) with the reference's weights, plain ``torch.optim.SGD`` as the reference's main_worker builds it,
the same batches in the same order: alpha_t per epoch, every step's logits and loss, the last step's gradient of every
parameter, the per-sample memory after every epoch and the BN statistics after the run, all to ``fixture.RTOL``.

``pskd_networks``: the CIFAR-100 networks of PS-KD's tables (PreAct ResNet-18, the "PreAct ResNet-101" its code
builds of post-activation bottlenecks, DenseNet-121, ResNeXt-29 8x64d, PyramidNet-110 alpha 48): the reference's
state_dict names and shapes pair one to one with peerkd's, the parameter counts are equal, and with the same weights
(``rule_weights``: too large to store) the logits in train mode, then in eval mode with the running statistics that
pass updated, agree to ``fixture.RTOL``.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from peerkd.core.method import TaskInfo
from peerkd.data import Batch
from peerkd.methods import build_method
from peerkd.models import build_model
from peerkd.models.pyramidnet import PyramidNet
from tests.golden import fixture
from tests.golden.rule_weights import map_in_order, pair_names, rule_weights


@pytest.fixture(scope="module")
def train_case():
    return fixture.load("pskd_train")


def run_pskd(case, *, alpha_final: float = 0.8, model=None):
    """peerkd's pskd over the fixture's epochs and batches; the records the test compares."""
    meta = case.meta["case"]
    classes, epochs = meta["classes"], meta["epochs"]
    torch.manual_seed(0)
    task = TaskInfo(num_classes=classes, num_train=meta["train"])
    method = build_method("pskd", build_method_options(alpha_final), task)
    method.model = model or PyramidNet(8, 4, classes)
    weights = case.group("weights")
    method.model.load_state_dict(map_in_order(weights, method.model))
    pairs = pair_names({k: tuple(v.shape) for k, v in weights.items()}, method.model)
    # main_worker's optimizer: SGD lr 0.1, momentum 0.9, weight decay 5e-4, Nesterov (constant lr in these epochs)
    optimizer = torch.optim.SGD(method.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4, nesterov=True)
    logits = []
    method.model.register_forward_hook(lambda module, inputs, output: logits.append(output.detach().clone()))
    x, y = case["batch/x"], case["batch/y"]
    out = {"alpha": [], "loss": [], "logits": logits, "memory": [], "grads": {}}
    method.train()
    step = 0
    for epoch in range(epochs):
        method.on_epoch_start(epoch, epochs)
        out["alpha"].append(method.alpha.clone())
        for index in case[f"state/order/epoch{epoch}"].split(meta["batch"]):
            optimizer.zero_grad()
            loss = method(Batch(x=x[index], y=y[index], index=index)).loss
            loss.backward()
            out["loss"].append(loss.detach())
            named = dict(method.model.named_parameters())
            out["grads"][step] = {ref: named[ours].grad.clone() for ref, ours in pairs.items() if ours in named}
            optimizer.step()
            step += 1
        everyone = torch.arange(meta["train"])
        out["memory"].append(method.memory.read(everyone, F.one_hot(y, classes).float()))
    out["state"] = {ref: method.model.state_dict()[ours] for ref, ours in pairs.items()}
    return out


def build_method_options(alpha_final: float):
    from peerkd.config import build_config

    return build_config({"method": {"name": "pskd", "model": "resnet8", "alpha_final": alpha_final}}).method.options


@pytest.fixture(scope="module")
def peerkd_run(train_case):
    return run_pskd(train_case)


def test_alpha_t_per_epoch(train_case, peerkd_run):
    for epoch, alpha in enumerate(peerkd_run["alpha"]):
        fixture.assert_close(alpha, train_case[f"state/alpha/epoch{epoch}"], f"alpha_t at epoch {epoch}")


def test_logits_and_loss_of_every_step(train_case, peerkd_run):
    steps = len(peerkd_run["loss"])
    assert steps == len(train_case.group("loss")) == 6
    for s in range(steps):
        fixture.assert_close(peerkd_run["logits"][s], train_case[f"outputs/step{s}"], f"logits at step {s}")
        fixture.assert_close(peerkd_run["loss"][s], train_case[f"loss/step{s}"], f"loss at step {s}")


GRADIENT_FLOOR = 0.1  # a parameter's gradient is compared at RTOL x max(its largest entry, 0.1 x the network's
# largest entry): float32 round-off of a gradient is of the size of the terms summed into it, not of the result, and
# the BN biases that feed only train-mode BNs have gradients that cancel to ~0 (measured: every difference <= 3e-7 of
# the network's largest entry; biases with a gradient of 1e-9 that is round-off on both sides)


def assert_close_floor(actual: torch.Tensor, expected: torch.Tensor, what: str, floor: float) -> None:
    """``fixture.assert_close`` at RTOL x max(max |expected|, floor)."""
    own = max(expected.abs().max().item(), 1e-30)
    fixture.assert_close(actual, expected, what, rtol=fixture.RTOL * max(own, floor) / own)


def assert_gradients_equal(actual: dict, expected: dict, what: str) -> None:
    """Every parameter's gradient equal to RTOL of max(its own largest entry, GRADIENT_FLOOR x the network's)."""
    assert sorted(actual) == sorted(expected), what
    largest = max(g.abs().max().item() for g in expected.values())
    for name, grad in expected.items():
        assert_close_floor(actual[name], grad, f"{what} {name}", GRADIENT_FLOOR * largest)


def test_gradient_of_every_parameter(train_case, peerkd_run):
    tags = {k.split("/")[1] for k in train_case.arrays if k.startswith("grads/")}
    assert tags
    for tag in tags:
        step = int(tag.removeprefix("step"))
        assert_gradients_equal(peerkd_run["grads"][step], train_case.group(f"grads/{tag}"), f"gradient at {tag}")


def test_memory_after_every_epoch_and_bn_statistics(train_case, peerkd_run):
    for epoch, memory in enumerate(peerkd_run["memory"]):
        fixture.assert_close(memory, train_case[f"state/memory/epoch{epoch}"], f"memory after epoch {epoch}")
    for name, value in train_case.group("state/final").items():  # statistics of maps of O(1) values: a running mean
        # that is ~0 (the input of a BN right after another BN) holds round-off of 1, so the floor is 1
        assert_close_floor(peerkd_run["state"][name].float(), value, f"{name} after the run", floor=1.0)


def test_a_wrong_alpha_final_breaks_the_match(train_case):
    """The check can fail: alpha_T = 0.7 instead of the reference's 0.8 changes the second epoch's loss."""
    run = run_pskd(train_case, alpha_final=0.7)
    with pytest.raises(AssertionError):
        fixture.assert_close(run["loss"][2], train_case["loss/step2"], "loss at step 2")


# ------------------------------------------------------------------------------------------------ the networks

@pytest.fixture(scope="module")
def networks():
    return fixture.load("pskd_networks")


NETWORKS = ["preact_resnet18", "resnet101_pskd", "densenet121_cifar", "resnext29_8x64d", "pyramidnet110_a48"]


def test_the_fixture_holds_these_networks(networks):
    assert sorted(networks.meta["case"]["state_dict"]) == sorted(NETWORKS)


@pytest.mark.parametrize("name", NETWORKS)
def test_network_equals_the_reference(networks, name):
    check_network(networks, name)


def check_network(networks, name: str) -> None:
    """The reference network ``name`` of a networks fixture: names -> shapes in order, parameter count, logits in
    train mode and then in eval mode (with the running statistics the train-mode pass updated)."""
    shapes = {k: tuple(shape) for k, shape in networks.meta["case"]["state_dict"][name]}
    torch.manual_seed(0)
    model = build_model(name, networks.meta["case"]["classes"])
    pair_names(shapes, model)  # names -> shapes, one to one in order
    assert sum(p.numel() for p in model.parameters()) == int(networks[f"state/{name}/parameters"])
    model.load_state_dict(map_in_order(rule_weights(shapes), model))
    x = networks["batch/x"]
    with torch.no_grad():
        fixture.assert_close(model.train()(x), networks[f"outputs/{name}/train"], f"{name} train-mode logits")
        fixture.assert_close(model.eval()(x), networks[f"outputs/{name}/eval"], f"{name} eval-mode logits")
