"""``ilnas retrain`` / ``ilnas transfer`` on the command line: config sections, overrides, errors."""

from __future__ import annotations

import json

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
    res = CliRunner().invoke(app, ["retrain", "-o", str(tmp_path), "--set", "lerac.min_ratio=0"])
    assert res.exit_code != 0 and "retrain.lerac.min_ratio" in res.output
    res = CliRunner().invoke(app, ["transfer", "-o", str(tmp_path)])
    assert res.exit_code != 0 and "--data" in res.output
