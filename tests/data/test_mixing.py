"""Mixup / CutMix / CutnMix as batch operations, and the loader's mixing and class pairs (deterministic, resumable)."""
import numpy as np
import pytest
import torch

from tests.helpers import short_run
from peerkd.config import ConfigError, build_config
from peerkd.data import mixing
from peerkd.data.device_loader import DeviceLoader
from peerkd.data.mixing import MixingSpec
from peerkd.data.pipeline import mixing_spec
from peerkd.losses import hard_ce
from peerkd.core.method import DataRequest


def test_mixup_is_the_convex_combination():
    x = torch.arange(2 * 3 * 2 * 2, dtype=torch.float32).reshape(2, 3, 2, 2)
    partner = torch.tensor([1, 0])
    lam = torch.tensor(0.25)
    mixed = mixing.mixup(x, partner, lam)
    assert torch.allclose(mixed[0], 0.25 * x[0] + 0.75 * x[1])
    assert torch.allclose(mixed[1], 0.25 * x[1] + 0.75 * x[0])


def test_cutmix_pastes_the_box_and_lam_is_its_real_area():
    h = w = 8
    x = torch.stack([torch.zeros(1, h, w), torch.ones(1, h, w)])  # image 0 all zeros, image 1 all ones
    boxes = torch.tensor([2, 3, 4, 2])  # rows 2..5, columns 3..4: 8 pixels
    mixed = mixing.paste_boxes(x, torch.tensor([1, 0]), boxes)
    assert mixed[0, 0].sum() == 8 and mixed[0, 0, 2:6, 3:5].eq(1).all()
    assert mixed[1, 0].sum() == 64 - 8 and mixed[1, 0, 2:6, 3:5].eq(0).all()
    assert float(mixing.box_area_fraction(boxes, h, w)) == 8 / 64


def test_clipped_cutmix_box_gives_the_real_area_as_label_weight():
    rng = np.random.default_rng(0)
    for _ in range(200):
        step = mixing.sample_step(MixingSpec("cutmix"), rng, batch_size=4, views=1, height=32, width=32)
        top, left, box_h, box_w = step.boxes[0]
        assert 0 <= top and top + box_h <= 32 and 0 <= left and left + box_w <= 32  # clipped inside the image
        assert step.lam == pytest.approx(1 - box_h * box_w / 1024)  # lam = 1 - real (clipped) box area


def test_mixed_labels_equal_lam_ya_plus_one_minus_lam_yb():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 0.0]])
    y, y_b, lam = torch.tensor([0, 2]), torch.tensor([1, 0]), torch.tensor(0.375)
    batch = type("B", (), {"y": y, "y_b": y_b, "lam": lam})()
    soft = 0.375 * torch.nn.functional.one_hot(y, 3) + 0.625 * torch.nn.functional.one_hot(y_b, 3)
    expected = -(soft * torch.log_softmax(logits, -1)).sum(-1).mean()  # CE against the mixed one-hot label
    assert torch.allclose(hard_ce(logits, batch), expected)


def test_cutnmix_boxes_differ_per_peer_while_lam_and_partners_agree():
    rng = np.random.default_rng(3)
    differing = 0
    for _ in range(50):
        step = mixing.sample_step(MixingSpec("cutnmix", box="inside"), rng, batch_size=6, views=2, height=32, width=32)
        areas = step.boxes[:, 2] * step.boxes[:, 3]
        assert areas[0] == areas[1]  # the same size for every peer
        assert step.lam == pytest.approx(1 - areas[0] / 1024)  # and lam is exactly that area's complement
        assert (step.boxes[:, 0] + step.boxes[:, 2] <= 32).all() and (step.boxes[:, 1] + step.boxes[:, 3] <= 32).all()
        differing += int((step.boxes[0, :2] != step.boxes[1, :2]).any())
    assert differing > 40  # placed independently per peer


def test_cutnmix_clipped_boxes_follow_cutmix_and_keep_the_sampled_lam():
    """The default box law: each peer's box is Yun et al.'s (sides sqrt(1 - lam), centre uniform, clipped); one label
    weight for every peer (paper 003 eq. 6-7): 1 - the mean of the peers' real box areas."""
    differing = 0
    for step_index in range(50):
        spec = MixingSpec("cutnmix")
        step = mixing.sample_step(spec, mixing.step_generator(0, 0, step_index), 6, 2, 32, 32)
        rng = mixing.step_generator(0, 0, step_index)  # the same draws, in sample_step's order
        rng.random()
        lam = float(rng.beta(1.0, 1.0))
        rng.permutation(6)
        expected = [mixing.cutmix_box(rng, lam, 32, 32) for _ in range(2)]
        assert [tuple(b) for b in step.boxes.tolist()] == expected
        assert step.lam == pytest.approx(1 - (expected[0][2] * expected[0][3] + expected[1][2] * expected[1][3]) / 2048)
        differing += int((step.boxes[0] != step.boxes[1]).any())
    assert differing > 40


