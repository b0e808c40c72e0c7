"""The package graph points down and has no loops; validating params stays light.

Layers: ``flows`` -> ``stages`` -> ``ilnas``; an import never points up a layer, and no chain of imports
between files comes back to where it started (``TYPE_CHECKING`` and function-level imports count: a loop a
type checker or a lazy import walks is still a loop to read and to move). The graph is read with ``ast``,
nothing is imported.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LAYERS = ("flows", "stages", "ilnas")  # top to bottom
# the library's foundation, bottom up: each package imports only the ones of a lower rank (or itself), so
# none of them can reach the search, training, params or command code built on top of them
FOUNDATION = {"ilnas.errors": 0, "ilnas.utils": 1, "ilnas.space": 2, "ilnas.data": 2, "ilnas.hypergrad": 2,
              "ilnas.nets": 3, "ilnas.viz": 3}


def project_modules(repo: Path = REPO) -> dict[str, Path]:
    """``{dotted module name: file}`` for every module under the layers' packages."""
    mods = {}
    for top in LAYERS:
        for path in sorted((repo / top).rglob("*.py")):
            parts = list(path.relative_to(repo).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            mods[".".join(parts)] = path
    return mods


def _target(name: str, mods: dict[str, Path]) -> str | None:
    """The project module an import of ``name`` lands in (the longest dotted prefix that is a module)."""
    while name and name not in mods:
        name = name.rpartition(".")[0]
    return name or None


def imports_of(module: str, path: Path, mods: dict[str, Path]) -> set[str]:
    """Project modules ``module`` imports anywhere in its file (relative imports resolved)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(_target(a.name, mods) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            for alias in node.names:
                full = f"{base}.{alias.name}"
                found.add(_target(full, mods) if full in mods else _target(base, mods))
    found.discard(None)
    found.discard(module)
    return found


def import_graph(repo: Path = REPO) -> dict[str, set[str]]:
    mods = project_modules(repo)
    return {m: imports_of(m, p, mods) for m, p in mods.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import loop as ``[a, b, ..., a]``, or None (iterative depth-first search, sorted for stable output)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    for root in sorted(graph):
        if root in state:
            continue
        path, stack = [root], [iter(sorted(graph[root]))]
        state[root] = 1
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            elif nxt not in state:
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(sorted(graph.get(nxt, ()))))
    return None


def upward_imports(graph: dict[str, set[str]]) -> list[tuple[str, str]]:
    rank = {top: i for i, top in enumerate(LAYERS)}
    return sorted((a, b) for a, outs in graph.items() for b in outs
                  if rank[b.split(".")[0]] < rank[a.split(".")[0]])


def foundation_violations(graph: dict[str, set[str]]) -> list[tuple[str, str]]:
    """Imports from a foundation package to anything but a lower-ranked foundation package (``ilnas`` itself,
    the package's ``__init__`` with the version, is allowed)."""
    def package(module: str) -> str:
        return ".".join(module.split(".")[:2])

    bad = []
    for a, outs in graph.items():
        pa = package(a)
        if pa not in FOUNDATION:
            continue
        for b in outs:
            pb = package(b)
            if pb != pa and b != "ilnas" and FOUNDATION.get(pb, 99) >= FOUNDATION[pa]:
                bad.append((a, b))
    return sorted(bad)


def test_helpers_find_a_loop_and_an_upward_import(tmp_path: Path) -> None:
    for rel, text in {"ilnas/__init__.py": "", "ilnas/a.py": "from ilnas import b\n",
                      "ilnas/b.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .a import x\n",
                      "ilnas/c.py": "def f():\n    import stages.s\n", "stages/__init__.py": "",
                      "stages/s.py": "import ilnas.c\n", "flows/__init__.py": ""}.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    graph = import_graph(tmp_path)
    assert graph["ilnas.a"] == {"ilnas.b"} and graph["ilnas.b"] == {"ilnas.a"}
    assert find_cycle(graph) == ["ilnas.a", "ilnas.b", "ilnas.a"]
    assert upward_imports(graph) == [("ilnas.c", "stages.s")]
    assert find_cycle({"x": {"y"}, "y": set()}) is None
    loopy = {"ilnas.utils.checks": {"ilnas.nets", "ilnas.errors"}, "ilnas.nets.n": {"ilnas.space.o"},
             "ilnas.space.o": {"ilnas.space.g", "ilnas.search.config"}}
    assert foundation_violations(loopy) == [("ilnas.space.o", "ilnas.search.config"),
                                            ("ilnas.utils.checks", "ilnas.nets")]


def test_no_import_loops_between_files() -> None:
    cycle = find_cycle(import_graph())
    assert cycle is None, "import loop: " + " -> ".join(cycle)


def package_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """The file graph collapsed to packages (``ilnas.<package>``, ``stages``, ``flows``), self-edges dropped."""
    def package(module: str) -> str:
        parts = module.split(".")
        return ".".join(parts[:2]) if parts[0] == "ilnas" else parts[0]

    collapsed: dict[str, set[str]] = {}
    for a, outs in graph.items():
        collapsed.setdefault(package(a), set()).update(package(b) for b in outs if package(b) != package(a))
    return collapsed


def test_no_import_loops_between_packages() -> None:
    """search <-> strategies and cli <-> params <-> train were such loops: a package either builds on another
    or is built on by it (the strategies are part of the search; the commands, ``ilnas recipe`` included, live
    in ``ilnas.cli``)."""
    cycle = find_cycle(package_graph(import_graph()))
    assert cycle is None, "package loop: " + " -> ".join(cycle)


def test_imports_point_down_the_layers() -> None:
    assert upward_imports(import_graph()) == [], "flows -> stages -> ilnas: these import a layer above them"


def test_the_foundation_imports_only_below_itself() -> None:
    assert foundation_violations(import_graph()) == [], f"ranks, bottom up: {FOUNDATION}"


def test_search_and_training_do_not_import_each_other() -> None:
    """Both build on the foundation; what they share (process groups, batch checks) lives in ilnas.utils."""
    graph = import_graph()
    crossing = sorted((a, b) for a, outs in graph.items() for b in outs
                      for x, y in (("ilnas.search", "ilnas.train"), ("ilnas.train", "ilnas.search"))
                      if a.startswith(x) and b.startswith(y))
    assert crossing == []


PROBE = r"""
import json, sys
from ilnas.params import load_params
load_params(sys.argv[1])
print(json.dumps({"torch": "torch" in sys.modules,
                  "strategies": sorted(m for m in sys.modules if m.startswith("ilnas.search.strategies."))}))
"""


def test_validating_params_imports_no_strategy_and_no_torch() -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", PROBE, str(REPO / "params.yaml")], capture_output=True,
                          text=True, timeout=120, cwd=REPO, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    loaded = json.loads(proc.stdout.strip().splitlines()[-1])
    assert loaded == {"torch": False, "strategies": ["ilnas.search.strategies.registry"]}


def test_strategy_names_read_from_sources_match_the_registered_classes() -> None:
    from ilnas.search.config import SearchConfig
    from ilnas.search.strategies import available_strategies, get_strategy
    from ilnas.search.strategies.registry import builtin_strategies, declared_names

    assert set(builtin_strategies()) == {"interleaving", "lfm"} == set(available_strategies())
    for name, module in builtin_strategies().items():
        cls = get_strategy(name)
        assert cls.name == name and cls.__module__ == module
    assert declared_names('@register_strategy("x")\nclass A: ...\n@strategies.register_strategy("y")\nclass B: ...'
                          ) == ["x", "y"]
    with pytest.raises(ValueError, match=r"unknown strategy 'nope'; allowed: \['interleaving', 'lfm'\]"):
        SearchConfig(strategy="nope")
