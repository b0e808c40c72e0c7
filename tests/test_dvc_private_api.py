"""The flow's DVC calls against a real DVC repo, and the fence around the one private API it uses.

``flows.dvc_repo.restorable`` reaches DVC's run cache through two private ``StageCache`` methods (DVC has no
public call for "would repro restore this stage"). These tests fail when DVC changes them: a new major version,
a renamed method or a changed signature, or a lookup that no longer finds an entry it should.
"""

from __future__ import annotations

import inspect
import subprocess
import sys
from pathlib import Path

import pytest

from flows.dvc_repo import (
    RUN_CACHE_PRIVATE_METHODS,
    dvc_command,
    exp_save,
    restorable,
    run_cache_api_supported,
    stage_changed,
)


def _run(cwd: Path, *argv: str) -> str:
    return subprocess.run(list(argv), cwd=cwd, check=True, capture_output=True, text=True).stdout


@pytest.fixture()
def repo(tmp_path: Path) -> Path:
    """A git + DVC repo with one stage: ``out.txt`` from ``dep.txt``."""
    _run(tmp_path, "git", "init", "-q")
    _run(tmp_path, "git", "config", "user.email", "t@example.com")
    _run(tmp_path, "git", "config", "user.name", "t")
    _run(tmp_path, *dvc_command("init", "-q"))
    (tmp_path / "dep.txt").write_text("one\n")
    copy = f"{sys.executable} -c \"import shutil; shutil.copy('dep.txt', 'out.txt')\""
    (tmp_path / "dvc.yaml").write_text(f"stages:\n  copy:\n    cmd: {copy}\n    deps: [dep.txt]\n"
                                       "    outs: [out.txt]\n")
    _run(tmp_path, *dvc_command("repro", "-q"))
    _run(tmp_path, "git", "add", "-A")
    _run(tmp_path, "git", "commit", "-qm", "init")
    return tmp_path


def test_the_installed_dvc_is_inside_the_fence() -> None:
    assert run_cache_api_supported(), "DVC left the versions flows.dvc_repo.restorable was written for: re-check it"


def test_the_private_run_cache_methods_keep_their_signatures() -> None:
    from dvc.stage.cache import StageCache

    assert RUN_CACHE_PRIVATE_METHODS == ("_load", "_create_stage")
    assert list(inspect.signature(StageCache._load).parameters) == ["self", "stage"]
    assert list(inspect.signature(StageCache._create_stage).parameters)[:3] == ["self", "cache", "wdir"]


def test_status_and_run_cache_lookup_on_a_real_repo(repo: Path) -> None:
    assert not stage_changed(repo, "copy")
    (repo / "dep.txt").write_text("two\n")
    assert stage_changed(repo, "copy")
    assert not restorable(repo, "copy")          # never computed: nothing in the run cache
    _run(repo, *dvc_command("repro", "-q"))
    assert not stage_changed(repo, "copy")
    (repo / "dep.txt").write_text("one\n")       # back to a state DVC has computed before
    assert stage_changed(repo, "copy")
    assert restorable(repo, "copy")              # `dvc repro` would restore it, not run it


def test_exp_save_through_the_public_api(repo: Path) -> None:
    (repo / "dep.txt").write_text("three\n")
    _run(repo, *dvc_command("repro", "-q"))
    (repo / "notes.txt").write_text("untracked, carried along\n")
    assert exp_save(repo, "variant-three", include=["notes.txt", "absent.txt"]) == "variant-three"
    listed = _run(repo, *dvc_command("exp", "list", "--name-only"))
    assert "variant-three" in listed.split()
    shown = _run(repo, "git", "show", "refs/exps/" + _exp_ref(repo, "variant-three") + ":notes.txt")
    assert shown == "untracked, carried along\n"


def _exp_ref(repo: Path, name: str) -> str:
    refs = _run(repo, "git", "for-each-ref", "--format=%(refname)", "refs/exps/").split()
    return next(r for r in refs if r.endswith("/" + name)).removeprefix("refs/exps/")


def test_a_stage_the_run_cache_cannot_hold_is_not_restorable(repo: Path) -> None:
    """DVC keeps no run-cache entry for a stage without deps (its private lookup asserts): "ran", no error."""
    with (repo / "dvc.yaml").open("a") as fh:
        fh.write(f"  nodeps:\n    cmd: {sys.executable} -c \"open('n.txt', 'w').write('n')\"\n    outs: [n.txt]\n")
    assert stage_changed(repo, "nodeps")
    assert restorable(repo, "nodeps") is False
