"""The study spec: a YAML grid ``arms x search seeds``, validated whole before any trial starts.

A study compares *arms* (ways of obtaining a cell) on equal terms: every arm's trials share the study's
``base`` params (a ``params.yaml``-shaped mapping: ``search``, ``retrain``, ``device``...), the same
retrain recipe and seeds, and every search arm sees the same number of training images
(``search_images``). Each trial's params are ``base`` deep-merged with the arm's ``params``, then the
``-S`` overrides, then the seeds and the budget; the result is validated by :mod:`ilnas.params`, so a bad
value is reported with its dotted key (``arms.il_k2: search.hypergrad: ...``) before anything computes.

Arm kinds: ``search`` (any search configuration: IL with K tasks, DARTS = K = 1, LFM), ``random`` (a cell
sampled uniformly from the same space, one per search seed), ``random_search`` (Li & Talwalkar: sample
``candidates`` cells of the reference distribution, rank them by the proxy on validation, keep the best) and
``genotype`` (a fixed cell: a named one such as ``DARTS_V2`` or an inline genotype mapping).

Budgets: ``search_images`` fixes the training images every search sees; every search arm must then also
make the same number of architecture steps (``(epochs - warmup_epochs) x iterations``), or the spec is
refused naming each arm's images per step. ``reference`` sizes the distribution of random cells every
searched cell is placed in; the study's evaluation protocol (``base.retrain``) must hold out a validation
split (``val_fraction > 0``) that selections read, so the test split is only read for the report.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ilnas.params import (
    NAMED_GENOTYPES,
    ParamsError,
    PipelineParams,
    apply_overrides,
    format_validation_error,
)
from ilnas.utils.fingerprint import json_digest

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
# the effective retrain seed of the pair (search seed s, retrain seed r): every arm uses the same pairs, and a
# fixed-cell arm (random/genotype need no search) still gets distinct retrainings per search seed
RETRAIN_SEED_STRIDE = 1000


class StudySpecError(ValueError):
    """An invalid study spec: every line names the dotted key, the problem and what is allowed."""


class ArmSpec(BaseModel):
    """One arm: how a trial obtains its cell, and the params it changes relative to the study's ``base``."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=NAME_PATTERN, description="short id, used in tags, file names and metric names")
    kind: Literal["search", "random", "random_search", "genotype"] = "search"
    candidates: int | None = Field(
        default=None, ge=1, description="kind random_search: reference cells sampled per search seed; the one with "
        "the best validation accuracy is kept (equal compute: see the report's proxy cost)")
    genotype: str | dict[str, Any] | None = Field(
        default=None, description=f"kind genotype: a named genotype {list(NAMED_GENOTYPES)} or a genotype mapping")
    params: dict[str, Any] = Field(default_factory=dict, description="params.yaml-shaped edits over the base")

    @model_validator(mode="after")
    def _genotype_matches_kind(self) -> ArmSpec:
        if self.kind == "genotype":
            if self.genotype is None:
                raise ValueError(f"arm {self.name!r}: kind genotype needs 'genotype' "
                                 f"(one of {list(NAMED_GENOTYPES)} or a genotype mapping)")
            resolve_genotype(self.genotype)
        elif self.genotype is not None:
            raise ValueError(f"arm {self.name!r}: 'genotype' is only for kind genotype (got kind {self.kind!r})")
        if (self.kind == "random_search") != (self.candidates is not None):
            raise ValueError(f"arm {self.name!r}: 'candidates' is required for kind random_search and only for it")
        return self


class ReferenceSpec(BaseModel):
    """The reference distribution: ``cells`` random cells, each evaluated once by the study's protocol."""

    model_config = ConfigDict(extra="forbid")

    cells: int = Field(default=50, ge=5, description="random cells (reference indices 0..cells-1), one seed each")


