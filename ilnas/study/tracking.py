"""MLflow for a study: one parent run per study, one child run per trial, per-arm summaries on the parent.

Every child carries the same metric names whatever its arm (a random or fixed cell logs
``search_time_s = 0`` and ``search_images = 0``), and the tags ``arm``, ``strategy``, ``search_seed``,
``study`` and ``trial_key``, so the MLflow UI compares arms by grouping children on ``arm``. The parent
gets ``<arm>/test_top1_mean`` (and interval, percentile among random cells, Holm p of each comparison) and
the report as artifacts. Runs are written by the flow process through the client API, not by the workers,
so workers on other machines need no access to the tracking store.

Reruns add no runs: a trial's run id is kept in its directory (``mlflow_run.json``) and a cached trial
points at that run; a study whose spec, code and results are unchanged finds its parent run by the tags
``study``, ``spec_hash``, ``code_version`` and ``fingerprint`` and logs nothing new.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from ilnas.study.trials import Trial
from ilnas.tracking import end_parent_run, flatten, numeric, start_parent_run

TRIAL_METRICS = ("test_top1", "test_top1_std", "test_loss", "params", "macs", "search_time_s", "search_images",
                 "retrain_time_s", "trial_wall_s")


RUN_FILE = "mlflow_run.json"


def start_study_run(uri: str, experiment: str, spec: dict[str, Any], tags: dict[str, Any]) -> str:
    return start_parent_run(uri, experiment, run_name=f"study {spec['name']}",
                            tags={"stage": "study", "study": spec["name"], **tags}, params={"study": spec})


def existing_study_run(uri: str, experiment: str, tags: dict[str, str]) -> str | None:
    """The finished parent run of an identical study (same name, spec hash, code version, results), if any."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return None
    query = " AND ".join(f"tags.{k} = '{v}'" for k, v in tags.items())
    runs = client.search_runs([exp.experiment_id], query + " AND attributes.status = 'FINISHED'", max_results=1)
    return runs[0].info.run_id if runs else None


def logged_trial_run(uri: str, trial_dir: Path) -> str | None:
    """The run a trial was logged to before, if that run is still in the store at ``uri``."""
    import json

    from mlflow.tracking import MlflowClient

    try:
        data = json.loads((trial_dir / RUN_FILE).read_text())
        if data.get("uri") != uri:
            return None
        MlflowClient(tracking_uri=uri).get_run(data["run_id"])
        return str(data["run_id"])
    except Exception:  # noqa: BLE001 - missing file, other store, deleted run: log it anew
        return None


def trial_metrics(result: dict[str, Any]) -> dict[str, float]:
    """The trial's headline numbers; identical names for every arm (NaN for a failed trial's accuracies)."""
    runs = result.get("retrains") or []
    accs = [r["test_top1"] for r in runs]
    mean = sum(accs) / len(accs) if accs else math.nan
    std = math.sqrt(sum((a - mean) ** 2 for a in accs) / (len(accs) - 1)) if len(accs) > 1 else math.nan
    avg = lambda key: sum(r[key] for r in runs) / len(runs) if runs else math.nan  # noqa: E731
    return {"test_top1": mean, "test_top1_std": std, "test_loss": avg("test_loss"), "params": avg("params"),
            "macs": avg("macs"), "search_time_s": float(result.get("search_time_s", math.nan)),
            "search_images": float(result.get("search_images", math.nan)), "retrain_time_s": avg("retrain_time_s"),
            "trial_wall_s": float(result.get("wall_s", math.nan)),
            **{k: float(v) for k, v in result.items() if k.startswith("search_val_")}}


