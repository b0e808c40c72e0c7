"""params.yaml schema: defaults, overrides, presets, and errors that name the key and the allowed values."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ilnas.params import ParamsError, apply_overrides, load_params, validate_params

REPO = Path(__file__).resolve().parents[1]
PRESETS = sorted((REPO / "configs").glob("*.yaml"))


def test_committed_params_validate_and_share_seed() -> None:
    params = load_params(REPO / "params.yaml")
    assert params.search.tasks and params.derive.source == "search"
    shifted = load_params(REPO / "params.yaml", ["seed=7"])
    assert shifted.search.seed == shifted.retrain.seed == shifted.transfer.seed == 7
    own = load_params(REPO / "params.yaml", ["seed=7", "search.seed=3"])
    assert own.search.seed == 3 and own.retrain.seed == 7


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: p.name)
def test_presets_validate(preset: Path) -> None:
    params = load_params(preset)
    committed = yaml.safe_load((REPO / "params.yaml").read_text())
    data = yaml.safe_load(preset.read_text())
    assert set(committed) == set(data)  # every key dvc.yaml lists is present
    assert params.search.epochs >= 1


def test_overrides_nested_and_list_index() -> None:
    data = {"search": {"tasks": [{"name": "a", "dataset": "digits"}], "epochs": 2}}
    out = apply_overrides(data, ["search.epochs=5", "search.tasks[0].name=b", "search.tasks.0.classes=[1, 2]",
                                 "retrain.lerac.enabled=true"])
    assert out["search"]["epochs"] == 5 and out["search"]["tasks"][0] == {"name": "b", "dataset": "digits",
                                                                          "classes": [1, 2]}
    assert out["retrain"]["lerac"]["enabled"] is True
    assert data["search"]["epochs"] == 2  # the input is not modified
    with pytest.raises(ParamsError, match="must look like key.sub=value"):
        apply_overrides(data, ["search.epochs"])
    with pytest.raises(ParamsError, match="out of range"):
        apply_overrides(data, ["search.tasks.3=x"])


@pytest.mark.parametrize(("data", "key", "allowed"), [
    ({"search": {"bogus": 1}}, "search.bogus", "allowed keys in search: ["),
    ({"nonsense": 1}, "nonsense", "allowed keys in <root>: ['derive', 'device'"),
    ({"search": {"epochs": "ten"}}, "search.epochs", "valid integer"),
    ({"retrain": {"epochs": -1}}, "retrain.epochs", "greater than or equal to 0"),
    ({"search": {"hypergrad": "second"}}, "search.hypergrad", "'first_order', 'finite_difference' or 'exact'"),
    ({"search": {"tasks": [{"name": "x", "dataset": "mnist"}]}}, "search.tasks.0.dataset", "'cifar100'"),
    ({"search": {"strategy": "random"}}, "search.strategy", "allowed"),
    ({"device": "tpu"}, "device", "'cuda:N'"),
    ({"derive": {"source": "DARTS_V9"}}, "derive.source", "'search' or 'DARTS_V2'"),
    ({"retrain": {"channels": 15}}, "retrain", "even"),
])
def test_bad_params_name_key_and_allowed(data: dict, key: str, allowed: str) -> None:
    with pytest.raises(ParamsError) as info:
        validate_params(data)
    assert f"{key}:" in str(info.value) and allowed in str(info.value), str(info.value)


def test_cli_check(tmp_path: Path) -> None:
    ok = subprocess.run([sys.executable, "-m", "ilnas.params", "check", str(REPO / "params.yaml")],
                        capture_output=True, text=True)
    assert ok.returncode == 0 and "ok" in ok.stdout
    bad = subprocess.run([sys.executable, "-m", "ilnas.params", "check", str(REPO / "params.yaml"),
                          "-S", "search.hypergrad=nope"], capture_output=True, text=True)
    assert bad.returncode == 2 and "search.hypergrad" in bad.stderr
    missing = subprocess.run([sys.executable, "-m", "ilnas.params", "check", str(tmp_path / "none.yaml")],
                             capture_output=True, text=True)
    assert missing.returncode == 2 and "not found" in missing.stderr
