"""The study report: ``reports/<study>/report.md`` (figures embedded), ``summary.json``, ``spec.yaml``, ``figures/``.

It opens with the answer (a verdict sentence per comparison), then one table per arm (mean and interval,
percentile among random cells, effects against the other arms with Holm-corrected p-values), the design and
its power, the protocol and how it was chosen, the figures, every trial and the provenance. A rerun whose
results did not change leaves every file as it was (``fingerprint`` over the results, not the timings).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from ilnas.study import analysis, figures
from ilnas.study.reference import reference_summary
from ilnas.study.stats import TEST_NAME
from ilnas.study.trials import Trial
from ilnas.utils.fingerprint import json_digest
from ilnas.utils.io import atomic_write_json, atomic_write_text

SHORT = {"max_pool_3x3": "max3", "avg_pool_3x3": "avg3", "skip_connect": "skip", "sep_conv_3x3": "sep3",
         "sep_conv_5x5": "sep5", "dil_conv_3x3": "dil3", "dil_conv_5x5": "dil5"}
VOLATILE = ("wall_s", "ran", "engine", "prefect_flow_run_id", "mlflow_parent_run_id", "host", "pid", "dir",
            "search_time_s", "retrain_time_s", "trial_wall_s", "cached", "wall_s_per_eval")


def cell_text(genotype: dict[str, Any] | None, cell: str) -> str:
    if not genotype:
        return ""
    return " ".join(f"{SHORT.get(op, op)}<{i}" for op, i in genotype[cell])


def _f(v: Any, spec: str = ".4f") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    return format(v, spec)


def fingerprint(summary: dict[str, Any]) -> str:
    """Hash of what the study found (cells, accuracies, statistics), blind to timings and run ids."""
    def strip(x: Any) -> Any:
        if isinstance(x, dict):
            return {k: strip(v) for k, v in x.items() if k not in VOLATILE and k != "provenance"}
        if isinstance(x, list):
            return [strip(v) for v in x]
        return x
    return json_digest(strip(summary), 16)


def _curves(trials: list[Trial], results: list[dict[str, Any]]) -> dict[str, list[dict[str, list[float]]]]:
    by_key = {t.key: t for t in trials}
    curves: dict[str, list[dict[str, list[float]]]] = {}
    for r in results:
        hist = r.get("search_history") or []
        if r["status"] != "ok" or not hist or figures.ANYTIME_METRIC not in hist[-1]:
            continue
        per_epoch = by_key[r["key"]].search_images / max(1, len(hist)) if r["key"] in by_key else 0
        curves.setdefault(r["arm"], []).append({
            "images": [per_epoch * row["epoch"] for row in hist],
            "wall_s": list(np.cumsum([row.get("epoch_time_s", 0.0) for row in hist])),
            "metric": [row[figures.ANYTIME_METRIC] for row in hist]})
    return curves


def _figures(out: Path, spec: dict[str, Any], trials: list[Trial], results: list[dict[str, Any]],
             reference: list[float] | None) -> dict[str, bytes]:
    figs = out / "figures"
    arms = [a["name"] for a in spec["arms"]]
    made: dict[str, bytes | None] = {
        "accuracy": figures.accuracy_figure(figs / "test_top1.png", arms,
                                            {a: analysis.nested_values(results, a) for a in arms}, reference),
        "anytime": figures.anytime_figure(figs / "anytime.png", _curves(trials, results))}
    ok = [r for r in results if r["status"] == "ok" and r.get("genotype")]
    made["ops"] = figures.ops_figure(figs / "cell_ops.png", {a: [r["genotype"] for r in ok if r["arm"] == a]
                                                              for a in arms if any(r["arm"] == a for r in ok)})
    for arm in arms:  # the arm's median cell (by its mean test top-1), as a picture
        mine = sorted((r for r in ok if r["arm"] == arm),
                      key=lambda r: np.mean([x["test_top1"] for x in r["retrains"]]))
        if mine:
            med = mine[len(mine) // 2]
            made[f"cell:{arm}"] = figures.cell_figure(figs / "cells" / f"{arm}_s{med['search_seed']}_normal.png",
                                                      med["genotype"], f"study {spec['name']}, {arm}, search seed "
                                                      f"{med['search_seed']} (median cell)")
    return {k: v for k, v in made.items() if v}


def _results_table(spec: dict[str, Any], arms: dict[str, dict[str, Any]], comps: list[dict[str, Any]]) -> list[str]:
    others = list(dict.fromkeys(c["other"] for c in comps))
    head = ["arm", "kind", "cells ok/failed", "val top-1 (for choices)", "test top-1 mean [95 % CI]",
            "percentile among random cells [95 % CI]"]
    head += [f"vs {o}: diff [95 % CI], g, Holm p" for o in others]
    head += ["search images", "arch steps", "search s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, a in arms.items():
        row = [name, a["kind"], f"{a['cells']}/{a['failed']}", _f(a.get("val_top1_mean")),
               f"{_f(a['mean'])} [{_f(a['ci95_low'])}, {_f(a['ci95_high'])}]",
               f"{_f(a.get('percentile'), '.0f')} [{_f(a.get('percentile_ci95_low'), '.0f')}, "
               f"{_f(a.get('percentile_ci95_high'), '.0f')}]" if "percentile" in a else "n/a"]
        for o in others:
            c = next((c for c in comps if c["arm"] == name and c["other"] == o), None)
            row.append(f"{c['diff']:+.4f} [{_f(c['diff_ci95_low'], '+.4f')}, {_f(c['diff_ci95_high'], '+.4f')}], "
                       f"{_f(c['hedges_g'], '.2f')}, {_f(c['p_holm'], '.3g')}" if c else "")
        row += [_f(a["search_images"], ",.0f"), _f(a["arch_steps"], ".0f"), _f(a["search_time_s"], ".0f")]
        lines.append("| " + " | ".join(row) + " |")
    return lines


def _cells_table(arms: dict[str, dict[str, Any]]) -> list[str]:
    """Collapse and stability of each arm's normal cells across search seeds (random cells: the baseline)."""
    lines = ["## Cells across search seeds", "",
             "Normal cell, one per search seed. Parameter-free: skip, max and average pooling. Stability: edges "
             "`(node, input, op)` that two cells share and the edit distance between them, over every pair of "
             "seeds; majority edges: edges found in more than half the arm's cells.", "",
             "| arm | parameter-free edges (mean) | cells with at most half parameter-free | shared edges per pair "
             "(mean) | edit distance (mean) | majority edges |", "|---|---|---|---|---|---|"]
    for name, a in arms.items():
        if "normal_edges" not in a:
            continue
        n = a["normal_edges"]
        lines.append(f"| {name} | {_f(a['param_free_normal_mean'], '.1f')} / {n} | {a['cells_within_bound']} of "
                     f"{a['cells']} | {_f(a['shared_edges_mean'], '.1f')} / {n} | {_f(a['edit_distance_mean'], '.1f')}"
                     f" | {a['majority_edges']} |")
    return lines + [""]


