"""Task views (digits, CIFAR-10/100, ImageFolder), label subsets, errors, CyclingLoader resume, manifests, export.

CIFAR files are written here in torchvision's real on-disk format (python pickles under
``cifar-10-batches-py/`` and ``cifar-100-python/``). torchvision checks every file's md5 against the
official release, which tiny files cannot match. The checks are not switched off: the test
registers a subclass of torchvision's class whose ``train_list`` / ``test_list`` / ``meta`` carry the
md5s of the files written here (``ilnas.data.tasks.CIFAR_CLASSES``), so the integrity check still runs
on every load; one test also shows the unpatched class rejecting them with a clear error.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import TensorDataset

from ilnas.data import tasks as tasks_mod
from ilnas.data.loaders import CyclingLoader
from ilnas.data.prepare import ManifestError, export_imagefolder, load_task_from_manifest, prepare_tasks
from ilnas.data.spec import TaskConfig, default_digits_tasks
from ilnas.data.tasks import HELD_OUT_FRACTION, ImageFiles, TaskView, build_task, seeded_split


def _idx(view: TaskView) -> set[int]:
    return set(view.indices.tolist())


# ------------------------------------------------------------------------------------------ digits


def test_digits_views_sizes_remap_disjoint() -> None:
    a, b = (build_task(t, seed=0, val_fraction=0.5) for t in default_digits_tasks())
    full = build_task(TaskConfig(name="all", dataset="digits"), seed=0, val_fraction=0.5)
    assert sum(len(getattr(full, s)) for s in ("train", "val", "test")) == 1797
    assert len(full.test) == round(1797 * HELD_OUT_FRACTION)
    for d, classes in ((a, [0, 1, 2, 3, 4]), (b, [5, 6, 7, 8, 9])):
        assert d.num_classes == 5 and d.in_channels == 1 and d.image_size == 8
        assert d.class_names == [str(c) for c in classes]
        tr, va, te = _idx(d.train), _idx(d.val), _idx(d.test)
        assert not (tr & va) and not (tr & te) and not (va & te)
        assert abs(len(tr) - len(va)) <= 1
        for view in (d.train, d.val, d.test):
            original = view.base.tensors[1][torch.from_numpy(view.indices)].numpy()
            assert np.array_equal(original, np.array(classes)[view.targets])  # relabelled 0..4 in order
            x, y = view[3]
            assert x.shape == (1, 8, 8) and x.dtype == torch.float32 and y == view.targets[3]
    # every view shares one held-out set: a test image is never searched on by any task
    assert _idx(a.test) | _idx(b.test) == _idx(full.test)
    assert not ((_idx(a.train) | _idx(a.val)) & _idx(full.test))


def test_digits_subset_order_and_seed_determinism() -> None:
    cfg = TaskConfig(name="rev", dataset="digits", classes=[7, 2])
    d1, d2 = build_task(cfg, seed=3, val_fraction=0.3), build_task(cfg, seed=3, val_fraction=0.3)
    assert d1.class_names == ["7", "2"]
    base_labels = d1.train.base.tensors[1].numpy()
    assert set(base_labels[d1.train.indices[d1.train.targets == 0]]) == {7}
    assert set(base_labels[d1.train.indices[d1.train.targets == 1]]) == {2}
    for s in ("train", "val", "test"):
        assert np.array_equal(getattr(d1, s).indices, getattr(d2, s).indices)
    d3 = build_task(cfg, seed=4, val_fraction=0.3)
    assert not np.array_equal(d1.train.indices, d3.train.indices)
    assert np.array_equal(d1.test.indices, d3.test.indices)  # the held-out set does not move with the seed
    assert _idx(d1.train) | _idx(d1.val) == _idx(d3.train) | _idx(d3.val)
    assert len(d1.val) == round(0.3 * (len(d1.train) + len(d1.val)))


def test_seeded_split() -> None:
    tr, va = seeded_split(10, 0.3, 0)
    assert len(va) == 3 and sorted(np.concatenate([tr, va]).tolist()) == list(range(10))
    assert np.array_equal(seeded_split(10, 0.3, 0)[1], va)
    assert len(seeded_split(10, 0.0, 0)[1]) == 0


@pytest.mark.parametrize(("dataset", "bad", "allowed"), [("digits", 10, "0..9"), ("digits", 12, "0..9")])
def test_out_of_range_class_digits(dataset: str, bad: int, allowed: str) -> None:
    with pytest.raises(ValueError) as info:
        build_task(TaskConfig(name="oops", dataset=dataset, classes=[1, bad]))
    msg = str(info.value)
    assert "'oops'" in msg and f"class id {bad}" in msg and allowed in msg


def test_bad_val_fraction() -> None:
    with pytest.raises(ValueError, match="val_fraction"):
        build_task(default_digits_tasks()[0], val_fraction=1.0)


def test_digits_custom_transform_sets_shape() -> None:
    import torch.nn.functional as F

    up = lambda x: F.interpolate(x[None], size=16)[0].repeat(3, 1, 1)  # noqa: E731
    d = build_task(default_digits_tasks()[0], seed=0, val_fraction=0.5, train_transform=up, eval_transform=up)
    assert (d.in_channels, d.image_size) == (3, 16) and d.val[0][0].shape == (3, 16, 16)


# ------------------------------------------------------------------------------------------ CIFAR


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def _pickle(path: Path, obj: dict) -> None:
    path.write_bytes(pickle.dumps(obj, protocol=2))


def _images(values: list[int]) -> np.ndarray:
    """One constant image per value (N x 3072 uint8, CIFAR's row layout): pixel value = identity."""
    return np.repeat(np.array(values, dtype=np.uint8)[:, None], 3072, axis=1)


def write_cifar10(root: Path, per_batch: int = 6, n_test: int = 10) -> type:
    """Five training batches, a test batch and batches.meta; returns the md5-pinned torchvision subclass."""
    from torchvision.datasets import CIFAR10

    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for b in range(5):
        ids = list(range(b * per_batch, (b + 1) * per_batch))
        batch = {"batch_label": f"training batch {b + 1} of 5", "data": _images(ids), "labels": [i % 10 for i in ids],
                 "filenames": [f"{i}.png" for i in ids]}
        _pickle(folder / f"data_batch_{b + 1}", batch)
    ids = list(range(n_test))
    _pickle(folder / "test_batch", {"batch_label": "testing batch 1 of 1", "data": _images([200 + i for i in ids]),
                                    "labels": [i % 10 for i in ids], "filenames": [f"t{i}.png" for i in ids]})
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    _pickle(folder / "batches.meta", {"label_names": names, "num_cases_per_batch": per_batch, "num_vis": 3072})
    return type("TinyCIFAR10", (CIFAR10,), {
        "train_list": [[f"data_batch_{b}", _md5(folder / f"data_batch_{b}")] for b in range(1, 6)],
        "test_list": [["test_batch", _md5(folder / "test_batch")]],
        "meta": {**CIFAR10.meta, "md5": _md5(folder / "batches.meta")},
    })


def write_cifar100(root: Path, n_train: int = 300, n_test: int = 100) -> type:
    from torchvision.datasets import CIFAR100

    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    for split, n, offset in (("train", n_train, 0), ("test", n_test, 0)):
        ids = list(range(n))
        _pickle(folder / split, {"batch_label": split, "data": _images([(offset + i) % 256 for i in ids]),
                                 "fine_labels": [i % 100 for i in ids], "coarse_labels": [i % 20 for i in ids],
                                 "filenames": [f"{i}.png" for i in ids]})
    _pickle(folder / "meta", {"fine_label_names": [f"fine{i}" for i in range(100)],
                              "coarse_label_names": [f"coarse{i}" for i in range(20)]})
    return type("TinyCIFAR100", (CIFAR100,), {
        "train_list": [["train", _md5(folder / "train")]],
        "test_list": [["test", _md5(folder / "test")]],
        "meta": {**CIFAR100.meta, "md5": _md5(folder / "meta")},
    })


def _value(x: torch.Tensor) -> int:
    return int(round(float(x[0, 0, 0]) * 255))


@pytest.fixture
def cifar10(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setitem(tasks_mod.CIFAR_CLASSES, "cifar10", write_cifar10(tmp_path / "c10"))
    return tmp_path / "c10"


@pytest.fixture
def cifar100(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setitem(tasks_mod.CIFAR_CLASSES, "cifar100", write_cifar100(tmp_path / "c100"))
    return tmp_path / "c100"


def test_cifar10_view_and_default_transforms(cifar10: Path) -> None:
    d = build_task(TaskConfig(name="c10", dataset="cifar10", root=str(cifar10)), seed=0, val_fraction=0.2)
    assert (len(d.train), len(d.val), len(d.test)) == (24, 6, 10)
    assert d.num_classes == 10 and d.in_channels == 3 and d.image_size == 32 and d.class_names[3] == "cat"
    assert not (_idx(d.train) & _idx(d.val))
    # val uses the eval transform: deterministic, no crop padding; train is augmented (padded random crops)
    x1, y1 = d.val[0]
    assert x1.shape == (3, 32, 32) and torch.equal(x1, d.val[0][0])
    assert torch.allclose(x1, x1[:, :1, :1].expand_as(x1))  # a constant image stays constant
    i = int(np.nonzero(d.train.indices > 0)[0][0])  # an image with non-zero pixels
    draws = [d.train[i][0] for _ in range(12)]
    assert any(not torch.equal(draws[0], x) for x in draws[1:])
    assert any(not torch.allclose(x, x[:, 16:17, 16:17].expand_as(x)) for x in draws)  # zero padding shows up
    mean, std = tasks_mod.CIFAR10_MEAN[0], tasks_mod.CIFAR10_STD[0]
    assert float(x1[0, 0, 0]) == pytest.approx((d.val.indices[0] / 255 - mean) / std, abs=1e-4)
    assert y1 == d.val.indices[0] % 10


def test_cifar10_label_subset_and_custom_transform(cifar10: Path) -> None:
    from torchvision.transforms import ToTensor

    cfg = TaskConfig(name="pets", dataset="cifar10", root=str(cifar10), classes=[7, 3])
    d = build_task(cfg, seed=1, val_fraction=0.5, train_transform=ToTensor(), eval_transform=ToTensor())
    assert d.class_names == ["horse", "cat"] and d.num_classes == 2
    assert len(d.train) + len(d.val) == 6 and len(d.test) == 2  # ids 3,7,13,17,23,27 ; test 3,7
    for view, offset in ((d.train, 0), (d.val, 0), (d.test, 200)):
        for k in range(len(view)):
            x, y = view[k]
            original = (_value(x) - offset) % 10
            assert original == [7, 3][y]


def test_cifar100(cifar100: Path) -> None:
    from torchvision.transforms import ToTensor

    d = build_task(TaskConfig(name="c100", dataset="cifar100", root=str(cifar100)), seed=0, val_fraction=0.1)
    assert (len(d.train), len(d.val), len(d.test)) == (270, 30, 100) and d.num_classes == 100
    assert d.class_names[:2] == ["fine0", "fine1"]
    sub = build_task(TaskConfig(name="s", dataset="cifar100", root=str(cifar100), classes=[99, 0, 42]), seed=0,
                     val_fraction=0.0, eval_transform=ToTensor())
    assert sub.class_names == ["fine99", "fine0", "fine42"] and len(sub.train) == 9 and len(sub.test) == 3
    assert sorted((_value(sub.test[k][0]) % 100, sub.test[k][1]) for k in range(3)) == [(0, 1), (42, 2), (99, 0)]
    with pytest.raises(ValueError) as info:
        build_task(TaskConfig(name="s", dataset="cifar100", root=str(cifar100), classes=[100]))
    assert "'s'" in str(info.value) and "class id 100" in str(info.value) and "0..99" in str(info.value)


def test_cifar10_out_of_range_class(cifar10: Path) -> None:
    with pytest.raises(ValueError) as info:
        build_task(TaskConfig(name="c", dataset="cifar10", root=str(cifar10), classes=[0, 10]))
    assert "'c'" in str(info.value) and "class id 10" in str(info.value) and "0..9" in str(info.value)


@pytest.mark.parametrize(("dataset", "folder"), [("cifar10", "cifar-10-batches-py"), ("cifar100", "cifar-100-python")])
def test_cifar_missing_names_path_and_download_off(tmp_path: Path, dataset: str, folder: str) -> None:
    with pytest.raises(FileNotFoundError) as info:
        build_task(TaskConfig(name="t", dataset=dataset, root=str(tmp_path / "nowhere")))
    msg = str(info.value)
    assert str(tmp_path / "nowhere" / folder) in msg and "download is off" in msg and "'t'" in msg


def test_cifar_md5_check_is_real(tmp_path: Path) -> None:
    write_cifar10(tmp_path)  # tiny files, but the unpatched torchvision class checks official md5s
    with pytest.raises(RuntimeError) as info:
        build_task(TaskConfig(name="t", dataset="cifar10", root=str(tmp_path)))
    assert "integrity" in str(info.value) and str(tmp_path / "cifar-10-batches-py") in str(info.value)


# ------------------------------------------------------------------------------------------ ImageFolder


def _png(path: Path, value: int, size: tuple[int, int] = (12, 10)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (value, value, value)).save(path)


def write_imagefolder(root: Path, classes: tuple[str, ...] = ("cat", "dog", "emu"), n_train: int = 5,
                      n_val: int = 2, nested: bool = True) -> None:
    for c, name in enumerate(classes):
        for i in range(n_train):
            _png(root / ("train" if nested else "") / name / f"{i}.png", 10 * c + i)
        for i in range(n_val if nested else 0):
            _png(root / "val" / name / f"{i}.jpg".replace("jpg", "png"), 100 + 10 * c + i)


def test_imagefolder_imagenet_layout(tmp_path: Path) -> None:
    write_imagefolder(tmp_path)
    (tmp_path / "train" / "cat" / "notes.txt").write_text("not an image")
    d = build_task(TaskConfig(name="f", dataset="imagefolder", root=str(tmp_path)), seed=0, val_fraction=0.4)
    assert d.class_names == ["cat", "dog", "emu"] and d.num_classes == 3 and d.in_channels == 3
    assert (len(d.train), len(d.val), len(d.test)) == (9, 6, 6)
    assert isinstance(d.train.base, ImageFiles) and d.train.base is d.val.base  # lazy: paths, not pixels
    assert d.test.base is not d.train.base
    x, y = d.test[0]
    assert x.shape == (3, 32, 32) and d.image_size == 32
    big = build_task(TaskConfig(name="f", dataset="imagefolder", root=str(tmp_path)), image_size=16)
    assert big.val[0][0].shape == (3, 16, 16) and big.image_size == 16
    # labels follow the files' class folders
    for view in (d.train, d.test):
        for k in range(len(view)):
            path, label = view.base.samples[view.indices[k]]
            assert Path(path).parent.name == d.class_names[view.targets[k]] and label == view.targets[k]


def test_imagefolder_flat_layout_subset(tmp_path: Path) -> None:
    write_imagefolder(tmp_path, n_train=10, nested=False)
    cfg = TaskConfig(name="flat", dataset="imagefolder", root=str(tmp_path), classes=[2, 0])
    d = build_task(cfg, seed=0, val_fraction=0.25)
    assert d.class_names == ["emu", "cat"]
    assert len(d.train) + len(d.val) + len(d.test) == 20 and not (_idx(d.test) & (_idx(d.train) | _idx(d.val)))
    for view in (d.train, d.val, d.test):
        assert {Path(view.base.samples[i][0]).parent.name for i in view.indices[view.targets == 0]} <= {"emu"}
    again = build_task(cfg, seed=5, val_fraction=0.25)
    assert np.array_equal(again.test.indices, d.test.indices)  # held-out split fixed across seeds
    with pytest.raises(ValueError) as info:
        build_task(TaskConfig(name="flat", dataset="imagefolder", root=str(tmp_path), classes=[3]))
    assert "'flat'" in str(info.value) and "class id 3" in str(info.value) and "0..2" in str(info.value)


def test_imagefolder_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        build_task(TaskConfig(name="x", dataset="imagefolder", root=str(tmp_path / "missing")))
    (tmp_path / "empty" / "train" / "cat").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="no images"):
        build_task(TaskConfig(name="x", dataset="imagefolder", root=str(tmp_path / "empty")))
    write_imagefolder(tmp_path / "odd")
    _png(tmp_path / "odd" / "val" / "yak" / "0.png", 1)
    with pytest.raises(ValueError, match="yak"):
        build_task(TaskConfig(name="x", dataset="imagefolder", root=str(tmp_path / "odd")))


# ------------------------------------------------------------------------------------------ CyclingLoader


def _ds(n: int = 10) -> TensorDataset:
    return TensorDataset(torch.arange(n).float()[:, None], torch.arange(n))


def _take(loader: CyclingLoader, k: int) -> list[list[int]]:
    return [loader.next()[1].tolist() for _ in range(k)]


def test_cycling_loader_resume_matches_uninterrupted() -> None:
    straight = CyclingLoader(_ds(), batch_size=4, seed=7)
    assert straight.batches_per_epoch == 2  # 10 items, batch 4, tail dropped (no size-2 BatchNorm batch)
    first = _take(straight, 5)  # crosses two epoch boundaries
    state = straight.state_dict()
    assert state == {"consumed": 5}
    rest = _take(straight, 6)
    resumed = CyclingLoader(_ds(), batch_size=4, seed=7)
    resumed.load_state_dict(json.loads(json.dumps(state)))  # the state survives a JSON checkpoint
    assert _take(resumed, 6) == rest
    # the same stream from scratch, and another seed gives another order
    assert _take(CyclingLoader(_ds(), batch_size=4, seed=7), 5) == first
    assert _take(CyclingLoader(_ds(), batch_size=4, seed=8), 5) != first


def test_cycling_loader_persistent_iterator_and_epochs() -> None:
    loader = CyclingLoader(_ds(12), batch_size=4, seed=0)
    loader.next()
    it = loader._it
    batches = [loader.next()[1].tolist() for _ in range(8)]
    assert loader._it is it, "the DataLoader iterator must live across epoch boundaries"
    epochs = [[loader.next()[1].tolist() for _ in range(3)] for _ in range(2)]
    for epoch in epochs:  # each epoch is a permutation of the whole dataset
        assert sorted(sum(epoch, [])) == list(range(12))
    assert epochs[0] != epochs[1]
    assert len(batches) == 8


def test_cycling_loader_no_shuffle_and_small_dataset() -> None:
    loader = CyclingLoader(_ds(5), batch_size=4, seed=0, shuffle=False)
    # n < 2 * batch: keep the tail instead of dropping most of the data
    assert loader.batches_per_epoch == 2 and _take(loader, 3) == [[0, 1, 2, 3], [4], [0, 1, 2, 3]]
    with pytest.raises(ValueError, match="empty"):
        CyclingLoader(_ds(0), batch_size=4, seed=0)


# ------------------------------------------------------------------------------------------ prepare / manifests


def test_prepare_manifest_round_trip(tmp_path: Path) -> None:
    tasks = default_digits_tasks()
    summary = prepare_tasks(tasks, tmp_path, seed=0, val_fraction=0.5)
    assert json.loads((tmp_path / "summary.json").read_text()) == summary
    assert set(summary["tasks"]) == {"digits_0_4", "digits_5_9"}
    path = tmp_path / "tasks" / "digits_0_4.json"
    m = json.loads(path.read_text())
    d = build_task(tasks[0], seed=0, val_fraction=0.5)
    assert m["dataset"] == "digits" and m["classes"] == [0, 1, 2, 3, 4] and m["class_names"] == d.class_names
    assert (m["num_classes"], m["in_channels"], m["image_size"]) == (5, 1, 8)
    assert m["sizes"] == {"train": len(d.train), "val": len(d.val), "test": len(d.test)}
    assert len(m["fingerprint"]) == 64 and m["fingerprint"] == summary["tasks"]["digits_0_4"]["fingerprint"]
    assert m["fingerprint"] != json.loads((tmp_path / "tasks" / "digits_5_9.json").read_text())["fingerprint"]
    back = load_task_from_manifest(path)
    for s in ("train", "val", "test"):
        assert np.array_equal(getattr(back, s).indices, getattr(d, s).indices)
    reseeded = load_task_from_manifest(path, seed=9)  # another split of the same data is accepted
    assert not np.array_equal(reseeded.train.indices, d.train.indices)
    # deterministic: preparing again gives byte-identical manifests (DVC sees no change)
    prepare_tasks(tasks, tmp_path / "again", seed=0, val_fraction=0.5)
    assert (tmp_path / "again" / "tasks" / "digits_0_4.json").read_bytes() == path.read_bytes()
    assert prepare_tasks(tasks, tmp_path / "s1", seed=1, val_fraction=0.5)["tasks"]["digits_0_4"]["fingerprint"] \
        != m["fingerprint"]
    with pytest.raises(ValueError, match="unique"):
        prepare_tasks([tasks[0], tasks[0]], tmp_path / "dup", seed=0, val_fraction=0.5)


def test_manifest_detects_changed_data(tmp_path: Path) -> None:
    write_imagefolder(tmp_path / "imgs")
    cfg = TaskConfig(name="f", dataset="imagefolder", root=str(tmp_path / "imgs"))
    prepare_tasks([cfg], tmp_path / "p", seed=0, val_fraction=0.5)
    path = tmp_path / "p" / "tasks" / "f.json"
    load_task_from_manifest(path)
    _png(tmp_path / "imgs" / "train" / "cat" / "9.png", 3)  # the data changed after 'prepare'
    with pytest.raises(ManifestError) as info:
        load_task_from_manifest(path)
    assert str(path) in str(info.value) and "fingerprint mismatch" in str(info.value)
    with pytest.raises(ManifestError, match="source_fingerprint mismatch"):
        load_task_from_manifest(path, seed=3)


def test_manifest_detects_one_image_rewritten_in_place(tmp_path: Path) -> None:
    # same files, same labels, same split: only the pixels of one image change. The split fingerprints
    # cannot see it; the source fingerprint must, or a stage would train on data its manifest does not describe.
    write_imagefolder(tmp_path / "imgs")
    cfg = TaskConfig(name="f", dataset="imagefolder", root=str(tmp_path / "imgs"))
    prepare_tasks([cfg], tmp_path / "p", seed=0, val_fraction=0.5)
    path = tmp_path / "p" / "tasks" / "f.json"
    load_task_from_manifest(path)
    target = tmp_path / "imgs" / "train" / "dog" / "2.png"
    before = target.stat().st_mtime_ns
    _png(target, 250)
    os.utime(target, ns=(before + 10**9, before + 10**9))  # coarse-mtime filesystems: make the rewrite visible
    with pytest.raises(ManifestError) as info:
        load_task_from_manifest(path)
    assert str(path) in str(info.value) and "source_fingerprint mismatch" in str(info.value)


def test_stage_manifests_record_their_own_split(tmp_path: Path) -> None:
    from ilnas.data.prepare import load_stage_tasks, manifest_path

    search_tasks = default_digits_tasks()
    retrain_task = TaskConfig(name="digits", dataset="digits")
    prepare_tasks(search_tasks, tmp_path / "search", seed=0, val_fraction=0.5)
    prepare_tasks([retrain_task], tmp_path / "retrain", seed=7, val_fraction=0.0)
    m = json.loads(manifest_path(tmp_path, "retrain", "digits").read_text())
    assert (m["seed"], m["val_fraction"], m["sizes"]["val"]) == (7, 0.0, 0)  # retrain's split, not the search's
    [data] = load_stage_tasks(tmp_path, "retrain", [retrain_task], seed=7, val_fraction=0.0)
    assert len(data.val) == 0 and len(data.train) == m["sizes"]["train"]
    with pytest.raises(ManifestError) as info:  # params changed after prepare ran
        load_stage_tasks(tmp_path, "retrain", [retrain_task], seed=7, val_fraction=0.1)
    assert str(manifest_path(tmp_path, "retrain", "digits")) in str(info.value) and "val_fraction" in str(info.value)


def test_manifest_tampered_or_corrupt(tmp_path: Path) -> None:
    prepare_tasks(default_digits_tasks()[:1], tmp_path, seed=0, val_fraction=0.5)
    path = tmp_path / "tasks" / "digits_0_4.json"
    m = json.loads(path.read_text())
    m["fingerprint"] = "0" * 64
    path.write_text(json.dumps(m))
    with pytest.raises(ManifestError) as info:
        load_task_from_manifest(path)
    assert str(path) in str(info.value) and "mismatch" in str(info.value)
    path.write_text('{"name": "digits_0_4", ')
    with pytest.raises(ManifestError) as info:
        load_task_from_manifest(path)
    assert str(path) in str(info.value) and "corrupt" in str(info.value)
    path.write_text(json.dumps({"name": "x"}))
    with pytest.raises(ManifestError, match="missing field"):
        load_task_from_manifest(path)
    with pytest.raises(ManifestError, match="nope.json"):
        load_task_from_manifest(tmp_path / "nope.json")


# ------------------------------------------------------------------------------------------ export


def test_export_imagefolder_from_task(tmp_path: Path) -> None:
    from torchvision.datasets import ImageFolder

    d = build_task(TaskConfig(name="d", dataset="digits", classes=[3, 8]), seed=0, val_fraction=0.2)
    info = export_imagefolder(d, tmp_path / "if", image_size=24)
    assert info["train"] == len(d.train) + len(d.val) and info["val"] == len(d.test) and info["classes"] == 2
    train, val = ImageFolder(str(tmp_path / "if" / "train")), ImageFolder(str(tmp_path / "if" / "val"))
    assert train.classes == val.classes == ["3", "8"]
    assert len(train) == info["train"] and len(val) == info["val"]
    img = Image.open(val.samples[0][0])
    assert img.size == (24, 24) and img.mode == "RGB" and img.format == "PNG"
    # the picture is the held-out digit: its 8x8 downsample matches the source grey levels
    x = d.test[0][0][0].numpy() * tasks_mod.DIGITS_STD + tasks_mod.DIGITS_MEAN
    small = np.asarray(Image.open(tmp_path / "if" / "val" / "3" / "val_00000.png").convert("L").resize((8, 8)))
    assert d.test[0][1] == 0 and np.corrcoef(small.ravel(), x.ravel())[0, 1] > 0.9
    assert not list((tmp_path / "if").rglob("*.tmp"))


def test_export_imagefolder_default_digits(tmp_path: Path) -> None:
    info = export_imagefolder(tmp_path / "std", image_size=8, seed=0, rgb=False)  # the 'prepare' stage's call
    assert info["classes"] == 10 and info["train"] + info["val"] == 1797
    assert info["val"] == round(1797 * HELD_OUT_FRACTION)
    assert sorted(p.name for p in (tmp_path / "std" / "val").iterdir()) == [str(c) for c in range(10)]
    assert Image.open(next((tmp_path / "std" / "train" / "0").iterdir())).mode == "L"
