"""The Method contract of peerkd/core/method.py, checked for every registered method (one test parametrised over the
registry, as timm's tests/test_models.py does for its models) on a tiny task, and for a method written to a
temporary file: loaded with ``load_imports``, checked, trained for an epoch, given a bench row, unregistered.

A new method file is covered here without an edit: its default Options, with the backbones swapped for tiny ones
by the harness's ``quick_options`` (ResNet-110 -> ResNet-14, ...), must pass :func:`check_method_contract`.
"""
from __future__ import annotations

import dataclasses
import math

import pytest
import torch

import peerkd
from benchmarks.harness import quick_options
from peerkd.config import build_config
from peerkd.core.method import DataRequest, EpochContext, StepOutput
from peerkd.core.registry import METHODS, build_method, method_class
from tests.helpers import random_batch, tiny_config, tiny_task, tiny_teacher_run

TASK = tiny_task(num_classes=10, num_train=64)  # 10 classes of 32 px images, 64 training images (per-sample memory)
BATCH_SIZE = 4  # images per contract step: BatchNorm needs more than one, the test needs few
EXTRA_CASES = {"tfkd[self]": ("tfkd", {"variant": "self"}),  # second paths of a registered method worth a case
               **{f"switokd[{t}]": ("switokd", {"topology": t, "models": ["resnet8"] * 3, "lr_scales": []})
                  for t in ("1T2S", "2T1S")}}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread for this file: steps of batch 4 on tiny networks gain nothing from a second thread but its
    synchronisation (and on a busy 2-core machine, minutes of waiting)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def teacher_run(tmp_path_factory):
    """A trained run of TASK's class count (one epoch of a vanilla ResNet-8 on generated data): the teacher of the
    methods whose Options name one (``teacher_run``: KD, Tf-KD self)."""
    return tiny_teacher_run(tmp_path_factory.mktemp("teacher") / "run", num_classes=TASK.num_classes)


def small_options(name: str, teacher_run=None, **replacements):
    """The method's Options as a config with ``method.name`` only (plus ``replacements``) validates them, its
    backbones made tiny (quick_options), and an empty ``teacher_run`` pointed at ``teacher_run``."""
    options = quick_options(build_config({"method": {"name": name, **replacements}}).method.options)
    if teacher_run is not None and getattr(options, "teacher_run", None) == "":
        options = dataclasses.replace(options, teacher_run=str(teacher_run))
    return options


def contract_batch(request: DataRequest, task, seed: int = 0):
    """A random batch with what ``request`` asks for: its views, k same-class partners per sample for class pairs, a
    partner label and weight for batch mixing, another random batch as the previous one."""
    batch = random_batch(task, batch_size=BATCH_SIZE, views=request.views, seed=seed)
    if request.class_pairs:  # k partners per sample, block-major (Batch.pair_x)
        batch.pair_x = torch.cat([torch.randn_like(batch.view(0)) for _ in range(int(request.class_pairs))])
        batch.pair_index = torch.cat([batch.index.roll(1 + j) for j in range(int(request.class_pairs))])
    if request.mixing:
        batch.y_b, batch.lam = batch.y.roll(1), torch.tensor(0.7)
    if request.previous_batch:
        previous = random_batch(task, batch_size=BATCH_SIZE, views=request.views, seed=seed + 1)
        batch.prev_x, batch.prev_y, batch.prev_index = previous.x, previous.y, previous.index
        batch.prev_valid = torch.ones(())
    return batch


def check_method_contract(name: str, options, task=TASK) -> None:
    """Everything the trainer, the evaluator, checkpoints and ``peerkd export`` rely on of the method ``name`` built
    from ``options`` (see peerkd/core/method.py)."""
    cls = method_class(name)
    request = cls.data_request(options)
    assert isinstance(request, DataRequest), f"{name}.data_request gave {type(request).__name__}, not a DataRequest"
    torch.manual_seed(0)
    method = build_method(name, options, task)
    method.on_epoch_start(0, 2)
    method.train()

    out = method(contract_batch(request, task))
    assert isinstance(out, StepOutput), f"{name}.forward gave {type(out).__name__}, not a StepOutput"
    assert out.loss.dim() == 0 and out.loss.requires_grad, f"{name}: the loss must be a scalar with grad"
    assert math.isfinite(float(out.loss.detach())), f"{name}: loss {out.loss}"
    for key, value in out.logs.items():
        assert isinstance(value, torch.Tensor) and value.dim() == 0, f"{name}: log '{key}' is not a scalar tensor"
        assert not value.requires_grad, f"{name}: log '{key}' must be detached"
    method.zero_grad(set_to_none=True)
    out.loss.backward()
    trained = [(n, p) for n, p in method.named_parameters() if p.requires_grad]
    unreached = [n for n, p in trained if p.grad is None]
    if cls.ddp_find_unused_parameters:
        assert len(unreached) < len(trained), f"{name}: the loss reaches no trained parameter"
    else:
        assert not unreached, f"{name}: the loss does not reach {unreached[:5]} (or set ddp_find_unused_parameters)"
    assert not [n for n, p in trained if p.grad is not None and not torch.isfinite(p.grad).all()], name
    heldout = [random_batch(task, batch_size=BATCH_SIZE, seed=1)] if request.heldout_per_class else None
    method.on_epoch_end(EpochContext(0, 2, torch.device("cpu"), heldout=heldout))

    method.eval()
    x = torch.randn(BATCH_SIZE, task.in_channels, task.image_size, task.image_size)
    with torch.no_grad():
        predictions = method.predict(x)
    assert isinstance(predictions, dict) and predictions, f"{name}.predict gave no logits"
    for key, logits in predictions.items():
        assert logits.shape == (BATCH_SIZE, task.num_classes), f"{name}: predict '{key}' has shape {logits.shape}"
        assert torch.isfinite(logits).all(), f"{name}: predict '{key}' is not finite"
    for group, keys in method.diversity_groups().items():
        assert keys and set(keys) <= set(predictions), f"{name}: diversity group '{group}' names {keys}"

    fresh = build_method(name, options, dataclasses.replace(task, restoring=True))  # as load_run rebuilds it
    assert set(fresh.state_dict()) == set(method.state_dict()), f"{name}: a fresh instance has other state keys"
    fresh.load_state_dict(method.state_dict())
    fresh.eval()
    with torch.no_grad():
        restored = fresh.predict(x)
    assert set(restored) == set(predictions)
    for key in predictions:
        torch.testing.assert_close(restored[key], predictions[key], msg=f"{name}: '{key}' after the round trip")

    for key in predictions:
        try:
            exported = method.export(key)
        except (KeyError, NotImplementedError):
            continue  # a key the method does not export as one module (an ensemble, a leader's aggregate)
        with torch.no_grad():
            torch.testing.assert_close(exported.eval()(x), predictions[key], msg=f"{name}: export('{key}')")


