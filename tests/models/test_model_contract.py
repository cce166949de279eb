"""The stem / stages / head contract of peerkd/models/base.py for every registered model (one test parametrised over
the registry, as timm's tests/test_models.py does): a new model file is covered without an edit here.

Input: 32 px, CIFAR's side and the smallest the ImageNet-style ``tv_*`` networks accept whole (their overall stride
is 32: one pixel at the last stage); a model that needs more declares ``input_size`` (pixels). The networks in BIG
run one image at the side given there, so the file stays within a minute of one CPU core.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

from peerkd.core.registry import MODELS
from peerkd.models import build_model
from peerkd.models.base import CAPABILITIES, missing_capability

NUM_CLASSES = 10  # classes of every built model: few, and unlike any stage's channel count
CIFAR_SIZE = 32  # input side for every model outside BIG, pixels
BATCH_SIZE = 2  # images per check outside BIG (one image would not show a mix-up between the batch's rows)
BIG = {  # the slowest networks on one CPU core (> 0.5 s per forward at 2 x 32 px) -> input side, pixels; batch 1
    "densenet100_12": 16, "densenet100_24": 16, "resnext29_8x64d": 16, "resnext29_16x64d": 16, "resnext50_32x4d": 16,
    "wrn28_10": 16, "xception": 16, "tv_resnet101": 32,  # tv_*: 32 px is its smallest input (overall stride 32)
}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread for this file: single forward passes of small batches gain little from a second thread on a
    shared 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def check_model_contract(name: str, model: nn.Module, size: int, batch_size: int) -> None:
    """What methods rely on of a registered model (see peerkd/models/base.py)."""
    assert model.peerkd_spec == {"name": name, "num_classes": NUM_CLASSES, "kwargs": {}}, model.peerkd_spec
    for need in CAPABILITIES:  # what method.model_requirements may ask: a registered model offers all of it
        assert missing_capability(model, need) is None, f"{name}: {missing_capability(model, need)}"
    stages = len(model.stages)
    model.eval()
    x = torch.randn(batch_size, 3, size, size)
    with torch.no_grad():
        maps = model.forward_stages(x)
        assert len(maps) == stages, f"{name}: forward_stages gave {len(maps)} maps for {stages} stages"
        assert [m.shape[1] for m in maps] == list(model.stage_channels), f"{name}: stage_channels"
        assert all(m.dim() == 4 and m.shape[0] == batch_size for m in maps), [tuple(m.shape) for m in maps]
        logits = model(x)
        assert logits.shape == (batch_size, NUM_CLASSES), f"{name}: logits of shape {tuple(logits.shape)}"
        torch.testing.assert_close(model.head(maps[-1]), logits, msg=f"{name}: forward is not the head of the stages")
        features = model.head.features(maps[-1])
        assert features.shape == (batch_size, model.head.fc.in_features), f"{name}: head.features"
        torch.testing.assert_close(model.head.classify(features), logits, msg=f"{name}: head.classify")
        if stages > 1:  # a later stage resumes from an earlier stage's map (how branches fork)
            resumed = model.forward_stages(maps[-2], start=stages - 1)
            assert len(resumed) == 1
            torch.testing.assert_close(resumed[0], maps[-1], msg=f"{name}: forward_stages(start=...)")


def rebuilds_from_its_spec(model: nn.Module) -> bool:
    """True when ``peerkd_spec`` rebuilds the architecture (same state keys and shapes; shapes only, on meta)."""
    spec = model.peerkd_spec
    with torch.device("meta"):
        again = build_model(spec["name"], spec["num_classes"], **spec["kwargs"])
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    return shapes == {k: tuple(v.shape) for k, v in again.state_dict().items()}


@pytest.mark.parametrize("name", MODELS.names())
def test_every_registered_model_keeps_the_stem_stages_head_contract(name):
    torch.manual_seed(0)
    model = build_model(name, NUM_CLASSES)
    size = getattr(model, "input_size", None) or BIG.get(name, CIFAR_SIZE)
    check_model_contract(name, model, size, batch_size=1 if name in BIG else BATCH_SIZE)
    assert rebuilds_from_its_spec(model), f"{name}: peerkd_spec does not rebuild it"


def test_big_marks_only_registered_models():
    assert set(BIG) <= set(MODELS.names())


def test_the_check_fails_a_model_whose_forward_is_not_its_head_of_stages(monkeypatch):
    """The check can fail: a forward that doubles the last stage's map before the head."""
    model = build_model("resnet8", NUM_CLASSES)
    monkeypatch.setattr(model, "forward", lambda x: model.head(model.forward_stages(x)[-1] * 2))
    with pytest.raises(AssertionError, match="forward is not the head of the stages"):
        check_model_contract("resnet8", model, CIFAR_SIZE, BATCH_SIZE)
