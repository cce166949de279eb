"""``method.fuse`` executions, the trainer's measured choice (``auto``) and the fast step's eager fallback."""
from __future__ import annotations

import copy
import json
import warnings

import pytest
import torch
from torch import nn

import peerkd.train.trainer as trainer_module
from peerkd.train.execution import choose_execution
from peerkd.config import ConfigError, build_config
from peerkd.train.step import FastStep
from peerkd.methods import build_method
from peerkd.models import build_model
from peerkd.models.members import FusedMembers, MemberList, StreamedMembers
from peerkd.models.streams import StreamedModels
from peerkd.train.trainer import Trainer, rng_state
from tests.helpers import build, random_batch, tiny_config, tiny_task, twin_methods

IMAGE = 12  # pixels per side: small maps keep the checks quick


def test_streamed_models_are_a_module_list_that_runs_every_member():
    torch.manual_seed(0)
    models = [build_model("resnet8", 5) for _ in range(2)]
    streamed = StreamedModels(copy.deepcopy(models))
    plain = nn.ModuleList(models)
    assert list(streamed.state_dict()) == list(plain.state_dict())  # checkpoints load either way
    x = [torch.randn(3, 3, IMAGE, IMAGE), torch.randn(3, 3, IMAGE, IMAGE)]
    for got, member, xi in zip(streamed.run(x), plain, x):
        assert torch.equal(got, member(xi))
    with pytest.raises(ValueError, match="2 members, 1 inputs"):
        streamed.run(x[:1])


@pytest.mark.parametrize("value, expected", [(True, "on"), (False, "off"), ("streams", "streams"), ("auto", "auto")])
def test_fuse_option_reads_booleans_and_names(value, expected):
    config = build_config({"method": {"name": "dml", "models": ["resnet8", "resnet8"], "fuse": value}})
    assert config.method.options.fuse == expected


def test_bad_fuse_and_fast_values_name_the_key():
    with pytest.raises(ConfigError, match="method.fuse"):
        build({"name": "dml", "models": ["resnet8", "resnet8"], "fuse": "sometimes"}, tiny_task())
    with pytest.raises(ConfigError, match="trainer.fast"):
        build_config({"trainer": {"fast": "always"}})
    assert build_config({"trainer": {"fast": True}}).trainer.fast == "on"


def test_streams_and_auto_outside_the_trainer_build_separate_modules():
    task = tiny_task(image_size=IMAGE)
    streamed = build({"name": "dml", "models": ["resnet8", "resnet8"], "fuse": "streams"}, task)
    auto = build({"name": "dml", "models": ["resnet8", "resnet8"], "fuse": "auto"}, task)
    assert isinstance(streamed.models, StreamedMembers)
    assert type(auto.models) is MemberList


def _dml_options(**extra):
    return build_config({"method": dict({"name": "dml", "models": ["resnet8", "resnet8"]}, **extra)}).method.options


def test_choose_execution_measures_every_execution_and_leaves_no_trace():
    task = tiny_task(image_size=IMAGE)
    options = _dml_options()
    reference = build_method("dml", options, task)
    before = {k: v.clone() for k, v in reference.state_dict().items()}
    rng_before = rng_state()
    choice = choose_execution(lambda o: build_method("dml", o, task), options, reference,
                              random_batch(task, batch_size=4), device=torch.device("cpu"), warmup=1, steps=1)
    assert set(choice.ms_per_step) == {"off", "on", "streams", "vmap"}
    assert all(v is not None and v > 0 for v in choice.ms_per_step.values())
    assert choice.choice == min(choice.ms_per_step, key=choice.ms_per_step.get)
    assert choice.as_record()["kind"] == "execution"
    for key, value in reference.state_dict().items():  # the run's method is untouched
        assert torch.equal(value, before[key]), key
    assert torch.equal(torch.get_rng_state(), rng_before["torch"])  # and so is every generator


def test_choose_execution_skips_what_cannot_run_or_does_not_fuse():
    task = tiny_task(image_size=IMAGE)
    mixed = _dml_options(models=["resnet8", "resnet14"])  # heterogeneous: "on" would be "off" again
    reference = build_method("dml", mixed, task)

    def build_failing_streams(options):
        if options.fuse == "streams":
            raise RuntimeError("no streams today")
        return build_method("dml", options, task)

    with pytest.warns(RuntimeWarning, match="'streams' execution could not be measured"):
        choice = choose_execution(build_failing_streams, mixed, reference, random_batch(task, batch_size=4),
                                  device=torch.device("cpu"), warmup=1, steps=1)
    assert choice.ms_per_step["on"] is None and choice.ms_per_step["streams"] is None
    assert choice.ms_per_step["vmap"] is None  # nor does vmap map different networks
    assert choice.choice == "off"


