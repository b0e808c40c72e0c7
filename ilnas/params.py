"""The pipeline's params.yaml as one pydantic schema, validated before any stage computes anything.

One section per DVC stage (``prepare``, ``search``, ``derive``, ``retrain``, ``transfer``) plus shared
settings (``seed``, ``device``, ``tracking``). The shared ``seed``/``device`` are copied into the
``search``/``retrain``/``transfer`` sections unless a section sets its own, so one edit reseeds the run.

``python -m ilnas.params check params.yaml [-S key.sub=value ...]`` validates a file (exit 2 on error);
``python -m ilnas.params show ...`` prints the resolved values. Nothing here imports DVC, Prefect or MLflow.

Checks run in two passes, both before any compute: the schema (types, ranges, cross-field rules, cheap),
then :func:`check_environment` (data roots exist, timm names are in timm's registries; may import timm).
The CLI (``ilnas search|retrain|transfer``) validates through this same schema (:func:`load_section`), so a
top-level ``seed``/``device`` means the same there as in the pipeline.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ilnas.errors import InputError, bounded_repr, guarded, strip_debug_flag
from ilnas.search.config import SearchConfig
from ilnas.train.config import RetrainConfig, TransferConfig
from ilnas.utils.checks import (
    check_classes,
    check_device_name,
    check_existing_dir,
    check_seed,
    check_timm_model,
    check_timm_optimizer,
    check_timm_scheduler,
    did_you_mean,
)
from ilnas.utils.io import read_yaml_bounded
from ilnas.utils.overrides import OverrideError
from ilnas.utils.overrides import apply_overrides as _apply_overrides

SECTIONS_WITH_SEED = ("search", "retrain", "transfer")
NAMED_GENOTYPES = ("DARTS_V2",)


# keys older params files may hold, and why they went (an unknown-key error says so instead of "unknown")
REMOVED_KEYS = {
    "prepare.export_imagefolder": "removed: the stand-in ImageFolder is always written (data/imagefolder is a "
                                  "DVC out of 'prepare'); delete the key",
    "derive.plot": "removed: the cell pictures are always drawn (models/cells is a DVC out of 'derive'); "
                   "delete the key",
}


class ParamsError(InputError):
    """Invalid pipeline params: every line names the dotted key, the problem and what is allowed."""


class TrackingConfig(BaseModel):
    """MLflow tracking. ``uri: null`` means ``$MLFLOW_TRACKING_URI`` or ``sqlite:///<project>/mlflow.db``."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    experiment: str = Field(default="ilnas", min_length=1)
    uri: str | None = None
    log_model: bool = Field(default=True, description="mlflow.pytorch.log_model for the retrained network")
    log_checkpoints: bool = Field(default=True, description="log final checkpoints as artifacts")


class DataDeps(BaseModel):
    """The directory holding every dataset root a stage reads: ``dvc.yaml`` lists it as that stage's dependency.

    DVC interpolates only single values into ``deps``, so each stage names one directory; every task root
    of the stage must lie inside it (checked). Digits come with scikit-learn: ``ilnas/data`` (their loader)
    stands for them.
    """

    model_config = ConfigDict(extra="forbid")

    search: str = Field(default="ilnas/data", min_length=1, description="contains every search.tasks[*].root")
    retrain: str = Field(default="ilnas/data", min_length=1, description="contains retrain.task.root")
    transfer: str = Field(default="data/imagefolder", min_length=1,
                          description="contains transfer.data_root (null: the stand-in data/imagefolder)")


class PrepareConfig(BaseModel):
    """Data preparation: per-stage task manifests (search, retrain) and the transfer stand-in ImageFolder."""

    model_config = ConfigDict(extra="forbid")

    image_size: int = Field(default=32, ge=8, le=512, description="side of the exported ImageFolder images")
    data_deps: DataDeps = Field(default_factory=DataDeps)


class PerturbationConfig(BaseModel):
    """DARTS-PT's settings (github ruocwang/darts-pt, exp_scripts/darts-proj-sota.sh; sota/cnn/projection.py)."""

    model_config = ConfigDict(extra="forbid")

    criterion: Literal["acc", "loss"] = Field(
        default="acc", description="what an op's removal is judged by: the validation accuracy drop (acc, "
        "their default crit) or loss rise; class-count-free means over tasks (val_acc_above_chance_mean, "
        "val_loss_norm_mean)")
    tune_epochs: int = Field(default=5, ge=0, description="epochs of supernet fine-tuning between two decisions "
                             "(their proj_intv); an epoch is the search's iterations_per_epoch")
    tune_lr_factor: float = Field(default=0.1, gt=0, le=1, description="fine-tuning starts at search.w_lr times "
                                  "this (their learning_rate / 10) and follows a cosine to search.w_lr_min")


