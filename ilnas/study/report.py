"""The study report: ``reports/<study>/report.md``, ``summary.json`` and figures (matplotlib, Agg).

It says exactly what produced it (commit, spec and its hash, code version, overrides) and, per arm, the
retrained test accuracy over all (search seed, retrain seed) pairs with its 95 % interval, parameters,
MACs, search cost (seconds and training images seen), and the test against the baseline arm; then every
trial's derived cell side by side, failed trials with their error, and the figures.
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from pathlib import Path
from typing import Any

import yaml

from ilnas.study.stats import TEST_NAME, ArmSummary, Comparison, compare, summarize
from ilnas.study.trials import Trial
from ilnas.utils.io import atomic_write_json, atomic_write_text

SHORT = {"max_pool_3x3": "max3", "avg_pool_3x3": "avg3", "skip_connect": "skip", "sep_conv_3x3": "sep3",
         "sep_conv_5x5": "sep5", "dil_conv_3x3": "dil3", "dil_conv_5x5": "dil5"}


def cell_text(genotype: dict[str, Any] | None, cell: str) -> str:
    if not genotype:
        return ""
    return " ".join(f"{SHORT.get(op, op)}<{i}" for op, i in genotype[cell])


def _fmt(v: Any, spec: str = ".4f") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    return format(v, spec)


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def arm_values(results: list[dict[str, Any]], arm: str) -> list[float]:
    return [r["test_top1"] for res in results if res["arm"] == arm and res["status"] == "ok"
            for r in res["retrains"]]


def summarize_study(arms: list[str], baseline: str, results: list[dict[str, Any]]
                    ) -> tuple[dict[str, ArmSummary], dict[str, Comparison], dict[str, dict[str, float]]]:
    """Per-arm summaries, comparisons with the baseline, and per-arm cost means (params, MACs, search)."""
    summaries, comparisons, costs = {}, {}, {}
    base_values = arm_values(results, baseline)
    for arm in arms:
        ok = [r for r in results if r["arm"] == arm and r["status"] == "ok"]
        failed = sum(1 for r in results if r["arm"] == arm and r["status"] != "ok")
        values = arm_values(results, arm)
        summaries[arm] = summarize(arm, values, cells=len(ok), failed=failed)
        if arm != baseline:
            comparisons[arm] = compare(arm, values, baseline, base_values)
        runs = [run for r in ok for run in r["retrains"]]
        losses = summarize(arm, [run["test_loss"] for run in runs])
        costs[arm] = {"test_loss_mean": losses.mean, "test_loss_std": losses.std,
                      "params": _mean([run["params"] for run in runs]), "macs": _mean([run["macs"] for run in runs]),
                      "search_time_s": _mean([r.get("search_time_s", 0.0) for r in ok]),
                      "search_images": _mean([r.get("search_images", 0) for r in ok]),
                      "retrain_time_s": _mean([run["retrain_time_s"] for run in runs]),
                      "trial_wall_s": _mean([r.get("wall_s", 0.0) for r in ok])}
    return summaries, comparisons, costs


def summary_table(arms: list[str], kinds: dict[str, str], baseline: str, summaries: dict[str, ArmSummary],
                  comparisons: dict[str, Comparison], costs: dict[str, dict[str, float]]) -> str:
    lines = [f"| arm | kind | cells ok / failed | pairs | test top-1 mean +- std | 95 % CI | test loss | params "
             f"| MACs | search s | search images | vs {baseline}: diff | p |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for arm in arms:
        s, c, cmp = summaries[arm], costs[arm], comparisons.get(arm)
        lines.append(
            f"| {arm} | {kinds[arm]} | {s.cells} / {s.failed} | {s.n} | {_fmt(s.mean)} +- {_fmt(s.std)} "
            f"| [{_fmt(s.ci95_low)}, {_fmt(s.ci95_high)}] | {_fmt(c['test_loss_mean'], '.3f')} +- "
            f"{_fmt(c['test_loss_std'], '.3f')} | {_fmt(c['params'], ',.0f')} | {_fmt(c['macs'], ',.0f')} "
            f"| {_fmt(c['search_time_s'], '.1f')} | {_fmt(c['search_images'], ',.0f')} "
            f"| {_fmt(cmp.diff, '+.4f') if cmp else '(baseline)'} | {_fmt(cmp.p_value, '.3g') if cmp else ''} |")
    return "\n".join(lines)


def _figures(out: Path, arms: list[str], results: list[dict[str, Any]]) -> dict[str, str]:
    """Strip + box plot of test accuracy per arm, op composition per trial, and each trial's cell pictures."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ilnas.utils.io import atomic_write

    figs = out / "figures"
    figs.mkdir(parents=True, exist_ok=True)
    made: dict[str, str] = {}
    data = [arm_values(results, a) for a in arms]
    fig, ax = plt.subplots(figsize=(1.6 + 1.4 * len(arms), 3.6))
    ax.boxplot([d if d else [math.nan] for d in data], widths=0.5, showfliers=False)
    for i, (arm, values) in enumerate(zip(arms, data), start=1):
        seeds = [res["search_seed"] for res in results if res["arm"] == arm and res["status"] == "ok"
                 for _ in res["retrains"]]
        jitter = [(k % 5 - 2) * 0.04 for k in range(len(values))]
        if values:
            ax.scatter([i + j for j in jitter], values, c=seeds, cmap="viridis", s=22, zorder=3)
    ax.set_xticks(range(1, len(arms) + 1), arms, rotation=20)
    ax.set_ylabel("retrained test top-1")
    ax.set_title("test accuracy per arm (points: search x retrain seeds)")
    atomic_write(figs / "test_top1.png", lambda p: fig.savefig(p, format="png", dpi=120, bbox_inches="tight"))
    plt.close(fig)
    made["test_top1"] = "figures/test_top1.png"

    ok = [r for r in results if r["status"] == "ok" and r.get("genotype")]
    if ok:
        ops = list(SHORT)
        fig, axes = plt.subplots(1, 2, figsize=(2 + 0.5 * len(ok), 3.6), sharey=True)
        for ax, cell in zip(axes, ("normal", "reduce")):
            bottom = [0] * len(ok)
            for op in ops:
                counts = [Counter(o for o, _ in r["genotype"][cell])[op] for r in ok]
                ax.bar(range(len(ok)), counts, bottom=bottom, label=SHORT[op])
                bottom = [b + c for b, c in zip(bottom, counts)]
            ax.set_xticks(range(len(ok)), [f"{r['arm']}/s{r['search_seed']}" for r in ok], rotation=70, fontsize=7)
            ax.set_title(f"{cell} cell: ops per trial")
        axes[0].set_ylabel("edges")
        axes[1].legend(fontsize=7, bbox_to_anchor=(1.02, 1), loc="upper left")
        atomic_write(figs / "cell_ops.png", lambda p: fig.savefig(p, format="png", dpi=120, bbox_inches="tight"))
        plt.close(fig)
        made["cell_ops"] = "figures/cell_ops.png"
        try:
            from ilnas.space.genotype import Genotype
            from ilnas.viz import plot_genotype

            for r in ok:
                plot_genotype(Genotype.from_dict(r["genotype"]), figs / "cells" / f"{r['arm']}_s{r['search_seed']}")
            made["cells"] = "figures/cells/"
        except Exception as exc:  # noqa: BLE001 - cell pictures are extras; the table has the cells
            made["cells_error"] = f"{type(exc).__name__}: {exc}"
    return made