def _final_state(run_dir):
    from peerkd.train.checkpoint import load_checkpoint

    return load_checkpoint(run_dir / "checkpoint.pt")["method"]


def test_trainer_auto_measures_then_trains_as_the_chosen_execution(tmp_path, monkeypatch):
    """With the measurement forced on (it runs on CUDA only), the run logs its choice and ends exactly where a run
    configured with that execution from the start ends: measuring leaves no trace in the weights or the randomness."""
    monkeypatch.setattr(trainer_module, "should_measure", lambda options, device: options.fuse == "auto")
    method = {"name": "dml", "models": ["resnet8", "resnet8"]}
    config = tiny_config(dict(method, fuse="auto"), epochs=1, train_size=64, overrides=("data.batch_size=16",))
    Trainer(config, run_dir=tmp_path / "auto").fit()
    records = [json.loads(line) for line in (tmp_path / "auto" / "metrics.jsonl").read_text().splitlines()]
    execution = [r for r in records if r["kind"] == "execution"]
    assert len(execution) == 1 and execution[0]["fuse"] in ("off", "on", "streams", "vmap")
    chosen = execution[0]["fuse"]
    explicit = tiny_config(dict(method, fuse=chosen), epochs=1, train_size=64, overrides=("data.batch_size=16",))
    Trainer(explicit, run_dir=tmp_path / "explicit").fit()
    got, expected = _final_state(tmp_path / "auto"), _final_state(tmp_path / "explicit")
    for key, value in expected.items():
        assert torch.equal(got[key], value), key


def test_auto_on_cpu_does_not_measure(tmp_path):
    config = tiny_config({"name": "dml", "models": ["resnet8", "resnet8"]}, epochs=1, train_size=32,
                         overrides=("data.batch_size=16",))
    trainer = Trainer(config, run_dir=tmp_path / "run")
    assert trainer.execution is None and type(trainer.method.models) is MemberList


def _failing_backend(graph_module, example_inputs):
    raise RuntimeError("this backend cannot compile anything")


def test_fast_step_falls_back_to_eager_when_compilation_fails():
    if not hasattr(torch, "compile"):
        pytest.skip("torch.compile is unavailable")
    method, twin = twin_methods({"name": "vanilla", "models": ["resnet8"]}, tiny_task(num_classes=3, image_size=8))
    task = method.task
    eager = FastStep(method, method.trainable_parameters(), lr=0.05)
    failing = FastStep(twin, twin.trainable_parameters(), lr=0.05, mode="compile",
                       compile_backend=_failing_backend, fallback=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for step in range(3):
            batch = random_batch(task, batch_size=4, seed=step)
            eager(batch)
            failing(batch)
    assert failing.mode == "eager"
    assert sum("trainer.fast: the compile step failed" in str(w.message) for w in caught) == 1
    expected = method.state_dict()
    for key, value in twin.state_dict().items():
        assert torch.equal(value, expected[key]), key
    clone = copy.deepcopy(method)
    without = FastStep(clone, clone.trainable_parameters(), lr=0.05, mode="compile", compile_backend=_failing_backend)
    with pytest.raises(Exception, match="cannot compile"):  # trainer.fast: on asks for it: no silent fallback
        without(random_batch(task, batch_size=4))
        without(random_batch(task, batch_size=4))


def test_fused_members_type_is_what_on_builds():
    task = tiny_task(image_size=IMAGE)
    assert isinstance(build({"name": "vanilla", "models": ["resnet8"] * 2, "fuse": "on"}, task).models, FusedMembers)


def test_a_method_without_member_groups_is_not_measured():
    task = tiny_task(image_size=IMAGE)
    options = build_config({"method": {"name": "vanilla", "models": ["resnet8"]}}).method.options
    reference = build_method("vanilla", options, task)
    choice = choose_execution(lambda o: build_method("vanilla", o, task), options, reference, random_batch(task, batch_size=4),
                              device=torch.device("cpu"), warmup=1, steps=1)
    assert choice.choice == "off" and not choice.measured  # one network: nothing to fuse or stream, nothing timed
