"""Task views over datasets, each with a seeded train/val split of its training set and a held-out test set.

A task is a view: a dataset, optionally restricted to a label subset (relabelled 0..n-1 in the given
order), split into train / val (seeded by the search seed) and a held-out test set that never moves
with the seed. Every split is a :class:`TaskView` (base dataset + index array + remapped labels +
transform), so the split is known without reading a single image (manifests fingerprint it) and image
datasets are read lazily from disk.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

# at import, not in the first call: importing scikit-learn imports rich, which draws from Python's `random`;
# imported after a run has seeded it, it shifted that run's random erasing and Cutout (a first run in a process
# differed from a resumed one)
from sklearn.datasets import load_digits
from torch.utils.data import Dataset, TensorDataset

from ilnas.data.spec import TaskConfig
from ilnas.errors import DamagedImageError, DataDamagedError, DataError, DataMissingError, RunFailed

Transform = Callable[[Any], Any]


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


class TaskView(Dataset):
    """Items ``base[indices[i]]`` with label ``targets[i]`` (already remapped) and ``transform`` applied.

    Train and val of one task share a base but not a transform: val must see the eval transform, not
    the training augmentation.
    """

    def __init__(self, base: Dataset, indices: np.ndarray, targets: np.ndarray, transform: Transform | None = None):
        self.base = base
        self.indices = np.asarray(indices, dtype=np.int64)
        self.targets = np.asarray(targets, dtype=np.int64)
        if self.indices.shape != self.targets.shape:
            raise ValueError(f"TaskView: {len(self.indices)} indices but {len(self.targets)} targets")
        self.transform = transform

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        x, _ = self.base[int(self.indices[i])]
        if self.transform is not None:
            x = self.transform(x)
        return x, int(self.targets[i])


Views = tuple[TaskView, TaskView, TaskView, list[int]]  # train, val, test, class ids


def seeded_split(n: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic permutation split of ``range(n)`` into (train, val) index arrays."""
    perm = np.random.default_rng(seed).permutation(n)
    n_val = int(round(n * val_fraction))
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


# The held-out test set of datasets without an official one (digits, an ImageFolder without val/) is a
# fixed split: it must not move with the search seed, and every task view of a dataset shares it.
HELD_OUT_FRACTION = 0.2
HELD_OUT_SEED = 1234
DIGITS_TEST_FRACTION, DIGITS_TEST_SEED = HELD_OUT_FRACTION, HELD_OUT_SEED  # older names

DIGITS_MEAN, DIGITS_STD = 0.30, 0.38
# DARTS' CIFAR-10 statistics; the usual CIFAR-100 ones
CIFAR10_MEAN, CIFAR10_STD = (0.49139968, 0.48215827, 0.44653124), (0.24703233, 0.24348505, 0.26158768)
CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def select_classes(cfg: TaskConfig, targets: np.ndarray,
                   num_available: int) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """(positions kept, remapped labels, class ids) of ``cfg.classes`` within ``targets``.

    Labels are remapped to 0..n-1 in the order ``cfg.classes`` gives them; an id outside the dataset's
    label range is an error naming the task, the id and the allowed range.
    """
    classes = list(range(num_available)) if cfg.classes is None else list(cfg.classes)
    for c in classes:
        if not 0 <= c < num_available:
            raise DataError(f"task {cfg.name!r}: class id {c} is out of range for dataset {cfg.dataset!r}; "
                             f"allowed: 0..{num_available - 1}")
    lut = np.full(num_available, -1, dtype=np.int64)
    lut[classes] = np.arange(len(classes))
    mapped = lut[np.asarray(targets, dtype=np.int64)]
    keep = np.nonzero(mapped >= 0)[0]
    return keep, mapped[keep], classes


def _views(cfg: TaskConfig, seed: int, val_fraction: float, train_base: Dataset, train_targets: np.ndarray,
           test_base: Dataset, test_targets: np.ndarray, num_available: int,
           train_tf: Transform | None, eval_tf: Transform | None) -> Views:
    """Label-subset + seeded train/val split of the training pool; the test view over ``test_base``."""
    keep, labels, classes = select_classes(cfg, train_targets, num_available)
    tr, va = seeded_split(len(keep), val_fraction, seed)
    t_keep, t_labels, _ = select_classes(cfg, test_targets, num_available)
    return (TaskView(train_base, keep[tr], labels[tr], train_tf), TaskView(train_base, keep[va], labels[va], eval_tf),
            TaskView(test_base, t_keep, t_labels, eval_tf), classes)


