"""timm: and tv: models (peerkd/models/adapters.py): the regrouped network computes the library's own function, its
weights load back into the library without peerkd, it trains as a peer in DML, CutnMix and ONE; models that lack what
a method needs are refused before training, by name."""
import pytest
import torch
import torchvision
from torch import nn

from tests.helpers import assert_one_step, build, random_batch, tiny_task
from peerkd.config import ConfigError
from peerkd.models import build_model
from peerkd.models.adapters import LibraryBackbone, LibraryClassifier

timm = pytest.importorskip("timm")

TIMM = "timm:test_resnet"  # timm's 2-stage-per-block test network: random init, no download
TIMM_OPTIONS = {"zero_init_last": False}  # timm zero-inits each block's last BN: its other convs get no gradient yet
TV = "tv:mobilenet_v3_small"  # a classifier with a hidden layer: the pooled features are that layer's output
TV_SMALL = "tv:mnasnet0_5"  # the lightest torchvision CNN for the training steps


def _native(spec: dict) -> nn.Module:
    if spec["library"] == "timm":
        return timm.create_model(spec["name"], **spec["kwargs"])
    return torchvision.models.get_model(spec["name"], **spec["kwargs"])


@pytest.mark.parametrize("name, options, stages, widths", [
    (TIMM, TIMM_OPTIONS, 4, [32, 48, 192, 96]),  # feature_info taps layer1..layer4 (act1 at stride 2 ends the stem)
    (TV, {}, 4, [16, 24, 48, 576]),  # strides 4, 8, 16, 32; the head's hidden layer gives 1024 pooled features
])
def test_library_model_is_regrouped_and_computes_the_library_function(name, options, stages, widths):
    torch.manual_seed(0)
    model = build_model(name, 7, **options)
    assert isinstance(model, LibraryBackbone)
    assert len(model.stages) == stages and model.stage_channels == widths
    assert isinstance(model.head.fc, nn.Linear) and model.head.fc.out_features == 7
    spec = model.native_spec()
    assert spec == {"library": "timm" if name.startswith("timm") else "torchvision", "name": name.partition(":")[2],
                    "kwargs": dict(options, num_classes=7)}
    native = _native(spec)
    native.load_state_dict(model.native_state_dict())  # strict: every key in the library's own layout
    model.eval(), native.eval()
    x = torch.randn(2, 3, 40, 40)  # not the probe's size
    with torch.no_grad():
        maps = model.forward_stages(x)
        torch.testing.assert_close(model(x), native(x))
        assert [m.shape[1] for m in maps] == widths
        features, logits = model.features_and_logits(x)
        torch.testing.assert_close(logits, native(x))
        torch.testing.assert_close(model.head.fc(features), logits)
        if spec["library"] == "timm":
            torch.testing.assert_close(maps[-1], native.forward_features(x))
            torch.testing.assert_close(features, native.forward_head(native.forward_features(x), pre_logits=True))


def test_native_state_dict_round_trips_after_training_and_options_pass_through():
    model = build_model(TIMM, 5, drop_rate=0.25, **TIMM_OPTIONS)
    assert model.head.pooled.drop_rate == 0.25  # timm's own option reached timm's forward_head
    batch = random_batch(tiny_task(5), batch_size=4)
    loss = nn.functional.cross_entropy(model(batch.x), batch.y)
    loss.backward()
    with torch.no_grad():
        for p in model.parameters():
            p -= 0.1 * p.grad
    native = _native(model.native_spec())
    native.load_state_dict(model.native_state_dict())
    model.eval(), native.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(batch.x), native(batch.x))


def test_a_model_whose_forward_is_not_its_children_is_kept_whole():
    model = build_model("timm:test_vit", 5)  # adds position embeddings in code: no stage cut reproduces it
    assert isinstance(model, LibraryClassifier) and "pos_embed" in model.structure_note
    native = _native(model.native_spec())
    native.load_state_dict(model.native_state_dict())
    x = torch.randn(1, 3, 160, 160)
    model.eval(), native.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x), native(x))


@pytest.mark.parametrize("model, options", [(TIMM, TIMM_OPTIONS), (TV_SMALL, {})])
def test_library_models_train_as_dml_peers(model, options):
    task = tiny_task()
    method = build({"name": "dml", "models": [model, model], "model_options": options}, task)
    assert_one_step(method, random_batch(task, batch_size=4))


