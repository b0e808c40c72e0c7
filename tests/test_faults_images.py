"""Fault tests, damaged images: a truncated or unreadable image inside an ImageFolder is one message block naming
the file and the dataset (exit 2), from the search, the retraining and the transfer alike, also when a
DataLoader worker process reads it. Real ``python -m ilnas`` processes on real (damaged) PNG files.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ilnas.data.loaders import CyclingLoader
from ilnas.data.spec import TaskConfig
from ilnas.data.tasks import build_task
from ilnas.errors import EXIT_INPUT, DamagedImageError, exit_code_of
from tests.test_faults_input import assert_one_block, run

TINY = ["-S", "device=cpu", "-S", "seed=0"]


def write_folder(root: Path, per_class: int = 4, side: int = 16) -> None:
    """``root/train/CLASS/*.png`` and ``root/val/CLASS/*.png``: two classes of noise images."""
    rng = np.random.default_rng(0)
    for split, n in (("train", per_class), ("val", 2)):
        for name in ("ant", "bee"):
            for i in range(n):
                path = root / split / name / f"{i}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(rng.integers(0, 255, (side, side, 3), dtype=np.uint8)).save(path)


def damage(path: Path, how: str) -> Path:
    """Truncate a PNG to half its bytes (the header still parses: PIL fails only when it decodes), or replace
    it with bytes that are not an image at all."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if how == "truncated" else b"not an image\n" * 8)
    return path


@pytest.mark.parametrize(("how", "workers"), [("truncated", 1), ("unreadable", 0)])
def test_damaged_image_names_file_and_dataset_also_from_a_worker(tmp_path: Path, how: str, workers: int) -> None:
    write_folder(tmp_path)
    for path in (tmp_path / "train").rglob("*.png"):  # every training image: the first batch meets one
        damage(path, how)
    data = build_task(TaskConfig(name="bugs", dataset="imagefolder", root=str(tmp_path)), val_fraction=0.25)
    loader = CyclingLoader(data.train, batch_size=4, seed=0, num_workers=workers)
    with pytest.raises(DamagedImageError) as info:
        loader.next()
    message = str(info.value)
    assert message.startswith(f"task 'bugs' (ImageFolder {tmp_path}): image {tmp_path / 'train'}"), message
    assert "cannot be read" in message and "Traceback" not in message and "worker" not in message, message
    assert exit_code_of(info.value) == EXIT_INPUT


def test_search_on_a_truncated_image_is_one_block(tmp_path: Path) -> None:
    root = tmp_path / "data"
    write_folder(root)
    bad = damage(root / "train" / "bee" / "1.png", "truncated")
    proc, _ = run("-m", "ilnas", "search", *TINY, "-S", "search.epochs=1", "-S", "search.iterations_per_epoch=1",
                  "-S", "search.channels=4", "-S", "search.cells=3", "-S", "search.nodes=2",
                  "-S", "search.batch_size=16", "-S", "search.num_workers=1", "-S", "search.hypergrad=first_order",
                  "-S", f"search.tasks=[{{name: bugs, dataset: imagefolder, root: {root}}}]",
                  "-S", f"prepare.data_deps.search={tmp_path}", "-o", str(tmp_path / "out"), cwd=tmp_path)
    assert_one_block(proc, str(bad), "task 'bugs'", "truncated")
    assert not (tmp_path / "out" / "genotype.json").exists()


def test_retrain_on_a_truncated_image_is_one_block(tmp_path: Path) -> None:
    root = tmp_path / "data"
    write_folder(root)
    bad = damage(root / "train" / "ant" / "2.png", "truncated")
    proc, _ = run("-m", "ilnas", "retrain", *TINY, "-S", "retrain.epochs=1", "-S", "retrain.channels=4",
                  "-S", "retrain.cells=3", "-S", "retrain.batch_size=16", "-S", "retrain.num_workers=1",
                  "-S", f"retrain.task={{name: bugs, dataset: imagefolder, root: {root}}}",
                  "-S", f"prepare.data_deps.retrain={tmp_path}", "-o", str(tmp_path / "out"), cwd=tmp_path)
    assert_one_block(proc, str(bad), "task 'bugs'", "truncated")
    assert not (tmp_path / "out" / "final.pth").exists()


def test_transfer_on_an_unreadable_image_is_one_block(tmp_path: Path) -> None:
    root = tmp_path / "data"
    write_folder(root)
    bad = damage(root / "val" / "ant" / "0.png", "unreadable")
    proc, _ = run("-m", "ilnas", "transfer", "-d", str(root), *TINY, "-S", "transfer.epochs=1",
                  "-S", "transfer.num_workers=1", "-o", str(tmp_path / "out"), cwd=tmp_path)
    assert_one_block(proc, str(bad), "transfer val split", "not an image")
    assert not (tmp_path / "out" / "final.pth").exists()
