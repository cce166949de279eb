"""Tiny-ImageNet and the fine-grained sets of CSS's Table 3 (CUB-200-2011, Stanford Dogs, Stanford Cars), read from
their original layouts in ``data.root`` (``--data-dir``; default ``$PEERKD_DATA/<name>``) into a
:class:`~peerkd.data.folder.FolderDataset`. Nothing is downloaded: the sets need registration or are large, so a
missing set stops with a :class:`DataError` naming the files to put where.

Layouts (the root may also be the parent of the folder named in brackets):
  tinyimagenet  [tiny-imagenet-200/] train/<wnid>/images/*.JPEG, val/images/*.JPEG + val/val_annotations.txt
                (file <tab> wnid ...); classes are the sorted train wnids. 64x64, pad_crop (pad 4) + flip.
  cub200        [CUB_200_2011/] images/<class folder>/*.jpg, images.txt (id path), image_class_labels.txt
                (id class, 1-based), train_test_split.txt (id is_train). 5,994 train / 5,794 test.
  stanford_dogs Images/<breed>/*.jpg + train_list.mat / test_list.mat (file_list, labels 1-based), the official
                lists; or an image-folder layout train/<breed>/*, test/<breed>/* (val/ accepted for test/).
  stanford_cars [stanford_cars/] torchvision's StanfordCars layout: cars_train/, cars_test/,
                devkit/cars_train_annos.mat and cars_test_annos_withlabels.mat (annotations: fname, class 1-based);
                or an image-folder layout train/<model>/*, test/<model>/*.
The fine-grained sets use the usual 224-pixel recipe: Resize(256) + RandomCrop(224) + flip for training,
Resize(256) + CenterCrop(224) for testing (``resize_crop``), ImageNet mean/std.
"""
from __future__ import annotations

from pathlib import Path

from peerkd.config import DataConfig
from peerkd.data.datasets import cache_dir, register_dataset
from peerkd.core.errors import DataError
from peerkd.data.folder import FolderDataset, imagefolder_samples

FINE_GRAINED = dict(train_transform="resize_crop", image_size=224, resize=256)


def _root(config: DataConfig, name: str, inner: str | None = None) -> Path:
    root = Path(config.root).expanduser() if config.root else cache_dir(name)
    if inner and (root / inner).is_dir():
        return root / inner
    return root


def _need(path: Path, name: str, what: str) -> Path:
    if not path.exists():
        raise DataError(f"{name}: {path} is missing; {what}")
    return path


def _load_mat(path: Path, name: str) -> dict:
    try:
        from scipy.io import loadmat
    except ImportError:
        raise DataError(f"{name}: reading {path} needs scipy (pip install scipy), or use the image-folder layout") \
            from None
    try:
        return loadmat(str(path), squeeze_me=True)
    except (OSError, ValueError, TypeError) as err:
        raise DataError(f"{name}: {path} is unreadable ({err}); replace it with the official file") from None


def _folder_splits(root: Path, name: str) -> tuple[list, list, int] | None:
    """train/<class>/* and test|val/<class>/* when present, else None."""
    test_dir = next((root / d for d in ("test", "val") if (root / d).is_dir()), None)
    if not (root / "train").is_dir() or test_dir is None:
        return None
    train, classes = imagefolder_samples(root / "train", name)
    test, test_classes = imagefolder_samples(test_dir, name)
    if test_classes != classes:
        raise DataError(f"{name}: {test_dir} and {root / 'train'} hold different class folders; they must match")
    return train, test, len(classes)


@register_dataset("tinyimagenet", "Tiny-ImageNet-200, 100k/10k 64x64 images (original layout in data.root)")
def tinyimagenet(config: DataConfig) -> FolderDataset:
    name = "tinyimagenet"
    root = _root(config, name, "tiny-imagenet-200")
    hint = (f"put the extracted tiny-imagenet-200 folder (train/<wnid>/images/*.JPEG, val/images/*.JPEG, "
            f"val/val_annotations.txt) in {root} or pass --data-dir")
    train_dir = _need(root / "train", name, hint)
    annotations = _need(root / "val" / "val_annotations.txt", name, hint)
    classes = sorted(d.name for d in train_dir.iterdir() if d.is_dir())
    if not classes:
        raise DataError(f"{name}: {train_dir} holds no class folders; {hint}")
    index = {wnid: i for i, wnid in enumerate(classes)}
    train = [(str(f), index[wnid]) for wnid in classes
             for f in sorted((train_dir / wnid / "images").glob("*")) if f.suffix.lower() in (".jpeg", ".jpg", ".png")]
    test = []
    for line in annotations.read_text().splitlines():
        parts = line.split("\t")
        if len(parts) < 2:
            continue
        if parts[1] not in index:
            raise DataError(f"{name}: {annotations} names class '{parts[1]}', which has no folder in {train_dir}")
        test.append((str(root / "val" / "images" / parts[0]), index[parts[1]]))
    if not train or not test:
        raise DataError(f"{name}: found {len(train)} training and {len(test)} validation images in {root}; {hint}")
    return FolderDataset(name, train, test, len(classes), train_transform="pad_crop", image_size=64, resize=64)


