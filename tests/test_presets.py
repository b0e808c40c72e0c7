"""params.yaml as DVC's `-S` writes it back (an override changes only its own lines) and configs/darts.yaml as
exactly params.yaml with K = 1 on the union of the two digit tasks."""

from __future__ import annotations

import difflib
import shutil
from pathlib import Path

import yaml

from flows.dvc_repo import apply_overrides

REPO = Path(__file__).resolve().parents[1]
DARTS_TASKS = "search.tasks=[{name: digits, dataset: digits}]"


def _changed_lines(before: str, after: str) -> list[str]:
    return [line for line in difflib.unified_diff(before.splitlines(), after.splitlines(), lineterm="", n=0)
            if line[:1] in "+-" and not line.startswith(("+++", "---"))]


def test_dvc_set_param_changes_only_the_lines_it_sets(tmp_path: Path) -> None:
    params = tmp_path / "params.yaml"
    shutil.copy(REPO / "params.yaml", params)
    before = params.read_text()
    apply_overrides(params, ["search.hypergrad=first_order", "retrain.epochs=7"])
    changed = _changed_lines(before, params.read_text())
    assert len(changed) == 4, changed  # two lines out, two in: nothing reformatted (null, lists, comments kept)
    assert any("hypergrad: first_order" in line for line in changed)
    assert any("epochs: 7" in line for line in changed)


def test_darts_preset_is_params_yaml_with_one_task(tmp_path: Path) -> None:
    expected = tmp_path / "params.yaml"
    shutil.copy(REPO / "params.yaml", expected)
    apply_overrides(expected, [DARTS_TASKS])
    darts = yaml.safe_load((REPO / "configs/darts.yaml").read_text())
    want = yaml.safe_load(expected.read_text())
    assert darts == want, "configs/darts.yaml drifted from params.yaml: regenerate it with " + DARTS_TASKS
    from ilnas.params import load_params

    params = load_params(REPO / "configs/darts.yaml")
    assert [t.name for t in params.search.tasks] == ["digits"] and params.search.tasks[0].classes is None
    assert params.search.rounds == 1 and params.search.lam == 0  # with K = 1: DARTS
