"""Data: datasets by name, the device-resident loader, batched augmentation and the Batch contract."""
from peerkd.data import (  # noqa: F401  (each module registers its datasets)
    cinic,
    finegrained,
    imagenet,
)
from peerkd.data.batch import Batch
from peerkd.data.datasets import ArrayDataset, dataset_descriptions, dataset_names, load_dataset
from peerkd.core.errors import DataError
from peerkd.data.device_loader import DeviceLoader, EvalLoader, Split, make_split

__all__ = ["ArrayDataset", "Batch", "DataError", "DeviceLoader", "EvalLoader", "Split", "dataset_descriptions",
           "dataset_names", "load_dataset", "make_split"]
