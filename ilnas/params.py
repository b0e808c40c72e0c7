"""The pipeline's params.yaml as one pydantic schema, validated before any stage computes anything.

One section per DVC stage (``prepare``, ``search``, ``derive``, ``retrain``, ``transfer``) plus shared
settings (``seed``, ``device``, ``tracking``). The shared ``seed``/``device`` are copied into the
``search``/``retrain``/``transfer`` sections unless a section sets its own, so one edit reseeds the run.

``python -m ilnas.params check params.yaml [-S key.sub=value ...]`` validates a file (exit 2 on error);
``python -m ilnas.params show ...`` prints the resolved values. Nothing here imports DVC, Prefect or MLflow.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ilnas.search.config import SearchConfig
from ilnas.train.config import RetrainConfig, TransferConfig
from ilnas.utils.checks import check_device_name
from ilnas.utils.overrides import OverrideError
from ilnas.utils.overrides import apply_overrides as _apply_overrides

SECTIONS_WITH_SEED = ("search", "retrain", "transfer")
NAMED_GENOTYPES = ("DARTS_V2",)


class ParamsError(ValueError):
    """Invalid pipeline params: every line names the dotted key, the problem and what is allowed."""


class TrackingConfig(BaseModel):
    """MLflow tracking. ``uri: null`` means ``$MLFLOW_TRACKING_URI`` or ``sqlite:///<project>/mlflow.db``."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    experiment: str = Field(default="ilnas", min_length=1)
    uri: str | None = None
    log_model: bool = Field(default=True, description="mlflow.pytorch.log_model for the retrained network")
    log_checkpoints: bool = Field(default=True, description="log final checkpoints as artifacts")


class PrepareConfig(BaseModel):
    """Data preparation: task manifests for the search tasks and the transfer stand-in ImageFolder."""

    model_config = ConfigDict(extra="forbid")

    export_imagefolder: bool = Field(
        default=True, description="write the digits held-out images as an ImageNet-layout ImageFolder "
        "(the embedded default's stand-in for ImageNet transfer)")
    image_size: int = Field(default=32, ge=8, le=512, description="side of the exported ImageFolder images")


class DeriveConfig(BaseModel):
    """Genotype derivation from the searched alphas (DARTS rule: two strongest non-none edges per node)."""

    model_config = ConfigDict(extra="forbid")

    source: Literal["search", "DARTS_V2"] = Field(
        default="search", description="'search' derives from the search's alphas; a named genotype is a baseline")
    plot: bool = True


class DistributedConfig(BaseModel):
    """torchrun scale-out of the retrain stage (DDP; gloo on CPU, nccl on GPU). 1 x 1: a plain process."""

    model_config = ConfigDict(extra="forbid")

    nproc_per_node: int = Field(default=1, ge=1, description="processes (GPUs) per node")
    nnodes: int = Field(default=1, ge=1)
    rdzv_endpoint: str | None = Field(default=None, description="host:port of the rendezvous for nnodes > 1")


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
    return ".".join(str(p) for p in loc) or "<root>"


def format_validation_error(exc: ValidationError, root: type[BaseModel] = PipelineParams) -> str:
    """One line per problem: ``dotted.key: message (got value); allowed ...``."""
    lines = []
    for err in exc.errors():
        loc = [p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-"))]
        msg = err["msg"].removeprefix("Value error, ")
        line = f"{_dotted(loc)}: {msg}"
        if err["type"] == "extra_forbidden":
            owner = _model_at(root, loc[:-1])
            if owner is not None:
                line = f"{_dotted(loc)}: unknown key; allowed keys in {_dotted(loc[:-1])}: {sorted(owner.model_fields)}"
        elif err["type"] not in ("missing",) and "input" in err and not isinstance(err["input"], dict | list):
            line += f" (got {err['input']!r})"
        lines.append(line)
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


def read_params_file(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise ParamsError(f"{path}: params file not found") from None
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path}: not valid YAML ({exc})") from None
    if not isinstance(data, dict):
        raise ParamsError(f"{path}: top level must be a mapping of sections, got {type(data).__name__}")
    return data


def load_params(path: str | Path = "params.yaml", overrides: Sequence[str] = ()) -> PipelineParams:
    """Read, override (``key.sub=value``) and validate a params file, before any compute."""
    data = apply_overrides(read_params_file(path), overrides)
    return validate_params(data, source=str(path))


def _main(argv: list[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m ilnas.params", description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["check", "show"])
    parser.add_argument("path", nargs="?", default="params.yaml")
    parser.add_argument("-S", "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    try:
        params = load_params(args.path, args.overrides)
    except ParamsError as exc:
        print(exc, file=sys.stderr)
        return 2
    if args.command == "show":
        print(yaml.safe_dump(params.model_dump(mode="json"), sort_keys=False), end="")
    else:
        s = params.search
        print(f"{args.path}: ok (search: {s.strategy}/{s.hypergrad}, tasks {[t.name for t in s.tasks]}, "
              f"{s.epochs} epochs; retrain: {params.retrain.model} on {params.retrain.task.dataset}, "
              f"{params.retrain.epochs} epochs; transfer: {params.transfer.model}, {params.transfer.epochs} epochs)")
    return 0


if __name__ == "__main__":
    raise SystemExit(_main(sys.argv[1:]))
