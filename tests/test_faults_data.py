"""Fault tests, damaged or missing datasets: every entry point ends in one block naming the path, exit 2.

Real processes (``python -m ilnas transfer``, ``python -m ilnas search``) on real directories: an ImageFolder
split without class folders, a class folder without images, a task root that does not exist, a CIFAR folder
whose files fail torchvision's integrity check.
"""

from __future__ import annotations

import shutil

import pytest

from ilnas.data.spec import TaskConfig
from ilnas.data.tasks import build_task
from ilnas.errors import EXIT_INPUT, DataDamagedError, DataMissingError, exit_code_of
from tests.test_data import write_cifar10, write_imagefolder
from tests.test_faults_input import assert_one_block, run


def test_transfer_split_without_class_folders_is_one_block(tmp_path):
    root = tmp_path / "inet"
    write_imagefolder(root)
    shutil.rmtree(root / "val")
    (root / "val").mkdir()  # a split that exists but holds no class folder
    proc, _ = run("-m", "ilnas", "transfer", "-d", str(root), "-S", "transfer.epochs=1", "-S", "device=cpu",
                  "-o", str(tmp_path / "out"), cwd=tmp_path)
    assert_one_block(proc, str(root / "val"), "CLASS")
    assert not (tmp_path / "out" / "final.pth").exists()


def test_search_task_root_problems_are_one_block(tmp_path):
    def search(name: str, root) -> object:
        proc, _ = run("-m", "ilnas", "search", "-S", "search.epochs=1", "-S", "device=cpu",
                      "-S", f"search.tasks=[{{name: {name}, dataset: imagefolder, root: {root}}}]",
                      "-S", f"prepare.data_deps.search={tmp_path}", "-o", str(tmp_path / "out"), cwd=tmp_path)
        return proc

    missing = tmp_path / "nowhere"  # refused by the params schema, before the data is opened
    assert_one_block(search("a", missing), str(missing), "does not exist")
    empty = tmp_path / "empty"
    (empty / "train" / "cat").mkdir(parents=True)  # a class folder without a single image: found when opened
    assert_one_block(search("b", empty), str(empty / "train"), "no images", "'b'")
    assert not (tmp_path / "out" / "checkpoint.pt").exists()


@pytest.mark.parametrize("case", ["no_class_folders", "not_official"])
def test_data_errors_are_known_input_errors(tmp_path, case):
    """In-process: the types the entry points map to exit 2 (FileNotFoundError / RuntimeError kept as bases)."""
    if case == "no_class_folders":
        (tmp_path / "train").mkdir()
        with pytest.raises(DataMissingError, match="no class folders") as info:
            build_task(TaskConfig(name="x", dataset="imagefolder", root=str(tmp_path)))
        assert isinstance(info.value, FileNotFoundError)
    else:
        write_cifar10(tmp_path)  # tiny files: torchvision's md5 check of the official release fails
        with pytest.raises(DataDamagedError, match="integrity") as info:
            build_task(TaskConfig(name="x", dataset="cifar10", root=str(tmp_path)))
        assert isinstance(info.value, RuntimeError)
    assert exit_code_of(info.value) == EXIT_INPUT
