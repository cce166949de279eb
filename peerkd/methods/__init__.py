"""Methods: one file per paper; importing this package registers them all."""
from peerkd.methods import (  # noqa: F401  (each module registers itself)
    byot,
    cl,
    cskd,
    css,
    cutnmix,
    ddgsd,
    dml,
    kd,
    kdcl,
    mde,
    okddip,
    one,
    pcl,
    pskd,
    pskd_ml,
    tfkd,
    vanilla,
)
from peerkd.methods.base import DataRequest, EpochContext, Method, StepOutput, TaskInfo
from peerkd.methods.cohort import CohortMethod
from peerkd.methods.registry import build_method, method_class, method_descriptions, method_names, register_method

__all__ = ["CohortMethod", "DataRequest", "EpochContext", "Method", "StepOutput", "TaskInfo", "build_method",
           "method_class", "method_descriptions", "method_names", "register_method"]
