"""Data preparation: task manifests (which images each split holds) and the stand-in transfer ImageFolder.

A manifest pins a task view for one stage: its config, that stage's seed and val fraction, sizes, a sha256
fingerprint of the split indices and labels, and a fingerprint of the source files (``source_fingerprint``:
the bytes of CIFAR's batch files and of the digits array; path, size and mtime of every ImageFolder file).
The stages load their splits through :func:`load_stage_tasks`, which re-derives each view and refuses one
whose data changed since 'prepare' wrote the manifest, naming the manifest file. DVC reruns 'prepare' (and
the readers) when a dataset root changes, because the roots are dependencies in ``dvc.yaml``.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from ilnas.data.spec import TaskConfig
from ilnas.data.tasks import DIGITS_MEAN, DIGITS_STD, TaskData, TaskView, build_task, seeded_split
from ilnas.utils.io import atomic_write, atomic_write_json

MANIFEST_VERSION = 2
SPLITS = ("train", "val", "test")


class ManifestError(ValueError):
    """A manifest that cannot be used: missing, corrupt, or not matching the data it describes."""


def _split_arrays(ds: Dataset) -> tuple[np.ndarray, np.ndarray]:
    """(indices into the source, labels) of a split, without reading images when it is a TaskView."""
    if isinstance(ds, TaskView):
        return ds.indices, ds.targets
    indices = np.asarray(getattr(ds, "indices", range(len(ds))), dtype=np.int64)  # type: ignore[arg-type]
    labels = np.array([int(ds[i][1]) for i in range(len(ds))], dtype=np.int64)  # type: ignore[arg-type]
    return indices, labels


def _digest(parts: list[tuple[str, np.ndarray, np.ndarray]], class_names: list[str]) -> str:
    h = hashlib.sha256()
    h.update(json.dumps(class_names).encode())
    for name, idx, lab in parts:
        h.update(name.encode())
        h.update(np.ascontiguousarray(idx, dtype="<i8").tobytes())
        h.update(np.ascontiguousarray(lab, dtype="<i8").tobytes())
    return h.hexdigest()


def task_fingerprints(data: TaskData) -> dict[str, str]:
    """sha256 of the split indices + labels: ``all`` (the exact split), ``pool`` (train+val) and ``test``.

    ``pool`` and ``test`` do not depend on the search seed, so a view re-split with another seed can
    still be checked against the data the manifest was written from.
    """
    arrays = {name: _split_arrays(getattr(data, name)) for name in SPLITS}
    idx = np.concatenate([arrays["train"][0], arrays["val"][0]])
    lab = np.concatenate([arrays["train"][1], arrays["val"][1]])
    order = np.argsort(idx, kind="stable")
    return {
        "all": _digest([(n, *arrays[n]) for n in SPLITS], data.class_names),
        "pool": _digest([("pool", idx[order], lab[order])], data.class_names),
        "test": _digest([("test", *arrays["test"])], data.class_names),
    }


def _hash_file(h: Any, path: Path) -> None:
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)


def source_fingerprint(cfg: TaskConfig) -> str:
    """sha256 of the files a task reads: changes when one image changes, not only when the split does.

    digits: the bundled array; CIFAR: the bytes of every batch and meta file; ImageFolder: relative path,
    size and mtime of every file under the root (hashing ImageNet's bytes on every stage start would take
    minutes; a file rewritten in place gets a new mtime). DVC hashes the same roots by content.
    """
    h = hashlib.sha256(cfg.dataset.encode())
    if cfg.dataset == "digits":
        from sklearn.datasets import load_digits

        bunch = load_digits()
        h.update(np.ascontiguousarray(bunch.images, dtype="<f8").tobytes())
        h.update(np.ascontiguousarray(bunch.target, dtype="<i8").tobytes())
        return h.hexdigest()
    root = Path(cfg.root or ".")
    if cfg.dataset in ("cifar10", "cifar100"):
        from ilnas.data.tasks import CIFAR_CLASSES, _cifar_classes

        cls = CIFAR_CLASSES.get(cfg.dataset) or _cifar_classes()[cfg.dataset]
        for name in sorted([n for n, _ in cls.train_list + cls.test_list] + [cls.meta["filename"]]):
            path = root / cls.base_folder / name
            if path.is_file():
                h.update(name.encode())
                _hash_file(h, path)
        return h.hexdigest()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            path = Path(dirpath) / name
            st = path.stat()
            h.update(f"{path.relative_to(root).as_posix()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def task_manifest(cfg: TaskConfig, data: TaskData, seed: int, val_fraction: float) -> dict[str, Any]:
    """The manifest of one task view (plain JSON data)."""
    fps = task_fingerprints(data)
    return {
        "manifest_version": MANIFEST_VERSION,
        "name": cfg.name,
        "dataset": cfg.dataset,
        "root": cfg.root,
        "classes": cfg.classes,
        "download": cfg.download,
        "class_names": list(data.class_names),
        "num_classes": data.num_classes,
        "in_channels": data.in_channels,
        "image_size": data.image_size,
        "seed": seed,
        "val_fraction": val_fraction,
        "sizes": {name: len(getattr(data, name)) for name in SPLITS},  # type: ignore[arg-type]
        "fingerprint": fps["all"],
        "fingerprints": fps,
        "source_fingerprint": source_fingerprint(cfg),
    }


def prepare_tasks(tasks: list[TaskConfig], out_dir: str | os.PathLike, seed: int, val_fraction: float) -> dict:
    """Write ``<out_dir>/tasks/<name>.json`` per task and ``<out_dir>/summary.json``; return the summary.

    The summary's ``tasks`` maps each name to its sizes, class count and fingerprint (what the
    pipeline logs as metrics).
    """
    out = Path(out_dir)
    names = [t.name for t in tasks]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"prepare_tasks: task names must be unique; repeated: {dupes}")
    summary: dict[str, Any] = {"manifest_version": MANIFEST_VERSION, "seed": seed, "val_fraction": val_fraction,
                               "tasks": {}}
    for cfg in tasks:
        data = build_task(cfg, seed=seed, val_fraction=val_fraction)
        manifest = task_manifest(cfg, data, seed, val_fraction)
        path = atomic_write_json(out / "tasks" / f"{cfg.name}.json", manifest)
        summary["tasks"][cfg.name] = {
            "dataset": cfg.dataset, "num_classes": data.num_classes, **manifest["sizes"],
            "fingerprint": manifest["fingerprint"], "manifest": str(path.relative_to(out)),
        }
    atomic_write_json(out / "summary.json", summary)
    return summary


def read_manifest(path: str | os.PathLike) -> dict[str, Any]:
    """Parse and shape-check a manifest; every error names the file."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        raise ManifestError(f"{path}: cannot read task manifest ({exc.strerror})") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ManifestError(f"{path}: corrupt task manifest, not valid JSON ({exc})") from exc
    required = {"manifest_version", "name", "dataset", "root", "classes", "seed", "val_fraction", "fingerprint",
                "fingerprints", "sizes", "source_fingerprint"}
    if not isinstance(data, dict) or required - set(data):
        missing = sorted(required - set(data)) if isinstance(data, dict) else sorted(required)
        raise ManifestError(f"{path}: corrupt task manifest, missing field(s) {missing}")
    if data["manifest_version"] != MANIFEST_VERSION:
        raise ManifestError(f"{path}: manifest_version {data['manifest_version']!r}; allowed: {MANIFEST_VERSION}")
    return data