def _probe_shape(views: list[TaskView], in_channels: int, image_size: int) -> tuple[int, int]:
    """(channels, side) of one transformed item: custom transforms decide the size the network sees."""
    for view in views:
        if len(view):
            x, _ = view[0]
            if isinstance(x, torch.Tensor) and x.ndim == 3:
                return int(x.shape[0]), int(x.shape[-1])
            return in_channels, image_size
    return in_channels, image_size


def _check_split(val_fraction: float) -> None:
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction: got {val_fraction}; allowed: 0 <= val_fraction < 1")


# ------------------------------------------------------------------------------------------ digits


def _digits_tensors() -> tuple[torch.Tensor, np.ndarray]:
    bunch = load_digits()
    images = (bunch.images.astype(np.float32) / 16.0 - DIGITS_MEAN) / DIGITS_STD  # 0..16 grey levels
    return torch.from_numpy(images).unsqueeze(1), bunch.target.astype(np.int64)


def build_digits(cfg: TaskConfig, seed: int, val_fraction: float, train_transform: Transform | None = None,
                 eval_transform: Transform | None = None, image_size: int | None = None) -> TaskData:
    """scikit-learn's bundled 8x8 digits, in memory (normalised tensors); held-out 20% fixed across seeds.

    The held-out split is taken over all 1,797 images before the label subset, so every digits view
    (and the exported stand-in ImageFolder) shares one test set and no test image is ever searched on.
    """
    x, y = _digits_tensors()
    full = TensorDataset(x, torch.from_numpy(y))
    pool, test = seeded_split(len(y), HELD_OUT_FRACTION, HELD_OUT_SEED)
    keep, labels, classes = select_classes(cfg, y[pool], 10)
    tr, va = seeded_split(len(keep), val_fraction, seed)
    t_keep, t_labels, _ = select_classes(cfg, y[test], 10)
    train = TaskView(full, pool[keep[tr]], labels[tr], train_transform)
    val = TaskView(full, pool[keep[va]], labels[va], eval_transform)
    test_view = TaskView(full, test[t_keep], t_labels, eval_transform)
    channels, side = 1, 8
    if eval_transform is not None:
        channels, side = _probe_shape([test_view, val, train], channels, side)
    return TaskData(cfg.name, train, val, test_view, len(classes), channels, side, [str(c) for c in classes])


# ------------------------------------------------------------------------------------------ CIFAR


def _cifar_classes() -> dict[str, type]:
    from torchvision.datasets import CIFAR10, CIFAR100

    return {"cifar10": CIFAR10, "cifar100": CIFAR100}


# Which torchvision class reads each CIFAR variant. torchvision verifies the md5 of every file against
# the official release; tests replace an entry with a subclass carrying the md5s of the small files they
# write (the check still runs), instead of weakening the check here.
CIFAR_CLASSES: dict[str, type] = {}


def cifar_transforms(dataset: str) -> tuple[Transform, Transform]:
    """DARTS' search transforms: (random crop 32 pad 4 + flip + normalise, normalise)."""
    from torchvision import transforms as T

    mean, std = (CIFAR10_MEAN, CIFAR10_STD) if dataset == "cifar10" else (CIFAR100_MEAN, CIFAR100_STD)
    norm = [T.ToTensor(), T.Normalize(mean, std)]
    return T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), *norm]), T.Compose(norm)


def _load_cifar(cfg: TaskConfig, train: bool) -> Dataset:
    cls = CIFAR_CLASSES.get(cfg.dataset) or _cifar_classes()[cfg.dataset]
    label = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100"}[cfg.dataset]
    folder = Path(cfg.root or ".") / cls.base_folder
    files = [name for name, _ in cls.train_list + cls.test_list] + [cls.meta["filename"]]
    missing = [name for name in files if not (folder / name).is_file()]
    if missing and not cfg.download:
        raise DataMissingError(
            f"task {cfg.name!r}: {label} not found at {folder} (missing {', '.join(missing)}); download is off "
            f"(download: false): extract {cls.filename} into {cfg.root} or set download: true")
    try:
        return cls(root=str(cfg.root), train=train, transform=None, download=cfg.download)
    except RuntimeError as exc:
        raise DataDamagedError(
            f"task {cfg.name!r}: {label} under {folder} failed torchvision's integrity check (md5 of "
            f"{', '.join(files)} against the official release): corrupted or not the official files ({exc})"
        ) from exc
    except OSError as exc:  # a download that cannot reach the network
        raise RunFailed(f"task {cfg.name!r}: {label} could not be downloaded into {folder}: {exc}") from exc