@pytest.mark.parametrize("model, options", [(TIMM, TIMM_OPTIONS), (TV_SMALL, {})])
def test_library_models_train_in_cutnmix(model, options):
    task = tiny_task()
    method = build({"name": "cutnmix", "models": [model, model], "model_options": options, "mixing": "none"}, task)
    assert_one_step(method, random_batch(task, batch_size=4, views=2))
    assert set(method.predict(torch.randn(2, 3, 32, 32))) == {"peer0", "peer1", "ensemble", "peer_teacher"}


@pytest.mark.parametrize("model, options", [(TIMM, TIMM_OPTIONS), (TV_SMALL, {})])
def test_library_models_branch_in_one_and_export_a_native_branch(model, options):
    task = tiny_task()
    method = build({"name": "one", "model": model, "model_options": options, "branches": 2}, task)
    # the gate's BatchNorm follows its FC: in training mode the FC bias's gradient is zero up to rounding
    assert_one_step(method, random_batch(task, batch_size=4), frozen=("gate.fc.bias",))
    method.eval()
    branch = method.export("branch1")
    native = _native(branch.native_spec())
    native.load_state_dict(branch.native_state_dict())
    native.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(native(x), method.predict(x)["branch1"])


def test_a_model_lacking_features_is_refused_naming_method_model_and_what_is_missing():
    task = tiny_task()
    with pytest.raises(ConfigError) as err:
        build({"name": "cutnmix", "models": ["timm:test_vit", "timm:test_vit"]}, task)
    message = str(err.value)
    assert message.startswith("method.models: cutnmix needs features") and "'timm:test_vit'" in message
    assert "head.fc" in message and "pos_embed" in message
    with pytest.raises(ConfigError, match="method.model: byot needs stages .* stage_channels"):
        build({"name": "byot", "model": "timm:test_vit"}, task)
    build({"name": "dml", "models": ["timm:test_vit", "timm:test_vit"]}, task)  # a logit-only method takes it


def test_an_instance_is_accepted_where_it_can_be_and_otherwise_named_by_its_class():
    from peerkd.methods.cutnmix import CutnMix
    from peerkd.methods.dml import DML

    task = tiny_task()
    plain = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(8, task.num_classes))  # a plain nn.Module: logits only
    dml = DML(DML.Options(models=[plain, plain]), task)
    assert dml.models[0] is not plain  # a copy per member, the caller's module untouched
    assert_one_step(dml, random_batch(task, batch_size=4))
    with pytest.raises(ConfigError) as err:
        CutnMix(CutnMix.Options(models=[plain, plain], mixing="none"), task)
    message = str(err.value)
    assert "a torch.nn.modules.container.Sequential instance has no forward_stages, head.features" in message
    assert len(message) < 600 and "Conv2d(" not in message  # named by its class, not printed
    staged = build_model(TIMM, task.num_classes, **TIMM_OPTIONS)
    cutnmix = CutnMix(CutnMix.Options(models=[staged, staged], mixing="none"), task)
    assert_one_step(cutnmix, random_batch(task, batch_size=4, views=2))


def test_unknown_library_names_are_config_errors_with_a_hint():
    task = tiny_task()
    with pytest.raises(ConfigError, match="unknown timm model 'test_resnett'; did you mean 'timm:test_resnet'"):
        build({"name": "dml", "models": ["timm:test_resnett", "timm:test_resnet"]}, task)
    with pytest.raises(ConfigError, match="unknown torchvision classification model 'resnet19'"):
        build({"name": "one", "model": "tv:resnet19"}, task)
    with pytest.raises(ConfigError, match="downloads nothing"):
        build({"name": "dml", "models": [TV, TV], "model_options": {"pretrained": True}}, task)


def test_the_cli_refuses_a_model_without_stages_with_exit_2_and_no_traceback(tmp_path, capsys):
    from peerkd.cli import main

    code = main(["train", "--out", str(tmp_path / "run"), "--device", "cpu", "--set", "method.name=cutnmix",
                 "--set", "method.models=[tv:squeezenet1_1,tv:squeezenet1_1]", "--set", "schedule.epochs=1",
                 "--set", "data.synthetic.train_size=64", "--set", "data.synthetic.test_size=32"])
    err = capsys.readouterr().err
    assert code == 2
    assert "method.models: cutnmix needs features" in err and "'tv:squeezenet1_1'" in err
    assert "Traceback" not in err and not (tmp_path / "run" / "checkpoint.pt").exists()
