"""Fault tests, messages: every key is named by its exact path, and a failed stage shows no traceback
unless ``--debug`` / ``ILNAS_DEBUG=1`` (Prefect logs each failed attempt and the failed flow with one)."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from ilnas.params import ParamsError, validate_params
from tests.conftest import init_repo


@pytest.mark.parametrize(("data", "key"), [
    ({"search": {"tasks": [{"name": "a", "dataset": "digits", "classes": [0, 12]}]}}, "search.tasks[0].classes"),
    ({"search": {"tasks": [{"name": "a", "dataset": "digits"}, {"name": "b", "dataset": "cifar10"}]}},
     "search.tasks[1].root"),
    ({"search": {"tasks": [{"name": "a", "dataset": "digits", "classes": [3, 3]}]}}, "search.tasks[0].classes"),
    ({"search": {"tasks": [{"name": "a", "dataset": "digits", "classes": ["x"]}]}}, "search.tasks[0].classes[0]"),
    ({"search": {"tasks": [{"name": "a", "dataset": "digits", "clases": [1]}]}}, "search.tasks[0].clases"),
    ({"retrain": {"task": {"name": "c", "dataset": "cifar10", "root": "x", "classes": [10]}}},
     "retrain.task.classes"),
])
def test_messages_name_the_exact_key_path(data: dict, key: str) -> None:
    with pytest.raises(ParamsError) as info:
        validate_params(data)
    lines = str(info.value).splitlines()[1:]
    assert len(lines) == 1 and lines[0].strip().startswith(f"{key}: "), str(info.value)


BOOM_DVC = """\
stages:
  boom:
    cmd: python -c "raise SystemExit(3)"
    outs: [never.txt]
"""


@pytest.fixture
def prefect_console(monkeypatch: pytest.MonkeyPatch) -> io.StringIO:
    """What Prefect's console handlers (root logger, from Prefect's logging config) would print, each through
    its own formatter, collected in a buffer (Prefect may reconfigure its handlers during the first run)."""
    from prefect.logging.handlers import PrefectConsoleHandler

    buffer = io.StringIO()
    monkeypatch.setattr(PrefectConsoleHandler, "emit", lambda self, record: buffer.write(self.format(record) + "\n"))
    return buffer


@pytest.mark.parametrize("debug", [False, True])
def test_failed_stage_traceback_only_with_debug(tmp_path: Path, prefect_harness: None, prefect_console: io.StringIO,
                                                monkeypatch: pytest.MonkeyPatch, debug: bool) -> None:
    from flows.pipeline import StageFailed, pipeline

    if debug:
        monkeypatch.setenv("ILNAS_DEBUG", "1")
    else:
        monkeypatch.delenv("ILNAS_DEBUG", raising=False)
    project = init_repo(tmp_path / "toy", {"dvc.yaml": BOOM_DVC, "params.yaml": "seed: 0\n"}, copy_project=False)
    with pytest.raises(StageFailed, match="stage 'boom'"):
        pipeline(project_dir=str(project), retries=1, retry_delay_s=0, track=False)
    err = prefect_console.getvalue()
    assert "Retry 1/1" in err and "Retries are exhausted" in err  # both failed attempts are still reported
    assert ("Traceback (most recent call last)" in err) is debug, err[-3000:]
