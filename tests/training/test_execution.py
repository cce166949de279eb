"""``trainer.members`` (how identical members execute), the trainer's measured choice (``auto``), ``trainer.step``
and the fast step's eager fallback; the keys these replaced are refused with a migration line."""
from __future__ import annotations

import copy
import json
import warnings

import pytest
import torch
from torch import nn

from peerkd.config import ConfigError, build_config, upgrade_saved_config
from peerkd.methods import build_method
from peerkd.models import build_model
from peerkd.models.execution import current_member_execution, member_execution
from peerkd.models.members import FusedMembers, MemberList, StreamedMembers, VmappedMembers
from peerkd.models.streams import StreamedModels
import peerkd.training.trainer as trainer_module
from peerkd.training.execution import choose_execution, should_measure
from peerkd.training.step import FastStep
from peerkd.training.trainer import Trainer, rng_state
from tests.helpers import build, random_batch, tiny_config, tiny_task, twin_methods

IMAGE = 12  # pixels per side: small maps keep the checks quick
PAIR = {"name": "dml", "models": ["resnet8", "resnet8"]}  # two identical peers: one member group


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


# ----------------------------------------------------------------------------------------------------- the keys

def test_members_and_step_are_checked_choices_with_a_hint():
    trainer = build_config({"trainer": {"members": "grouped", "step": "graph"}}).trainer
    assert (trainer.members, trainer.step) == ("grouped", "graph")
    assert (build_config({}).trainer.members, build_config({}).trainer.step) == ("auto", "auto")
    with pytest.raises(ConfigError, match=r"trainer.members: 'fused' is not one of .*did you mean 'grouped'"):
        build_config({"trainer": {"members": "fused"}})
    with pytest.raises(ConfigError, match=r"trainer.step: 'compiled' is not one of .*did you mean 'compile'"):
        build_config({}, ["trainer.step=compiled"])


@pytest.mark.parametrize("tree, message", [
    ({"method": dict(PAIR, fuse="on")},
     "method.fuse moved to trainer.members (off -> separate, on -> grouped, streams, vmap, auto)"),
    ({"trainer": {"fast": "off"}}, "trainer.fast moved to trainer.step (auto -> auto, on -> compile, off -> eager)"),
    ({"trainer": {"fast_mode": "graph"}},
     "trainer.fast_mode moved to trainer.step (compile -> compile, graph -> graph)"),
    ({"trainer": {"compile": True}}, "trainer.compile moved to trainer.step (true -> compile, false -> eager)"),
])
def test_moved_keys_are_refused_with_their_new_place(tree, message):
    with pytest.raises(ConfigError) as caught:
        build_config(tree)
    assert str(caught.value) == message


def test_moved_keys_given_with_set_are_refused_before_the_method_is_looked_up():
    with pytest.raises(ConfigError, match="^method.fuse moved to trainer.members"):
        build_config({"method": {"name": "no_such_method"}}, ["method.fuse=off"])
    with pytest.raises(ConfigError, match="^trainer.fast moved to trainer.step"):
        build_config({}, ["trainer.fast=on"])


@pytest.mark.parametrize("old, members, step", [
    ({"method": dict(PAIR, fuse="auto"), "trainer": {"compile": False, "fast": "auto", "fast_mode": "compile"}},
     "auto", "auto"),  # the defaults of the older peerkd
    ({"method": dict(PAIR, fuse="on"), "trainer": {"fast": "on", "fast_mode": "compile"}}, "grouped", "compile"),
    ({"method": dict(PAIR, fuse="off"), "trainer": {"fast": "auto", "fast_mode": "graph"}}, "separate", "graph"),
    ({"method": dict(PAIR, fuse="vmap"), "trainer": {"fast": "off", "compile": True}}, "vmap", "compile"),
    ({"method": {"name": "kd"}, "trainer": {"fast": "off", "compile": False}}, "auto", "eager"),
])
def test_a_checkpoints_config_saved_before_the_move_is_upgraded(old, members, step):
    """A run saved by an older peerkd still resumes, evaluates and exports: its saved config is read with the moved
    values under the new keys (a config a user writes is refused instead, above)."""
    config = build_config(upgrade_saved_config(old))
    assert (config.trainer.members, config.trainer.step) == (members, step)
    assert "fuse" not in upgrade_saved_config(old)["method"]


# ------------------------------------------------------------------------------------------ the build context

def test_member_execution_is_separate_outside_any_context_and_nests():
    assert current_member_execution() == "separate"
    with member_execution("grouped"):
        assert current_member_execution() == "grouped"
        with member_execution("vmap"):
            assert current_member_execution() == "vmap"
        assert current_member_execution() == "grouped"
    assert current_member_execution() == "separate"
    with pytest.raises(ValueError, match="separate, grouped, streams, vmap"), member_execution("auto"):
        pass  # "auto" is the trainer's to resolve, never a build's


