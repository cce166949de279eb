"""Tiny-ImageNet and fine-grained layouts on tiny generated trees, the diversity plot's reader, and config loading."""
import glob
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import peerkd
from peerkd.config import DataConfig
from peerkd.data import DataError, load_dataset
from peerkd.data.pipeline import build_loaders
from peerkd.methods import DataRequest
from peerkd.plots.diversity import load_diversity, plot_diversity


def write_image(path, colour, size=12, fmt=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.full((size, size, 3), 30, dtype=np.uint8)
    pixels[..., colour % 3] = 200
    Image.fromarray(pixels).save(path, format=fmt)


def test_tinyimagenet_original_layout(tmp_path):
    root = tmp_path / "tiny-imagenet-200"
    wnids = ["n02", "n01"]
    for c, wnid in enumerate(wnids):
        for i in range(3):
            write_image(root / "train" / wnid / "images" / f"{wnid}_{i}.JPEG", c, fmt="JPEG")
    rows = []
    for i, wnid in enumerate(["n01", "n02", "n01"]):
        write_image(root / "val" / "images" / f"val_{i}.JPEG", i, fmt="JPEG")
        rows.append(f"val_{i}.JPEG\t{wnid}\t0\t0\t10\t10")
    (root / "val" / "val_annotations.txt").write_text("\n".join(rows) + "\n")
    config = DataConfig(dataset="tinyimagenet", root=str(tmp_path), batch_size=2, image_size=12, workers=0)
    data = load_dataset(config)  # the parent of tiny-imagenet-200 is accepted
    assert data.num_classes == 2 and data.train_transform == "pad_crop" and data.image_size == 64
    assert sorted(label for _, label in data.train_samples) == [0, 0, 0, 1, 1, 1]
    assert [label for _, label in data.test_samples] == [0, 1, 0]  # sorted wnids: n01 -> 0, n02 -> 1
    assert data.train_samples[0][0].endswith("n01/images/n01_0.JPEG")
    loaders = build_loaders(config, DataRequest(), seed=0, device=torch.device("cpu"), channels_last=False)
    assert next(iter(loaders.train.epoch(0))).x.shape == (2, 3, 12, 12)


def test_cub_layout(tmp_path):
    root = tmp_path / "CUB_200_2011"
    entries = [("001.Albatross/a.jpg", 1, 1), ("001.Albatross/b.jpg", 1, 0), ("002.Auklet/c.jpg", 2, 1),
               ("002.Auklet/d.jpg", 2, 0), ("002.Auklet/e.jpg", 2, 1)]
    for i, (rel, label, _) in enumerate(entries):
        write_image(root / "images" / rel, label)
    (root / "images.txt").write_text("".join(f"{i + 1} {rel}\n" for i, (rel, _, _) in enumerate(entries)))
    (root / "image_class_labels.txt").write_text("".join(f"{i + 1} {lab}\n" for i, (_, lab, _) in enumerate(entries)))
    (root / "train_test_split.txt").write_text("".join(f"{i + 1} {tr}\n" for i, (_, _, tr) in enumerate(entries)))
    data = load_dataset(DataConfig(dataset="cub200", root=str(tmp_path)))
    assert data.num_classes == 2 and (data.image_size, data.resize, data.train_transform) == (224, 256, "resize_crop")
    assert [(p.split("images/")[1], y) for p, y in data.train_samples] == \
        [("001.Albatross/a.jpg", 0), ("002.Auklet/c.jpg", 1), ("002.Auklet/e.jpg", 1)]
    assert [y for _, y in data.test_samples] == [0, 1]


def test_stanford_dogs_mat_lists_and_folder_layout(tmp_path):
    from scipy.io import savemat

    root = tmp_path / "dogs"
    files = ["n001-Chihuahua/a.jpg", "n002-Pug/b.jpg", "n002-Pug/c.jpg"]
    for i, rel in enumerate(files):
        write_image(root / "Images" / rel, i)
    savemat(root / "train_list.mat", {"file_list": np.array(files[:2], dtype=object), "labels": np.array([[1], [2]])})
    savemat(root / "test_list.mat", {"file_list": np.array(files[2:] * 2, dtype=object),
                                     "labels": np.array([[2], [2]])})
    data = load_dataset(DataConfig(dataset="stanford_dogs", root=str(root)))
    assert data.num_classes == 2
    assert [(p.split("Images/")[1], y) for p, y in data.train_samples] == [(files[0], 0), (files[1], 1)]
    assert [y for _, y in data.test_samples] == [1, 1]
    folders = tmp_path / "dogs_folders"
    for split in ("train", "test"):
        for c in ("a", "b"):
            write_image(folders / split / c / "x.png", 0)
    data = load_dataset(DataConfig(dataset="stanford_dogs", root=str(folders)))
    assert data.num_classes == 2 and len(data.train_samples) == 2 and len(data.test_samples) == 2


def test_stanford_cars_torchvision_layout(tmp_path):
    from scipy.io import savemat

    root = tmp_path / "stanford_cars"
    record = [("fname", "O"), ("class", "O")]
    train = np.array([("00001.jpg", 1), ("00002.jpg", 3)], dtype=record)
    test = np.array([("00001.jpg", 2), ("00002.jpg", 3), ("00003.jpg", 1)], dtype=record)
    for name, table in (("cars_train", train), ("cars_test", test)):
        for fname, label in table:
            write_image(root / name / fname, label)
    (root / "devkit").mkdir()
    savemat(root / "devkit" / "cars_train_annos.mat", {"annotations": train})
    savemat(root / "cars_test_annos_withlabels.mat", {"annotations": test})
    data = load_dataset(DataConfig(dataset="stanford_cars", root=str(tmp_path)))
    assert data.num_classes == 3
    assert [(p.split("cars_train/")[1], y) for p, y in data.train_samples] == [("00001.jpg", 0), ("00002.jpg", 2)]
    assert [y for _, y in data.test_samples] == [1, 2, 0]


@pytest.mark.parametrize("name,words", [("tinyimagenet", "val_annotations.txt"), ("cub200", "images.txt"),
                                        ("stanford_dogs", "train_list.mat"), ("stanford_cars", "cars_train_annos")])
def test_missing_data_says_what_to_put_where(tmp_path, name, words):
    with pytest.raises(DataError, match=words):
        load_dataset(DataConfig(dataset=name, root=str(tmp_path / "empty")))


def test_diversity_reader_and_plot(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    records = [{"kind": "train", "epoch": 0, "loss": 1.0}]
    for epoch in range(3):
        records.append({"kind": "eval", "epoch": epoch, "metrics": {"net1": {"top1": 50.0}, "diversity": {
            "branches": 0.1 * epoch, "mutual0": 0.2, "mutual1": 0.4 + epoch}}})
    (run / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n")
    curves = load_diversity(run)
    assert curves["branches"] == [(1, 0.0), (2, 0.1), (3, 0.2)]
    assert curves["mutual"] == [(1, pytest.approx(0.3)), (2, pytest.approx(0.8)), (3, pytest.approx(1.3))]
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="pip install matplotlib"):
            plot_diversity([run], tmp_path / "d.png")
    else:
        assert plot_diversity([run], tmp_path / "d.png").is_file()


def test_every_css_config_loads():
    files = sorted(glob.glob(str(Path(__file__).parents[2] / "configs" / "css" / "*" / "*.yaml")))
    assert len(files) >= 25
    for path in files:
        config = peerkd.load_config(path)
        # CSS and PCL rows, and the baseline / DML / ONE / OKDDip / CL rows the CSS tables compare against
        assert config.method.name in ("css", "pcl", "vanilla", "dml", "one", "okddip", "cl"), path
        assert config.schedule.milestones == [150, 225], path
