"""MLflow helpers for the pipeline stages and the Prefect flow (never imported by the ML library modules).

Why a wrapper: tracking is best effort. A stage must still write its DVC outputs when MLflow is
unreachable or misconfigured, so every MLflow call goes through :meth:`StageTracker._safe`, which logs a
warning naming what failed and carries on.

Run layout: the flow opens one parent run per pipeline run and passes its id to the stages in
``$ILNAS_MLFLOW_PARENT_RUN_ID``; each stage that runs opens a nested child run. A stage run alone
(``dvc repro`` without Prefect) opens its own top-level run.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger("ilnas.tracking")

ENV_PARENT_RUN_ID = "ILNAS_MLFLOW_PARENT_RUN_ID"
TELEMETRY_OFF = {
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "1",
    "DVC_NO_ANALYTICS": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
}


def telemetry_off() -> None:
    """Turn MLflow/DVC/Prefect telemetry off unless the user chose otherwise."""
    for key, value in TELEMETRY_OFF.items():
        os.environ.setdefault(key, value)


# -- reachability: an unreachable store costs seconds, not MLflow's minutes of HTTP retries ------------------------
PROBE_TIMEOUT_S = 3.0
PROBE_ATTEMPTS = 2
# MLflow's defaults (7 retries, backoff factor 2, 120 s timeout) spend ~4 min per call on a dead server
HTTP_LIMITS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
               "MLFLOW_HTTP_REQUEST_TIMEOUT": "20"}
_probes: dict[str, str | None] = {}  # uri -> None when reachable, else why not (once per process)
_not_logged: list[str] = []


class TrackingUnavailable(RuntimeError):
    """The tracking store cannot be reached: the message names the URI and why."""


def bound_http_retries() -> None:
    """Cap MLflow's HTTP retries and timeout for this process unless the user set them."""
    for key, value in HTTP_LIMITS.items():
        os.environ.setdefault(key, value)


def _probe_http(uri: str) -> str | None:
    import time
    import urllib.error
    import urllib.request

    reason = "no attempt"
    for attempt in range(PROBE_ATTEMPTS):
        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=PROBE_TIMEOUT_S):
                return None
        except urllib.error.HTTPError:
            return None  # the server answered: reachable (a proxy or an older server without /health)
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = f"{type(exc).__name__}: {getattr(exc, 'reason', exc)}"
        if attempt + 1 < PROBE_ATTEMPTS:
            time.sleep(0.5)
    return f"{reason} (after {PROBE_ATTEMPTS} attempts of {PROBE_TIMEOUT_S:g} s)"


