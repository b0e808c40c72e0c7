"""Pictures of a search: cells, alpha history, curves, class weights (matplotlib only, Agg, atomic PNGs).

Every function writes one PNG through a temp file + rename (a reader or DVC never sees half a
picture) and returns its path. Cells are laid out in layers by networkx (graphviz' layout needs the ``dot``
binary, which pip cannot install).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.patches import FancyArrowPatch  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from ilnas.space.genotype import Genotype, load_genotype  # noqa: E402
from ilnas.space.ops import PRIMITIVES  # noqa: E402
from ilnas.utils.io import atomic_write  # noqa: E402

CELLS = ("normal", "reduce")
# tab10 without its grey (index 7): grey is the dashed edges into the output
OP_COLORS = {op: plt.get_cmap("tab10")(i + (i >= 7)) for i, op in enumerate(PRIMITIVES)}


MAX_WIDTH_PX = 1000  # two revisions side by side in ``dvc plots diff`` (its page also scales, .dvc/plots.html)


def _save(fig: Figure, path: str | os.PathLike, dpi: int = 100) -> Path:
    dpi = min(dpi, MAX_WIDTH_PX / fig.get_size_inches()[0])
    try:
        return atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=dpi, bbox_inches="tight"))
    finally:
        plt.close(fig)


def _state_name(j: int) -> str:
    """State j of a cell as people write it: inputs c_{k-2}, c_{k-1} (mathtext, so the braces are subscripts)."""
    return {0: "$c_{k-2}$", 1: "$c_{k-1}$"}.get(j, str(j - 2))


# ------------------------------------------------------------------------------------------ cells


def cell_layout(genotype: Genotype, cell: str) -> tuple[Any, dict[Any, tuple[float, float]]]:
    """The cell as a networkx DAG, laid out in layers (networkx's ``multipartite_layout``: inputs left, each
    node one layer right of its deepest input, the output last), as graphviz' ``dot -Grankdir=LR`` would.

    Graphviz itself needs the ``dot`` binary, which ``pip`` cannot install; networkx comes with torch."""
    import networkx as nx

    edges = getattr(genotype, cell)
    steps = len(edges) // 2
    g = nx.DiGraph()
    g.add_nodes_from([0, 1], layer=0)
    for k, (op, j) in enumerate(edges):
        g.add_edge(j, k // 2 + 2, op=op)
    for node in range(2, steps + 2):
        g.add_node(node)
    for node in nx.topological_sort(g):
        preds = list(g.predecessors(node))
        g.nodes[node]["layer"] = 1 + max(g.nodes[p]["layer"] for p in preds) if preds else 0
    out = "out"
    g.add_node(out, layer=1 + max(d["layer"] for _, d in g.nodes(data=True)))
    for j in getattr(genotype, f"{cell}_concat"):
        g.add_edge(j, out, op="")
    pos = nx.multipartite_layout(g, subset_key="layer", align="vertical", scale=1.0)
    # node 0 on top, as read; wide layers so the labels of the fan-out from the inputs have room
    return g, {n: (float(x) * (steps + 2) * 2.0, -float(y) * 4.0) for n, (x, y) in pos.items()}


def _bezier(a: np.ndarray, b: np.ndarray, rad: float, n: int | None = None) -> np.ndarray:
    """Points of matplotlib's ``arc3,rad=rad`` curve from a to b (a quadratic Bezier), in the units of a and b.

    matplotlib bends the curve in display (pixel) coordinates, so a and b must be display points for the result
    to lie on the drawn edge (data units bend differently whenever the axes' x and y scales differ)."""
    mid = (a + b) / 2 + rad * np.array([b[1] - a[1], a[0] - b[0]])
    n = n or max(25, int(np.linalg.norm(b - a) / 2))  # display points: one every ~2 pixels
    s = np.linspace(0.0, 1.0, n)[:, None]
    return (1 - s) ** 2 * a + 2 * (1 - s) * s * mid + s**2 * b


def _route(a: np.ndarray, b: np.ndarray, obstacles: list[Any]) -> float:
    """The smallest arc bend (display points a, b) that keeps the edge out of every node box it does not join."""
    for rad in (0.0, 0.2, -0.2, 0.35, -0.35, 0.5, -0.5):
        pts = _bezier(a, b, rad)
        pts = pts[len(pts) // 20: -len(pts) // 20 or None]
        if not any(_points_in(box, pts) for box in obstacles):
            return rad
    return 0.5


def _points_in(box: Any, pts: np.ndarray) -> bool:
    return bool(np.any((pts[:, 0] >= box.x0) & (pts[:, 0] <= box.x1) & (pts[:, 1] >= box.y0) & (pts[:, 1] <= box.y1)))


def _overlaps(box: Any, boxes: list[Any]) -> bool:
    return any(box.overlaps(other) for other in boxes)


LABEL_STOPS = (0.5, 0.4, 0.6, 0.32, 0.68, 0.25, 0.75, 0.2, 0.8)  # where along its edge a label may sit


def _place_label(label: Any, curve: np.ndarray, others: list[np.ndarray], taken: list[Any], renderer: Any,
                 to_data: Any) -> Any:
    """Slide ``label`` along its own edge (display points ``curve``) to the first spot that covers no node, no
    placed label and no other edge (so it never sits on a crossing); failing that, the spot with fewest."""
    best, best_cost = None, None
    for t in LABEL_STOPS:
        point = curve[round(t * (len(curve) - 1))]
        label.set_position(tuple(to_data.transform(point)))
        box = label.get_window_extent(renderer)
        cost = 4 * _overlaps(box, taken) + sum(_points_in(box, c) for c in others)
        if best_cost is None or cost < best_cost:
            best, best_cost = point, cost
        if cost == 0:
            break
    label.set_position(tuple(to_data.transform(best)))
    return label.get_window_extent(renderer)


def draw_cell(g: Genotype, cell: str, title: str | None = None) -> tuple[Figure, list[Any], list[Any]]:
    """The figure of one cell, with the rendered boxes of its op labels and of its nodes (display units).

    Layered layout (:func:`cell_layout`); an edge bends around nodes it does not join; each op label sits on
    its own edge, at the first spot along it that covers no node, no other label and no other edge. Edges and
    labels carry gids ``edge:a->b`` / ``label:a->b`` so a reader (or a test) can pair them."""
    if cell not in CELLS:
        raise ValueError(f"cell: got {cell!r}; allowed: {list(CELLS)}")
    graph, pos = cell_layout(g, cell)
    steps = len(getattr(g, cell)) // 2
    fig, ax = plt.subplots(figsize=(2.6 + 2.0 * steps, 5.0))
    ax.set_axis_off()
    ax.set_title(f"{title}: {cell} cell" if title else f"{cell} cell")
    xs, ys = [p[0] for p in pos.values()], [p[1] for p in pos.values()]
    ax.set_xlim(min(xs) - 1.0, max(xs) + 1.0)
    ax.set_ylim(min(ys) - 1.2, max(ys) + 1.2)
    renderer = fig.canvas.get_renderer()
    node_boxes: dict[Any, Any] = {}
    for n, p in pos.items():
        text = "$c_{k}$" if n == "out" else _state_name(n)
        color = "khaki" if n == "out" else ("palegreen" if n in (0, 1) else "lightblue")
        artist = ax.text(*p, text, ha="center", va="center", fontsize=11, zorder=3,
                         bbox={"boxstyle": "round,pad=0.4", "fc": color, "ec": "black"})
        node_boxes[n] = artist.get_window_extent(renderer).expanded(1.05, 1.1)
    disp = {n: ax.transData.transform(p) for n, p in pos.items()}
    curves = {}
    for a, b, data in graph.edges(data=True):
        rad = _route(disp[a], disp[b], [box for n, box in node_boxes.items() if n not in (a, b)])
        op = data["op"]
        color = OP_COLORS.get(op, "grey")
        ax.add_patch(FancyArrowPatch(tuple(pos[a]), tuple(pos[b]), connectionstyle=f"arc3,rad={rad}",
                                     arrowstyle="-|>", mutation_scale=12, shrinkA=18, shrinkB=18, zorder=1,
                                     color=color, lw=1.6 if op else 1.0, linestyle="-" if op else "--",
                                     gid=f"edge:{a}->{b}"))
        curves[a, b] = _bezier(disp[a], disp[b], rad)
    label_boxes: list[Any] = []
    to_data = ax.transData.inverted()
    for a, b, data in graph.edges(data=True):
        if not data["op"]:
            continue
        label = ax.text(0, 0, data["op"], ha="center", va="center", fontsize=7.5, color=OP_COLORS.get(data["op"]),
                        zorder=2, gid=f"label:{a}->{b}",
                        bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.9})
        others = [c[len(c) // 10: -len(c) // 10] for key, c in curves.items() if key != (a, b)]
        label_boxes.append(_place_label(label, curves[a, b], others, label_boxes + list(node_boxes.values()),
                                        renderer, to_data))
    return fig, label_boxes, list(node_boxes.values())


def plot_cell(genotype: Genotype | str | os.PathLike, cell: str, path: str | os.PathLike,
              title: str | None = None) -> Path:
    """Draw one cell as a DAG: inputs c_{k-2}, c_{k-1} -> nodes 0..n-1 -> c_{k}, edges labelled with ops.

    ``title`` names the run (stage, method, seed); the cell's name follows it."""
    fig, _, _ = draw_cell(load_genotype(genotype), cell, title)
    return _save(fig, path)


def plot_genotype(genotype: Genotype | str | os.PathLike, out_dir: str | os.PathLike,
                  title: str | None = None) -> list[Path]:
    """``<out_dir>/normal.png`` and ``<out_dir>/reduce.png``."""
    g = load_genotype(genotype)
    return [plot_cell(g, cell, Path(out_dir) / f"{cell}.png", title) for cell in CELLS]


# ------------------------------------------------------------------------------------------ alpha history


def _edge_labels(n_edges: int) -> list[str]:
    labels, node = [], 0
    while len(labels) < n_edges:
        labels += [f"{_state_name(j)}->{node}" for j in range(node + 2)]
        node += 1
    return labels[:n_edges]


def edge_colors(n: int) -> list[tuple[float, float, float]]:
    """``n`` line colours far apart: tab10's ten, then the candidates from Dark2 and Set1 (qualitative maps,
    too-light ones left out) farthest from every colour already taken. tab20 pairs near-identical shades."""
    candidates: list[tuple[float, float, float]] = []
    for name in ("tab10", "Dark2", "Set1"):
        cmap = plt.get_cmap(name)
        candidates += [tuple(float(c) for c in cmap(i)[:3]) for i in range(cmap.N)]
    pool = np.array([c for c in dict.fromkeys(candidates) if np.dot(c, (0.2126, 0.7152, 0.0722)) < 0.7])
    chosen = list(range(min(n, 10)))
    while len(chosen) < min(n, len(pool)):
        gaps = np.min(np.linalg.norm(pool[:, None] - pool[chosen][None], axis=2), axis=1)
        chosen.append(int(np.argmax(gaps)))
    colors = [tuple(float(c) for c in pool[i]) for i in chosen]
    return [colors[i % len(colors)] for i in range(n)]


LINE_STYLES = ("-", "--", ":", "-.")
MARKERS = ("o", "s", "^", "D", "v", "P", "X")


def change_from_uniform(weights: np.ndarray) -> tuple[np.ndarray, float]:
    """Edges x ops weights minus the uniform 1/n_ops, and the symmetric colour limit that spans them.

    Early in a search every softmaxed weight sits near 1/8; on a 0..max scale all cells look alike, while the
    change from uniform (red: above, blue: below) on its own range shows which op each edge is turning to."""
    change = np.asarray(weights, dtype=float) - 1.0 / weights.shape[-1]
    limit = float(np.abs(change).max())
    return change, (limit if limit > 0 else 1e-6)


def plot_alpha_history(history: Sequence[Mapping[str, Any]], path: str | os.PathLike,
                       primitives: Sequence[str] = PRIMITIVES, title: str | None = None) -> Path:
    """Per cell: the last epoch's softmaxed alphas as an edges x ops heatmap, and for every edge the
    weight of its strongest non-``none`` op over epochs (what derivation ranks edges by).

    ``history`` rows are ``{"epoch", "normal": [[op weights] per edge], "reduce": ...}``, optionally with
    PC-DARTS edge weights ``edge_normal`` / ``edge_reduce`` (multiplied in, as derivation does).
    """
    rows = [r for r in history if any(c in r for c in CELLS)]
    if not rows:
        raise ValueError("plot_alpha_history: no rows with 'normal' / 'reduce' alphas")
    cells = [c for c in CELLS if c in rows[-1]]
    epochs = [int(r.get("epoch", i)) for i, r in enumerate(rows)]
    fig, axes = plt.subplots(len(cells), 2, figsize=(10, 4.0 * len(cells)), squeeze=False,
                             gridspec_kw={"width_ratios": [1, 1.3]})
    if title:
        fig.suptitle(title)
    for row, cell in enumerate(cells):
        w = np.array([r[cell] for r in rows], dtype=float)  # epochs x edges x ops
        if f"edge_{cell}" in rows[-1]:
            w = w * np.array([r[f"edge_{cell}"] for r in rows], dtype=float)[..., None]
        n_edges, n_ops = w.shape[1], w.shape[2]
        ops = list(primitives)[:n_ops] if len(primitives) >= n_ops else [str(i) for i in range(n_ops)]
        labels = _edge_labels(n_edges)
        ax = axes[row][0]
        change, limit = change_from_uniform(w[-1])
        im = ax.imshow(change, aspect="auto", cmap="RdBu_r", vmin=-limit, vmax=limit)
        ax.set_xticks(range(n_ops), ops, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(n_edges), labels, fontsize=8)
        ax.set_title(f"{cell}, epoch {epochs[-1]}: weight - 1/{n_ops}\n(colour; numbers: weights)", fontsize=9)
        fig.colorbar(im, ax=ax, fraction=0.046)
        if n_edges * n_ops <= 160:
            for e in range(n_edges):
                for o in range(n_ops):
                    ax.text(o, e, f"{w[-1, e, o]:.4f}", ha="center", va="center", fontsize=5.5, color="black")
        ax = axes[row][1]
        keep = [i for i, op in enumerate(ops) if op != "none"] or list(range(n_ops))
        strongest = w[:, :, keep].max(axis=2)  # epochs x edges
        colors = edge_colors(n_edges)
        for e in range(n_edges):
            ax.plot(epochs, strongest[:, e], marker=MARKERS[e % len(MARKERS)], markersize=3, color=colors[e],
                    linestyle=LINE_STYLES[e // 10 % len(LINE_STYLES)], label=labels[e])
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("strongest non-none op weight")
        ax.set_title(f"{cell}: edge strength over epochs", fontsize=9)
        ax.legend(fontsize=6, ncol=2, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.tight_layout()
    return _save(fig, path)


# ------------------------------------------------------------------------------------------ curves


def _number(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def plot_curves(rows: Sequence[Mapping[str, Any]], keys: Sequence[str] | None, path: str | os.PathLike,
                x: str = "epoch", title: str | None = None,
                panels: Mapping[str, Sequence[str]] | None = None) -> Path:
    """Per-epoch line curves of ``keys`` from CSV-like rows (values may be strings; blanks are skipped).

    Keys sharing a prefix before ``/`` (``val_loss/task_a``, ``val_loss/task_b``) share a panel; with
    no keys every numeric column but ``x`` is drawn. ``panels`` (name -> keys) groups them explicitly
    instead, e.g. train and test loss in one panel.
    """
    if not rows:
        raise ValueError("plot_curves: no rows")
    if not keys:
        keys = [k for k in rows[0] if k != x and _number(rows[0][k]) is not None]
    if not keys:
        raise ValueError(f"plot_curves: no numeric columns besides {x!r}")
    groups: dict[str, list[str]] = {}
    if panels:
        groups = {name: [k for k in group if k in keys] for name, group in panels.items()}
        groups = {name: group for name, group in groups.items() if group}
    for k in keys:
        if not any(k in group for group in groups.values()):
            groups.setdefault(k.split("/", 1)[0], []).append(k)
    n = len(groups)
    cols = min(n, 2)  # two columns at most: ``dvc plots diff`` puts two revisions side by side
    nrows = -(-n // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4.4 * cols, 3.2 * nrows), squeeze=False)
    if title:
        fig.suptitle(title, fontsize=10)
    for ax, (name, group) in zip(axes.flat, groups.items()):
        for k in group:
            pts = [(_number(r.get(x, i)), _number(r.get(k))) for i, r in enumerate(rows)]
            pts = [(a, b) for a, b in pts if a is not None and b is not None]
            if pts:
                xs, ys = zip(*pts)
                ax.plot(xs, ys, marker="o", markersize=3, label=k)
        ax.set_title(name)
        ax.set_xlabel(x)
        if x == "epoch":
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epoch 1, 2, 3 -- never 1.5
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    for ax in list(axes.flat)[n:]:
        ax.set_axis_off()
    fig.tight_layout()
    return _save(fig, path)


# ------------------------------------------------------------------------------------------ class weights


def _class_weight_tables(history: Any) -> tuple[list[int] | None, dict[str, np.ndarray]]:
    """Normalise the accepted shapes to (epochs, {name: epochs x classes})."""
    if isinstance(history, Mapping):
        return None, {str(k): np.atleast_2d(np.asarray(v, dtype=float)) for k, v in history.items()}
    if isinstance(history, np.ndarray) or (history and not isinstance(history[0], Mapping)):
        return None, {"class weights": np.atleast_2d(np.asarray(history, dtype=float))}
    rows = [r for r in history if "class_weights" in r]
    if not rows:
        raise ValueError("plot_class_weights: no rows with 'class_weights'")
    epochs = [int(r.get("epoch", i)) for i, r in enumerate(rows)]
    first = rows[0]["class_weights"]
    if isinstance(first, Mapping):
        return epochs, {str(k): np.asarray([r["class_weights"][k] for r in rows], dtype=float) for k in first}
    return epochs, {"class weights": np.asarray([r["class_weights"] for r in rows], dtype=float)}


def plot_class_weights(history: Any, path: str | os.PathLike,
                       class_names: Mapping[str, Sequence[str]] | Sequence[str] | None = None,
                       title: str | None = None) -> Path:
    """Heatmap(s) epochs x classes of class weights (LFM-CW): which classes the search leans on, when.

    ``history``: rows ``{"epoch", "class_weights": {task: [w per class]} | [w per class]}``, a mapping
    ``{name: epochs x classes}``, or one epochs x classes array.
    """
    epochs, tables = _class_weight_tables(history)
    if not tables:
        raise ValueError("plot_class_weights: nothing to draw")
    fig, axes = plt.subplots(len(tables), 1, figsize=(8, 0.6 + 2.6 * len(tables)), squeeze=False)
    if title:
        fig.suptitle(title, fontsize=10)
    for ax, (name, table) in zip(axes[:, 0], tables.items()):
        im = ax.imshow(table, aspect="auto", cmap="magma", interpolation="nearest")
        n_ep, n_cls = table.shape
        names = class_names.get(name) if isinstance(class_names, Mapping) else class_names
        ax.set_xticks(range(n_cls), list(names) if names is not None and len(names) == n_cls else range(n_cls),
                      fontsize=7, rotation=90 if n_cls > 20 else 0)
        ep = epochs if epochs is not None else list(range(n_ep))
        step = max(1, n_ep // 12)
        ax.set_yticks(range(0, n_ep, step), [ep[i] for i in range(0, n_ep, step)], fontsize=7)
        ax.set_xlabel("class")
        ax.set_ylabel("epoch")
        ax.set_title(name)
        fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    return _save(fig, path)
