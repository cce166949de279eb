"""A user model for peerkd: a small CNN in the stem / stages / head contract, registered by name."""
from torch import nn

from peerkd import Backbone, register_model
from peerkd.models import ClassifierHead


def conv_bn(cin, cout, stride):
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class TinyCNN(Backbone):
    def __init__(self, num_classes, width=8):
        super().__init__()
        self.stem = conv_bn(3, width, 1)
        self.stages = nn.ModuleList([conv_bn(width, 2 * width, 2), conv_bn(2 * width, 4 * width, 2)])
        self.stage_channels = [2 * width, 4 * width]
        self.head = ClassifierHead(4 * width, num_classes)


@register_model("tiny_cnn", "a user's small CNN (tests/core/plugins/my_model.py)")
def tiny_cnn(num_classes, width=8):
    return TinyCNN(num_classes, width)
