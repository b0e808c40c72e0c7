"""Every project module a stage's entry point loads is covered by that stage's ``deps`` in dvc.yaml.

A module missing from the deps (ilnas/viz.py draws figures into outs, ilnas/params.py shapes every stage's
parameters) can change without DVC rerunning the stage, and the lock then records outputs that today's code
would not produce. For each stage a fresh interpreter imports ``stages.<name>``, then every project module its
code imports anywhere (function-level lazy imports included, found by walking the source), and resolves every
imported name (so a package's lazy ``__getattr__`` loads its target too); whatever project module ends up in
``sys.modules`` must lie under one of the stage's deps.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]

LOADER = r'''
import ast, importlib, importlib.util, json, sys
from pathlib import Path

repo = Path(sys.argv[1]).resolve()
stage = sys.argv[2]
sys.path.insert(0, str(repo))


def project_file(name):
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.origin or not spec.origin.endswith(".py"):
        return None
    path = Path(spec.origin).resolve()
    return path if repo in path.parents else None


seen, names, todo = set(), [], ["stages." + stage]
while todo:
    mod = todo.pop()
    path = project_file(mod)
    if path is None or mod in seen:
        continue
    seen.add(mod)
    importlib.import_module(mod)
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            todo += [a.name for a in node.names if a.name.split(".")[0] in ("ilnas", "stages")]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0 \
                and node.module.split(".")[0] in ("ilnas", "stages"):
            todo.append(node.module)
            for a in node.names:
                todo.append(node.module + "." + a.name)  # a submodule, when it is one
                names.append((node.module, a.name))
for module, name in names:  # resolve imported names: lazy package attributes load their modules
    if module in sys.modules and name != "*":
        getattr(sys.modules[module], name, None)
files = sorted({str(Path(m.__file__).resolve().relative_to(repo)) for m in list(sys.modules.values())
                if getattr(m, "__file__", None) and repo in Path(m.__file__).resolve().parents
                and Path(m.__file__).resolve().relative_to(repo).parts[0] in ("ilnas", "stages")})
print(json.dumps(files))
'''


def _stages() -> dict[str, dict]:
    return yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


def loaded_project_files(stage: str) -> list[str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", MLFLOW_DISABLE_TELEMETRY="true")
    proc = subprocess.run([sys.executable, "-c", LOADER, str(REPO), stage], capture_output=True, text=True,
                          timeout=300, env=env, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def uncovered(files: list[str], deps: list[str]) -> list[str]:
    paths = [d.rstrip("/") for d in deps if "${" not in d]
    return [f for f in files if not any(f == d or f.startswith(d + "/") for d in paths)]


def test_uncovered_helper():
    assert uncovered(["ilnas/viz.py", "ilnas/data/tasks.py", "stages/common.py"],
                     ["ilnas/data", "stages/common.py", "${prepare.data_deps.search}"]) == ["ilnas/viz.py"]


@pytest.mark.parametrize("stage", list(_stages()))
def test_stage_deps_cover_every_project_module_it_loads(stage):
    files = loaded_project_files(stage)
    assert f"stages/{stage}.py" in files and "stages/common.py" in files  # the walk itself worked
    missing = uncovered(files, _stages()[stage]["deps"])
    assert not missing, f"dvc.yaml: stage {stage!r} loads {missing} but its deps do not cover them"


def test_search_deps_cover_every_strategy_module():
    """``get_strategy`` imports a strategy module by name (no import statement for the walk above to find)."""
    strategies = sorted(str(p.relative_to(REPO)) for p in (REPO / "ilnas/search/strategies").glob("*.py"))
    assert not uncovered(strategies, _stages()["search"]["deps"])


def _dvc(root: Path, *args: str) -> str:
    dvc = str(Path(sys.executable).parent / "dvc")
    proc = subprocess.run([dvc, *args], cwd=root, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def _changed(root: Path, stage: str) -> bool:
    return bool(json.loads(_dvc(root, "status", "--json", stage) or "{}"))


def test_editing_figures_or_retraining_code_leaves_the_search_current(tmp_path):
    """Real DVC in a temp git repo: the search and derive stages are recorded as done (``dvc commit`` over
    stand-in outputs: what is tested is the deps, not the computation), then project files are edited."""
    from conftest import init_repo

    root = init_repo(tmp_path / "proj")
    outs = ["data/prepared/search.json", "models/search/alphas.pt", "metrics/search.json",
            "metrics/search_history.csv", "models/genotype.json", "models/cells/normal.png",
            "models/search_figures/loss.png", "metrics/derive.json"]
    for rel in outs:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(f"stand-in for {rel}\n")
    _dvc(root, "commit", "-f", "-q", "search", "derive")
    assert not _changed(root, "search") and not _changed(root, "derive")

    for rel in ("ilnas/viz.py", "stages/figures.py", "ilnas/train/retraining.py", "ilnas/train/engine.py",
                "ilnas/nets/networks.py"):
        with (root / rel).open("a") as fh:
            fh.write("# edited\n")
        assert not _changed(root, "search"), f"editing {rel} would rerun the search"
    assert _changed(root, "derive")  # the edit to the pictures is seen: derive draws them
    with (root / "ilnas/search/runner.py").open("a") as fh:
        fh.write("# edited\n")
    assert _changed(root, "search")  # and the search's own code still reruns it
