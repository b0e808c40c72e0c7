"""Every picture function writes a non-empty, valid PNG (atomically) from the shapes the pipeline hands it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from matplotlib.colors import to_rgb
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


def test_cell_labels_overlap_nothing_and_read_as_written() -> None:
    rng = np.random.default_rng(0)
    ops = ["sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5", "skip_connect", "max_pool_3x3"]
    random_cells = []
    for _ in range(4):  # arbitrary 4-node cells: two inputs per node from any earlier state
        edges = tuple((str(rng.choice(ops)), int(j)) for n in range(4)
                      for j in rng.choice(n + 2, size=2, replace=False))
        random_cells.append(Genotype(normal=edges, normal_concat=(2, 3, 4, 5), reduce=edges,
                                     reduce_concat=(2, 3, 4, 5)))
    for genotype in (DARTS_V2, *random_cells):
        for cell in ("normal", "reduce"):
            fig, labels, nodes = viz.draw_cell(genotype, cell)
            assert len(labels) == 8
            assert not [(i, j) for i, a in enumerate(labels) for j, b in enumerate(labels) if i < j and a.overlaps(b)]
            assert not [i for i, a in enumerate(labels) if any(a.overlaps(n) for n in nodes)]
            texts = {t.get_text() for t in fig.axes[0].texts}
            assert {"$c_{k-2}$", "$c_{k-1}$", "$c_{k}$"} <= texts  # subscripts, not literal braces
            import matplotlib.pyplot as plt

            plt.close(fig)


def test_alpha_heatmap_spans_the_differences() -> None:
    weights = np.full((14, 8), 0.125)
    weights[0, 3], weights[0, 4] = 0.1262, 0.1238  # a search's first epochs: everything near uniform
    change, limit = viz.change_from_uniform(weights)
    assert limit == pytest.approx(0.0012)
    assert change.max() == pytest.approx(limit) and change.min() == pytest.approx(-limit)  # full colour range used
    assert viz.change_from_uniform(np.full((2, 8), 0.125))[1] > 0  # all uniform: still a valid scale


def test_curve_epoch_ticks_are_integers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    figures = []
    monkeypatch.setattr(viz, "_save", lambda fig, path, dpi=120: figures.append(fig) or Path(path))
    rows = [{"epoch": e, "val_loss_mean": 1 / e} for e in (1, 2, 3)]
    viz.plot_curves(rows, ["val_loss_mean"], tmp_path / "c.png")
    ticks = figures[0].axes[0].get_xticks()
    assert len(ticks) and all(float(t).is_integer() for t in ticks)


def _bezier_points(path) -> np.ndarray:
    """Dense points of a rendered matplotlib path (its Bezier segments sampled), display units."""
    return np.vstack([seg(np.linspace(0.0, 1.0, 300)) for seg, _ in path.iter_bezier()])


def test_every_op_label_sits_on_its_own_edge() -> None:
    """Measured on the rendered artists: each label's centre lies on its edge's drawn path, and every other
    edge passes farther away than the label's half-height (no label on a crossing or on a foreign edge)."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import FancyArrowPatch

    rng = np.random.default_rng(1)
    ops = ["sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3", "skip_connect", "max_pool_3x3", "avg_pool_3x3"]
    cells = [Genotype(normal=e, normal_concat=(2, 3, 4, 5), reduce=e, reduce_concat=(2, 3, 4, 5))
             for e in (tuple((str(rng.choice(ops)), int(j)) for n in range(4)
                             for j in rng.choice(n + 2, size=2, replace=False)) for _ in range(3))]
    for genotype in (DARTS_V2, *cells):
        for cell in ("normal", "reduce"):
            fig, _, _ = viz.draw_cell(genotype, cell, title="derive IL K=2 finite_difference seed 0")
            fig.canvas.draw()
            ax = fig.axes[0]
            assert ax.get_title().startswith("derive IL K=2 finite_difference seed 0")
            edges = {p.get_gid()[len("edge:"):]: _bezier_points(p.get_transform().transform_path(p.get_path()))
                     for p in ax.patches if isinstance(p, FancyArrowPatch)}
            labels = [t for t in ax.texts if (t.get_gid() or "").startswith("label:")]
            assert len(labels) == 8 and len(edges) >= 8
            for label in labels:
                box = label.get_window_extent()
                centre = np.array([(box.x0 + box.x1) / 2, (box.y0 + box.y1) / 2])
                dist = {k: float(np.min(np.linalg.norm(pts - centre, axis=1))) for k, pts in edges.items()}
                own = label.get_gid()[len("label:"):]
                assert dist[own] < 1.5, (genotype, cell, own, dist[own])
                assert min(d for k, d in dist.items() if k != own) > box.height / 2, (genotype, cell, own)
            plt.close(fig)


