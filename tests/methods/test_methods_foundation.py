"""One step of every foundation method on a tiny model, and short real runs that must beat chance."""
import torch

from tests.helpers import assert_one_step, build, random_batch, short_run, tiny_task


def test_vanilla_step_trains_every_network():
    task = tiny_task()
    method = build({"name": "vanilla", "models": ["resnet8", "resnet8"]}, task)
    assert_one_step(method, random_batch(task))
    preds = method.predict(torch.randn(3, 3, 32, 32))
    assert set(preds) == {"peer0", "peer1", "ensemble"}


def test_dml_step_trains_every_peer():
    task = tiny_task()
    method = build({"name": "dml", "models": ["resnet8", "resnet8", "resnet8"]}, task)
    assert_one_step(method, random_batch(task))


def test_dml_separate_views_uses_one_view_per_peer():
    task = tiny_task()
    method = build({"name": "dml", "models": ["resnet8", "resnet8"], "separate_views": True}, task)
    assert method.data_request(method.options).views == 2
    assert_one_step(method, random_batch(task, views=2))


def test_dml_short_run_beats_chance(tmp_path):
    summary = short_run({"name": "dml", "models": ["resnet8", "resnet8"]}, tmp_path / "run", epochs=3)
    for key in ("peer0", "peer1", "ensemble"):
        assert summary["keys"][key]["last"]["top1"] > 40.0, summary  # chance is 25 % with 4 classes
