"""Derive draws the search's figures from the files the search wrote (the search stage draws nothing)."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

from ilnas.space.architecture import Architecture
from stages.figures import draw_search_figures

REPO = Path(__file__).resolve().parents[1]


def _search_dir(tmp_path: Path, lfm: bool) -> Path:
    """A search output as the search stage leaves it: a real run's history CSV and real alpha rows."""
    out = tmp_path / "search"
    out.mkdir()
    shutil.copy(REPO / "metrics/search_history.csv", out / "history.csv")  # committed by the last make run
    arch = Architecture(nodes=2)
    extra = {"class_weights": {"a": [0.5, 1.5], "b": [1.2, 0.8]}} if lfm else {}
    rows = [{"epoch": e, **arch.softmax_snapshot(), **extra} for e in (1, 2, 3)]
    (out / "alpha_history.json").write_text(json.dumps(rows))
    return out


def test_derive_draws_the_search_curves_and_heatmap(tmp_path: Path) -> None:
    drawn = draw_search_figures(_search_dir(tmp_path, lfm=False), tmp_path)
    assert sorted(p.name for p in drawn) == ["accuracy.png", "alpha_history.png", "loss.png"]
    assert all(p.read_bytes().startswith(b"\x89PNG") and p.stat().st_size > 1000 for p in drawn)
    lfm = tmp_path / "lfm"
    lfm.mkdir()
    names = {p.name for p in draw_search_figures(_search_dir(lfm, lfm=True), lfm)}
    assert "class_weights.png" in names


def test_missing_search_files_are_a_warning_not_a_failure(tmp_path: Path, caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="ilnas.stages"):
        assert draw_search_figures(tmp_path / "absent", tmp_path) == []
    assert "search figures skipped: FileNotFoundError" in caplog.text


def test_the_heatmap_names_the_searched_subset_of_ops(tmp_path: Path, monkeypatch) -> None:
    """A search over ``search.primitives`` (here R-DARTS S2: sep_conv_3x3 and skip) labels its own ops."""
    import ilnas.viz

    out = tmp_path / "search"
    out.mkdir()
    shutil.copy(REPO / "metrics/search_history.csv", out / "history.csv")
    subset = ["sep_conv_3x3", "skip_connect"]
    arch = Architecture(nodes=2, num_ops=len(subset))
    (out / "alpha_history.json").write_text(json.dumps([{"epoch": 1, **arch.softmax_snapshot()}]))
    (out / "genotype.json").write_text(json.dumps({"normal": [], "reduce": [], "primitives": subset}))
    seen = {}
    real = ilnas.viz.plot_alpha_history
    monkeypatch.setattr(ilnas.viz, "plot_alpha_history",
                        lambda rows, path, **kw: seen.update(kw) or real(rows, path, **kw))
    assert "alpha_history.png" in {p.name for p in draw_search_figures(out, tmp_path)}
    assert seen["primitives"] == subset
