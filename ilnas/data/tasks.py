"""Task views over datasets, each with a seeded train/val split of its training set and a held-out test set."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset, Subset, TensorDataset

from ilnas.data.spec import TaskConfig


@dataclass
class TaskData:
    name: str
    train: Dataset
    val: Dataset
    test: Dataset
    num_classes: int
    in_channels: int
    image_size: int
    class_names: list[str]


def seeded_split(n: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic permutation split of ``range(n)`` into (train, val) index arrays."""
    perm = np.random.default_rng(seed).permutation(n)
    n_val = int(round(n * val_fraction))
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def _digits_arrays(classes: list[int] | None) -> tuple[np.ndarray, np.ndarray, list[str]]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = bunch.images.astype(np.float32) / 16.0  # 0..16 grey levels -> 0..1
    labels = bunch.target.astype(np.int64)
    classes = list(range(10)) if classes is None else classes
    mask = np.isin(labels, classes)
    remap = {c: i for i, c in enumerate(classes)}
    return images[mask], np.array([remap[int(y)] for y in labels[mask]]), [str(c) for c in classes]


DIGITS_MEAN, DIGITS_STD = 0.30, 0.38
DIGITS_TEST_FRACTION = 0.2
DIGITS_TEST_SEED = 1234  # fixed: the held-out test set must not move with the search seed


def build_digits(cfg: TaskConfig, seed: int, val_fraction: float) -> TaskData:
    images, labels, names = _digits_arrays(cfg.classes)
    x = torch.from_numpy((images - DIGITS_MEAN) / DIGITS_STD).unsqueeze(1)
    y = torch.from_numpy(labels)
    full = TensorDataset(x, y)
    pool, test = seeded_split(len(full), DIGITS_TEST_FRACTION, DIGITS_TEST_SEED)
    tr, va = seeded_split(len(pool), val_fraction, seed)
    return TaskData(
        name=cfg.name,
        train=Subset(full, pool[tr].tolist()),
        val=Subset(full, pool[va].tolist()),
        test=Subset(full, test.tolist()),
        num_classes=len(names),
        in_channels=1,
        image_size=8,
        class_names=names,
    )


BUILDERS = {"digits": build_digits}


def build_task(cfg: TaskConfig, seed: int = 0, val_fraction: float = 0.5) -> TaskData:
    try:
        builder = BUILDERS[cfg.dataset]
    except KeyError:
        raise ValueError(f"task {cfg.name!r}: dataset {cfg.dataset!r} has no builder; allowed: {sorted(BUILDERS)}")
    return builder(cfg, seed, val_fraction)