def _design(spec: dict[str, Any], summary: dict[str, Any], results: list[dict[str, Any]]) -> list[str]:
    p, ref = summary["power"], summary.get("reference")
    runs = [run for r in results if r["status"] == "ok" for run in r["retrains"]]
    test_n = runs[0].get("test_images") if runs else None
    val_n = runs[0].get("val_images") if runs else None
    lines = ["## Design and power", "",
             f"- {len(spec['search_seeds'])} search seeds per arm (one cell each), {len(spec['retrain_seeds'])} "
             f"retraining(s) per cell (seed of pair (s, r) = 1000 s + r, the same pairs for every arm).",
             f"- Test split: {test_n} images, read once for this report (one image = "
             f"{_f(1 / test_n if test_n else None, '.4f')} top-1). Validation split: {val_n} images of the training "
             "pool (what every selection reads).",
             f"- Statistics: {TEST_NAME}; intervals by a two-level bootstrap (search seeds, then retrain seeds), "
             "clipped to [0, 1]; Hedges' g on cell means.",
             f"- Smallest detectable difference: **{_f(p['detectable_difference'])}** test top-1 (80 % power, "
             f"alpha 0.05 / {len(summary['comparisons'])} comparisons), from the `{spec['baseline']}` arm's "
             f"between-cell SD {_f(p['baseline_between_sd'])} and within-cell SD {_f(p['baseline_within_sd'])} "
             f"(ICC {_f(p['baseline_icc'], '.2f')}).",
             f"- Budget: {spec.get('search_images') or 'per arm'} training images per search; architecture steps "
             "per arm in the table (equal by construction: the spec is refused otherwise)."]
    if ref:
        lines.append(f"- Reference distribution: {ref['cells']} random cells shaped like derived cells (two inputs "
                     f"from distinct predecessors, no `none`), one evaluation each (seed 0) by the study's protocol: "
                     f"test top-1 median {_f(ref['test']['p50'])} (5-95 %: {_f(ref['test']['p5'])}-"
                     f"{_f(ref['test']['p95'])}); {_f(ref['wall_s_per_eval'], '.1f')} s per evaluation.")
    per_eval = (ref or {}).get("wall_s_per_eval", 0.0)
    for arm in spec["arms"]:
        if arm.get("kind") == "random_search":
            lines.append(f"- `{arm['name']}`: random search (Li & Talwalkar) over {arm['candidates']} reference cells "
                         f"per seed, the best by validation top-1 kept and retrained like every other cell; its "
                         f"proxy compute is {arm['candidates']} evaluations (~{_f(per_eval * arm['candidates'], '.0f')}"
                         " s) against the searches' times in the table.")
    return lines + [""]


def _protocol(spec: dict[str, Any], calibration: dict[str, Any] | None) -> list[str]:
    retrain = spec.get("base", {}).get("retrain", {})
    lines = ["## Evaluation protocol and how it was chosen", "",
             "Every cell (searched, random, reference) is retrained from scratch by the same protocol, read at the "
             "last epoch (no per-epoch selection): `" + json.dumps(retrain, sort_keys=True) + "`.", ""]
    if calibration:
        c = calibration["candidates"].get(calibration.get("chosen") or "", {})
        lines += [f"Chosen on validation by the calibration `{calibration['name']}` ({calibration['rule']}): "
                  f"{calibration['verdict']}. Kendall tau {_f(c.get('kendall_tau'), '.2f')} against the target "
                  f"over {calibration['cells']} random cells; ICC {_f(c.get('icc'), '.2f')}.", ""]
    else:
        lines += ["No calibration report names this protocol (`calibration:` in the spec): its choice is not "
                  "documented here.", ""]
    return lines


