"""Every picture function writes a non-empty, valid PNG (atomically) from the shapes the pipeline hands it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ilnas import viz
from ilnas.space.architecture import Architecture
from ilnas.space.genotype import DARTS_V2, Genotype


def _valid_png(path: Path, min_side: int = 100) -> tuple[int, int]:
    assert path.is_file() and path.stat().st_size > 1000
    with Image.open(path) as img:
        img.verify()
    with Image.open(path) as img:
        assert img.format == "PNG" and min(img.size) >= min_side
        assert np.asarray(img.convert("L")).std() > 1.0  # not a blank canvas
        size = img.size
    assert not list(path.parent.glob(".*.tmp")), "atomic write left a temp file behind"
    return size


def test_plot_cell_and_genotype(tmp_path: Path) -> None:
    assert viz.plot_cell(DARTS_V2, "normal", tmp_path / "n.png") == tmp_path / "n.png"
    _valid_png(tmp_path / "n.png")
    DARTS_V2.to_json(tmp_path / "genotype.json")
    paths = viz.plot_genotype(tmp_path / "genotype.json", tmp_path / "cells")
    assert [p.name for p in paths] == ["normal.png", "reduce.png"]
    for p in paths:
        _valid_png(p)
    small = Genotype(normal=(("sep_conv_3x3", 0), ("skip_connect", 1)), normal_concat=(2,),
                     reduce=(("max_pool_3x3", 0), ("max_pool_3x3", 1)), reduce_concat=(2,))
    _valid_png(viz.plot_cell(small, "reduce", tmp_path / "small.png"))
    with pytest.raises(ValueError, match="allowed"):
        viz.plot_cell(DARTS_V2, "middle", tmp_path / "x.png")


def test_plot_alpha_history(tmp_path: Path) -> None:
    torch.manual_seed(0)
    arch = Architecture(nodes=4, edge_normalization=True, init_scale=1.0)
    rows = [{"epoch": e, **arch.softmax_snapshot(), "class_weights": {"a": [0.5, 1.5]}} for e in range(4)]
    _valid_png(viz.plot_alpha_history(rows, tmp_path / "alpha.png"))
    plain = [{"epoch": 0, "normal": torch.softmax(torch.randn(5, 8), -1).tolist(),
              "reduce": torch.softmax(torch.randn(5, 8), -1).tolist()}]
    _valid_png(viz.plot_alpha_history(plain, tmp_path / "one_epoch.png"))
    with pytest.raises(ValueError, match="no rows"):
        viz.plot_alpha_history([{"epoch": 0}], tmp_path / "none.png")


def test_plot_curves(tmp_path: Path) -> None:
    rows = [{"epoch": str(e), "train_loss/a": 1 / (e + 1), "val_loss/a": str(1.3 / (e + 1)),
             "val_acc/a": "" if e == 2 else e / 10, "lr": 0.025} for e in range(6)]
    path = viz.plot_curves(rows, ["train_loss/a", "val_loss/a", "val_acc/a"], tmp_path / "curves.png")
    w, _ = _valid_png(path)
    _valid_png(viz.plot_curves(rows, [], tmp_path / "all.png"))  # no keys: every numeric column
    one = viz.plot_curves(rows, ["lr"], tmp_path / "lr.png")
    assert _valid_png(one)[0] < w  # one panel, not three
    with pytest.raises(ValueError):
        viz.plot_curves([], ["x"], tmp_path / "empty.png")


def test_plot_class_weights(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    rows = [{"epoch": e, "class_weights": {"digits_0_4": rng.random(5).tolist(), "digits_5_9": rng.random(5).tolist()}}
            for e in range(7)]
    _valid_png(viz.plot_class_weights(rows, tmp_path / "cw.png",
                                      class_names={"digits_0_4": list("01234"), "digits_5_9": list("56789")}))
    flat = [{"epoch": e, "class_weights": rng.random(10).tolist()} for e in range(3)]
    _valid_png(viz.plot_class_weights(flat, tmp_path / "flat.png"))
    _valid_png(viz.plot_class_weights(rng.random((4, 100)), tmp_path / "array.png"))
    _valid_png(viz.plot_class_weights({"t": rng.random((3, 4))}, tmp_path / "map.png"))
    with pytest.raises(ValueError, match="class_weights"):
        viz.plot_class_weights([{"epoch": 0}], tmp_path / "bad.png")
