"""What the flow asks DVC, through DVC's own interfaces (never by parsing dvc.yaml or DVC's English output).

* the stage DAG and its order: the repo index (``Repo.index.graph``, a networkx graph of stages);
* whether a stage has anything to do: ``Repo.status`` (``{}`` when up to date);
* whether DVC will restore it from the run cache instead of running it: the run-cache lookup ``dvc repro``
  makes (two private ``StageCache`` methods, fenced to DVC 3 and tested: :func:`restorable`);
* param overrides: ``dvc.utils.hydra.apply_overrides``, the code behind ``dvc exp run -S``;
* turning a finished workspace run into an experiment: ``dvc.api.exp_save``.

DVC's CLI is launched through :data:`DVC_LAUNCH` (DVC's own ``main``) with one logger quietened: the
"To track the changes with git, run: git add dvc.lock" hint DVC prints after every stage.
"""

from __future__ import annotations

import contextlib
import re
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# ``dvc <args>`` with the git-add hint (logger dvc.repo.scm_context, INFO) off; errors and stage output unchanged
DVC_LAUNCH = ("import logging, sys; logging.getLogger('dvc.repo.scm_context').setLevel(logging.WARNING); "
              "from dvc.cli import main; sys.exit(main(sys.argv[1:]))")


class DvcError(RuntimeError):
    """A DVC command the flow needs failed; the message holds DVC's own error text."""


def dvc_command(*args: str) -> list[str]:
    """argv for ``dvc <args>`` run by this interpreter (the venv's DVC, whatever PATH says)."""
    return [sys.executable, "-c", DVC_LAUNCH, *args]


def run_dvc(project: Path, *args: str, timeout: float = 600, env: dict[str, str] | None = None) -> str:
    """Run a short DVC command and return its stdout; :class:`DvcError` with DVC's stderr on failure."""
    out = subprocess.run(dvc_command(*args), cwd=project, capture_output=True, text=True, timeout=timeout, env=env)
    if out.returncode != 0:
        raise DvcError(f"dvc {' '.join(args)} failed (exit {out.returncode}): {(out.stderr or out.stdout).strip()}")
    return out.stdout


# -- the DAG --------------------------------------------------------------------------------------------------
@dataclass
class StageInfo:
    """What the flow needs to know about one DVC stage (read from DVC's index)."""

    name: str
    params: list[str] = field(default_factory=list)          # params.yaml keys the stage depends on
    metrics: list[str] = field(default_factory=list)         # its metrics files (relative paths)
    uncached_outs: list[str] = field(default_factory=list)   # git-tracked outs (metrics, plots, cache: false)
    gitignores: list[str] = field(default_factory=list)      # the .gitignore files DVC writes its cached outs into


def read_dag(project: str | Path) -> list[StageInfo]:
    """The pipeline stages in dependency order (DVC's graph; ties keep dvc.yaml's order). Data tracked with
    ``dvc add`` (a ``.dvc`` file, e.g. a study's reference distribution) is no stage of the pipeline."""
    import networkx as nx
    from dvc.dependency.param import ParamsDependency
    from dvc.repo import Repo
    from dvc.stage import PipelineStage

    with Repo(str(project)) as repo:
        stages = list(repo.index.stages)
        graph = repo.index.graph  # edges point from a stage to the stages it depends on
        position = {id(stage): i for i, stage in enumerate(stages)}
        upstream_first = nx.lexicographical_topological_sort(graph.reverse(copy=True),
                                                             key=lambda s: f"{position.get(id(s), 0):06d}")
        out: list[StageInfo] = []
        for stage in upstream_first:
            if not isinstance(stage, PipelineStage):
                continue
            info = StageInfo(stage.name)
            for dep in stage.deps:
                if isinstance(dep, ParamsDependency) and Path(dep.def_path).name == "params.yaml":
                    info.params.extend(dep.params or [])
            for o in stage.outs:
                rel = str(Path(o.fs_path).relative_to(repo.root_dir))
                if o.metric:
                    info.metrics.append(rel)
                if not o.use_cache:
                    info.uncached_outs.append(rel)
                else:
                    info.gitignores.append(str(Path(rel).parent / ".gitignore"))
            out.append(info)
    return out


def missing_params(dag: Sequence[StageInfo], data: dict[str, Any]) -> list[str]:
    """params.yaml keys a stage lists but ``data`` lacks (DVC refuses to run such a stage)."""
    problems = []
    for stage in dag:
        for key in stage.params:
            node: Any = data
            for part in key.split("."):
                if not isinstance(node, dict) or part not in node:
                    problems.append(f"{key} (stage {stage.name})")
                    break
                node = node[part]
    return problems


# -- status ---------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def _repo_at(project: Path) -> Iterator[Any]:
    """DVC's ``Repo`` with the working directory at the project: DVC resolves stage names and a stage's
    ``wdir`` from the working directory, not from the repo it was given (as the ``dvc`` CLI run there does)."""
    from dvc.repo import Repo

    with contextlib.chdir(project), Repo(".") as repo:
        yield repo


def stage_changed(project: Path, stage: str) -> bool:
    """``Repo.status`` (what ``dvc status <stage>`` prints): does DVC have anything to do for this stage?"""
    with _repo_at(project) as repo:
        return bool(repo.status(targets=[stage]))


