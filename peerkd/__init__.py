"""peerkd: online knowledge distillation — peers and branches trained together from scratch, fast and reproducible.

Public API::

    from peerkd import load_config, train, load_run
    summary = train(load_config("configs/cifar100/dml_resnet32.yaml", ["schedule.epochs=30"]))
    student = load_run("runs/dml_resnet32").export("peer0")
    export_run("runs/dml_resnet32", "peer0", "onnx", "peer0.onnx", normalize=True)  # runs without peerkd
    model = from_pretrained("runs/dml_resnet32/export/peer0-hf")  # a `peerkd export --format hf` folder or Hub id
"""
__version__ = "0.1.0"

from peerkd.config import Config, build_config, load_config  # noqa: E402
from peerkd.core.errors import ConfigError, DataError, RunError  # noqa: E402
from peerkd.core.method import DataRequest, EpochContext, Method, StepOutput, TaskInfo  # noqa: E402
from peerkd.core.plugins import load_imports  # noqa: E402
from peerkd.core.registry import (DATASETS, METHODS, MODELS, Registry, dataset_names, method_names,  # noqa: E402
                                  model_names, register_dataset, register_method, register_model)
from peerkd.data import Batch  # noqa: E402
from peerkd.data.datasets import ArrayDataset  # noqa: E402
from peerkd.deploy.export import export_run  # noqa: E402
from peerkd.deploy.hub import from_pretrained  # noqa: E402
from peerkd.losses import hard_ce, kd_kl, soft_ce  # noqa: E402
from peerkd.metrics import EvalResult, Evaluator  # noqa: E402
from peerkd.models import Backbone, branched, build_model  # noqa: E402
from peerkd.params import count_parameters, parameter_summary  # noqa: E402
from peerkd.training.checkpoint import LoadedRun, load_run  # noqa: E402
from peerkd.training.trainer import NonFiniteLossError, Trainer, TrainingInterrupted, train  # noqa: E402

__all__ = ["ArrayDataset", "Backbone", "Batch", "Config", "ConfigError", "DATASETS", "DataError", "DataRequest",
           "EpochContext", "EvalResult", "Evaluator", "LoadedRun", "METHODS", "MODELS", "Method",
           "NonFiniteLossError", "Registry", "RunError", "StepOutput", "TaskInfo", "Trainer", "TrainingInterrupted",
           "branched", "build_config", "build_model", "count_parameters", "dataset_names", "export_run",
           "from_pretrained", "hard_ce", "kd_kl", "load_config", "load_imports", "load_run", "method_names",
           "model_names", "parameter_summary", "register_dataset", "register_method", "register_model", "soft_ce",
           "train"]