def test_the_build_context_decides_the_member_groups_and_the_method_never_names_it():
    task = tiny_task(image_size=IMAGE)
    built = {members: build(PAIR, task, members=members).models
             for members in ("separate", "grouped", "streams", "vmap")}
    assert type(built["separate"]) is MemberList and isinstance(built["streams"], StreamedMembers)
    assert isinstance(built["grouped"], FusedMembers) and isinstance(built["vmap"], VmappedMembers)
    options = build_config({"method": PAIR}).method.options
    assert type(build_method("dml", options, task).models) is MemberList  # outside any context: the reference
    assert "fuse" not in vars(options)


# ------------------------------------------------------------------------------------------ the measured choice

def _dml_options(**extra):
    return build_config({"method": dict(PAIR, **extra)}).method.options


def test_choose_execution_measures_every_execution_and_leaves_no_trace():
    task = tiny_task(image_size=IMAGE)
    options = _dml_options()
    reference = build_method("dml", options, task)
    before = {k: v.clone() for k, v in reference.state_dict().items()}
    rng_before = rng_state()
    choice = choose_execution(lambda: build_method("dml", options, task), reference,
                              random_batch(task, batch_size=4), device=torch.device("cpu"), warmup=1, steps=1)
    assert set(choice.ms_per_step) == {"separate", "grouped", "streams", "vmap"}
    assert all(v is not None and v > 0 for v in choice.ms_per_step.values())
    assert choice.choice == min(choice.ms_per_step, key=choice.ms_per_step.get)
    assert choice.as_record()["kind"] == "execution" and choice.as_record()["members"] == choice.choice
    assert choice.describe().startswith(f"trainer.members auto: '{choice.choice}' (ms per step timed eager: "
                                        "separate ")
    for key, value in reference.state_dict().items():  # the run's method is untouched
        assert torch.equal(value, before[key]), key
    assert torch.equal(torch.get_rng_state(), rng_before["torch"])  # and so is every generator
    assert current_member_execution() == "separate"


def test_choose_execution_skips_what_cannot_run_or_does_not_group():
    task = tiny_task(image_size=IMAGE)
    mixed = _dml_options(models=["resnet8", "resnet14"])  # heterogeneous: "grouped" would be "separate" again
    reference = build_method("dml", mixed, task)

    def build_failing_streams():
        if current_member_execution() == "streams":
            raise RuntimeError("no streams today")
        return build_method("dml", mixed, task)

    with pytest.warns(RuntimeWarning, match="trainer.members auto: the 'streams' execution could not be measured"):
        choice = choose_execution(build_failing_streams, reference, random_batch(task, batch_size=4),
                                  device=torch.device("cpu"), warmup=1, steps=1)
    assert choice.ms_per_step["grouped"] is None and choice.ms_per_step["streams"] is None
    assert choice.ms_per_step["vmap"] is None  # nor does vmap map different networks
    assert choice.choice == "separate"


def test_a_method_without_member_groups_is_not_timed():
    task = tiny_task(image_size=IMAGE)
    options = build_config({"method": {"name": "vanilla", "models": ["resnet8"]}}).method.options
    reference = build_method("vanilla", options, task)
    choice = choose_execution(lambda: build_method("vanilla", options, task), reference,
                              random_batch(task, batch_size=4), device=torch.device("cpu"), warmup=1, steps=1)
    assert choice.choice == "separate" and not choice.measured  # one network: nothing to group or stream


def test_only_a_method_with_a_member_group_is_measured_and_only_on_cuda():
    task = tiny_task(image_size=IMAGE)
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert should_measure(build(PAIR, task), cuda) and not should_measure(build(PAIR, task), cpu)
    assert not should_measure(build({"name": "vanilla", "models": ["resnet8"]}, task), cuda)  # nothing to choose
    assert should_measure(build({"name": "one", "model": "resnet8"}, task), cuda)  # branch tails are a group


def _final_state(run_dir):
    from peerkd.training.checkpoint import load_checkpoint

    return load_checkpoint(run_dir / "checkpoint.pt")["method"]


