"""torchvision ImageNet backbones (tv_*): their structure and size match torchvision's, and their weights load into
it (the stem / stages / head contract itself: tests/models/test_model_contract.py)."""
import pytest
import torch

from peerkd.models import build_model

# parameters with 1000 classes, millions: torchvision's counts (KDCL Tables 3 and 4 quote 11.7M, 25.6M, 1.9M-2M)
NETWORKS = {"tv_resnet18": 11.69, "tv_resnet50": 25.56, "tv_mobilenetv2_w0_5": 1.97, "tv_mobilenetv2_w1_0": 3.50,
            "tv_mobilenetv2_w1_2": 4.72}


@pytest.mark.parametrize("name", list(NETWORKS))
def test_backbone_structure_and_size_match_torchvision(name):
    with torch.device("meta"):  # shapes only: no memory, no initialisation cost
        model = build_model(name, num_classes=1000)
        maps = model.forward_stages(torch.empty(1, 3, 224, 224))
        assert [m.shape[1] for m in maps] == model.stage_channels and maps[-1].shape[-2:] == (7, 7)
        assert model(torch.empty(1, 3, 224, 224)).shape == (1, 1000)
    assert sum(p.numel() for p in model.parameters()) / 1e6 == pytest.approx(NETWORKS[name], abs=0.01)


@pytest.mark.parametrize("name", ["tv_resnet18", "tv_resnet50", "tv_mobilenetv2_w0_5"])
def test_native_state_dict_loads_into_the_torchvision_model_it_mirrors(name):
    """Issue 14: the weights in torchvision's own key layout (conv1 / layer1 / fc, features.i / classifier.1), loaded
    strictly into ``torchvision.models.<native_spec name>(**kwargs)``, give the same logits."""
    import torchvision

    model = build_model(name, 7)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # every weight and statistic random, so a key mapped to the wrong layer would show
        for key, value in model.state_dict().items():
            if value.is_floating_point():
                value.copy_(torch.rand(value.shape, generator=gen) * 0.5 + (0.5 if "running_var" in key else -0.2))
    model.eval()
    spec = model.native_spec()
    assert spec["library"] == "torchvision" and spec["kwargs"]["num_classes"] == 7
    native = getattr(torchvision.models, spec["name"])(**spec["kwargs"]).eval()
    native.load_state_dict(model.native_state_dict(), strict=True)
    x = torch.randn(2, 3, 64, 64)
    assert torch.allclose(native(x), model(x), atol=1e-5)
