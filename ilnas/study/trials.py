"""A study's trials: the grid ``arms x search seeds``, each with a key over its full config and the code.

A trial's directory is ``<trials_dir>/<key>``: the key hashes everything that can change the trial's
numbers (the arm's kind and cell or search config, the retrain config, the seeds) and the code version,
so a finished trial is never rerun, a changed arm reruns only its own trials, and two studies that share a
trial share its result. The arm's name is not part of the key: renaming an arm reuses its trials.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from ilnas.params import PipelineParams
from ilnas.space.primitives import PRIMITIVES
from ilnas.study.reference import random_search_pick
from ilnas.study.sampling import sample_genotype
from ilnas.study.spec import (
    RETRAIN_SEED_STRIDE,
    StudySpec,
    architecture_steps,
    arm_params,
    images_per_iteration,
    resolve_genotype,
)
from ilnas.utils.fingerprint import json_digest, source_digest

# modules that only summarize or display: editing them must not invalidate finished trials
NOT_IN_CODE_VERSION = ("study/report.py", "study/stats.py", "study/tracking.py", "study/spec.py", "viz.py",
                       "tracking.py", "cli.py", "study/calibration.py", "study/figures.py", "study/reference.py",
                       "study/analysis.py", "study/place.py")
PACKAGE = Path(__file__).resolve().parents[1]


@lru_cache(maxsize=1)
def code_version() -> str:
    """Hash of the library's source (``ilnas/**/*.py`` minus display-only modules): what computes a trial."""
    files = [p for p in sorted(PACKAGE.rglob("*.py"))
             if (rel := p.relative_to(PACKAGE).as_posix()) not in NOT_IN_CODE_VERSION and "__pycache__" not in rel]
    return source_digest(PACKAGE, files)


def trial_key(config: dict[str, Any], code: str | None = None) -> str:
    payload = {"config": config, "code": code or code_version()}
    return json_digest(payload, 16)


@dataclass
class Trial:
    """One search (or sampled / fixed cell) -> derive -> retrain x retrain seeds; plain data (ships to workers)."""

    study: str
    arm: str
    kind: str
    search_seed: int
    retrain_seeds: list[int]
    params: dict[str, Any]  # validated PipelineParams, dumped (search, retrain, ...)
    genotype: dict[str, Any] | None  # random / genotype arms: the cell; search arms: None (derived)
    search_images: int  # training images the search draws (0 without search)
    arch_steps: int = 0  # architecture steps the search makes (0 without search)
    selection: dict[str, Any] | None = None  # random_search: the reference cells drawn and the one kept
    key: str = ""
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return f"{self.arm}/s{self.search_seed}"

    @property
    def strategy(self) -> str:
        return self.params["search"]["strategy"] if self.kind == "search" else self.kind

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Trial:
        return cls(**data)


def expand_trials(spec: StudySpec, overrides: Sequence[str] = (),
                  reference: list[dict[str, Any]] | None = None) -> list[Trial]:
    """Every (arm, search seed) trial, with its validated params and key (arm order, then seed order).

    ``reference``: the evaluated reference cells (``index``, ``genotype``, ``val_top1``...), needed by
    ``random_search`` arms; without it those arms are left out (the flow evaluates the reference first).
    """
    trials = []
    for arm in spec.arms:
        data, _ = arm_params(spec, arm, overrides)
        for seed in spec.search_seeds:
            seeds = [RETRAIN_SEED_STRIDE * seed + r for r in spec.retrain_seeds]
            edits: dict[str, Any] = {"search": {"seed": seed}}
            trial_data = {**data, "search": {**data.get("search", {}), **edits["search"]}}
            params = PipelineParams.model_validate(trial_data).model_dump(mode="json")
            genotype, selection = None, None
            if arm.kind == "random":
                genotype = sample_genotype(seed, params["search"]["nodes"],
                                           tuple(params["search"].get("primitives") or PRIMITIVES)).to_dict()
            elif arm.kind == "genotype":
                genotype = resolve_genotype(arm.genotype).to_dict()  # type: ignore[arg-type]
            elif arm.kind == "random_search":
                if reference is None:
                    continue
                pick = random_search_pick(reference, arm.candidates or 1, seed)
                genotype = pick["genotype"]
                selection = {"candidates": pick["candidates"], "kept": pick["index"], "kept_val_top1": pick["val_top1"]}
            images = steps = 0
            if arm.kind == "search":
                p = PipelineParams.model_validate(params)
                images = images_per_iteration(p) * p.search.epochs * (p.search.iterations_per_epoch or 0)
                steps = architecture_steps(p)
            retrain = {k: v for k, v in params["retrain"].items() if k != "seed"}
            config = {"kind": arm.kind, "retrain": retrain, "retrain_seeds": seeds,
                      **({"search": params["search"]} if arm.kind == "search" else {"genotype": genotype})}
            trials.append(Trial(study=spec.name, arm=arm.name, kind=arm.kind, search_seed=seed, retrain_seeds=seeds,
                                params=params, genotype=genotype, search_images=images, arch_steps=steps,
                                selection=selection, key=trial_key(config), config=config))
    return trials