class StudySpec(BaseModel):
    """A whole study (``configs/study.yaml``); unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=NAME_PATTERN, description="the study id: reports/<name>/, MLflow tags")
    description: str = ""
    search_seeds: list[int] = Field(min_length=1, description="one trial per arm and search seed")
    retrain_seeds: list[int] = Field(default_factory=lambda: [0], min_length=1,
                                     description="retrainings of each trial's cell")
    search_images: int | None = Field(
        default=None, ge=1, description="training images every search trial sees (iterations are derived from it); "
        "null: each arm keeps its own epochs x iterations_per_epoch")
    baseline: str = Field(default="random", description="the arm every other arm is tested against")
    contrasts: list[tuple[str, str]] = Field(
        default_factory=list, description="extra direct comparisons [arm, other] (e.g. [il_k2, darts_k1]); with "
        "every arm against the baseline they form the Holm family")
    reference: ReferenceSpec | None = Field(default=None, description="null: no reference distribution")
    calibration: str | None = Field(
        default=None, description="the calibration report (calibration.json) that chose the protocol; the report "
        "quotes it when its chosen protocol is base.retrain")
    trial_resources: dict[str, float] = Field(
        default_factory=dict, description="Dask resources one trial holds, e.g. {GPU: 1}")
    base: dict[str, Any] = Field(default_factory=dict, description="params.yaml-shaped settings of every trial")
    arms: list[ArmSpec] = Field(min_length=1)

    @field_validator("search_seeds", "retrain_seeds")
    @classmethod
    def _distinct_seeds(cls, seeds: list[int]) -> list[int]:
        if len(set(seeds)) != len(seeds) or min(seeds) < 0:
            raise ValueError(f"seeds must be distinct non-negative integers, got {seeds}")
        if max(seeds) >= RETRAIN_SEED_STRIDE:
            raise ValueError(f"seeds must be < {RETRAIN_SEED_STRIDE}, got {seeds}")
        return seeds

    @model_validator(mode="after")
    def _arms_and_baseline(self) -> StudySpec:
        names = [a.name for a in self.arms]
        if len(set(names)) != len(names):
            raise ValueError(f"arms: names must be unique, got {names}")
        if self.baseline not in names:
            raise ValueError(f"baseline: {self.baseline!r} is not an arm; allowed: {names}")
        for pair in self.contrasts:
            bad = [a for a in pair if a not in names]
            if bad or pair[0] == pair[1]:
                raise ValueError(f"contrasts: {list(pair)} must name two different arms; allowed: {names}")
        if self.reference is None and any(a.kind == "random_search" for a in self.arms):
            raise ValueError("reference: kind random_search samples the reference distribution; set reference")
        return self

    def family(self) -> list[tuple[str, str]]:
        """The comparisons of the study: every arm against the baseline, then the explicit contrasts."""
        pairs = [(a.name, self.baseline) for a in self.arms if a.name != self.baseline]
        return pairs + [tuple(p) for p in self.contrasts if tuple(p) not in pairs]  # type: ignore[misc]


def resolve_genotype(value: str | dict[str, Any]):
    """A named genotype (``DARTS_V2``) or a genotype mapping (``schema_version`` optional) -> Genotype."""
    from ilnas.space import genotype as genotypes

    if isinstance(value, str):
        if value not in NAMED_GENOTYPES:
            raise ValueError(f"unknown named genotype {value!r}; allowed: {list(NAMED_GENOTYPES)} or a mapping")
        return getattr(genotypes, value)
    data = {"schema_version": genotypes.SCHEMA_VERSION, **value}
    try:
        return genotypes.Genotype.from_dict(data)
    except genotypes.GenotypeError as exc:
        raise ValueError(f"invalid genotype: {exc}") from None


def deep_merge(base: dict[str, Any], edits: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``edits`` merged in; mappings merge key by key, anything else (lists too) is replaced."""
    out = copy.deepcopy(base)
    for key, value in edits.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def images_per_iteration(params: PipelineParams) -> int:
    """Training images one search iteration draws: R rounds x K tasks x T inner steps x batch (IL and LFM)."""
    s = params.search
    return s.rounds * len(s.tasks) * s.inner_steps * s.batch_size


def spec_hash(spec: StudySpec, overrides: Sequence[str] = ()) -> str:
    payload = {"spec": spec.model_dump(mode="json"), "overrides": list(overrides)}
    return json_digest(payload)


def _error_lines(exc: ValidationError, root: type[BaseModel], prefix: str = "") -> list[str]:
    text = format_validation_error(exc, root)
    return [prefix + line.strip() for line in text.splitlines()[1:]]