def load_task_from_manifest(path: str | os.PathLike, seed: int | None = None, val_fraction: float | None = None,
                            **kwargs: Any) -> TaskData:
    """Rebuild the task view a manifest describes and verify it is the same data.

    ``seed`` / ``val_fraction`` default to the manifest's; with the manifest's split the full
    fingerprint must match, with another one the seed-independent ``pool`` and ``test`` ones must.
    ``kwargs`` go to :func:`build_task` (transforms, image size).
    """
    path = Path(path)
    m = read_manifest(path)
    try:
        cfg = TaskConfig(name=m["name"], dataset=m["dataset"], root=m["root"], classes=m["classes"],
                         download=bool(m.get("download", False)))
    except ValueError as exc:
        raise ManifestError(f"{path}: corrupt task manifest, invalid task ({exc})") from exc
    seed = int(m["seed"]) if seed is None else seed
    val_fraction = float(m["val_fraction"]) if val_fraction is None else val_fraction
    if source_fingerprint(cfg) != m["source_fingerprint"]:
        raise ManifestError(
            f"{path}: source_fingerprint mismatch for task {cfg.name!r} ({cfg.dataset} at {cfg.root}): the files "
            "changed since 'prepare' wrote this manifest; rerun it (dvc repro reruns it when the root is a dep)")
    data = build_task(cfg, seed=seed, val_fraction=val_fraction, **kwargs)
    fps = task_fingerprints(data)
    same_split = seed == m["seed"] and val_fraction == m["val_fraction"]
    checks = [("fingerprint", m["fingerprint"], fps["all"])] if same_split else [
        (f"fingerprints.{k}", m["fingerprints"].get(k), fps[k]) for k in ("pool", "test")]
    for field, want, got in checks:
        if want != got:
            raise ManifestError(
                f"{path}: {field} mismatch for task {cfg.name!r} ({cfg.dataset} at {cfg.root}): the manifest "
                f"says {want}, the data gives {got}; the data changed since 'prepare' ran (rerun it)")
    return data


def manifest_path(prepared: str | os.PathLike, stage: str, task: str) -> Path:
    """Where 'prepare' writes the manifest of ``task`` as ``stage`` (search / retrain) splits it."""
    return Path(prepared) / stage / "tasks" / f"{task}.json"


