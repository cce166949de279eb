"""DLB (``peerkd.methods.dlb``, ``form: released``) against Meta-knowledge-Lab/DLB's own ``dlb.train_one_epoch`` at
the commit in the fixture's meta (``tools/golden/dlb_step.py`` wrote ``dlb_step``).

The reference's ``ResNet(BasicBlock, [1, 1, 1])`` (10 classes, weights made by ``rule_weights`` from the stored names)
is mapped in order into peerkd's ``resnet8``; the same 8 images (two views each) in the same order, two epochs of two
steps of 4, fed through peerkd's data side (``PreviousBatchLoader`` over a loader of the stored batches), plain
``torch.optim.SGD`` as ``dlb.py`` builds it (Nesterov 0.9, wd 5e-4, lr 0.1). Every step: the loss (cross-entropy
alone on the run's first step; then the cross-entropy over both batches plus alpha T^2 KL to the carried logits),
the network's outputs on the current batch (the logits carried to the next step) and on the previous one, the gradient
of every parameter (projections); after each epoch the carried logits (``pre_out``, which the reference hands to the
next epoch). All to ``fixture.RTOL``. One documented difference is not compared: on the run's first step peerkd runs
the network on a placeholder previous batch (weight 0; its BatchNorm running statistics move once more).
"""
from __future__ import annotations

import pytest
import torch

from peerkd.core.method import TaskInfo
from peerkd.data import Batch
from peerkd.data.previous import PreviousBatchLoader
from tests.golden import fixture
from tests.golden.network_check import assert_gradients
from tests.golden.rule_weights import map_in_order, pair_names, rule_weights
from tests.helpers import build
from tests.helpers import one_torch_thread  # noqa: F401  (autouse, module scope: one torch thread)

GOLDEN = fixture.load("dlb_step")
CASE = GOLDEN.meta["case"]


class StoredBatches:
    """The fixture's batches as a training loader (``epoch(epoch, start_step)``): views stacked ``(2, B, C, H, W)``."""

    def __len__(self) -> int:
        return CASE["steps"]

    def epoch(self, epoch: int, start_step: int = 0):
        images, labels = GOLDEN["batch/images"].float(), GOLDEN["batch/labels"]
        for rows in GOLDEN[f"state/rows/epoch{epoch}"].split(CASE["batch"])[start_step:]:
            yield Batch(x=images[rows].transpose(0, 1).contiguous(), y=labels[rows], index=rows)


def run_dlb(**options):
    """peerkd's dlb over the fixture's steps; per step ``(loss, outputs, grads by reference name)`` and the carried
    logits after each epoch."""
    torch.manual_seed(0)
    method = build({"name": "dlb", "model": "resnet8", "temperature": CASE["temperature"], "alpha": CASE["alpha"],
                    **options}, TaskInfo(num_classes=CASE["classes"], num_train=8))
    reference = rule_weights(dict(CASE["shapes"]))
    method.model.load_state_dict(map_in_order(reference, method.model), strict=True)
    names = pair_names({k: v.shape for k, v in reference.items()}, method.model)
    outputs = []
    method.model.register_forward_hook(lambda module, inputs, output: outputs.append(output.detach().clone()))
    optimizer = torch.optim.SGD(method.parameters(), lr=CASE["lr"], momentum=CASE["momentum"], nesterov=True,
                                weight_decay=CASE["weight_decay"])
    params = dict(method.model.named_parameters())
    steps, carried, loader = [], [], PreviousBatchLoader(StoredBatches())
    method.train()
    for epoch in range(CASE["epochs"]):
        for batch in loader.epoch(epoch):
            outputs.clear()
            out = method(batch)
            optimizer.zero_grad(set_to_none=True)
            out.loss.backward()
            grads = {ref: params[ours].grad.clone() for ref, ours in names.items() if ours in params}
            steps.append((out.loss.detach(), list(outputs), grads))
            optimizer.step()
        carried.append(method.carried_logits.clone())
    return steps, carried


def test_fixture_pins_the_reference():
    assert GOLDEN.meta["reference"] == "Meta-knowledge-Lab/DLB"
    assert GOLDEN.meta["commit"] == "8949a4621072cbd9d0d9d78bf8d9fba0f1814ed0"
    assert (CASE["temperature"], CASE["alpha"], CASE["epochs"], CASE["steps"]) == (3.0, 1.0, 2, 2)


def test_every_step_equals_the_reference():
    steps, carried = run_dlb()
    assert len(steps) == 4
    for s, (loss, outputs, grads) in enumerate(steps):
        fixture.assert_close(loss.double().reshape(1), GOLDEN[f"loss/step{s}"], f"step {s} loss")
        fixture.assert_close(outputs[0], GOLDEN[f"outputs/step{s}/call0"], f"step {s} logits (carried)")
        if s > 0:  # the previous batch's view 1 (step 0: peerkd's placeholder, weight 0; the reference runs none)
            fixture.assert_close(outputs[1], GOLDEN[f"outputs/step{s}/call1"], f"step {s} logits of the previous")
        assert_gradients(grads, CASE["gradient_names"], GOLDEN[f"state/grad_projection/step{s}"], f"step {s}")
    for epoch, logits in enumerate(carried):  # pre_out handed to the next epoch
        fixture.assert_close(logits, GOLDEN[f"state/pre_out/epoch{epoch}"], f"carried logits after epoch {epoch}")


@pytest.mark.parametrize("wrong", [{"temperature": 4.0}, {"alpha": 0.5}, {"form": "joint"}])
def test_another_setting_breaks_the_equality(wrong):
    """T, alpha and the one-forward form each change step 1's loss (the first with a previous batch)."""
    steps, _ = run_dlb(**wrong)
    with pytest.raises(AssertionError):
        fixture.assert_close(steps[1][0].double().reshape(1), GOLDEN["loss/step1"], "step 1 loss")
