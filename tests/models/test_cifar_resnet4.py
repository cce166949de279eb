"""The four-stage CIFAR ResNet / ResNeXt family: shapes, stage outputs, parameter counts, truncation."""
import pytest
import torch

from peerkd.models import build_model


@pytest.mark.parametrize("name, kwargs", [
    ("resnet18", {"width": 8}),
    ("resnet50", {"width": 8}),
    ("resnext50_32x4d", {"width": 16, "groups": 4, "width_per_group": 16}),
])
def test_tiny_variants_run_forward_stages(name, kwargs):
    model = build_model(name, 7, **kwargs)
    x = torch.randn(2, 3, 32, 32)
    maps = model.forward_stages(x)
    assert [m.shape[-1] for m in maps] == [32, 16, 8, 4]  # 3x3 stride-1 stem, stages 2-4 halve
    assert [m.shape[1] for m in maps] == model.stage_channels
    assert model(x).shape == (2, 7)
    assert model.head.fc.in_features == model.stage_channels[-1]


def test_full_size_parameter_counts():
    # ResNet-18 CIFAR adaptation: 11.17 M without the classifier + 512*100+100; ResNet-50 23.5 M + 2048*100+100;
    # ResNeXt-50 32x4d: 22.98 M + 2048*100+100 (torchvision's ImageNet counts less the 7x7 stem, plus a 3x3 one).
    expected = {"resnet18": 11_220_132, "resnet50": 23_705_252, "resnext50_32x4d": 23_177_124}
    for name, count in expected.items():
        model = build_model(name, 100)
        assert sum(p.numel() for p in model.parameters()) == count, name
        assert model.stage_channels == ([64, 128, 256, 512] if name == "resnet18" else [256, 512, 1024, 2048])


def test_resnext_uses_grouped_convolutions():
    model = build_model("resnext50_32x4d", 10)
    first = model.stages[0][0]
    assert first.conv2.groups == 32 and first.conv2.in_channels == 128  # 32 groups x 4 channels at 64 planes


def test_num_stages_truncates_the_backbone():
    model = build_model("resnet18", 5, width=8, num_stages=2)
    assert len(model.stages) == 2 and model.stage_channels == [8, 16]
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 5)
    with pytest.raises(ValueError):
        build_model("resnet18", 5, num_stages=5)