def _lock_path(db: Path) -> Path:
    import hashlib
    import tempfile

    digest = hashlib.sha1(str(db.resolve()).encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"ilnas-mlflow-{digest}.lock"


def _init_sqlite(uri: str, db: Path) -> str | None:
    """Create (or open) the sqlite store under an exclusive file lock: MLflow's schema migration is not safe
    when two processes open a new store at once (``alembic_version`` / ``table ... already exists`` races)."""
    import fcntl

    if db.is_dir():
        return f"{db} is a directory, not a sqlite file"
    if not db.parent.is_dir():
        return f"directory {db.parent} does not exist"
    with open(_lock_path(db), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            from mlflow.tracking import MlflowClient

            MlflowClient(tracking_uri=uri).search_experiments(max_results=1)
        except Exception as exc:  # noqa: BLE001 - reported as the reason tracking is skipped
            return f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return None


def probe_store(uri: str) -> str | None:
    """None when the store at ``uri`` answers, else the reason; once per process and URI, warning once.

    HTTP(S): ``GET /health`` with a short timeout and bounded attempts. sqlite: the file's directory exists
    and the store opens (initialised under a file lock). Other schemes are left to MLflow.
    """
    if uri in _probes:
        return _probes[uri]
    bound_http_retries()
    reason: str | None = None
    if uri.startswith(("http://", "https://")):
        reason = _probe_http(uri)
    elif uri.startswith("sqlite:///"):
        reason = _init_sqlite(uri, Path(uri.removeprefix("sqlite:///")))
    _probes[uri] = reason
    if reason:
        log.warning("mlflow start run failed (%s): store unreachable: %s; tracking is skipped for the rest of "
                    "this process, every output is still written", uri, reason)
    return reason


def note_not_logged(what: str, reason: str) -> None:
    _not_logged.append(f"{what} ({reason})")


def not_logged_summary() -> str:
    """'' when every run of this process was logged, else one line naming the runs that were not."""
    if not _not_logged:
        return ""
    return "MLflow: not logged: " + "; ".join(dict.fromkeys(_not_logged))


def tracking_uri(project_dir: str | Path = ".", configured: str | None = None) -> str:
    """``$MLFLOW_TRACKING_URI`` > ``tracking.uri`` > absolute ``sqlite:///<project>/mlflow.db``.

    Absolute, because a relative sqlite path moves with the working directory (``dvc exp run --temp``).
    """
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    if configured:
        if configured.startswith("sqlite:///") and not configured.startswith("sqlite:////"):
            rel = configured.removeprefix("sqlite:///")
            return f"sqlite:///{(Path(project_dir) / rel).resolve()}"
        return configured
    return f"sqlite:///{(Path(project_dir) / 'mlflow.db').resolve()}"


def _artifact_location(uri: str) -> str | None:
    """Artifacts beside a local sqlite store (absolute); remote servers choose their own."""
    if uri.startswith("sqlite:///"):
        db = Path(uri.removeprefix("sqlite:///"))
        return (db.parent / "mlartifacts").resolve().as_uri()
    return None


# A model-training experiment. MLflow 3 UIs before 3.1x open an experiment on the view its kind tag names; 3.17
# ignores the tag and follows the page's workflowType (URL parameter, else the browser's last choice, first
# visit: GenAI), so the links this project prints carry ?workflowType=machine_learning as well.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
UI_QUERY = "workflowType=machine_learning"


def ui_url(base: str, experiment_id: str, run_id: str | None = None, artifact: str | None = None,
           search_filter: str | None = None, order_by: str = "metrics.`val_acc_mean`", charts: bool = False) -> str:
    """A link into the MLflow UI at ``base`` that opens on runs, not on the GenAI overview: a run, one of its
    artifacts (``figures/comparison.png``), or the experiment's runs matching ``search_filter``.

    With a filter the runs are sorted by ``order_by`` (a metric): the UI nests child runs under their parents
    only when sorted by start time, so the matching stage runs show as one flat list instead of collapsed
    ``pipeline`` parents; ``charts`` opens the chart view of those runs."""
    from urllib.parse import quote

    url = f"{base.rstrip('/')}/#/experiments/{experiment_id}"
    if run_id:
        return url + f"/runs/{run_id}" + (f"/artifacts/{artifact}" if artifact else "") + "?" + UI_QUERY
    query = UI_QUERY
    if search_filter:
        query += f"&searchFilter={quote(search_filter)}&orderByKey={quote(order_by)}&orderByAsc=false"
    if charts:
        query += "&compareRunsMode=CHART"
    return f"{url}/runs?{query}"


def get_or_create_experiment(uri: str, name: str) -> str:
    """Experiment id for ``name`` in the store at ``uri`` (created with an absolute artifact root), tagged as a
    model-training experiment, also when it already existed."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        if exp.tags.get(EXPERIMENT_KIND_TAG) != EXPERIMENT_KIND:  # made by an older ilnas or by hand
            client.set_experiment_tag(exp.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
        return exp.experiment_id
    try:
        return client.create_experiment(name, artifact_location=_artifact_location(uri),
                                        tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
    except Exception:  # created concurrently by another process
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


def git_commit(cwd: str | Path = ".") -> str:
    """Current commit (``+dirty`` suffix when the tree has changes), or 'unknown' outside git.

    Not a run tag (MLflow records ``mlflow.source.git.commit`` itself); kept for callers that label files."""
    import subprocess

    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True,
                             timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return sha + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def run_identity(stage: str, method: str, k: int, hypergrad: str, seed: int,
                 experiment: str | None = None) -> tuple[str, dict[str, str]]:
    """A run name people can read in a list (``search IL K=2 finite_difference seed 0``, plus ``[darts]`` for a
    DVC experiment) and the tags to filter and group by: ``method``, ``K``, ``hypergrad``, ``seed``,
    ``dvc_exp`` (``$DVC_EXP_NAME``, set by ``dvc exp run`` and by the flow; ``workspace`` otherwise)."""
    exp = experiment or os.environ.get("DVC_EXP_NAME") or "workspace"
    name = f"{stage} {method} K={k} {hypergrad} seed {seed}" + (f" [{exp}]" if exp != "workspace" else "")
    return name, {"method": method, "K": str(k), "hypergrad": hypergrad, "seed": str(seed), "dvc_exp": exp}


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested params -> ``{"a.b": "value"}``; lists of mappings become JSON strings (MLflow params are text)."""
    out: dict[str, str] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, name + "."))
        elif isinstance(value, list | tuple) and any(isinstance(v, Mapping) for v in value):
            out[name] = json.dumps(value, sort_keys=True)[:6000]
        else:
            out[name] = str(value)[:6000]
    return out


