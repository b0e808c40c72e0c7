"""Run one trial on whatever worker it lands on: search (or sample) -> derive -> retrain x retrain seeds.

Everything is the library the pipeline stages call: :func:`ilnas.search.run_search` (resumable from the
trial's ``search/checkpoint.pt``), :func:`ilnas.search.derive_genotype_from_file` (the derive stage's
DARTS rule on the written alphas) and :func:`ilnas.train.retrain` (resumable from its last checkpoint).

Outputs in ``<trials_dir>/<key>/``: ``trial.json`` (the trial, as scheduled), ``genotype.json``,
``search/`` and ``retrain_seed<N>/`` (the library's own files), and ``result.json``, written last and
atomically: it is the only marker of a finished trial. A failed trial (an exception, a NaN) writes
``failed.json`` instead and returns its error; it is retried by the next run of the study.
"""

from __future__ import annotations

import json
import math
import os
import time
import traceback
from pathlib import Path
from typing import Any

from ilnas.study.trials import Trial
from ilnas.utils.io import atomic_write_json

RESULT, FAILED = "result.json", "failed.json"


class TrialDiverged(FloatingPointError):
    """A retraining ended with a non-finite loss."""


def trial_dir(trials_dir: str | os.PathLike, trial: Trial) -> Path:
    return Path(trials_dir) / trial.key


def finished_result(trials_dir: str | os.PathLike, trial: Trial) -> dict[str, Any] | None:
    """The stored result of a finished trial, or None (missing or unreadable: the trial runs again)."""
    path = trial_dir(trials_dir, trial) / RESULT
    try:
        result = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return result if result.get("status") == "ok" and result.get("key") == trial.key else None


def _final_search_metrics(history: list[dict[str, Any]]) -> dict[str, float]:
    """The search's last-epoch headline, comparable across K (loss / ln C and accuracy above chance, task means)."""
    last = history[-1] if history else {}
    return {f"search_{k}": float(last[k]) for k in ("val_loss_norm_mean", "val_acc_above_chance_mean") if k in last}


def _obtain_cell(trial: Trial, out: Path) -> tuple[Any, dict[str, Any], list[dict[str, Any]]]:
    from ilnas.space.genotype import Genotype

    if trial.kind != "search":
        return Genotype.from_dict(trial.genotype or {}), {"search_time_s": 0.0, "search_images": 0}, []
    from ilnas.params import PipelineParams
    from ilnas.search import derive_genotype_from_file, run_search
    from ilnas.study.spec import images_per_iteration

    params = PipelineParams.model_validate(trial.params)
    started = time.perf_counter()
    result = run_search(params.search, out / "search", resume=True, progress=False)
    select = getattr(params.derive, "select", None)  # the derive stage's choice of epoch, where it has one
    genotype = derive_genotype_from_file(result.alphas, select) if select else derive_genotype_from_file(result.alphas)
    info = {"search_time_s": time.perf_counter() - started,
            "search_iterations": int(result.metrics.get("iterations", 0)),
            "search_images": int(result.metrics.get("iterations", 0)) * images_per_iteration(params),
            **_final_search_metrics(result.history)}
    return genotype, info, result.history


def _retrain(trial: Trial, genotype: Any, out: Path, proxy_cache: Path) -> list[dict[str, Any]]:
    """The cell's retrainings, one per retrain seed: the study's protocol, shared with the reference cache."""
    from ilnas.params import PipelineParams

    base = PipelineParams.model_validate(trial.params).retrain
    runs = []
    for seed in trial.retrain_seeds:
        if base.val_fraction > 0:  # read on validation too: the proxy evaluation (cached by protocol and cell)
            from ilnas.study.proxy import evaluate_cell

            protocol = {k: v for k, v in trial.params["retrain"].items() if k != "seed"}
            r = evaluate_cell(genotype, protocol, seed, proxy_cache, threads=None)
            runs.append({"retrain_seed": seed, "test_top1": r["test_top1"], "test_loss": r["test_loss"],
                         "val_top1": r["val_top1"], "val_loss": r["val_loss"], "params": r["params"],
                         "macs": r["macs"], "epochs": base.epochs, "retrain_time_s": r["wall_s"],
                         "test_images": r["test_images"], "val_images": r["val_images"]})
            continue
        from ilnas.train import retrain

        started = time.perf_counter()
        res = retrain(base.model_copy(update={"seed": seed}), genotype, out / f"retrain_seed{seed}", resume=True)
        m = res.metrics
        if not (math.isfinite(float(m.get("loss", math.nan))) and math.isfinite(float(m.get("top1", math.nan)))):
            raise TrialDiverged(f"retrain seed {seed}: non-finite test loss {m.get('loss')} (top1 {m.get('top1')})")
        runs.append({"retrain_seed": seed, "test_top1": float(m["top1"]), "test_loss": float(m["loss"]),
                     "params": int(m["params"]), "macs": int(m["macs"]), "epochs": int(m["epochs"]),
                     "retrain_time_s": time.perf_counter() - started, "test_images": int(m["test_images"])})
    return runs


def run_trial(trial: Trial | dict[str, Any], trials_dir: str | os.PathLike, threads: int | None = 1,
              proxy_cache: str | os.PathLike | None = None) -> dict[str, Any]:
    """Run (or resume) one trial; returns its result, ``status`` ``ok`` or ``failed`` (never raises for a trial).

    ``proxy_cache``: where protocol evaluations are cached (default ``<trials_dir>/../proxy``).
    """
    trial = Trial.from_dict(trial) if isinstance(trial, dict) else trial
    out = trial_dir(trials_dir, trial)
    cached = finished_result(trials_dir, trial)
    if cached is not None:
        return {**cached, "ran": False}
    if threads:
        import torch

        torch.set_num_threads(threads)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "trial.json", trial.to_dict())
    (out / FAILED).unlink(missing_ok=True)
    head = {"key": trial.key, "study": trial.study, "arm": trial.arm, "kind": trial.kind,
            "strategy": trial.strategy, "search_seed": trial.search_seed, "dir": str(out), "ran": True,
            "arch_steps": trial.arch_steps, "selection": trial.selection,
            "host": os.uname().nodename, "pid": os.getpid()}
    started = time.perf_counter()
    history: list[dict[str, Any]] = []
    try:
        genotype, info, history = _obtain_cell(trial, out)
        genotype.to_json(out / "genotype.json")
        runs = _retrain(trial, genotype, out, Path(proxy_cache or Path(trials_dir).parent / "proxy"))
    except Exception as exc:  # noqa: BLE001 - one failed trial must not stop the study
        failed = {**head, "status": "failed", "error": f"{type(exc).__name__}: {exc}"[:2000],
                  "traceback": traceback.format_exc()[-4000:], "wall_s": time.perf_counter() - started}
        atomic_write_json(out / FAILED, failed)
        return failed
    result = {**head, "status": "ok", "genotype": genotype.to_dict(), **info, "retrains": runs,
              "search_history": history, "wall_s": time.perf_counter() - started}
    atomic_write_json(out / RESULT, result)
    return result
