"""Methods: one file per paper, each registering its class in :data:`peerkd.core.registry.METHODS`.

Every module of this package (not ``parts/``, the building blocks several methods share) is a method, found by the
registry when a method is first looked up: a new method is one new file here, or one file of your own loaded with
``--import``. The contract every method follows is :mod:`peerkd.core.method`.
"""
from peerkd.core.method import DataRequest, EpochContext, Method, StepOutput, TaskInfo
from peerkd.core.registry import build_method, method_class, method_descriptions, method_names, register_method
from peerkd.methods.parts.cohort import CohortMethod

__all__ = ["CohortMethod", "DataRequest", "EpochContext", "Method", "StepOutput", "TaskInfo", "build_method",
           "method_class", "method_descriptions", "method_names", "register_method"]