def test_trainer_auto_measures_then_trains_as_the_chosen_execution(tmp_path, monkeypatch):
    """With the measurement forced on (it runs on CUDA only), the run logs its choice and ends exactly where a run
    configured with that execution from the start ends: measuring leaves no trace in the weights or the randomness."""
    asked = []
    monkeypatch.setattr(trainer_module, "should_measure", lambda method, device: asked.append(method) or True)
    config = tiny_config(PAIR, epochs=1, train_size=64, overrides=("data.batch_size=16",))
    Trainer(config, run_dir=tmp_path / "auto").fit()
    assert len(asked) == 1 and type(asked[0].models) is MemberList  # asked about the reference build
    records = [json.loads(line) for line in (tmp_path / "auto" / "metrics.jsonl").read_text().splitlines()]
    execution = [r for r in records if r["kind"] == "execution"]
    assert len(execution) == 1 and execution[0]["members"] in ("separate", "grouped", "streams", "vmap")
    chosen = execution[0]["members"]
    explicit = tiny_config(PAIR, epochs=1, train_size=64,
                           overrides=("data.batch_size=16", f"trainer.members={chosen}"))
    Trainer(explicit, run_dir=tmp_path / "explicit").fit()
    got, expected = _final_state(tmp_path / "auto"), _final_state(tmp_path / "explicit")
    for key, value in expected.items():
        assert torch.equal(got[key], value), key


def test_auto_on_cpu_does_not_measure(tmp_path):
    config = tiny_config(PAIR, epochs=1, train_size=32, overrides=("data.batch_size=16",))
    trainer = Trainer(config, run_dir=tmp_path / "run")
    assert trainer.execution is None and type(trainer.method.models) is MemberList


@pytest.mark.parametrize("members, kind", [("grouped", FusedMembers), ("vmap", VmappedMembers),
                                           ("streams", StreamedMembers)])
def test_the_trainer_builds_the_method_in_the_asked_execution(tmp_path, members, kind):
    config = tiny_config(PAIR, epochs=1, train_size=32,
                         overrides=("data.batch_size=16", f"trainer.members={members}"))
    trainer = Trainer(config, run_dir=tmp_path / "run")
    assert isinstance(trainer.method.models, kind) and trainer.execution is None
    assert current_member_execution() == "separate"  # the context ends with the build


def test_a_resume_under_auto_keeps_the_execution_the_run_trained_with(tmp_path):
    """The checkpoint records the execution built; a resume under auto builds it again (a new measurement could pick
    another whose optimizer state has another layout), and an explicit other layout is refused naming the fix."""
    from peerkd.training.checkpoint import RunError, load_checkpoint

    def config(epochs: int, members: str):
        return tiny_config(PAIR, epochs=epochs, train_size=32,
                           overrides=("data.batch_size=16", f"trainer.members={members}"))

    run = tmp_path / "run"
    Trainer(config(1, "grouped"), run_dir=run).fit()
    assert load_checkpoint(run / "checkpoint.pt")["members"] == "grouped"
    resumed = Trainer(config(2, "auto"), run_dir=run, resume=True)
    assert isinstance(resumed.method.models, FusedMembers) and resumed.members == "grouped"
    resumed.fit()
    with pytest.raises(RunError, match=r"trained with trainer.members grouped.*--set trainer.members=grouped"):
        Trainer(config(3, "separate"), run_dir=run, resume=True).fit()


# --------------------------------------------------------------------------------------------------- the step

@pytest.mark.parametrize("step, expected", [("auto", ("eager", None, False)), ("eager", ("eager", None, False)),
                                            ("compile", ("compile", None, False))])
def test_trainer_step_on_cpu(tmp_path, step, expected):
    config = tiny_config({"name": "vanilla"}, epochs=1, train_size=32, overrides=(f"trainer.step={step}",))
    trainer = Trainer(config, run_dir=tmp_path / "run")
    assert (trainer.step_mode, trainer.compile_mode, trainer.step_fallback) == expected
    assert trainer.step.mode == expected[0]


def test_a_graph_step_off_cuda_is_refused_before_the_run_folder(tmp_path):
    config = tiny_config({"name": "vanilla"}, epochs=1, train_size=32, overrides=("trainer.step=graph",))
    with pytest.raises(ConfigError, match="trainer.step: graph captures a CUDA graph, and this run is on cpu"):
        Trainer(config, run_dir=tmp_path / "run")
    assert not (tmp_path / "run").exists()


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
    assert sum("trainer.step auto: the compile step failed" in str(w.message) for w in caught) == 1
    expected = method.state_dict()
    for key, value in twin.state_dict().items():
        assert torch.equal(value, expected[key]), key
    clone = copy.deepcopy(method)
    without = FastStep(clone, clone.trainable_parameters(), lr=0.05, mode="compile", compile_backend=_failing_backend)
    with pytest.raises(Exception, match="cannot compile"):  # trainer.step: compile asks for it: no fallback
        without(random_batch(task, batch_size=4))
        without(random_batch(task, batch_size=4))