def load_stage_tasks(prepared: str | os.PathLike, stage: str, tasks: list[TaskConfig], seed: int,
                     val_fraction: float, **kwargs: Any) -> list[TaskData]:
    """The tasks a stage reads, through the manifests 'prepare' wrote for that stage (fingerprints checked).

    The manifest must describe the same task, seed and val fraction as the stage's params; otherwise the
    params changed after 'prepare' ran and ManifestError names the file and the differing key.
    """
    out: list[TaskData] = []
    for cfg in tasks:
        path = manifest_path(prepared, stage, cfg.name)
        m = read_manifest(path)
        want = {"dataset": cfg.dataset, "root": cfg.root, "classes": cfg.classes, "seed": seed,
                "val_fraction": val_fraction}
        for key, value in want.items():
            if m[key] != value:
                raise ManifestError(f"{path}: {key} is {m[key]!r} but {stage} uses {value!r} for task "
                                    f"{cfg.name!r}; the params changed after 'prepare' ran (rerun it)")
        out.append(load_task_from_manifest(path, **kwargs))
    return out


# ------------------------------------------------------------------------------------------ ImageFolder export


def _to_image(x: Any, size: int, rgb: bool, mean: float, std: float) -> Any:
    from PIL import Image

    if isinstance(x, torch.Tensor):
        arr = x.detach().float().cpu().numpy()
        arr = np.clip(arr * std + mean, 0.0, 1.0)
        arr = (arr * 255.0 + 0.5).astype(np.uint8)
        img = Image.fromarray(arr[0] if arr.shape[0] == 1 else np.transpose(arr[:3], (1, 2, 0)))
    elif isinstance(x, Image.Image):
        img = x
    else:
        raise TypeError(f"export_imagefolder: cannot write an item of type {type(x).__name__} as an image")
    img = img.convert("RGB" if rgb else "L")
    if img.size != (size, size):
        img = img.resize((size, size), Image.Resampling.BILINEAR)
    return img


def _write_split(items: Dataset, class_names: list[str], folder: Path, split: str, size: int, rgb: bool,
                 mean: float, std: float) -> int:
    n = len(items)  # type: ignore[arg-type]
    for c in class_names:
        (folder / c).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        x, y = items[i]
        img = _to_image(x, size, rgb, mean, std)
        target = folder / class_names[int(y)] / f"{split}_{i:05d}.png"
        atomic_write(target, lambda p, img=img: img.save(p, format="PNG"))
    return n


def export_imagefolder(out_dir: str | os.PathLike | TaskData | Dataset,
                       data: TaskData | Dataset | str | os.PathLike | None = None, *,
                       image_size: int = 32, seed: int = 0, rgb: bool = True, class_names: list[str] | None = None,
                       mean: float = DIGITS_MEAN, std: float = DIGITS_STD) -> dict[str, Any]:
    """Write an ImageNet-layout ImageFolder: ``train/CLASS/*.png`` and ``val/CLASS/*.png``.

    Default (``data=None``): scikit-learn's digits, all ten classes; ``train/`` is the digits training
    pool, ``val/`` the held-out test set (never seen by the search), upscaled from 8x8 to
    ``image_size`` -- the embedded default's stand-in for ImageNet transfer. A :class:`TaskData` writes
    train+val to ``train/`` and test to ``val/``; a plain dataset is split 80/20 (``seed``). Tensor
    items are un-normalised with ``mean``/``std`` (the digits statistics by default). The two leading
    arguments may come in either order. Returns counts and the root.
    """
    if isinstance(out_dir, TaskData | Dataset):
        out_dir, data = data, out_dir  # type: ignore[assignment]
    if out_dir is None:
        raise TypeError("export_imagefolder: out_dir is required")
    root = Path(out_dir)  # type: ignore[arg-type]
    if data is None:
        data = build_task(TaskConfig(name="digits", dataset="digits"), seed=seed, val_fraction=0.0)
    if isinstance(data, TaskData):
        names = class_names or list(data.class_names)
        train_items: Dataset = torch.utils.data.ConcatDataset([data.train, data.val])
        val_items: Dataset = data.test
    elif isinstance(data, Dataset):
        n = len(data)  # type: ignore[arg-type]
        tr, va = seeded_split(n, 0.2, seed)
        train_items, val_items = torch.utils.data.Subset(data, tr.tolist()), torch.utils.data.Subset(data, va.tolist())
        labels = sorted({int(data[i][1]) for i in range(n)})
        names = class_names or [str(c) for c in range(max(labels) + 1)]
    else:
        raise TypeError(f"export_imagefolder: data must be TaskData, a Dataset or None, got {type(data).__name__}")
    if len(set(names)) != len(names):
        raise ValueError(f"export_imagefolder: class names must be distinct folder names, got {names}")
    n_train = _write_split(train_items, names, root / "train", "train", image_size, rgb, mean, std)
    n_val = _write_split(val_items, names, root / "val", "val", image_size, rgb, mean, std)
    return {"root": str(root), "train": n_train, "val": n_val, "classes": len(names), "image_size": image_size}