def numeric(row: Mapping[str, Any]) -> dict[str, float]:
    """The numeric, finite-or-not entries of a metrics row (MLflow rejects strings)."""
    return {k: float(v) for k, v in row.items() if isinstance(v, int | float) and not isinstance(v, bool)}


class StageTracker:
    """One MLflow run for one stage; every call is best effort (warning naming the failure, no exception)."""

    def __init__(self, stage: str, *, enabled: bool = True, experiment: str = "ilnas", uri: str | None = None,
                 project_dir: str | Path = ".", tags: Mapping[str, Any] | None = None, run_name: str | None = None):
        self.stage = stage
        self.run_name = run_name or stage
        self.enabled = enabled
        self.experiment = experiment
        self.project_dir = Path(project_dir)
        self.uri = tracking_uri(project_dir, uri)
        self.tags = {k: str(v) for k, v in (tags or {}).items()}
        self.parent_run_id = os.environ.get(ENV_PARENT_RUN_ID) or None
        self.run_id: str | None = None
        self.failures: list[str] = []
        self.skipped: str | None = None  # why tracking was skipped (store unreachable)
        self._mlflow: Any = None

    # -- lifecycle -------------------------------------------------------------------------------------------
    def __enter__(self) -> StageTracker:
        if not self.enabled:
            log.info("tracking disabled (tracking.enabled: false)")
            return self
        telemetry_off()
        reason = probe_store(self.uri)
        if reason:
            self.enabled, self.skipped = False, reason
            self.failures.append(f"mlflow start run failed ({self.uri}): store unreachable: {reason}"[:500])
            note_not_logged(f"{self.stage} run", f"{self.uri}: {reason}")
            return self
        self._safe("start run", self._start)
        if self.run_id is None and self.failures:
            note_not_logged(f"{self.stage} run", self.failures[-1])
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if self.run_id is None:
            if self.skipped:
                log.warning("MLflow: the %s run was not logged (store %s unreachable: %s); its outputs are "
                            "complete", self.stage, self.uri, self.skipped)
            return
        status = "FINISHED" if exc_type is None else ("KILLED" if exc_type is KeyboardInterrupt else "FAILED")
        if exc is not None:
            self.set_tags({"error": f"{type(exc).__name__}: {exc}"[:4000]})
        if self.failures:
            self.set_tags({"tracking_failures": "; ".join(self.failures)[:4000]})
        self._safe("end run", lambda: self._mlflow.end_run(status=status))

    def _start(self) -> None:
        import mlflow

        mlflow.set_tracking_uri(self.uri)
        experiment_id = None
        if self.parent_run_id:
            # a child must live in its parent's experiment for the UI to nest it
            experiment_id = mlflow.tracking.MlflowClient(self.uri).get_run(self.parent_run_id).info.experiment_id
        if experiment_id is None:
            experiment_id = get_or_create_experiment(self.uri, self.experiment)
        # the commit is MLflow's own mlflow.source.git.commit (from the entry point's repo), not a tag of ours
        tags = {"stage": self.stage, **self.tags}
        run = mlflow.start_run(experiment_id=experiment_id, run_name=self.run_name, parent_run_id=self.parent_run_id,
                               tags=tags)
        self._mlflow = mlflow
        self.run_id = run.info.run_id
        log.info("mlflow run %s (%s) in %s%s", self.run_id, self.stage, self.uri,
                 f", child of {self.parent_run_id}" if self.parent_run_id else "")

    @property
    def active(self) -> bool:
        return self.run_id is not None

    def _safe(self, what: str, fn: Callable[[], Any]) -> Any:
        """Run an MLflow call; on failure warn with what failed and why, and keep the stage going."""
        if not self.enabled or (self.run_id is None and what != "start run"):
            return None
        try:
            return fn()
        except Exception as exc:  # noqa: BLE001 - tracking must never fail a stage
            message = f"mlflow {what} failed ({self.uri}): {type(exc).__name__}: {exc}"
            log.warning("%s; the stage continues and its outputs are unaffected", message)
            self.failures.append(message[:500])
            return None

    # -- logging ---------------------------------------------------------------------------------------------
    def log_params(self, params: Mapping[str, Any], prefix: str = "") -> None:
        flat = flatten(params, prefix)
        self._safe("log params", lambda: self._mlflow.log_params(flat))

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        clean = {k: str(v) for k, v in tags.items()}
        self._safe("set tags", lambda: self._mlflow.set_tags(clean))

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        values = numeric(metrics)
        if values:
            self._safe(f"log metrics (step {step})", lambda: self._mlflow.log_metrics(values, step=step))

    def epoch_callback(self, skip: tuple[str, ...] = ("epoch",)) -> Callable[[int, dict[str, Any]], None]:
        """A ``cb(epoch, row)`` for the library loops: the row's numbers as metrics at ``step=epoch``."""

        def callback(epoch: int, row: dict[str, Any]) -> None:
            self.log_metrics({k: v for k, v in row.items() if k not in skip}, step=epoch)

        return callback

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        if self.run_id is None:
            return
        path = Path(path)
        if not path.exists():
            self.failures.append(f"artifact {path} missing")
            log.warning("mlflow artifact %s does not exist; not logged", path)
            return
        fn = self._mlflow.log_artifacts if path.is_dir() else self._mlflow.log_artifact
        self._safe(f"log artifact {path}", lambda: fn(str(path), artifact_path))

    def log_dict(self, data: Any, artifact_file: str) -> None:
        self._safe(f"log {artifact_file}", lambda: self._mlflow.log_dict(data, artifact_file))

    def log_model(self, model: Any, name: str = "model", files: Sequence[str | Path] = ()) -> None:
        """The weights as a state dict (tensors only: ``torch.load(weights_only=True)`` reads it, no pickled
        code, no MLflow pickle warning) with the files that rebuild the network (``genotype.json``,
        ``config.json``), as an MLflow LoggedModel of this run (``runs:/<run id>/<name>`` lists its files)."""
        self._safe(f"log model {name}", lambda: log_state_dict_model(self.run_id, model, name, files))