def arm_params(spec: StudySpec, arm: ArmSpec, overrides: Sequence[str] = ()) -> tuple[dict[str, Any], PipelineParams]:
    """The arm's params (base + arm.params + overrides, budget applied), validated; errors name the arm and key."""
    where = f"arms.{arm.name}"
    try:
        data = apply_overrides(deep_merge(spec.base, arm.params), overrides)
    except ParamsError as exc:
        raise StudySpecError(f"{where}: {exc}") from None
    try:
        params = PipelineParams.model_validate(data)
    except ValidationError as exc:
        raise StudySpecError("\n  ".join(_error_lines(exc, PipelineParams, f"{where}: "))) from None
    if arm.kind == "search" and spec.search_images is not None:
        per_iter = images_per_iteration(params)
        epochs = params.search.epochs
        if spec.search_images % (per_iter * epochs):
            raise StudySpecError(
                f"search_images: {spec.search_images} is not a multiple of arm {arm.name!r}'s images per epoch "
                f"(search.epochs {epochs} x {per_iter} images per iteration = rounds x tasks x inner_steps x "
                f"batch_size); allowed: multiples of {per_iter * epochs}")
        data = deep_merge(data, {"search": {"iterations_per_epoch": spec.search_images // (per_iter * epochs)}})
        params = PipelineParams.model_validate(data)
    return data, params


def validate_spec(data: Any, source: str = "study", overrides: Sequence[str] = ()) -> StudySpec:
    """Validate a study mapping and every arm's params; :class:`StudySpecError` names every bad key."""
    if not isinstance(data, dict):
        raise StudySpecError(f"{source}: top level must be a mapping, got {type(data).__name__}")
    try:
        spec = StudySpec.model_validate(data)
    except ValidationError as exc:
        raise StudySpecError(f"{source}: invalid study spec:\n  " + "\n  ".join(_error_lines(exc, StudySpec))) from None
    problems, steps = [], {}
    for arm in spec.arms:
        try:
            _, params = arm_params(spec, arm, overrides)
        except StudySpecError as exc:
            problems.append(str(exc))
            continue
        if arm.kind == "search":
            steps[arm.name] = (architecture_steps(params), images_per_iteration(params))
        if arm is spec.arms[0]:
            problems += _protocol_problems(spec, params)
    if spec.search_images is not None and len({s for s, _ in steps.values()}) > 1:
        problems.append("search_images: the search arms would make different numbers of architecture steps ("
                        + ", ".join(f"{n}: {s} steps of {i} images" for n, (s, i) in steps.items())
                        + "); equal budgets need equal images per step: set each arm's search.batch_size so that "
                        "tasks x batch_size x rounds x inner_steps is the same")
    if problems:
        raise StudySpecError(f"{source}: invalid study spec:\n  " + "\n  ".join(problems))
    return spec


def architecture_steps(params: PipelineParams) -> int:
    """Architecture steps a search makes: one per iteration after the weight warm-up epochs, or its budget
    ``search.arch_steps`` (spread over those iterations)."""
    s = params.search
    eligible = max(0, s.epochs - s.warmup_epochs) * (s.iterations_per_epoch or 0)
    budget = getattr(s, "arch_steps", None)
    return min(budget, eligible) if budget is not None else eligible


def _protocol_problems(spec: StudySpec, params: PipelineParams) -> list[str]:
    """The evaluation protocol must be readable on validation when anything selects on it; recipe named."""
    from ilnas.train.config import warn_implicit_recipe

    warn_implicit_recipe("base.retrain", params.retrain, source="study")
    needs_val = spec.reference is not None or any(a.kind == "random_search" for a in spec.arms)
    if needs_val and params.retrain.val_fraction <= 0:
        return [f"base.retrain.val_fraction: {params.retrain.val_fraction}; the reference distribution and "
                "random search select on a validation split (allowed: 0 < val_fraction < 1)"]
    return []


def load_spec(path: str | Path, overrides: Sequence[str] = ()) -> StudySpec:
    """Read and validate a study YAML file (with ``-S`` overrides applied to every trial's params)."""
    from ilnas.utils.io import read_yaml_bounded

    path = Path(path)
    data = read_yaml_bounded(path, "study spec", StudySpecError)
    return validate_spec(data, str(path), overrides)