CASES = {**{name: (name, {}) for name in METHODS.names()}, **EXTRA_CASES}


@pytest.mark.parametrize("case", sorted(CASES))
def test_every_registered_method_keeps_the_contract(case, teacher_run):
    name, replacements = CASES[case]
    check_method_contract(name, small_options(name, teacher_run, **replacements))


USER_METHOD = '''"""Two peers taught by the labels and by each other: a method written outside the package."""
from dataclasses import dataclass, field

import torch

import peerkd
from peerkd.losses import hard_ce, kd_kl


@peerkd.register_method("contract_pair")
class ContractPair(peerkd.Method):
    """Two peers learning from the labels and from each other (DML's loss, in a user's file)."""

    @dataclass
    class Options:
        models: list[str] = field(default_factory=lambda: ["resnet8", "resnet8"])  # the two peers
        temperature: float = 3.0  # T of the mutual KL

    def __init__(self, options, task):
        super().__init__(options, task)
        self.peers = torch.nn.ModuleList(peerkd.build_model(m, task.num_classes) for m in options.models)

    def forward(self, batch):
        first, second = (peer(batch.x) for peer in self.peers)
        ce = hard_ce(first, batch) + hard_ce(second, batch)
        kl = kd_kl(first, second.detach(), self.options.temperature) + kd_kl(second, first.detach(),
                                                                             self.options.temperature)
        return peerkd.StepOutput(ce + kl, {"ce": ce.detach(), "kl": kl.detach()})

    def predict(self, x):
        return {f"peer{i}": peer(x) for i, peer in enumerate(self.peers)}

    def diversity_groups(self):
        return {"peers": ["peer0", "peer1"]}

    def export(self, key=None):
        keys = ["peer0", "peer1"]
        if (key or "peer0") not in keys:
            raise KeyError(f"cannot export '{key}': exportable keys are peer0, peer1")
        return self.peers[keys.index(key or "peer0")]
'''


def test_a_method_in_a_new_file_keeps_the_contract_trains_and_gets_a_bench_row(tmp_path):
    from benchmarks import harness as bench

    path = tmp_path / "contract_pair.py"
    path.write_text(USER_METHOD)
    try:
        peerkd.load_imports([str(path)])
        assert "contract_pair" in METHODS.names()
        check_method_contract("contract_pair", small_options("contract_pair"))
        config = tiny_config({"name": "contract_pair"}, epochs=1, train_size=128, imports=[str(path)])
        config.data.synthetic.test_size = config.data.eval_batch_size  # one evaluation batch
        config.trainer.threads = torch.get_num_threads()  # the test's own (the trainer sets them for the process)
        summary = peerkd.train(config, run_dir=tmp_path / "run")
        assert {"peer0", "peer1"} <= set(summary["keys"]) and summary["epochs"] == 1
        (row,) = [r for r in bench.derived_rows() if r.method == "contract_pair"]
        args = bench.parse_args(["--quick", "--device", "cpu", "--steps", "1", "--warmup", "0", "--batch-size", "8"])
        record = bench.time_row(row, bench.synthetic_cifar(16), args, torch.device("cpu"))
        assert record["reference"]["ms_per_step"] > 0 and record["fast"]["ms_per_step"] > 0, record
    finally:
        METHODS.unregister("contract_pair")
    assert "contract_pair" not in METHODS.names()


def test_the_check_fails_a_method_that_breaks_the_contract(monkeypatch):
    """The check can fail: a predict key outside the diversity groups' keys, and a log that keeps its graph."""
    vanilla = method_class("vanilla")
    monkeypatch.setattr(vanilla, "diversity_groups", lambda self: {"peers": ["peer0", "peer9"]})
    with pytest.raises(AssertionError, match="diversity group 'peers'"):
        check_method_contract("vanilla", small_options("vanilla", models=["resnet8", "resnet8"]))
    monkeypatch.undo()
    forward = vanilla.forward
    monkeypatch.setattr(vanilla, "forward", lambda self, batch: StepOutput(forward(self, batch).loss,
                                                                             {"loss": forward(self, batch).loss}))
    with pytest.raises(AssertionError, match="log 'loss' must be detached"):
        check_method_contract("vanilla", small_options("vanilla"))
