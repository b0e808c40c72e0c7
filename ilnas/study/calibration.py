"""Choosing the study's proxy evaluation on validation data, with a rule fixed before the results are seen.

A calibration spec (``configs/calibration.yaml``) names candidate proxies (short, narrow retrainings) and a
*target* (a longer, wider retraining the proxy stands for), all read on the validation split. The same
random cells (sampled exactly like the reference distribution) are evaluated by every candidate with
several seeds and by the target. Per candidate it reports:

* Kendall's tau between the candidate's mean validation accuracy per cell and the target's (rank fidelity);
* ICC(1): the share of the candidate's variance that is between cells rather than between seeds;
* the smallest detectable difference of the study design (cells per arm, retrain seeds, comparisons).

The rule (``selection``): the candidate with the highest tau, among those whose ICC is at least
``min_icc``; ties go to the cheaper candidate. If no candidate reaches ``min_icc``, the report says the task
cannot tell cells apart at this budget. The test split is never read for the choice.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from ilnas.study import stats
from ilnas.study.proxy import validate_protocol
from ilnas.study.spec import NAME_PATTERN, deep_merge


class CalibrationSpec(BaseModel):
    """``configs/calibration.yaml``; unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=NAME_PATTERN)
    description: str = ""
    cells: int = Field(default=20, ge=3, description="random cells (reference sample indices 0..cells-1)")
    nodes: int = Field(default=4, ge=1)
    seeds: list[int] = Field(default=[0, 1], min_length=2, description="seeds of every candidate per cell")
    target_seeds: list[int] = Field(default=[0], min_length=1)
    base: dict[str, Any] = Field(default_factory=dict, description="retrain keys shared by candidates and target")
    candidates: dict[str, dict[str, Any]] = Field(min_length=1, description="name -> retrain keys over base")
    target: dict[str, Any] = Field(description="retrain keys over base: the long evaluation")
    min_icc: float = Field(default=0.2, ge=0, le=1)
    design_cells: int = Field(default=10, ge=2, description="cells per arm of the study this calibrates")
    design_retrain_seeds: int = Field(default=2, ge=1)
    design_comparisons: int = Field(default=3, ge=1, description="comparisons in the study's Holm family")

    @field_validator("candidates")
    @classmethod
    def _names(cls, value: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        import re

        bad = [k for k in value if not re.match(NAME_PATTERN, k)]
        if bad:
            raise ValueError(f"candidate names {bad} must match {NAME_PATTERN}")
        return value

    def protocol(self, name: str) -> dict[str, Any]:
        edits = self.target if name == "target" else self.candidates[name]
        return validate_protocol(deep_merge(self.base, edits), f"candidates.{name}" if name != "target" else "target")


def summarize_calibration(spec: CalibrationSpec, records: dict[str, dict[int, list[dict[str, Any]]]]
                          ) -> dict[str, Any]:
    """``records[protocol][cell index]`` -> the evaluations; returns per-candidate tau, ICC, MDE and the choice."""
    target = [float(np.mean([r["val_top1"] for r in records["target"][i]])) for i in range(spec.cells)]
    rows = {}
    for name in spec.candidates:
        per_cell = [[r["val_top1"] for r in records[name][i]] for i in range(spec.cells)]
        means = [float(np.mean(v)) for v in per_cell]
        tau, p = stats.kendall_tau(means, target)
        icc = stats.icc1(per_cell)
        mde = stats.detectable_difference(icc["between_sd"], icc["within_sd"], spec.design_cells,
                                          spec.design_retrain_seeds, spec.design_comparisons)
        wall = float(np.mean([r["wall_s"] for i in range(spec.cells) for r in records[name][i]]))
        rows[name] = {"kendall_tau": tau, "tau_p_value": p, **icc, "detectable_difference": mde,
                      "mean_val_top1": float(np.mean(means)), "wall_s_per_eval": wall,
                      "protocol": spec.protocol(name)}
    eligible = [n for n, r in rows.items() if not math.isnan(r["icc"]) and r["icc"] >= spec.min_icc]
    chosen = max(eligible, key=lambda n: (round(rows[n]["kendall_tau"], 3), -rows[n]["wall_s_per_eval"]),
                 default=None)
    target_wall = float(np.mean([r["wall_s"] for i in range(spec.cells) for r in records["target"][i]]))
    return {"name": spec.name, "cells": spec.cells, "seeds": spec.seeds, "target_seeds": spec.target_seeds,
            "candidates": rows, "target": {"protocol": spec.protocol("target"), "wall_s_per_eval": target_wall,
                                           "mean_val_top1": float(np.mean(target))},
            "chosen": chosen, "rule": f"highest Kendall tau to the target among candidates with ICC >= "
            f"{spec.min_icc}; ties to the cheaper one",
            "verdict": _verdict(rows, chosen, spec.min_icc)}


def _verdict(rows: dict[str, dict[str, Any]], chosen: str | None, min_icc: float) -> str:
    if chosen is None:
        best = max(rows, key=lambda n: rows[n]["icc"] if not math.isnan(rows[n]["icc"]) else -1)
        return (f"no candidate separates cells: the highest ICC is {rows[best]['icc']:.2f} ({best}) < {min_icc}; "
                "seed noise dominates the differences between cells on this task at this budget")
    r = rows[chosen]
    return (f"chosen proxy: {chosen} (Kendall tau {r['kendall_tau']:.2f} to the target, ICC {r['icc']:.2f}, "
            f"smallest detectable difference {r['detectable_difference']:.4f} at the study design)")


def calibration_markdown(summary: dict[str, Any]) -> str:
    lines = [f"# Proxy calibration `{summary['name']}`", "",
             f"{summary['cells']} random cells; candidate seeds {summary['seeds']}, target seeds "
             f"{summary['target_seeds']}; every figure on the validation split (the test split is not read).",
             "", f"Rule, fixed before the run: {summary['rule']}.", "",
             "| candidate | Kendall tau (p) | ICC | between-cell SD | within-cell SD | detectable diff. | "
             "mean val top-1 | s / eval |", "|---|---|---|---|---|---|---|---|"]
    for name, r in summary["candidates"].items():
        lines.append(f"| {name}{' (chosen)' if name == summary['chosen'] else ''} | {r['kendall_tau']:.3f} "
                     f"({r['tau_p_value']:.3g}) | {r['icc']:.3f} | {r['between_sd']:.4f} | {r['within_sd']:.4f} | "
                     f"{r['detectable_difference']:.4f} | {r['mean_val_top1']:.4f} | {r['wall_s_per_eval']:.1f} |")
    t = summary["target"]
    lines += ["", f"Target: mean val top-1 {t['mean_val_top1']:.4f}, {t['wall_s_per_eval']:.1f} s per evaluation.",
              "", f"**{summary['verdict']}**", ""]
    return "\n".join(lines)
