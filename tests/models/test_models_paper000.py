"""The architectures of CSS's tables: each builds, runs forward_stages, and works under ``branched``."""
import pytest
import torch

from peerkd.models import branched, build_model

CASES = [("resnext29_2x64d", 32, [256, 512, 1024]), ("pyramidnet110_a84", 32, [44, 72, 100]),
         ("se_resnet110", 32, [16, 32, 64]), ("wrn20_8", 32, [128, 256, 512]),
         ("tv_resnet50", 64, [256, 512, 1024, 2048])]


@pytest.mark.parametrize("name,size,channels", CASES)
def test_backbone_contract(name, size, channels):
    model = build_model(name, 7).eval()
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        maps = model.forward_stages(x)
        assert [f.shape[1] for f in maps] == channels == model.stage_channels
        assert model(x).shape == (2, 7)


def test_pyramidnet_widens_by_alpha_over_3n_per_block():
    model = build_model("pyramidnet110_a84", 10)
    n = 18
    widths = [block.conv1.out_channels for stage in model.stages for block in stage if hasattr(block, "conv1")]
    assert widths == [int(round(16 + k * 84 / (3 * n))) for k in range(1, 3 * n + 1)]
    assert widths[-1] == 100


def test_resnext_groups_and_se_units():
    resnext = build_model("resnext29_2x64d", 10)
    convs = [b.conv2 for stage in resnext.stages for b in stage]
    assert len(convs) == 9 and all(c.groups == 2 for c in convs)
    assert [convs[i].out_channels for i in (0, 3, 6)] == [128, 256, 512]  # C * d, doubled per stage
    se = build_model("se_resnet110", 10)
    assert sum(1 for _ in se.modules() if type(_).__name__ == "SqueezeExcitation") == 54


@pytest.mark.parametrize("name,size", [("pyramidnet8_a12", 32), ("se_resnet8", 32), ("tv_resnet50", 64)])
def test_branched_and_export(name, size):
    net = branched(name, 5, split_at=2, branches=2).eval()
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        outs = net(x)
        assert len(outs) == 2 and outs[0].shape == (2, 5)
        assert torch.allclose(net.export_branch(1).eval()(x), outs[1], atol=1e-5)
