"""Backbones by name (stem / stages / head contract) and the branched trunk + tails wrapper."""
from peerkd.models import cifar_resnet, imagenet, wrn  # noqa: F401  (registration)
from peerkd.models.base import Backbone, ClassifierHead
from peerkd.models.branched import BranchedNet, BranchTail, branched
from peerkd.models.registry import build_model, model_descriptions, model_names, register_model

__all__ = ["Backbone", "BranchTail", "BranchedNet", "ClassifierHead", "branched", "build_model",
           "model_descriptions", "model_names", "register_model"]