def _loader(kind="cutnmix", views=2, class_pairs=False, seed=1):
    gen = np.random.default_rng(0)
    images = gen.integers(0, 256, (96, 16, 16, 3), dtype=np.uint8)
    labels = np.arange(96) % 4
    return DeviceLoader(images, labels, batch_size=16, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), device="cpu",
                        seed=seed, views=views, mixing=MixingSpec(kind), class_pairs=class_pairs)


def test_cutnmix_loader_batch_is_the_unmixed_views_with_per_view_boxes():
    batch = next(iter(_loader().epoch(0)))
    plain = next(iter(_loader(kind="none").epoch(0)))
    partners, lams, boxes = mixing.sample_epoch(MixingSpec("cutnmix"), 1, 0, range(0, 1), 16, 2, 16, 16)
    partner, box = partners[0], boxes[0]
    assert batch.x.shape == (2, 16, 3, 16, 16) and batch.lam.dim() == 0
    assert torch.equal(batch.y, plain.y) and torch.equal(batch.y_b, plain.y[partner])  # one partner set for all views
    assert float(batch.lam) == pytest.approx(1 - float((box[:, 2] * box[:, 3]).double().mean()) / 256)  # shared
    for v in range(2):  # view v: its own unmixed images with its own box filled from the partners' view v
        top, left, h, w = (int(t) for t in box[v])
        expected = plain.x[v].clone()
        expected[:, :, top:top + h, left:left + w] = plain.x[v][partner][:, :, top:top + h, left:left + w]
        assert torch.equal(batch.x[v], expected)


@pytest.mark.parametrize("kind", ["mixup", "cutmix", "cutnmix"])
def test_mixing_loader_is_deterministic_and_exact_from_any_start_step(kind):
    full = list(_loader(kind).epoch(2))
    again = list(_loader(kind).epoch(2))
    resumed = list(_loader(kind).epoch(2, start_step=3))
    for a, b in zip(full, again):
        assert torch.equal(a.x, b.x) and torch.equal(a.y_b, b.y_b) and torch.equal(a.lam, b.lam)
    for a, b in zip(full[3:], resumed):
        assert torch.equal(a.x, b.x) and torch.equal(a.y_b, b.y_b) and torch.equal(a.lam, b.lam)
    other_epoch = next(iter(_loader(kind).epoch(3)))
    assert not torch.equal(other_epoch.x, full[0].x)


def test_class_pairs_share_the_class_and_are_other_samples():
    loader = _loader(kind="none", views=1, class_pairs=True)
    labels = loader.labels
    for step, batch in enumerate(loader.epoch(0)):
        assert torch.equal(labels[batch.pair_index], batch.y)
        assert (batch.pair_index != batch.index).all()
        assert batch.pair_x.shape == batch.x.shape
    resumed = next(iter(_loader(kind="none", views=1, class_pairs=True).epoch(0, start_step=step)))
    assert torch.equal(resumed.pair_x, batch.pair_x) and torch.equal(resumed.pair_index, batch.pair_index)


def test_config_mixing_fields_and_conflict_with_a_method_request():
    config = build_config({"data": {"mixing": "cutmix", "mixing_prob": 0.5}})
    assert mixing_spec(config.data, DataRequest()) == MixingSpec("cutmix", 1.0, 0.5)
    assert build_config({}).data.mixing == "none"
    with pytest.raises(ConfigError, match="data.mixing"):
        build_config({"data": {"mixing": "cutout"}})
    with pytest.raises(ConfigError, match="data.mixing"):
        mixing_spec(config.data, DataRequest(mixing="cutnmix"))


def test_dml_with_cutmix_short_run_beats_chance(tmp_path):
    summary = short_run({"name": "dml", "models": ["resnet8", "resnet8"]}, tmp_path / "run", epochs=2, train_size=480,
                        overrides=("data.mixing=cutmix", "data.synthetic.test_size=200"))
    assert summary["keys"]["ensemble"]["last"]["top1"] > 30.0, summary  # chance is 25 % with 4 classes


def test_cutnmix_lam_follows_beta_1_1():
    """With boxes kept inside the image, lam (1 - the shared box's area) is Uniform(0, 1) up to the rounding."""
    rng = np.random.default_rng(11)
    lams = np.array([mixing.sample_step(MixingSpec("cutnmix", box="inside"), rng, 4, 2, 32, 32).lam
                     for _ in range(4000)])
    assert abs(lams.mean() - 0.5) < 0.02 and abs(lams.var() - 1 / 12) < 0.01
    assert (lams >= 0).all() and (lams <= 1).all()
