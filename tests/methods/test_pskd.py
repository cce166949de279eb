"""PS-KD: the alpha schedule, the soft target, the per-sample memory (indices, epochs, compact storage, state_dict)."""
import pytest
import torch
import torch.nn.functional as F

from tests.helpers import assert_one_step, build, random_batch, short_run, tiny_task
from peerkd.config import ConfigError
from peerkd.data import Batch
from peerkd.methods.parts.self_distillation import PredictionMemory, progressive_alpha


def test_alpha_rises_linearly_to_alpha_final():
    # a_t = a_T * t / T with t the 1-based epoch: T = 300, a_T = 0.8
    assert progressive_alpha(0, 300, 0.8) == pytest.approx(0.8 / 300)
    assert progressive_alpha(149, 300, 0.8) == pytest.approx(0.4)
    assert progressive_alpha(299, 300, 0.8) == pytest.approx(0.8)
    method = build({"name": "pskd", "model": "resnet8"}, tiny_task())
    method.on_epoch_start(3, 10)
    assert float(method.alpha) == pytest.approx(0.8 * 4 / 10)


def _batch(index, labels, seed):
    x = torch.randn(len(index), 3, 32, 32, generator=torch.Generator().manual_seed(seed))
    return Batch(x=x, y=torch.tensor(labels), index=torch.tensor(index))


def test_targets_and_memory_across_epochs():
    task = tiny_task(num_classes=5, num_train=16)
    method = build({"name": "pskd", "model": "resnet8"}, task)
    method.train()
    # epoch 1 of 4 (a = 0.2): nothing stored yet, so the target is the label and the loss plain CE
    method.on_epoch_start(0, 4)
    first = _batch([3, 7], [1, 4], seed=1)
    z1 = method.model(first.x).detach()
    out = method(first)
    assert float(out.loss.detach()) == pytest.approx(float(F.cross_entropy(z1, first.y).detach()), rel=1e-5)
    stored = method.memory.probs
    assert torch.allclose(stored[[3, 7]], F.softmax(z1, -1), atol=1e-6)
    assert method.memory.written.nonzero().flatten().tolist() == [3, 7]
    assert stored[[0, 1, 2, 4, 5, 6]].abs().sum() == 0
    # epoch 2 of 4 (a = 0.4): the same images in another order read their own stored predictions
    method.on_epoch_start(1, 4)
    second = _batch([7, 3, 9], [4, 1, 2], seed=2)
    z2 = method.model(second.x).detach()
    one_hot = torch.eye(5)[second.y]
    past = torch.stack([F.softmax(z1[1], -1), F.softmax(z1[0], -1), one_hot[2]])  # image 9 never seen: its label
    target = 0.6 * one_hot + 0.4 * past
    expected = -(target * torch.log_softmax(z2, -1)).sum(-1).mean()
    assert float(method(second).loss.detach()) == pytest.approx(float(expected.detach()), rel=1e-5)
    assert torch.allclose(method.memory.probs[[7, 3, 9]], F.softmax(z2, -1), atol=1e-6)


def test_memory_survives_a_state_dict_round_trip():
    task = tiny_task(num_classes=5, num_train=16)
    method = build({"name": "pskd", "model": "resnet8"}, task)
    method.on_epoch_start(0, 3)
    method(_batch([0, 5], [0, 3], seed=3))
    method.on_epoch_start(2, 3)
    restored = build({"name": "pskd", "model": "resnet8"}, task)
    restored.load_state_dict(method.state_dict())
    assert float(restored.alpha) == pytest.approx(0.8)
    assert torch.equal(restored.memory.probs, method.memory.probs)
    assert torch.equal(restored.memory.written, method.memory.written)
    batch = _batch([5, 0], [3, 0], seed=4)
    assert float(restored(batch).loss.detach()) == pytest.approx(float(method(batch).loss.detach()), rel=1e-6)


