"""params.yaml schema: defaults, overrides, presets, and errors that name the key and the allowed values."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ilnas.params import ParamsError, apply_overrides, load_params, validate_params

REPO = Path(__file__).resolve().parents[1]
PRESETS = sorted(p for p in (REPO / "configs").glob("*.yaml")  # study* and calibration*: specs, not params
                 if not p.name.startswith(("study", "calibration")))


def test_committed_params_validate_and_share_seed() -> None:
    params = load_params(REPO / "params.yaml")
    assert params.search.tasks and params.derive.source == "search"
    shifted = load_params(REPO / "params.yaml", ["seed=7"])
    assert shifted.search.seed == shifted.retrain.seed == shifted.transfer.seed == 7
    own = load_params(REPO / "params.yaml", ["seed=7", "search.seed=3"])
    assert own.search.seed == 3 and own.retrain.seed == 7


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: p.name)
def test_presets_validate(preset: Path) -> None:
    params = load_params(preset, environment=False)  # its data roots are on a GPU machine, not here
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
    ({"search": {"hypergrad": "second"}}, "search.hypergrad", "'first_order', 'finite_difference'"),
    ({"search": {"hypergrad": "exactt"}}, "search.hypergrad", "did you mean 'exact'?"),
    ({"search": {"hypergad": "exact"}}, "search.hypergad", "did you mean 'hypergrad'?"),
    ({"search": {"partial_channels": 3, "channels": 8}}, "search.partial_channels", "allowed: [1, 2, 4, 8]"),
    ({"search": {"cells": 2}}, "search.cells", "greater than or equal to 3"),
    ({"search": {"seed": -1}}, "search.seed", "greater than or equal to 0"),
    ({"retrain": {"seed": -1}}, "retrain.seed", "must be >= 0"),
    ({"transfer": {"seed": -3}}, "transfer.seed", "must be >= 0"),
    ({"seed": -1}, "seed", "greater than or equal to 0"),
    ({"search": {"tasks": [{"name": "x", "dataset": "digits", "classes": [0, 10]}]}}, "search.tasks[0].classes",
     "class id(s) [10] out of range for dataset 'digits'; allowed: 0..9"),
    ({"retrain": {"task": {"name": "c", "dataset": "cifar100", "root": "x", "classes": [100]}}}, "retrain.task.classes",
     "allowed: 0..99"),
    ({"device": "cuda:abc"}, "device", "'cuda:N'"),
    ({"search": {"device": "gpu"}}, "search.device", "'cuda:N'"),
    ({"prepare": {"export_imagefolder": False}}, "prepare.export_imagefolder", "removed"),
    ({"derive": {"plot": False}}, "derive.plot", "removed"),
    ({"search": {"tasks": [{"name": "x", "dataset": "mnist"}]}}, "search.tasks[0].dataset", "'cifar100'"),
    ({"search": {"strategy": "random"}}, "search.strategy", "allowed"),
    ({"device": "tpu"}, "device", "'cuda:N'"),
    ({"derive": {"source": "DARTS_V9"}}, "derive.source", "'search' or 'DARTS_V2'"),
    ({"retrain": {"channels": 15}}, "retrain.channels", "even"),
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


def test_bad_shared_device_reported_once() -> None:
    with pytest.raises(ParamsError) as info:
        validate_params({"device": "cuda:x"})
    assert str(info.value).count("cuda:x") == 1, str(info.value)


@pytest.mark.parametrize(("override", "message"), [
    ("retrain.opt=sgdd", "retrain.opt: unknown timm optimizer 'sgdd'"),
    ("transfer.sched=cosin", "transfer.sched: unknown timm scheduler 'cosin'"),
    ("retrain.model=ilnas_cifr", "retrain.model: unknown timm model 'ilnas_cifr'"),
])
def test_timm_names_checked_against_timm_with_did_you_mean(override: str, message: str) -> None:
    with pytest.raises(ParamsError) as info:
        load_params(REPO / "params.yaml", [override])
    assert message in str(info.value) and "did you mean" in str(info.value), str(info.value)


def test_shipped_timm_defaults_are_in_timm_registries() -> None:
    """The names checks.py accepts without importing timm must really be timm's."""
    import timm
    from timm.optim import list_optimizers

    import ilnas.nets  # noqa: F401
    from ilnas.utils import checks

    assert all(timm.is_model(m) for m in checks.DEFAULT_TIMM_MODELS)
    assert set(checks.DEFAULT_TIMM_OPTIMIZERS) <= set(list_optimizers())
    import torch
    from timm.scheduler import create_scheduler_v2

    for name in checks.DEFAULT_TIMM_SCHEDULERS:
        opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
        create_scheduler_v2(opt, sched=name, num_epochs=10, updates_per_epoch=1)


def test_missing_data_roots_fail_before_compute(tmp_path: Path) -> None:
    with pytest.raises(ParamsError) as info:
        load_params(REPO / "params.yaml", ["retrain.task={name: c, dataset: cifar10, root: /nonexistent/cifar}",
                                           f"transfer.data_root={tmp_path / 'missing'}"])
    text = str(info.value)
    assert "retrain.task.root" in text and "/nonexistent/cifar" in text and "transfer.data_root" in text, text
    ok = load_params(REPO / "params.yaml", ["retrain.task={name: c, dataset: cifar10, root: /nope, download: true}"])
    assert ok.retrain.task.download  # a root that download: true will fill is not required to exist


@pytest.mark.parametrize("content", [b"", b"# only a comment\n", b"\n\n"])
def test_empty_params_file_refused(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "params.yaml"
    path.write_bytes(content)
    with pytest.raises(ParamsError, match="is empty"):
        load_params(path)


def test_unreadable_params_files_are_params_errors(tmp_path: Path) -> None:
    with pytest.raises(ParamsError, match="is a directory"):
        load_params(tmp_path)
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(b"seed: 0\nsearch: {epochs: 1}\n\xff\xfe\n")
    with pytest.raises(ParamsError, match="not a UTF-8 text file"):
        load_params(binary)
    bad = tmp_path / "bad.yaml"
    bad.write_text("search: [unclosed\n")
    with pytest.raises(ParamsError, match="not valid YAML"):
        load_params(bad)
    listing = tmp_path / "list.yaml"
    listing.write_text("- 1\n- 2\n")
    with pytest.raises(ParamsError, match="top level must be a mapping"):
        load_params(listing)


def test_relative_data_roots_resolve_inside_the_params_files_project(tmp_path: Path, monkeypatch) -> None:
    project = tmp_path / "project"
    (project / "configs").mkdir(parents=True)
    (project / "dvc.yaml").write_text("stages: {}\n")
    (project / "data" / "cifar").mkdir(parents=True)
    preset = project / "configs" / "p.yaml"
    deps = "prepare: {data_deps: {retrain: data}}\n"
    preset.write_text(deps + "retrain: {task: {name: c, dataset: cifar10, root: data/cifar}}\n")
    monkeypatch.chdir(tmp_path)  # the flow may run from elsewhere (--project-dir)
    assert load_params(preset).retrain.task.root == "data/cifar"
    preset.write_text(deps + "retrain: {task: {name: c, dataset: cifar10, root: data/missing}}\n")
    with pytest.raises(ParamsError, match=str(project / "data" / "missing")):
        load_params(preset)