class DeriveConfig(BaseModel):
    """Genotype derivation from the searched alphas (DARTS rule: two strongest non-none edges per node)."""

    model_config = ConfigDict(extra="forbid")

    source: Literal["search", "DARTS_V2"] = Field(
        default="search", description="'search' derives from the search's alphas; a named genotype is a baseline")
    select: Literal["last", "best_val"] = Field(
        default="last", description="which epoch's alphas: the last, or those of the epoch with the lowest "
        "search validation loss (val_loss_mean; the search's validation split, not a test set)")
    selection: Literal["magnitude", "perturbation"] = Field(
        default="magnitude", description="magnitude: the DARTS rule on the alphas; perturbation: DARTS-PT "
        "(Wang et al. 2021) on the trained supernet of models/search/checkpoint.pt (docs/search-diagnostics.md)")
    perturbation: PerturbationConfig = Field(default_factory=PerturbationConfig)
    max_skip_connect: int | None = Field(
        default=None, ge=0, description="P-DARTS prior: at most this many skip connections in the derived normal "
        "cell (P-DARTS keeps 2); null = off; metrics/derive.json records prior_applied")
    max_parameter_free: int | None = Field(
        default=None, ge=0, description="prior: at most this many parameter-free edges (skip, pools) in the "
        "derived normal cell; null = off")

    @model_validator(mode="after")
    def _perturbation_alone(self) -> DeriveConfig:
        # DARTS-PT judges the last supernet's weights: other epochs' alphas or a magnitude cap do not apply to it
        if self.selection == "perturbation" and self.source == "search":
            if self.select != "last":
                raise ValueError(f"derive.select: {self.select!r} with derive.selection: perturbation; allowed: "
                                 "['last'] (the supernet weights saved are the last epoch's)")
            for key in ("max_skip_connect", "max_parameter_free"):
                if getattr(self, key) is not None:
                    raise ValueError(f"derive.{key}: {getattr(self, key)} with derive.selection: perturbation; "
                                     "allowed: null (the cap is a prior on magnitude selection)")
        return self


class DistributedConfig(BaseModel):
    """torchrun scale-out of the search, retrain and transfer stages (gloo on CPU, nccl on GPU). 1 x 1: one process.

    ``search.batch_size`` is the global batch too: each process draws a disjoint ``batch_size / world_size``
    of every task's stream, gradients and hypergradients are averaged, and the learning rates stay as set.

    ``retrain.batch_size`` and ``transfer.batch_size`` are global batches: each of the ``nproc_per_node *
    nnodes`` processes takes ``batch_size / world_size`` (it must divide), so the recipe's batch and learning
    rate hold at any world size; ``lr_base_batch`` scales the rate linearly when the global batch grows.
    """

    model_config = ConfigDict(extra="forbid")

    nproc_per_node: int = Field(default=1, ge=1,
                                description="processes (GPUs) per node, for search, retrain and transfer")
    nnodes: int = Field(default=1, ge=1, description="nodes; world size = nproc_per_node * nnodes")
    rdzv_endpoint: str | None = Field(default=None, description="host:port of the rendezvous for nnodes > 1")

    @property
    def world_size(self) -> int:
        return self.nproc_per_node * self.nnodes


