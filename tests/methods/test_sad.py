"""SAD: the attention map and the loss against the formula written out, the detached teacher map, a short run."""
import pytest
import torch
import torch.nn.functional as F

from peerkd.methods.sad import attention_distillation, attention_map
from tests.helpers import assert_one_step, build, cifar100_subset_run, random_batch, tiny_task

SMALL = {"name": "sad", "model": "preact_resnet18", "model_options": {"width": 4}}  # 4-32 channels


def written_out(maps, p=2.0):
    """``sum_i mean (A(F_i) - A(up2(F_{i+1})))^2``, ``A(F) = softmax over positions of mean_c F^p``, the later map
    upsampled x2 (bilinear, as Self-KD-Lib's ``scale_factor=2.``) before its attention is taken."""
    def attention(f):
        b, _, h, w = f.shape
        e = f.double().pow(p).mean(1).reshape(b, -1)
        return (e.exp() / e.exp().sum(1, keepdim=True)).reshape(b, h, w)
    term = 0.0
    for earlier, later in zip(maps[:-1], maps[1:]):
        up = F.interpolate(later, scale_factor=2.0, mode="bilinear")
        term = term + ((attention(earlier) - attention(up)) ** 2).mean()
    return term


def test_attention_map_is_a_spatial_softmax_of_the_mean_squared_channels():
    f = torch.randn(2, 3, 4, 4)
    a = attention_map(f, 2.0)
    assert a.shape == (2, 4, 4)
    torch.testing.assert_close(a.sum((1, 2)), torch.ones(2))
    energy = (f ** 2).mean(1)
    torch.testing.assert_close(a[0, 1, 2] / a[0, 0, 0], (energy[0, 1, 2] - energy[0, 0, 0]).exp())


@pytest.mark.parametrize(("options", "wrong_p", "wrong_weight"), [({}, 1.0, 100.0),
                                                                   ({"weight": 10.0, "power": 1.0}, 2.0, 1000.0)])
def test_loss_is_ce_plus_weighted_attention_distillation(options, wrong_p, wrong_weight):
    task = tiny_task()
    method = build({**SMALL, **options}, task).train()  # batch statistics: maps of unit scale, a larger term
    batch = random_batch(task)
    with torch.no_grad():
        out = method(batch)
        maps = method.model.forward_stages(batch.x)
        ce = F.cross_entropy(method.model.head(maps[-1]), batch.y).double()
    o, loss = method.options, out.loss.double()
    term = written_out(maps, o.power)
    assert float(out.logs["attention"]) == pytest.approx(float(term), rel=1e-5)
    assert float(loss) == pytest.approx(float(ce + o.weight * term), abs=1e-6)
    # the checks can fail: another p moves the term, another weight the loss (by far more than float32 round-off)
    assert float(out.logs["attention"]) != pytest.approx(float(written_out(maps, wrong_p)), rel=1e-3)
    assert abs(float(loss - (ce + wrong_weight * term))) > 100 * 1e-6


def test_the_later_map_teaches_and_is_not_taught():
    earlier = torch.randn(2, 3, 8, 8, requires_grad=True)
    later = torch.randn(2, 5, 4, 4, requires_grad=True)
    attention_distillation([earlier, later]).backward()
    assert later.grad is None and earlier.grad.abs().sum() > 0


def test_maps_of_one_size_are_compared_without_resizing():
    f, g = torch.randn(2, 3, 4, 4), torch.randn(2, 6, 4, 4)
    expected = ((attention_map(f, 2.0) - attention_map(g, 2.0)) ** 2).mean()
    torch.testing.assert_close(attention_distillation([f, g]), expected)


def test_one_step_trains_every_layer():
    task = tiny_task()
    assert_one_step(build(SMALL, task), random_batch(task))


def test_sad_short_run_on_cifar100(tmp_path):
    summary = cifar100_subset_run(SMALL, tmp_path / "run")
    assert set(summary["keys"]) == {"net"}
    assert summary["keys"]["net"]["last"]["top1"] >= 0
