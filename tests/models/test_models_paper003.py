"""The CutnMix paper's new backbones build, follow the stem/stages/head contract and run forward_stages."""
import pytest
import torch

from peerkd.models import build_model


@pytest.mark.parametrize("name,stages,features", [("vgg16", 5, 512), ("vgg19", 5, 512), ("densenet40_12", 3, 448)])
def test_backbone_contract(name, stages, features):
    model = build_model(name, 7).eval()
    x = torch.randn(2, 3, 32, 32)
    maps = model.forward_stages(x)
    assert len(maps) == stages == len(model.stage_channels)
    assert [m.shape[1] for m in maps] == model.stage_channels
    assert model.head.features(maps[-1]).shape == (2, features)
    assert torch.allclose(model.head(maps[-1]), model(x), atol=1e-5)


def test_layer_counts_match_the_papers():
    convs = lambda m: sum(isinstance(x, torch.nn.Conv2d) for x in m.modules())  # noqa: E731
    assert convs(build_model("vgg16", 10)) == 13 and convs(build_model("vgg19", 10)) == 16  # + 1 linear each
    densenet = build_model("densenet40_12", 10)
    assert convs(densenet) == 1 + 36 + 2  # stem, 3 x 12 dense layers, 2 transitions (+ 1 linear = 40 layers)
    assert 0.9e6 < sum(p.numel() for p in densenet.parameters()) < 1.1e6  # Huang et al.: 1.0M parameters