class PipelineParams(BaseModel):
    """Everything ``params.yaml`` may hold; unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")

    seed: int = Field(default=0, ge=0)
    device: str = "auto"
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    prepare: PrepareConfig = Field(default_factory=PrepareConfig)
    search: SearchConfig = Field(default_factory=SearchConfig)
    derive: DeriveConfig = Field(default_factory=DeriveConfig)
    retrain: RetrainConfig = Field(default_factory=RetrainConfig)
    distributed: DistributedConfig = Field(default_factory=DistributedConfig)
    transfer: TransferConfig = Field(default_factory=TransferConfig)

    @model_validator(mode="before")
    @classmethod
    def _share_seed_and_device(cls, data: Any) -> Any:
        # the shared values flow into a section only where the section does not set its own
        if not isinstance(data, dict):
            return data
        data = dict(data)
        for section in SECTIONS_WITH_SEED:
            sub = data.get(section, {})
            if sub is None:
                sub = {}
            if not isinstance(sub, dict):
                continue
            sub = dict(sub)
            for key in ("seed", "device"):
                if key in data and key not in sub:
                    sub[key] = data[key]
            data[section] = sub
        return data

    @field_validator("device")
    @classmethod
    def _known_device(cls, value: str) -> str:
        return check_device_name(value)

    @field_validator("retrain", "transfer")
    @classmethod
    def _train_section(cls, value: RetrainConfig | TransferConfig, info: Any) -> RetrainConfig | TransferConfig:
        # seeds and class ranges of the training sections (their own schema predates these checks)
        check_seed(value.seed)
        task = getattr(value, "task", None)
        if task is not None:
            try:
                check_classes(task.dataset, task.classes, task.name)
            except ValueError as exc:  # named by its key path: retrain.task.classes
                raise ValueError(f"task.classes: {exc}") from None
        return value

    @model_validator(mode="after")
    def _global_batch_divides(self) -> PipelineParams:
        # batch_size is the global batch of retrain and transfer: it must split evenly over the processes
        from ilnas.train.config import global_batch_error

        for section in ("search", "retrain", "transfer"):
            error = global_batch_error(f"{section}.batch_size", getattr(self, section).batch_size,
                                       self.distributed.world_size)
            if error:
                raise ValueError(error)
        return self

    @model_validator(mode="after")
    def _roots_inside_data_deps(self) -> PipelineParams:
        # a root outside its stage's DVC dependency would change without rerunning the stage
        import posixpath

        def inside(root: str, folder: str) -> bool:
            root, folder = posixpath.normpath(root), posixpath.normpath(folder)
            return root == folder or root.startswith(folder.rstrip("/") + "/")

        # (a download: true root is filled from the md5-pinned official release; it may not exist before the
        # run, so it cannot be a DVC dependency)
        roots = [(f"search.tasks[{i}].root", t.root, "search") for i, t in enumerate(self.search.tasks)
                 if not t.download]
        if not self.retrain.task.download:
            roots.append(("retrain.task.root", self.retrain.task.root, "retrain"))
        roots.append(("transfer.data_root", self.transfer.data_root or "data/imagefolder", "transfer"))
        problems = [f"{key}: {root} lies outside prepare.data_deps.{stage} ({folder}), the directory dvc.yaml "
                    f"watches for the {stage} stage; allowed: a path inside {folder}"
                    for key, root, stage in roots
                    if root and not inside(root, folder := getattr(self.prepare.data_deps, stage))]
        if problems:
            raise ValueError("\n  ".join(problems))
        return self


def check_environment(params: PipelineParams, base: str | Path | None = None,
                      sections: Sequence[str] = ("search", "retrain", "transfer")) -> PipelineParams:
    """Checks that look outside the params: data roots exist, timm names are in timm's registries.

    ``base`` is the directory relative roots are resolved against (the project: stages run there);
    ``sections`` limits the checks (``ilnas search`` need not check the retrain section's names).
    Raises :class:`ParamsError` listing every problem with its dotted key.
    """
    base_dir = Path(base) if base is not None else Path.cwd()
    problems: list[str] = []

    def check(key: str, fn: Callable[[], None]) -> None:
        try:
            fn()
        except ValueError as exc:
            problems.append(f"{key}: {exc}")

    tasks = [(f"search.tasks[{i}]", t) for i, t in enumerate(params.search.tasks)] if "search" in sections else []
    if "retrain" in sections:
        tasks.append(("retrain.task", params.retrain.task))
    for key, task in tasks:
        if task.root and not (task.dataset.startswith("cifar") and task.download):
            check(f"{key}.root", lambda t=task, k=key: check_existing_dir(t.root, f"task {t.name!r} ({k})", base_dir))
    if params.transfer.data_root and "transfer" in sections:
        check("transfer.data_root", lambda: check_existing_dir(params.transfer.data_root, "ImageFolder root",
                                                               base_dir))
    for section in [s for s in ("retrain", "transfer") if s in sections]:
        cfg = getattr(params, section)
        check(f"{section}.model", lambda c=cfg: check_timm_model(c.model))
        check(f"{section}.opt", lambda c=cfg: check_timm_optimizer(c.opt))
        check(f"{section}.sched", lambda c=cfg: check_timm_scheduler(c.sched))
    if problems:
        raise ParamsError("invalid params:\n  " + "\n  ".join(problems))
    return params


# -- overrides ------------------------------------------------------------------------------------------------
def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """``key.sub=value`` edits (values parsed as YAML, like ``dvc exp run -S``) on a copy of ``data``."""
    try:
        return _apply_overrides(data, overrides)
    except OverrideError as exc:
        raise ParamsError(str(exc)) from None


# -- validation with messages that name the key ----------------------------------------------------------------
def _model_at(model: type[BaseModel], loc: Sequence[str | int]) -> type[BaseModel] | None:
    """The pydantic model class that owns the field at ``loc`` (for listing allowed keys)."""
    current: Any = model
    for part in loc:
        if isinstance(part, int):
            continue
        if not (isinstance(current, type) and issubclass(current, BaseModel)) or part not in current.model_fields:
            return None
        annotation = current.model_fields[part].annotation
        args = getattr(annotation, "__args__", ()) or ()
        candidates = [annotation, *args]
        current = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)
        if current is None:
            return None
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _dotted(loc: Sequence[str | int]) -> str:
    """``['search', 'tasks', 0, 'classes']`` -> ``search.tasks[0].classes`` (the form ``-S`` takes)."""
    out = ""
    for part in loc:
        name = str(part) if len(str(part)) <= 80 else str(part)[:77] + "..."  # a hostile key is cut too
        out += f"[{name}]" if isinstance(part, int) else (f".{name}" if out else name)
    return out or "<root>"


MAX_PROBLEM_LINES = 25  # a document with thousands of bad keys is reported by its first ones and a count


def _named_loc(loc: list[str | int], head: str) -> list[str | int]:
    """``loc`` extended by the key a validator's message starts with (``classes: ...``, ``tasks[0].root: ...``).

    A head that repeats the start of ``loc`` is absolute (``search.batch_size`` raised inside ``search``); one
    that repeats its end continues it (``tasks[0].classes`` raised by the validator of ``search.tasks``)."""
    from ilnas.utils.overrides import split_key

    try:
        parts = split_key(head)
    except OverrideError:  # not a key after all (``a..b: ...``): keep the message as it is
        return [*loc, head]
    if loc and parts[0] == loc[0]:
        return parts
    for k in range(min(len(loc), len(parts)), 0, -1):  # a head that starts where loc ends (tasks[0].x at tasks)
        if loc[-k:] == parts[:k]:
            return [*loc[:-k], *parts]
    return [*loc, *parts]


def format_validation_error(exc: ValidationError, root: type[BaseModel] = PipelineParams) -> str:
    """One line per problem: ``dotted.key: message (got value)``, the allowed values and a "did you mean"."""
    lines: list[str] = []
    errors = exc.errors()
    # a bad top-level seed/device is copied into every section: report it once, at the top level
    shared = {(err["loc"][0], bounded_repr(err.get("input"))) for err in errors if len(err["loc"]) == 1}
    for err in errors:
        loc = [p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-"))]
        if len(loc) == 2 and loc[0] in SECTIONS_WITH_SEED and (loc[1], bounded_repr(err.get("input"))) in shared:
            continue
        msg = err["msg"].removeprefix("Value error, ")
        head = re.match(r"^([A-Za-z_][\w.\[\]]*): ", msg)  # a model-level check names its field
        if head:
            loc, msg = _named_loc(loc, head.group(1)), msg[head.end():]
        if len(msg) > 400:  # a validator's message may quote the value it refused
            msg = msg[:397] + "..."
        line = f"{_dotted(loc)}: {msg}"
        if err["type"] == "extra_forbidden":
            owner = _model_at(root, loc[:-1])
            removed = REMOVED_KEYS.get(_dotted([p for p in loc if not isinstance(p, int)]))
            if removed:
                line = f"{_dotted(loc)}: {removed}"
            elif owner is not None:
                line = (f"{_dotted(loc)}: unknown key; allowed keys in {_dotted(loc[:-1])}: "
                        f"{sorted(owner.model_fields)}."
                        + (did_you_mean(str(loc[-1]), owner.model_fields) if len(str(loc[-1])) <= 100 else ""))
        elif err["type"] not in ("missing",) and "input" in err and not isinstance(err["input"], dict | list):
            got = bounded_repr(err["input"])
            if got not in line:
                line += f" (got {got})"
            expected = err.get("ctx", {}).get("expected") if err["type"] == "literal_error" else None
            if expected and len(str(err["input"])) <= 100:
                line += did_you_mean(str(err["input"]), [e.strip(" '") for e in
                                                         expected.replace(" or ", ", ").split(",")])
        lines.append(line)
    if len(lines) > MAX_PROBLEM_LINES:
        lines = [*lines[:MAX_PROBLEM_LINES], f"... and {len(lines) - MAX_PROBLEM_LINES} more problem(s)"]
    return "invalid params:\n  " + "\n  ".join(lines)


def validate_params(data: dict[str, Any] | None, source: str = "params") -> PipelineParams:
    """Validate a params mapping; :class:`ParamsError` names every bad key."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ParamsError(f"{source}: top level must be a mapping of sections, got {type(data).__name__}")
    try:
        return PipelineParams.model_validate(data)
    except ValidationError as exc:
        raise ParamsError(f"{source}: {format_validation_error(exc)}") from None


def read_yaml_mapping(path: str | Path, what: str = "params file") -> dict[str, Any]:
    """A YAML file whose top level is a mapping; every way it can fail is a :class:`ParamsError` naming it.

    An empty file (or one with only comments) is refused: a pipeline cannot run on it (DVC needs the keys
    dvc.yaml lists), so ``check`` and the flow must both say so rather than fall back to defaults.
    """
    path = Path(path)
    data = read_yaml_bounded(path, what, ParamsError)  # size, nesting and alias expansion bounded
    if data is None:
        raise ParamsError(f"{path}: {what} is empty; it must hold the pipeline's sections "
                          f"(allowed top-level keys: {sorted(PipelineParams.model_fields)}; see params.yaml)")
    if not isinstance(data, dict):
        raise ParamsError(f"{path}: top level must be a mapping of sections, got {type(data).__name__}")
    return data


def read_params_file(path: str | Path) -> dict[str, Any]:
    return read_yaml_mapping(path, "params file")


def project_dir_of(path: str | Path) -> Path:
    """The DVC project a params file belongs to (the nearest directory up with a dvc.yaml: the stages run
    there, so relative data roots mean paths inside it), else the working directory."""
    for folder in Path(path).resolve().parents:
        if (folder / "dvc.yaml").is_file():
            return folder
    return Path.cwd()


def load_params(path: str | Path = "params.yaml", overrides: Sequence[str] = (),
                environment: bool = True) -> PipelineParams:
    """Read, override (``key.sub=value``) and validate a params file, before any compute.

    ``environment``: also run :func:`check_environment`, relative data roots taken inside the project the
    file belongs to (:func:`project_dir_of`; a preset in configs/ names roots relative to the project too).
    """
    data = apply_overrides(read_params_file(path), overrides)
    params = validate_params(data, source=str(path))
    return check_environment(params, project_dir_of(path)) if environment else params


# -- the CLI's view: one section, validated through the whole schema -------------------------------------------
def load_section(section: str, path: str | Path | None, overrides: Sequence[str] = ()) -> Any:
    """The ``section`` config for ``ilnas <command> --config FILE -S key=value``, validated like the pipeline.

    ``FILE`` may be a params.yaml (its top-level ``seed``/``device`` flow into the section exactly as in the
    pipeline) or a bare section mapping. Overrides take the flow's dotted keys (``search.epochs=2``,
    ``seed=7``); a key without a known top-level prefix is taken relative to the section (``epochs=2``).
    """
    data: dict[str, Any] = {}
    if path is not None:
        data = read_yaml_mapping(path, "config file")
        if not set(data) <= set(PipelineParams.model_fields):  # a bare section mapping
            data = {section: data}
    dotted = [item if item.split("=", 1)[0].strip().lstrip("+").split(".")[0].split("[")[0]
              in PipelineParams.model_fields else f"{section}.{item.lstrip('+')}" for item in overrides]
    data = apply_overrides(data, dotted)
    source = str(path) if path is not None else "defaults"
    if overrides:
        source += f" with {list(overrides)}"
    params = validate_params(data, source=source)
    check_environment(params, sections=(section,))
    return getattr(params, section)


def _main(argv: list[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m ilnas.params", description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["check", "show"])
    parser.add_argument("path", nargs="?", default="params.yaml")
    parser.add_argument("-S", "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    params = load_params(args.path, args.overrides)
    if args.command == "show":
        print(yaml.safe_dump(params.model_dump(mode="json"), sort_keys=False), end="")
    else:
        s = params.search
        print(f"{args.path}: ok (search: {s.strategy}/{s.hypergrad}, tasks {[t.name for t in s.tasks]}, "
              f"{s.epochs} epochs; retrain: {params.retrain.model} on {params.retrain.task.dataset}, "
              f"{params.retrain.epochs} epochs; transfer: {params.transfer.model}, {params.transfer.epochs} epochs)")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: a bad file ends as one message block, exit 2 (``--debug``: traceback)."""
    args = strip_debug_flag(list(sys.argv[1:] if argv is None else argv))
    return guarded(lambda: _main(args), "python -m ilnas.params")


if __name__ == "__main__":
    raise SystemExit(main())
