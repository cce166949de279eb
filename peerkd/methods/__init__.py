"""Methods: one file per paper; importing this package registers them all."""
from peerkd.methods import dml, kd, kdcl, vanilla  # noqa: F401  (registration)
from peerkd.methods.base import DataRequest, EpochContext, Method, StepOutput, TaskInfo
from peerkd.methods.registry import build_method, method_class, method_descriptions, method_names, register_method

__all__ = ["DataRequest", "EpochContext", "Method", "StepOutput", "TaskInfo", "build_method", "method_class",
           "method_descriptions", "method_names", "register_method"]