def write_report(out_dir: str | os.PathLike, spec: dict[str, Any], trials: list[Trial], results: list[dict[str, Any]],
                 provenance: dict[str, Any]) -> tuple[Path, str, dict[str, Any]]:
    """Write ``report.md``, ``summary.json``, ``spec.yaml`` and figures; returns (report path, markdown, summary)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    arms = [a["name"] for a in spec["arms"]]
    kinds = {a["name"]: a.get("kind", "search") for a in spec["arms"]}
    baseline = spec["baseline"]
    by_key = {r["key"]: r for r in results}
    ordered = [by_key.get(t.key, {"key": t.key, "arm": t.arm, "search_seed": t.search_seed, "status": "missing",
                                  "error": "no result (the study was interrupted?)"}) for t in trials]
    summaries, comparisons, costs = summarize_study(arms, baseline, ordered)
    figures = _figures(out, arms, ordered)
    atomic_write_text(out / "spec.yaml", yaml.safe_dump(spec, sort_keys=False))

    n_ran = sum(1 for r in ordered if r.get("ran"))
    lines = [f"# Study `{spec['name']}`", ""]
    if spec.get("description"):
        lines += [spec["description"].strip(), ""]
    lines += [
        f"- commit `{provenance.get('git_commit')}`, code version `{provenance.get('code_version')}`, "
        f"spec `{provenance.get('spec_path')}` (hash `{provenance.get('spec_hash')}`)"
        + (f", overrides `{' '.join(provenance['overrides'])}`" if provenance.get("overrides") else ""),
        f"- {len(trials)} trials ({len(arms)} arms x {len(spec['search_seeds'])} search seeds), "
        f"{len(spec['retrain_seeds'])} retraining(s) each; this run executed {n_ran}, reused {len(ordered) - n_ran} "
        f"finished; engine: {provenance.get('engine', 'n/a')}; wall {_fmt(provenance.get('wall_s'), '.0f')} s",
        f"- search budget: {spec.get('search_images') or 'per arm'} training images per search trial; retrain "
        f"seed of pair (s, r) = 1000 s + r, the same pairs for every arm",
        "", "## Summary", "",
        f"Retrained test top-1 (held-out test split) over all (search seed, retrain seed) pairs; test: {TEST_NAME} "
        f"of each arm against `{baseline}`.", "",
        summary_table(arms, kinds, baseline, summaries, comparisons, costs), "",
    ]
    if "test_top1" in figures:
        lines += [f"![test top-1 per arm]({figures['test_top1']})", ""]
    lines += ["## Trials and their cells", "",
              "| arm | search seed | status | test top-1 per retrain seed | search s | images | normal cell "
              "| reduce cell | key |", "|---|---|---|---|---|---|---|---|---|"]
    for r in ordered:
        accs = ", ".join(_fmt(x["test_top1"]) for x in r.get("retrains", []))
        status = r["status"] + ("" if r["status"] != "ok" else (" (ran)" if r.get("ran") else " (cached)"))
        lines.append(f"| {r['arm']} | {r['search_seed']} | {status} | {accs} | {_fmt(r.get('search_time_s'), '.1f')} "
                     f"| {r.get('search_images', '')} | {cell_text(r.get('genotype'), 'normal')} "
                     f"| {cell_text(r.get('genotype'), 'reduce')} | `{r['key']}` |")
    lines += ["", "Ops: " + ", ".join(f"{v} = {k}" for k, v in SHORT.items()) + "; `op<j`: input state j "
              "(0, 1: the cell inputs; 2+: earlier nodes).", ""]
    if "cell_ops" in figures:
        lines += [f"![ops per trial]({figures['cell_ops']})", "",
                  "Cell pictures: `figures/cells/<arm>_s<seed>/`.", ""]
    failures = [r for r in ordered if r["status"] != "ok"]
    if failures:
        lines += ["## Failed trials", ""]
        lines += [f"- `{r['arm']}` seed {r['search_seed']} ({r['status']}): {r.get('error', '')}" for r in failures]
        lines.append("")
    lines += ["## Spec", "", "```yaml", yaml.safe_dump(spec, sort_keys=False).rstrip(), "```", ""]
    markdown = "\n".join(lines)
    summary = {"study": spec["name"], "provenance": provenance,
               "arms": {a: {**summaries[a].to_dict(), **costs[a],
                            **({"vs_baseline": comparisons[a].to_dict()} if a in comparisons else {})} for a in arms},
               "trials": [{k: v for k, v in r.items() if k not in ("search_history", "traceback")} for r in ordered],
               "figures": figures}
    atomic_write_json(out / "summary.json", json.loads(json.dumps(summary, default=str)))
    path = atomic_write_text(out / "report.md", markdown)
    return path, markdown, summary