def log_trial_run(uri: str, parent_run_id: str, trial: Trial, result: dict[str, Any]) -> str:
    """A child run of the study's parent for one trial; a trial logged before keeps its run (nothing new)."""
    from mlflow.entities import Metric, Param
    from mlflow.tracking import MlflowClient

    from ilnas.utils.io import atomic_write_json

    trial_dir = Path(result.get("dir", "")) if result.get("dir") else None
    if trial_dir is not None and result["status"] == "ok":
        previous = logged_trial_run(uri, trial_dir)
        if previous:
            return previous

    client = MlflowClient(tracking_uri=uri)
    experiment_id = client.get_run(parent_run_id).info.experiment_id
    tags = {"mlflow.parentRunId": parent_run_id, "stage": "study-trial", "study": trial.study, "arm": trial.arm,
            "kind": trial.kind, "strategy": trial.strategy, "search_seed": str(trial.search_seed),
            "trial_key": trial.key, "status": result["status"], "cached": str(not result.get("ran", False)).lower(),
            "trial_dir": str(result.get("dir", ""))}
    if result.get("error"):
        tags["error"] = str(result["error"])[:4000]
    run = client.create_run(experiment_id, run_name=f"{trial.arm} s{trial.search_seed}", tags=tags)
    run_id = run.info.run_id
    params = flatten({"retrain": trial.params["retrain"], "retrain_seeds": trial.retrain_seeds,
                      **({"search": trial.params["search"]} if trial.kind == "search" else {})})
    items = [Param(k, v) for k, v in params.items()]
    for i in range(0, len(items), 100):
        client.log_batch(run_id, params=items[i:i + 100])
    metrics = [Metric(k, v, 0, 0) for k, v in numeric(trial_metrics(result)).items()]
    for step, r in enumerate(result.get("retrains") or []):
        metrics.append(Metric("test_top1_by_retrain_seed", float(r["test_top1"]), 0, step))
    for row in result.get("search_history") or []:
        metrics.extend(Metric(f"search/{k}", v, 0, int(row["epoch"])) for k, v in numeric(row).items() if k != "epoch")
    for i in range(0, len(metrics), 500):
        client.log_batch(run_id, metrics=metrics[i:i + 500])
    if result.get("genotype"):
        client.log_dict(run_id, result["genotype"], "genotype.json")
    client.set_terminated(run_id, status="FINISHED" if result["status"] == "ok" else "FAILED")
    if trial_dir is not None and result["status"] == "ok" and trial_dir.is_dir():
        atomic_write_json(trial_dir / RUN_FILE, {"uri": uri, "run_id": run_id})
    return run_id


def end_study_run(uri: str, run_id: str, summary: dict[str, Any], report_dir: Path, markdown: str,
                  failed: bool) -> None:
    """Per-arm summary metrics, each comparison's Holm p, the report folder as artifacts, the final status."""
    from mlflow.tracking import MlflowClient

    metrics: dict[str, float] = {}
    for arm, s in summary["arms"].items():
        for key in ("mean", "std", "ci95_low", "ci95_high"):
            metrics[f"{arm}/test_top1_{key}"] = s[key]
        for key in ("cells", "failed", "params", "macs", "search_time_s", "search_images", "arch_steps",
                    "percentile", "percentile_ci95_low", "percentile_ci95_high"):
            if key in s:
                metrics[f"{arm}/{key}"] = s[key]
    for c in summary["comparisons"]:
        for key in ("diff", "diff_ci95_low", "diff_ci95_high", "hedges_g", "p_value", "p_holm"):
            metrics[f"{c['arm']}_vs_{c['other']}/{key}"] = c[key]
    metrics["detectable_difference"] = summary["power"]["detectable_difference"]
    MlflowClient(tracking_uri=uri).log_artifacts(run_id, str(report_dir), "report")
    end_parent_run(uri, run_id, "FAILED" if failed else "FINISHED",
                   tags={"trials_failed": sum(s["failed"] for s in summary["arms"].values()),
                         "fingerprint": summary.get("fingerprint", ""), "verdict": summary["verdict"][:4000]},
                   metrics={k: v for k, v in metrics.items() if isinstance(v, int | float) and math.isfinite(v)},
                   markdown=markdown)
