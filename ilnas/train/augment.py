"""Training and evaluation transforms of the two recipes, with each dataset's own normalisation statistics.

``darts``: DARTS' pipelines -- CIFAR: 4-pixel padded random crop, horizontal flip, normalise, Cutout 16;
ImageNet: random-resized crop, flip, colour jitter, normalise (timm's ``create_transform``).
``timm``: timm's ``create_transform`` (random-resized crop, flip, auto-augment, RandomErasing).
Normalisation follows the dataset: CIFAR-10 and CIFAR-100 have their own statistics, ImageFolder tasks
use ImageNet's, the pre-normalised digits tensors none.
"""

from __future__ import annotations

from typing import Any

import torch

from ilnas.data.tasks import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    CIFAR100_MEAN,
    CIFAR100_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
)
from ilnas.train.config import PAPER_RECIPES

Stats = tuple[tuple[float, ...], tuple[float, ...]]
DATASET_STATS: dict[str, Stats] = {
    "cifar10": (CIFAR10_MEAN, CIFAR10_STD),
    "cifar100": (CIFAR100_MEAN, CIFAR100_STD),
    "imagefolder": (IMAGENET_MEAN, IMAGENET_STD),
}


def dataset_stats(dataset: str) -> Stats:
    """(mean, std) per channel for an image dataset; ValueError names the allowed datasets."""
    try:
        return DATASET_STATS[dataset]
    except KeyError:
        raise ValueError(f"dataset {dataset!r} has no image statistics; allowed: {sorted(DATASET_STATS)}") from None


class Cutout:
    """DARTS' Cutout: zero one ``length`` x ``length`` square (clipped at the border) of a normalised CHW tensor.

    The centre is uniform over the image (torch's RNG, so a seeded run and its resume draw the same squares).
    """

    def __init__(self, length: int):
        self.length = int(length)

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        if self.length <= 0:
            return img
        h, w = img.shape[-2:]
        y = int(torch.randint(h, ()).item())
        x = int(torch.randint(w, ()).item())
        half = self.length // 2
        img = img.clone()
        img[..., max(0, y - half):min(h, y + half), max(0, x - half):min(w, x + half)] = 0.0
        return img

    def __repr__(self) -> str:
        return f"Cutout(length={self.length})"


def darts_cifar_transforms(dataset: str, size: int, hflip: float, cutout: int) -> tuple[Any, Any]:
    """(train, eval) for PIL images: pad size/8 + random crop, flip, normalise, Cutout; eval: normalise."""
    from torchvision import transforms as T

    mean, std = dataset_stats(dataset)
    resize = [] if dataset in ("cifar10", "cifar100") else [T.Resize((size, size))]
    norm = [T.ToTensor(), T.Normalize(mean, std)]
    train = T.Compose([*resize, T.RandomCrop(size, padding=max(1, size // 8)), T.RandomHorizontalFlip(hflip), *norm,
                       Cutout(cutout)])
    return train, T.Compose([*resize, *norm])


def darts_tensor_transform(size: int, hflip: float, cutout: int) -> Any:
    """The darts training pipeline for already-normalised tensors (the digits): padded crop, flip, Cutout."""
    from torchvision import transforms as T

    return T.Compose([T.RandomCrop(size, padding=max(1, size // 8)), T.RandomHorizontalFlip(hflip), Cutout(cutout)])


def timm_image_transforms(dataset: str, size: int, hflip: float, auto_augment: str | None,
                          re_prob: float) -> tuple[Any, Any]:
    """timm's create_transform for small natural images (mild random-resized crop), per-dataset statistics."""
    from timm.data import create_transform

    mean, std = dataset_stats(dataset)
    train = create_transform(size, is_training=True, scale=(0.6, 1.0), ratio=(3 / 4, 4 / 3), hflip=hflip,
                             color_jitter=0.0, auto_augment=auto_augment, re_prob=re_prob, mean=mean, std=std,
                             interpolation="bilinear")
    return train, create_transform(size, is_training=False, crop_pct=1.0, mean=mean, std=std)


def imagenet_transforms(recipe: str, size: int, scale_min: float, hflip: float, crop_pct: float,
                        color_jitter: list[float] | None, auto_augment: str | None, re_prob: float) -> tuple[Any, Any]:
    """(train, eval) for ImageNet-layout folders. darts / pcdarts: crop + flip + colour jitter, no erasing or
    auto-augment; timm: crop + flip + auto-augment + RandomErasing. Eval: resize to size / crop_pct, centre crop."""
    from timm.data import create_transform

    if recipe in PAPER_RECIPES:
        jitter: Any = tuple(color_jitter) if color_jitter else 0.0
        train = create_transform(size, is_training=True, scale=(scale_min, 1.0), hflip=hflip, color_jitter=jitter,
                                 auto_augment=None, re_prob=0.0)
    else:
        train = create_transform(size, is_training=True, scale=(scale_min, 1.0), hflip=hflip,
                                 auto_augment=auto_augment, re_prob=re_prob)
    return train, create_transform(size, is_training=False, crop_pct=crop_pct)