def test_alpha_edge_colours_are_distinguishable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The 14 edge curves of a 4-node cell: every pair of colours at least 0.2 apart in RGB (tab20: 0.15)."""
    figures = []
    monkeypatch.setattr(viz, "_save", lambda fig, path, dpi=100: figures.append(fig) or Path(path))
    arch = Architecture(nodes=4, edge_normalization=False)
    rows = [{"epoch": e, **arch.softmax_snapshot()} for e in (1, 2)]
    viz.plot_alpha_history(rows, tmp_path / "a.png", title="search IL K=2 finite_difference seed 0")
    assert figures[0].get_suptitle() == "search IL K=2 finite_difference seed 0"
    lines = [ln for ax in figures[0].axes for ln in ax.get_lines()][:14]
    assert len(lines) == 14
    rgb = np.array([to_rgb(ln.get_color()) for ln in lines])
    gaps = np.linalg.norm(rgb[:, None] - rgb[None], axis=2) + np.eye(14) * 9
    assert gaps.min() >= 0.2
    assert all(np.dot(c, (0.2126, 0.7152, 0.0722)) < 0.7 for c in rgb)  # none too light on white


def test_saved_figures_fit_two_columns(tmp_path: Path) -> None:
    """``dvc plots diff`` shows two revisions side by side: no picture wider than viz.MAX_WIDTH_PX pixels."""
    arch = Architecture(nodes=4, edge_normalization=True)
    rows = [{"epoch": e, **arch.softmax_snapshot()} for e in (1, 2)]
    curves = [{"epoch": e, "train_loss": 1 / e, "test_loss": 1.2 / e, "train_top1": e / 4, "test_top1": e / 5}
              for e in (1, 2, 3)]
    for path in (viz.plot_cell(DARTS_V2, "normal", tmp_path / "n.png", title="derive"),
                 viz.plot_alpha_history(rows, tmp_path / "a.png"),
                 viz.plot_curves(curves, None, tmp_path / "c.png", title="retrain")):
        with Image.open(path) as img:
            assert img.size[0] <= viz.MAX_WIDTH_PX + 2, (path.name, img.size)


def test_every_picture_can_name_its_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    figures = []
    monkeypatch.setattr(viz, "_save", lambda fig, path, dpi=100: figures.append(fig) or Path(path))
    title = "search LFM-CW K=1 finite_difference seed 2 [lfm]"
    viz.plot_class_weights({"t": np.ones((2, 3))}, tmp_path / "cw.png", title=title)
    viz.plot_curves([{"epoch": 1, "test_top1": 0.5}], None, tmp_path / "c.png", title=title)
    assert [f.get_suptitle() for f in figures] == [title, title]


def test_op_colours_differ_from_the_output_edges_grey() -> None:
    grey = np.array(to_rgb("grey"))
    colours = [np.array(to_rgb(c)) for c in viz.OP_COLORS.values()]
    assert len(colours) == 8 and all(np.linalg.norm(c - grey) > 0.2 for c in colours)
    assert min(np.linalg.norm(a - b) for i, a in enumerate(colours) for b in colours[i + 1:]) > 0.2


def test_curve_panels_put_train_beside_test(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    figures = []
    monkeypatch.setattr(viz, "_save", lambda fig, path, dpi=100: figures.append(fig) or Path(path))
    rows = [{"epoch": e, "train_loss": 1 / e, "test_loss": 1.1 / e, "train_top1": e / 4, "test_top1": e / 5,
             "lr": 0.1} for e in (1, 2)]
    keys = ["train_loss", "train_top1", "test_loss", "test_top1", "lr"]
    viz.plot_curves(rows, keys, tmp_path / "c.png",
                    panels={"loss": ["train_loss", "test_loss"], "top-1": ["train_top1", "test_top1"]})
    drawn = [(ax.get_title(), [ln.get_label() for ln in ax.get_lines()]) for ax in figures[0].axes if ax.lines]
    assert drawn == [("loss", ["train_loss", "test_loss"]), ("top-1", ["train_top1", "test_top1"]), ("lr", ["lr"])]