def log_state_dict_model(run_id: str, model: Any, name: str, files: Sequence[str | Path] = ()) -> str:
    """Save ``model``'s state dict and ``files`` into a LoggedModel of ``run_id`` (the current tracking URI);
    returns its model id."""
    import shutil
    import tempfile

    import mlflow.pytorch

    client = mlflow.tracking.MlflowClient()
    experiment_id = client.get_run(run_id).info.experiment_id
    with tempfile.TemporaryDirectory(prefix="ilnas-model-") as tmp:
        mlflow.pytorch.save_state_dict({k: v.detach().cpu() for k, v in model.state_dict().items()}, tmp)
        for f in files:
            if Path(f).is_file():
                shutil.copy2(f, Path(tmp) / Path(f).name)
        logged = mlflow.initialize_logged_model(name=name, source_run_id=run_id, model_type="pytorch-state-dict",
                                                tags={"format": "state_dict.pth (torch.save of tensors)"},
                                                experiment_id=experiment_id)
        client.log_model_artifacts(logged.model_id, tmp)
        mlflow.finalize_logged_model(logged.model_id, "READY")  # runs:/<run>/<name> resolves to it too
    return logged.model_id


# -- the flow's parent run ---------------------------------------------------------------------------------------
def start_parent_run(uri: str, experiment: str, run_name: str, tags: Mapping[str, Any] | None = None,
                     params: Mapping[str, Any] | None = None, project_dir: str | Path | None = None) -> str:
    """Open the pipeline's parent run through the client API (no global active run in the flow process)."""
    reason = probe_store(uri)
    if reason:
        note_not_logged("pipeline parent run", f"{uri}: {reason}")
        raise TrackingUnavailable(f"MLflow store {uri} unreachable: {reason}")
    from mlflow.tracking import MlflowClient
    from mlflow.utils.git_utils import get_git_branch, get_git_commit, get_git_repo_url

    client = MlflowClient(tracking_uri=uri)
    experiment_id = get_or_create_experiment(uri, experiment)
    all_tags = {k: str(v) for k, v in (tags or {}).items()}
    if project_dir is not None:  # the commit as MLflow records it for fluent runs (the client API does not)
        git = {"mlflow.source.git.commit": get_git_commit(str(project_dir)),
               "mlflow.source.git.branch": get_git_branch(str(project_dir)),
               "mlflow.source.git.repoURL": get_git_repo_url(str(project_dir))}
        all_tags.update({k: v for k, v in git.items() if v})
    run = client.create_run(experiment_id, run_name=run_name, tags=all_tags)
    if params:
        from mlflow.entities import Param

        flat = flatten(params)
        items = [Param(k, v) for k, v in flat.items()]
        for i in range(0, len(items), 100):
            client.log_batch(run.info.run_id, params=items[i:i + 100])
    return run.info.run_id


def end_parent_run(uri: str, run_id: str, status: str, tags: Mapping[str, Any] | None = None,
                   metrics: Mapping[str, Any] | None = None, markdown: str | None = None) -> None:
    """Close the parent run with the pipeline's outcome, its stage table and headline metrics."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    for key, value in (tags or {}).items():
        client.set_tag(run_id, key, str(value))
    for key, value in numeric(metrics or {}).items():
        client.log_metric(run_id, key, value)
    if markdown:
        client.log_text(run_id, markdown, "pipeline_summary.md")
    client.set_terminated(run_id, status=status)