def _trials_table(results: list[dict[str, Any]]) -> list[str]:
    lines = ["## Every trial", "", "| arm | seed | status | test top-1 per retrain seed | val top-1 | normal cell "
             "| reduce cell | key |", "|---|---|---|---|---|---|---|---|"]
    for r in results:
        accs = ", ".join(_f(x["test_top1"]) for x in r.get("retrains", []))
        vals = ", ".join(_f(x.get("val_top1")) for x in r.get("retrains", []))
        lines.append(f"| {r['arm']} | {r['search_seed']} | {r['status']} | {accs} | {vals} "
                     f"| {cell_text(r.get('genotype'), 'normal')} | {cell_text(r.get('genotype'), 'reduce')} "
                     f"| `{r['key']}` |")
    failures = [r for r in results if r["status"] != "ok"]
    lines += [""] + [f"- failed: `{r['arm']}` seed {r['search_seed']}: {r.get('error', '')}" for r in failures]
    return lines + ["", "Ops: " + ", ".join(f"{v} = {k}" for k, v in SHORT.items()) + "; `op<j`: input state j.", ""]


def build_summary(spec: dict[str, Any], family: list[tuple[str, str]], results: list[dict[str, Any]],
                  reference: list[dict[str, Any]] | None, provenance: dict[str, Any]) -> dict[str, Any]:
    ref_test = [r["test_top1"] for r in reference] if reference else None
    arms = {a["name"]: analysis.arm_row(a, results, ref_test) for a in spec["arms"]}
    comps = analysis.comparisons(spec, family, results)
    power = analysis.detectable(spec, results, len(comps))
    summary = {"study": spec["name"], "arms": arms, "comparisons": comps, "power": power,
               "verdict": analysis.verdict(arms, comps, power, (reference_summary(reference).get("test") or {})
                                           .get("p50") if reference else None),
               "reference": reference_summary(reference) if reference else None,
               "trials": [{k: v for k, v in r.items() if k not in ("search_history", "traceback")} for r in results],
               "provenance": provenance}
    return json.loads(json.dumps(summary, default=str))


def write_report(out_dir: str | os.PathLike, spec: dict[str, Any], family: list[tuple[str, str]],
                 trials: list[Trial], results: list[dict[str, Any]], provenance: dict[str, Any],
                 reference: list[dict[str, Any]] | None = None, calibration: dict[str, Any] | None = None
                 ) -> tuple[Path, str, dict[str, Any], bool]:
    """Write the report unless its results are unchanged; returns (path, markdown, summary, changed)."""
    out = Path(out_dir)
    by_key = {r["key"]: r for r in results}
    ordered = [by_key.get(t.key, {"key": t.key, "arm": t.arm, "search_seed": t.search_seed, "status": "missing",
                                  "error": "no result (the study was interrupted?)"}) for t in trials]
    summary = build_summary(spec, family, ordered, reference, provenance)
    summary["fingerprint"] = fingerprint(summary)
    path = out / "report.md"
    try:
        old = json.loads((out / "summary.json").read_text())
    except (OSError, ValueError):
        old = {}
    if old.get("fingerprint") == summary["fingerprint"] and path.exists():
        return path, path.read_text(), old, False
    out.mkdir(parents=True, exist_ok=True)
    figs = _figures(out, spec, trials, ordered, [r["test_top1"] for r in reference] if reference else None)
    lines = [f"# Study `{spec['name']}`", "", (spec.get("description") or "").strip(), "", "## Answer", "",
             summary["verdict"], "", "## Results (retrained test top-1)", "",
             *_results_table(spec, summary["arms"], summary["comparisons"]), "",
             *_cells_table(summary["arms"]),
             *_design(spec, summary, ordered), *_protocol(spec, calibration), "## Figures", ""]
    for name, png in figs.items():
        lines += [f"![{name}]({figures.data_uri(png)})", ""]
    lines += [*_trials_table(ordered), "## Provenance", "",
              f"commit `{provenance.get('git_commit')}`, code version `{provenance.get('code_version')}`, spec "
              f"`{provenance.get('spec_path')}` (hash `{provenance.get('spec_hash')}`), overrides "
              f"`{' '.join(provenance.get('overrides') or []) or 'none'}`; engine: {provenance.get('engine')}.", "",
              "```yaml", yaml.safe_dump(spec, sort_keys=False).rstrip(), "```", ""]
    markdown = "\n".join(lines)
    atomic_write_text(out / "spec.yaml", yaml.safe_dump(spec, sort_keys=False))
    atomic_write_json(out / "summary.json", summary)
    atomic_write_text(path, markdown)
    return path, markdown, summary, True
