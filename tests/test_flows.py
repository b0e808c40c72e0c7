"""The Prefect flow on toy DVC projects: DAG order from dvc.yaml, retries, failures named, params checked first."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import init_repo

TOY_DVC = """\
stages:
  second:
    cmd: python -c "open('b.txt', 'w').write(open('a.txt').read() + 'b')"
    deps: [a.txt]
    outs: [b.txt]
  first:
    cmd: python -c "open('a.txt', 'w').write('a')"
    outs: [a.txt]
  boom:
    cmd: python -c "open('attempts.log', 'a').write('x'); raise SystemExit(3)"
    deps: [b.txt]
    outs: [never.txt]
"""


def test_stage_order_is_topological_not_file_order(tmp_path: Path) -> None:
    from flows.pipeline import stage_order

    (tmp_path / "dvc.yaml").write_text(TOY_DVC)
    assert stage_order(tmp_path / "dvc.yaml") == ["first", "second", "boom"]
    repo = Path(__file__).resolve().parents[1]
    assert stage_order(repo / "dvc.yaml") == ["prepare", "search", "derive", "retrain", "transfer"]


def test_failing_stage_is_retried_and_named(tmp_path: Path, prefect_harness: None) -> None:
    from flows.pipeline import StageFailed, pipeline

    project = init_repo(tmp_path / "toy", {"dvc.yaml": TOY_DVC, "params.yaml": "seed: 0\n"}, copy_project=False)
    with pytest.raises(StageFailed, match="stage 'boom'") as info:
        pipeline(project_dir=str(project), retries=2, retry_delay_s=0, track=False)
    assert "3 attempt" in str(info.value)
    assert (project / "attempts.log").read_text() == "xxx"  # 1 try + 2 retries
    assert (project / "b.txt").read_text() == "ab"  # the stages before it ran


@pytest.mark.parametrize(("override", "key", "allowed"), [
    ("search.bogus=1", "search.bogus", "allowed keys"),
    ("retrain.epochs=many", "retrain.epochs", "valid integer"),
    ("search.epochs=-2", "search.epochs", "greater than or equal to 1"),
    ("search.hypergrad=third_order", "search.hypergrad", "'first_order', 'finite_difference' or 'exact'"),
    ("search.tasks.0.dataset=mnist", "search.tasks.0.dataset", "'digits', 'cifar10', 'cifar100' or 'imagefolder'"),
])
def test_bad_params_fail_before_any_stage(tmp_path: Path, prefect_harness: None, override: str, key: str,
                                          allowed: str) -> None:
    from flows.pipeline import pipeline
    from ilnas.params import ParamsError

    params = (Path(__file__).resolve().parents[1] / "params.yaml").read_text()
    dvc_yaml = "stages:\n  only:\n    cmd: python -c \"open('ran.txt', 'w').write('1')\"\n"
    toy = {"dvc.yaml": dvc_yaml, "params.yaml": params}
    project = init_repo(tmp_path / "toy", toy, copy_project=False)
    with pytest.raises(ParamsError) as info:
        pipeline(project_dir=str(project), overrides=[override], track=False)
    assert key in str(info.value) and allowed in str(info.value)
    assert not (project / "ran.txt").exists()
    assert (project / "params.yaml").read_text() == params  # nothing written either
