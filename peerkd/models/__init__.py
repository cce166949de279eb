"""Backbones by name (stem / stages / head contract) and the branched trunk + tails wrapper."""
from peerkd.models import (  # noqa: F401  (each module registers itself)
    cifar_densenet,
    cifar_resnet,
    cifar_resnet4,
    cifar_resnet_one,
    densenet,
    hcgnet,
    imagenet,
    mixskd_resnet,
    mobilenet,
    mobilenetv2,
    preact_resnet,
    pyramidnet,
    resnext,
    se_resnet,
    shufflenetv2,
    vgg,
    wrn,
    wrn_meliketoy,
    xception,
)
from peerkd.models.base import Backbone, ClassifierHead
from peerkd.models.branched import BranchedNet, BranchTail, branched
from peerkd.models.registry import build_model, model_descriptions, model_names, register_model

__all__ = ["Backbone", "BranchTail", "BranchedNet", "ClassifierHead", "branched", "build_model",
           "model_descriptions", "model_names", "register_model"]