def build_cifar(cfg: TaskConfig, seed: int, val_fraction: float, train_transform: Transform | None = None,
                eval_transform: Transform | None = None, image_size: int | None = None) -> TaskData:
    """CIFAR-10/100 from ``cfg.root`` (torchvision's python-pickle layout); test = the official test batch."""
    default_train, default_eval = cifar_transforms(cfg.dataset)
    train_tf = train_transform if train_transform is not None else default_train
    eval_tf = eval_transform if eval_transform is not None else default_eval
    base_train, base_test = _load_cifar(cfg, True), _load_cifar(cfg, False)
    n_cls = len(base_train.classes)
    train, val, test, classes = _views(cfg, seed, val_fraction, base_train, np.asarray(base_train.targets),
                                       base_test, np.asarray(base_test.targets), n_cls, train_tf, eval_tf)
    channels, side = 3, 32
    if eval_transform is not None:
        channels, side = _probe_shape([test, val, train], channels, side)
    return TaskData(cfg.name, train, val, test, len(classes), channels, side, [base_train.classes[c] for c in classes])


# ------------------------------------------------------------------------------------------ ImageFolder


def load_image(path: str, dataset: str = "dataset") -> Any:
    """The RGB image at ``path`` (torchvision's ``pil_loader``); a file PIL cannot decode (truncated, not an
    image, a decompression bomb) is a :class:`DamagedImageError` naming the file and ``dataset``.

    Why: PIL decodes lazily, so a damaged file surfaces deep inside a DataLoader worker as ``OSError: image
    file is truncated`` with two tracebacks and no file name. Also the ``loader`` of torchvision ImageFolders
    (``functools.partial(load_image, dataset=...)``, picklable for worker processes)."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except FileNotFoundError as exc:
        raise DataMissingError(f"{dataset}: image {path} vanished after the folder was listed ({exc})") from exc
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        reason = " ".join(str(exc).split())[:200] or type(exc).__name__
        raise DamagedImageError(f"{dataset}: image {path} cannot be read ({type(exc).__name__}: {reason}); "
                                "the file is truncated or not an image: replace or delete it") from exc


class ImageFiles(Dataset):
    """(PIL RGB image, label) read from disk on access: a folder is never loaded into memory.

    ``dataset`` names it in errors (a damaged file is reported with its path and this name)."""

    def __init__(self, samples: list[tuple[str, int]], dataset: str = "ImageFolder"):
        self.samples = samples
        self.dataset = dataset
        self.targets = np.array([y for _, y in samples], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        path, y = self.samples[i]
        return load_image(path, self.dataset), y


def _scan_folder(directory: Path, cfg: TaskConfig, class_to_idx: dict[str, int] | None = None
                 ) -> tuple[list[tuple[str, int]], list[str]]:
    from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

    try:
        classes, found = find_classes(directory)
    except FileNotFoundError as exc:
        raise DataMissingError(f"task {cfg.name!r}: no class folders under {directory} (expected "
                                f"{directory}/CLASS/*.png or train/CLASS/*.png): {exc}") from exc
    if class_to_idx is None:
        class_to_idx = found
    else:
        unknown = sorted(set(classes) - set(class_to_idx))
        if unknown:
            raise DataError(f"task {cfg.name!r}: {directory} has class folder(s) {unknown} that the training "
                             f"set lacks; allowed: {sorted(class_to_idx)}")
    samples = make_dataset(str(directory), class_to_idx, extensions=IMG_EXTENSIONS, allow_empty=True)
    if not samples:
        raise DataMissingError(f"task {cfg.name!r}: no images ({', '.join(IMG_EXTENSIONS)}) under {directory}")
    return samples, sorted(class_to_idx, key=class_to_idx.__getitem__)


def imagefolder_transforms(image_size: int) -> tuple[Transform, Transform]:
    """Resize to ``image_size`` (+ padded random crop and flip for training), ImageNet normalisation."""
    from torchvision import transforms as T

    norm = [T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    resize = T.Resize((image_size, image_size))
    train = T.Compose([resize, T.RandomCrop(image_size, padding=max(1, image_size // 8)), T.RandomHorizontalFlip(),
                       *norm])
    return train, T.Compose([resize, *norm])


def build_imagefolder(cfg: TaskConfig, seed: int, val_fraction: float, train_transform: Transform | None = None,
                      eval_transform: Transform | None = None, image_size: int | None = None) -> TaskData:
    """``root/train/CLASS/*`` (+ ``root/val/CLASS/*`` as test) or ``root/CLASS/*`` (held-out test split).

    Class ids are the sorted class-folder names (torchvision's ImageFolder order), so ``cfg.classes``
    indexes that list.
    """
    root = Path(cfg.root or ".")
    if not root.is_dir():
        raise DataMissingError(f"task {cfg.name!r}: ImageFolder root {root} does not exist")
    side = image_size or 32
    default_train, default_eval = imagefolder_transforms(side)
    train_tf = train_transform if train_transform is not None else default_train
    eval_tf = eval_transform if eval_transform is not None else default_eval
    label = f"task {cfg.name!r} (ImageFolder {root})"
    if (root / "train").is_dir():
        samples, names = _scan_folder(root / "train", cfg)
        base = ImageFiles(samples, label)
        if (root / "val").is_dir():
            test_base = ImageFiles(_scan_folder(root / "val", cfg, {n: i for i, n in enumerate(names)})[0], label)
            views = _views(cfg, seed, val_fraction, base, base.targets, test_base, test_base.targets,
                           len(names), train_tf, eval_tf)
        else:
            views = _held_out_views(cfg, seed, val_fraction, base, len(names), train_tf, eval_tf)
    else:
        samples, names = _scan_folder(root, cfg)
        views = _held_out_views(cfg, seed, val_fraction, ImageFiles(samples, label), len(names), train_tf, eval_tf)
    train, val, test, classes = views
    channels = 3
    if eval_transform is not None:
        channels, side = _probe_shape([test, val, train], channels, side)
    return TaskData(cfg.name, train, val, test, len(classes), channels, side, [names[c] for c in classes])


def _held_out_views(cfg: TaskConfig, seed: int, val_fraction: float, base: ImageFiles, n_cls: int,
                    train_tf: Transform | None, eval_tf: Transform | None) -> Views:
    pool, test = seeded_split(len(base), HELD_OUT_FRACTION, HELD_OUT_SEED)
    keep, labels, classes = select_classes(cfg, base.targets[pool], n_cls)
    tr, va = seeded_split(len(keep), val_fraction, seed)
    t_keep, t_labels, _ = select_classes(cfg, base.targets[test], n_cls)
    return (TaskView(base, pool[keep[tr]], labels[tr], train_tf), TaskView(base, pool[keep[va]], labels[va], eval_tf),
            TaskView(base, test[t_keep], t_labels, eval_tf), classes)


BUILDERS: dict[str, Callable[..., TaskData]] = {
    "digits": build_digits,
    "cifar10": build_cifar,
    "cifar100": build_cifar,
    "imagefolder": build_imagefolder,
}


def build_task(cfg: TaskConfig, seed: int = 0, val_fraction: float = 0.5, *,
               train_transform: Transform | None = None, eval_transform: Transform | None = None,
               image_size: int | None = None) -> TaskData:
    """The task view ``cfg`` describes: train/val (seeded by ``seed``) and the held-out test set.

    ``train_transform`` / ``eval_transform`` replace the dataset's defaults (DARTS' search transforms
    for CIFAR, resize to ``image_size`` for ImageFolder, none for the pre-normalised digits tensors);
    val and test always use the eval transform. With a custom eval transform, ``in_channels`` and
    ``image_size`` are read off one transformed item.
    """
    _check_split(val_fraction)
    try:
        builder = BUILDERS[cfg.dataset]
    except KeyError:
        raise DataError(
            f"task {cfg.name!r}: dataset {cfg.dataset!r} has no builder; allowed: {sorted(BUILDERS)}") from None
    return builder(cfg, seed, val_fraction, train_transform=train_transform, eval_transform=eval_transform,
                   image_size=image_size)