def test_compact_memory_top_k_and_half_precision():
    probs = torch.tensor([[0.50, 0.30, 0.10, 0.06, 0.04], [0.05, 0.05, 0.10, 0.20, 0.60]])
    labels = torch.eye(5)[[0, 4]]
    top2 = PredictionMemory(8, 5, dtype="float16", topk=2)
    assert top2.values.dtype == torch.float16 and top2.classes.dtype == torch.int16 and top2.values.shape == (8, 2)
    top2.write(torch.tensor([6, 2]), probs)
    read = top2.read(torch.tensor([2, 6, 1]), torch.eye(5)[[4, 0, 3]])
    # the top two kept, the rest of the mass (0.20 in both rows) shared evenly over the other three classes
    expected = torch.tensor([[0.2 / 3, 0.2 / 3, 0.2 / 3, 0.20, 0.60], [0.50, 0.30, 0.2 / 3, 0.2 / 3, 0.2 / 3],
                             [0.0, 0.0, 0.0, 1.0, 0.0]])
    assert torch.allclose(read, expected, atol=1e-3)
    assert torch.allclose(read.sum(-1), torch.ones(3), atol=1e-3)
    dense16 = PredictionMemory(8, 5, dtype="float16")
    dense16.write(torch.tensor([0, 1]), probs)
    assert dense16.probs.dtype == torch.float16
    assert torch.allclose(dense16.read(torch.tensor([0, 1]), labels), probs, atol=1e-3)
    with pytest.raises(ConfigError, match="method.memory_dtype: 'int8' is not one of float32, float16, bfloat16"):
        build({"name": "pskd", "model": "resnet8", "memory_dtype": "int8"}, tiny_task())  # the schema's choice


def test_pskd_step_and_options():
    task = tiny_task()
    method = build({"name": "pskd", "model": "resnet8", "memory_topk": 2, "memory_dtype": "bfloat16"}, task)
    method.on_epoch_start(1, 2)
    assert_one_step(method, random_batch(task))
    assert set(method.predict(torch.randn(2, 3, 32, 32))) == {"net"}
    assert method.ddp_broadcast_buffers is False
    exported = method.export()
    x = torch.randn(2, 3, 32, 32)
    method.eval()
    assert torch.allclose(exported(x), method.predict(x)["net"])


def test_pskd_short_run_beats_chance(tmp_path):
    summary = short_run({"name": "pskd", "model": "resnet8"}, tmp_path / "run", epochs=3,
                        overrides=("trainer.eval_every=3",))
    assert summary["keys"]["net"]["last"]["top1"] > 40.0, summary  # chance is 25 % with 4 classes


def test_memory_under_two_process_torchrun_holds_every_rank_writes(tmp_path):
    """A 2-process DDP run (gloo, CPU): each rank trains on its half of every epoch, and the all-gathered writes must
    leave rank 0's checkpointed memory with a prediction for every training image -- a softmax row (sums to 1, not the
    one-hot initialisation) -- not only for the images rank 0 saw itself."""
    from tests.helpers import tiny_config, torchrun_train
    from peerkd.training.checkpoint import CHECKPOINT, load_checkpoint

    train_size = 256
    run = tmp_path / "run"
    result = torchrun_train(tiny_config({"name": "pskd", "model": "resnet8"}, epochs=1, train_size=train_size), run)
    assert result.returncode == 0, result.stderr[-3000:]
    state = load_checkpoint(run / CHECKPOINT)["method"]
    written, probs = state["memory.written"], state["memory.probs"].float()
    assert written.shape == (train_size,)
    assert bool(written.all()), f"{int((~written).sum())} of {train_size} images never reached rank 0's memory"
    assert torch.allclose(probs.sum(-1), torch.ones(train_size), atol=1e-4)  # a written softmax, not the zeros
    assert float(probs.max(-1).values.max()) < 1.0 - 1e-6  # a prediction, not a one-hot label
    assert float(probs.min()) > 0.0
