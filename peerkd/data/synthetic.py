"""A generated, learnable, CIFAR-shaped dataset: no download, deterministic given its seed.

Each class owns a recipe: an oriented colour grating (its own frequency, angle and colours) and a coloured blob at
its own place. An image draws its class's grating with a random phase, contrast and a small change of angle, a
blob moved by up to 5 pixels, a weaker grating of a random other class as a distractor, a random background tint and
pixel noise. A small CNN separates the classes well above chance after a few epochs but not perfectly: the
distractor, the jitter and the noise overlap the classes.

Label noise (``data.synthetic.label_noise``, :func:`flip_labels`): a chosen fraction of the *training* labels is
replaced by another class drawn uniformly (symmetric noise, the setting of the noisy-label literature); the test
labels stay clean, so test top-1 measures how well a network learnt the true classes despite the wrong labels.
"""
from __future__ import annotations

import numpy as np

IMAGE_SIZE = 32


def _class_recipes(num_classes: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {
        "freq": rng.uniform(1.0, 4.5, num_classes),  # cycles per image
        "angle": rng.uniform(0.0, np.pi, num_classes),
        "color_a": rng.uniform(-1.0, 1.0, (num_classes, 3)),
        "color_b": rng.uniform(-1.0, 1.0, (num_classes, 3)),
        "blob_center": rng.uniform(8.0, 24.0, (num_classes, 2)),
        "blob_color": rng.uniform(-1.0, 1.0, (num_classes, 3)),
    }


def _grating(recipes, cls, phase, angle_jitter, grid_y, grid_x):
    freq = recipes["freq"][cls][:, None, None]
    angle = (recipes["angle"][cls] + angle_jitter)[:, None, None]
    proj = grid_x * np.cos(angle) + grid_y * np.sin(angle)
    wave = np.sin(2 * np.pi * freq * proj / IMAGE_SIZE + phase[:, None, None])[..., None]  # (n, H, W, 1)
    ca = recipes["color_a"][cls][:, None, None, :]
    cb = recipes["color_b"][cls][:, None, None, :]
    return 0.5 * (1 + wave) * ca + 0.5 * (1 - wave) * cb


def generate(num_images: int, num_classes: int, seed: int, split_seed: int, noise: float = 0.6,
             distractor: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(images uint8 (N, 32, 32, 3), labels int64 (N,))``. The class recipes depend on ``seed`` alone, the
    images on ``seed`` and ``split_seed`` (so train and test share classes but not images). ``noise`` is the pixel
    noise's standard deviation and ``distractor`` the largest amplitude of the other class's grating, both relative
    to the class grating's full amplitude of 1: lower values make the classes easier to tell apart."""
    recipes = _class_recipes(num_classes, np.random.default_rng(seed))
    rng = np.random.default_rng([seed, split_seed])
    labels = np.arange(num_images) % num_classes
    rng.shuffle(labels)
    grid_y, grid_x = np.meshgrid(np.arange(IMAGE_SIZE, dtype=np.float32), np.arange(IMAGE_SIZE, dtype=np.float32),
                                 indexing="ij")
    images = np.empty((num_images, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    chunk = 1024
    for start in range(0, num_images, chunk):
        cls = labels[start:start + chunk]
        n = len(cls)
        contrast = rng.uniform(0.4, 1.0, n)[:, None, None, None]
        main = _grating(recipes, cls, rng.uniform(0, 2 * np.pi, n), rng.normal(0, 0.15, n), grid_y, grid_x)
        other = (cls + rng.integers(1, num_classes, n)) % num_classes if num_classes > 1 else cls
        distracting = _grating(recipes, other, rng.uniform(0, 2 * np.pi, n), rng.normal(0, 0.15, n), grid_y, grid_x)
        center = recipes["blob_center"][cls] + rng.uniform(-5, 5, (n, 2))
        dist2 = (grid_y[None] - center[:, 0, None, None]) ** 2 + (grid_x[None] - center[:, 1, None, None]) ** 2
        blob = np.exp(-dist2 / (2 * 4.0 ** 2))[..., None] * recipes["blob_color"][cls][:, None, None, :]
        background = rng.uniform(-0.5, 0.5, (n, 1, 1, 3))
        pixel_noise = rng.normal(0, noise, (n, IMAGE_SIZE, IMAGE_SIZE, 3))
        distractor_amplitude = rng.uniform(0.6 * distractor, distractor, n)[:, None, None, None]
        x = contrast * main + distractor_amplitude * distracting + 0.6 * blob
        x = x + background + pixel_noise
        images[start:start + n] = np.clip(127.5 + 60.0 * x, 0, 255).astype(np.uint8)
    return images, labels.astype(np.int64)


def flip_labels(labels: np.ndarray, fraction: float, num_classes: int, seed: int) -> np.ndarray:
    """A copy of ``labels`` with ``round(fraction * N)`` of them, chosen at random, replaced by a different class
    drawn uniformly from the other ``num_classes - 1`` (symmetric label noise). Deterministic given ``seed``;
    ``fraction`` 0 returns the labels unchanged."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"label noise fraction {fraction} is not in [0, 1]")
    noisy = labels.copy()
    count = int(round(fraction * len(labels)))
    if count == 0 or num_classes < 2:
        return noisy
    rng = np.random.default_rng([seed, 3])  # stream 3: apart from the train (1) and test (2) image streams
    chosen = rng.choice(len(labels), size=count, replace=False)
    noisy[chosen] = (labels[chosen] + rng.integers(1, num_classes, count)) % num_classes
    return noisy
