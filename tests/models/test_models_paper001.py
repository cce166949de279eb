"""The architectures of paper 001's tables: each builds, runs forward_stages, and works under ``branched``."""
import pytest
import torch

from peerkd.models import Backbone, branched, build_model


@pytest.mark.parametrize("name,channels,small", [
    ("resnet110_one", [64, 128, 256], {}),
    ("resnet56_one", [64, 128, 256], {}),
    ("xception", [728, 728, 2048], {"middle_blocks": 1}),  # the branched copy is smaller, to keep the test quick
    ("shufflenetv2", [116, 232, 1024], {}),
])
def test_architecture_contract_and_branching(name, channels, small):
    torch.manual_seed(0)
    model = build_model(name, 7).eval()
    assert isinstance(model, Backbone) and model.stage_channels == channels
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        maps = model.forward_stages(x)
        assert [m.shape[1] for m in maps] == channels
        assert model(x).shape == (1, 7)
        torch.testing.assert_close(model.head(maps[-1]), model(x))
        net = branched(name, 7, split_at=len(model.stages) - 1, branches=2, **small).eval()
        logits = net(x)
        assert len(logits) == 2 and logits[0].shape == (1, 7)
        torch.testing.assert_close(net.export_branch(1).eval()(x), logits[1])


def test_resnet110_one_is_the_bottleneck_network():
    model = build_model("resnet110_one", 100)
    blocks = sum(len(stage) for stage in model.stages)
    convs_per_block = 3  # bottleneck: 1x1, 3x3, 1x1
    assert blocks == 36 and blocks * convs_per_block + 2 == 110  # stem conv + 108 block convs + classifier
    assert type(model.stages[0][0]).__name__ == "Bottleneck"
