"""``ilnas retrain`` / ``ilnas transfer`` on the command line: config sections, overrides, errors."""

from __future__ import annotations

import json
import subprocess
import sys

from typer.testing import CliRunner

from ilnas.cli import app

TINY = ["--set", "epochs=1", "--set", "channels=4", "--set", "cells=3", "--set", "device=cpu"]


def test_retrain_cli_reads_params_section_and_overrides(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text("retrain:\n  batch_size: 96\n  task: {name: d3, dataset: digits, classes: [0, 1, 2]}\n")
    out = tmp_path / "out"
    res = CliRunner().invoke(app, ["retrain", "-c", str(params), "-o", str(out), *TINY])
    assert res.exit_code == 0, res.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["epochs"] == 1 and metrics["num_classes"] == 3
    assert json.loads((out / "config.json").read_text())["batch_size"] == 96


def test_cli_config_errors_name_the_key(tmp_path):
    res = subprocess.run([sys.executable, "-m", "ilnas", "retrain", "-o", str(tmp_path), "--set",
                          "lerac.min_ratio=0"], capture_output=True, text=True)
    assert res.returncode == 2 and "retrain.lerac.min_ratio" in res.stderr and "Traceback" not in res.stderr
    res = subprocess.run([sys.executable, "-m", "ilnas", "transfer", "-o", str(tmp_path)], capture_output=True,
                         text=True)
    assert res.returncode == 2 and "--data" in res.stderr and "Traceback" not in res.stderr


def test_cli_honours_top_level_seed_and_device_like_the_pipeline(tmp_path):
    """issue 8 item 7: ``--config params.yaml`` validates through PipelineParams (shared seed/device flow in)."""
    from ilnas.params import load_params, load_section

    params = tmp_path / "params.yaml"
    params.write_text("seed: 7\ndevice: cpu\nsearch: {epochs: 1}\nretrain: {epochs: 1}\ntransfer: {epochs: 1}\n")
    pipeline = load_params(params)
    for section in ("search", "retrain", "transfer"):
        cfg = load_section(section, params)
        assert cfg == getattr(pipeline, section)
        assert (cfg.seed, cfg.device) == (7, "cpu")
    # the flow's dotted keys and section-relative keys both work; a section's own seed wins, as in the flow
    assert load_section("search", params, ["search.seed=3"]).seed == 3
    assert load_section("search", params, ["seed=11"]).seed == 11
    assert load_section("retrain", params, ["epochs=2"]).epochs == 2
    # a bare section file still works
    bare = tmp_path / "bare.yaml"
    bare.write_text("epochs: 3\nseed: 5\n")
    assert load_section("retrain", bare).epochs == 3 and load_section("retrain", bare).seed == 5


def test_retrain_cli_seed_from_params_file_reaches_the_run(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text("seed: 7\ndevice: cpu\nretrain: {task: {name: d3, dataset: digits, classes: [0, 1, 2]}}\n")
    out = tmp_path / "out"
    res = CliRunner().invoke(app, ["retrain", "-c", str(params), "-o", str(out), "-S", "retrain.epochs=1",
                                   "-S", "retrain.channels=4", "-S", "retrain.cells=3"])
    assert res.exit_code == 0, res.output
    config = json.loads((out / "config.json").read_text())
    assert config["seed"] == 7 and config["device"] == "cpu" and config["epochs"] == 1


def test_cli_version_on_every_command():
    for args in (["--version"], ["search", "--version"], ["retrain", "--version"], ["transfer", "--version"]):
        res = CliRunner().invoke(app, args)
        assert res.exit_code == 0 and res.output.startswith("ilnas "), (args, res.output)