@register_dataset("cub200", "CUB-200-2011 birds, 5,994/5,794 images, 200 classes (original layout in data.root)")
def cub200(config: DataConfig) -> FolderDataset:
    name = "cub200"
    root = _root(config, name, "CUB_200_2011")
    hint = (f"put the extracted CUB_200_2011 folder (images/, images.txt, image_class_labels.txt, "
            f"train_test_split.txt) in {root} or pass --data-dir")
    tables = {}
    for file in ("images.txt", "image_class_labels.txt", "train_test_split.txt"):
        rows = _need(root / file, name, hint).read_text().split("\n")
        tables[file] = dict(row.split()[:2] for row in rows if row.strip())
    train, test = [], []
    for image_id, rel in tables["images.txt"].items():
        try:
            label = int(tables["image_class_labels.txt"][image_id]) - 1
            is_train = tables["train_test_split.txt"][image_id]
        except KeyError:
            raise DataError(f"{name}: image id {image_id} of images.txt is missing from image_class_labels.txt or "
                            "train_test_split.txt") from None
        (train if is_train == "1" else test).append((str(root / "images" / rel), label))
    num_classes = max(label for _, label in train + test) + 1 if train or test else 0
    if not train or not test:
        raise DataError(f"{name}: the split in {root} has {len(train)} training and {len(test)} test images; {hint}")
    return FolderDataset(name, train, test, num_classes, **FINE_GRAINED)


@register_dataset("stanford_dogs", "Stanford Dogs, 12,000/8,580 images, 120 breeds (Images/ + *_list.mat)")
def stanford_dogs(config: DataConfig) -> FolderDataset:
    name = "stanford_dogs"
    root = _root(config, name)
    folders = _folder_splits(root, name)
    if folders is not None:
        return FolderDataset(name, *folders, **FINE_GRAINED)
    hint = (f"put Images/<breed>/*.jpg with train_list.mat and test_list.mat (the official lists) in {root}, or "
            "train/<breed>/* and test/<breed>/*, or pass --data-dir")
    images = _need(root / "Images", name, hint)
    splits = []
    for file in ("train_list.mat", "test_list.mat"):
        mat = _load_mat(_need(root / file, name, hint), name)
        files, labels = list(mat["file_list"]), [int(v) - 1 for v in mat["labels"]]
        splits.append([(str(images / str(f)), label) for f, label in zip(files, labels)])
    num_classes = max(label for split in splits for _, label in split) + 1
    return FolderDataset(name, splits[0], splits[1], num_classes, **FINE_GRAINED)


@register_dataset("stanford_cars", "Stanford Cars, 8,144/8,041 images, 196 models (torchvision's layout)")
def stanford_cars(config: DataConfig) -> FolderDataset:
    name = "stanford_cars"
    root = _root(config, name, "stanford_cars")
    folders = _folder_splits(root, name)
    if folders is not None:
        return FolderDataset(name, *folders, **FINE_GRAINED)
    hint = (f"put torchvision's stanford_cars folder (cars_train/, cars_test/, devkit/cars_train_annos.mat, "
            f"cars_test_annos_withlabels.mat) in {root}, or train/<model>/* and test/<model>/*, or pass --data-dir")
    splits = []
    for images, annos in (("cars_train", root / "devkit" / "cars_train_annos.mat"),
                          ("cars_test", root / "cars_test_annos_withlabels.mat")):
        folder = _need(root / images, name, hint)
        table = _load_mat(_need(annos, name, hint), name)["annotations"]
        splits.append([(str(folder / str(fname)), int(label) - 1)
                       for fname, label in zip(table["fname"].ravel(), table["class"].ravel())])
    num_classes = max(label for split in splits for _, label in split) + 1
    return FolderDataset(name, splits[0], splits[1], num_classes, **FINE_GRAINED)
