"""ImageNet-1k (ILSVRC-2012) read from image files with the folder loader (:mod:`peerkd.data.folder`).

``data.root`` (CLI ``--data-dir``) holds ``train/<wnid>/*.JPEG`` and ``val/<wnid>/*.JPEG``: torchvision's
ImageFolder layout, 1000 class folders in each (the official validation archive is flat: sort it into class
folders first, e.g. with the widely used ``valprep.sh``). A subset with fewer classes also loads (its class count is
taken from the folders), so a small copy can stand in for tests.

Recipe (the ResNet training procedure KDCL follows, section 4.1): RandomResizedCrop 224 (scale 0.08-1, aspect
3/4-4/3) and horizontal flip for training; resize 256 + centre crop 224 for evaluation; ImageNet mean/std.
KDCL's photometric distortion (colour jitter + PCA lighting) is ``data.photometric: true`` in the config.
"""
from __future__ import annotations

from pathlib import Path

from peerkd.config import DataConfig
from peerkd.data.datasets import register_dataset
from peerkd.core.errors import DataError

IMAGENET_CLASSES = 1000


@register_dataset("imagenet", "ImageNet-1k: data.root holds train/<wnid>/*.JPEG and val/<wnid>/*.JPEG (ImageFolder)")
def imagenet(config: DataConfig):
    from peerkd.data.folder import FolderDataset, imagefolder_samples

    if not config.root:
        raise DataError("imagenet: set --data-dir to a folder holding train/<wnid>/*.JPEG and val/<wnid>/*.JPEG "
                        f"({IMAGENET_CLASSES} class folders each)")
    root = Path(config.root).expanduser()
    for split in ("train", "val"):
        folder = root / split
        if not folder.is_dir():
            raise DataError(f"imagenet: {folder} does not exist; put the ILSVRC-2012 {split} images there, one "
                            "sub-folder per class (ImageFolder layout)")
        if not any(child.is_dir() for child in folder.iterdir()):
            raise DataError(f"imagenet: {folder} holds no class folders; the official validation archive is flat, "
                            "sort its images into <wnid>/ folders (e.g. with valprep.sh) first")
    train, classes = imagefolder_samples(root / "train", "imagenet")
    test, test_classes = imagefolder_samples(root / "val", "imagenet")
    if test_classes != classes:
        raise DataError(f"imagenet: {root / 'val'} and {root / 'train'} hold different class folders; they must match")
    return FolderDataset("imagenet", train, test, len(classes), train_transform="random_resized_crop", image_size=224,
                         resize=256)