# DVC has no public call for "would `dvc repro` restore this changed stage from the run cache": the lookup
# `dvc repro` makes (StageCache.restore: hash the deps, load the newest entry for that key, check its outs are in
# the cache) is reached through two private StageCache methods. `restore(dry=True)` cannot answer it: without
# hashed deps it reads the lock file's. The fence: the DVC major versions this was written and tested against;
# tests/test_dvc_private_api.py fails when DVC moves these methods or leaves the fenced versions.
RUN_CACHE_API_MAJOR = 3
RUN_CACHE_PRIVATE_METHODS = ("_load", "_create_stage")


def run_cache_api_supported() -> bool:
    """Is the installed DVC one whose private run-cache methods :func:`restorable` calls are known?"""
    import dvc
    from dvc.stage.cache import StageCache

    major = int(str(dvc.__version__).split(".")[0])
    return major == RUN_CACHE_API_MAJOR and all(hasattr(StageCache, m) for m in RUN_CACHE_PRIVATE_METHODS)


def restorable(project: Path, stage: str) -> bool:
    """Would ``dvc repro`` restore this changed stage from DVC's run cache (no command run)? ``False`` (the
    stage is reported as "ran") on a DVC outside the fence, where the private lookup may not exist."""
    if not run_cache_api_supported():
        return False
    with _repo_at(project) as repo:
        found = repo.stage.collect("dvc.yaml:" + stage)
        if not found:
            return False
        target = found[0]
        if not target.deps or not target.outs:
            return False  # DVC keeps no run-cache entry for a stage without deps or outs (it cannot hash it)
        try:
            target.save_deps()  # the deps' current hashes, in memory only: the run-cache key
            entry = repo.stage_cache._load(target)
            return bool(entry) and repo.stage_cache._create_stage(entry, wdir=target.wdir).outs_cached()
        except Exception:  # noqa: BLE001 - a dep missing on disk, an unhashable stage: repro will run it
            return False


# -- params and experiments -----------------------------------------------------------------------------------
def apply_overrides(path: str | Path, overrides: Sequence[str]) -> None:
    """``dvc exp run -S``'s own mechanism (hydra overrides, round-trip YAML) on ``path``, one override at a time
    so an error names the one that failed."""
    from dvc.utils.hydra import apply_overrides as dvc_apply

    for item in overrides:
        try:
            dvc_apply(str(path), [item])
        except Exception as exc:  # noqa: BLE001 - DVC wraps hydra's error; its cause says why
            cause = exc.__cause__ or exc
            first = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
            raise ValueError(f"-S {item}: DVC's -S cannot apply it ({first}). A key that params.yaml does not "
                             f"hold yet needs a leading '+' (-S +{item.lstrip('+')})") from None


_SLUG = re.compile(r"[^A-Za-z0-9_.-]+")


def experiment_name(overrides: Sequence[str], preset: str | None) -> str:
    """A readable, git-ref-safe experiment name from the preset and the overrides (``darts``,
    ``hypergrad-first_order``, ``darts-epochs-5``); the same variant gets the same name."""
    parts = [Path(preset).stem] if preset else []
    for item in overrides:
        key, _, value = item.lstrip("+~").partition("=")
        parts.append(f"{key.split('.')[-1]}-{value}")
    name = _SLUG.sub("_", "-".join(parts)).strip("._-")[:60].strip("._-")
    return name or "workspace"


def exp_save(project: Path, name: str, include: Sequence[str] = ()) -> str:
    """``dvc.api.exp_save`` (``dvc exp save -f -n <name>``): the workspace (params, dvc.lock, metrics) becomes
    experiment ``name``; ``include``: untracked paths to carry along. The API reads the repo from the working
    directory, hence the ``chdir``."""
    import logging

    import dvc.api

    logging.getLogger("dvc.repo.scm_context").setLevel(logging.WARNING)
    untracked = [rel for rel in include if (project / rel).exists()]
    with contextlib.chdir(project):
        dvc.api.exp_save(name=name, force=True, include_untracked=untracked or None)
    return name


class Workspace:
    """Bytes of the git-tracked files a pipeline run rewrites, taken before and written back after a variant:
    the variant lives on as a DVC experiment and the workspace is as the user left it."""

    def __init__(self, project: Path, paths: Sequence[str]):
        self.project = project
        self.saved: dict[str, bytes | None] = {}
        for rel in dict.fromkeys(paths):
            path = project / rel
            self.saved[rel] = path.read_bytes() if path.is_file() else None

    def restore(self, checkout: bool = True) -> None:
        """Write the saved bytes back; ``checkout``: also bring DVC's cached outs back to the restored lock
        (a variant's run; a failed plain run keeps the outputs of the stages that finished where they are)."""
        for rel, data in self.saved.items():
            path = self.project / rel
            if data is None:
                path.unlink(missing_ok=True)
            else:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(data)
        if not checkout:
            return
        # the cached outs back to what the restored dvc.lock records (missing cache: left as DVC leaves it)
        subprocess.run(dvc_command("checkout", "--force", "--allow-missing", "-q"), cwd=self.project,
                       capture_output=True, text=True, timeout=600)
