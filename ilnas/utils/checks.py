"""Config checks shared by every schema, so that bad input fails before any compute.

Kept free of torch at import: loading and validating a config must stay cheap (a typo in a key should
cost well under a second). The timm checks import timm only when a name is not one this project ships
as a default (those are verified against timm's registries by the test suite).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

# label counts of the datasets whose size is known without reading them (imagefolder: from its folders)
DATASET_CLASSES = {"digits": 10, "cifar10": 10, "cifar100": 100}

_DEVICE = re.compile(r"^(auto|cpu|cuda|cuda:(\d+))$")
DEVICE_ALLOWED = "'auto', 'cpu', 'cuda', 'cuda:N' (N = 0, 1, ...)"

# timm names the project ships as defaults or presets; anything else is looked up in timm's registries
DEFAULT_TIMM_MODELS = ("ilnas_cifar", "ilnas_imagenet")
DEFAULT_TIMM_OPTIMIZERS = ("sgd", "momentum", "adamw", "adam")
TIMM_SCHEDULERS = ("cosine", "tanh", "step", "multistep", "poly", "wsd", "rsqrt", "constant", "plateau", "none")
DEFAULT_TIMM_SCHEDULERS = ("cosine", "step", "multistep", "constant", "none")


def did_you_mean(value: str, allowed: Iterable[str]) -> str:
    """`` did you mean 'x'?`` for a near miss among ``allowed`` (empty string when nothing is close)."""
    close = difflib.get_close_matches(str(value), [str(a) for a in allowed], n=3, cutoff=0.6)
    if not close:
        return ""
    return " did you mean " + " or ".join(repr(c) for c in close) + "?"


def check_device_name(value: str) -> str:
    """The validator of every ``device`` key: a malformed name fails here, not when torch parses it."""
    if not isinstance(value, str) or not _DEVICE.match(value.strip()):
        raise ValueError(f"unknown device {value!r}; allowed: {DEVICE_ALLOWED}."
                         + did_you_mean(str(value), ("auto", "cpu", "cuda")))
    return value.strip()


def check_seed(value: int, key: str = "seed") -> int:
    if value < 0:
        raise ValueError(f"{key}: must be >= 0 (numpy and torch seeds are unsigned), got {value!r}")
    return value


def check_classes(dataset: str, classes: Sequence[int] | None, task: str) -> None:
    """Class ids within the dataset's label range, where the dataset's size is known without reading it."""
    n = DATASET_CLASSES.get(dataset)
    if n is None or classes is None:
        return
    bad = [c for c in classes if not 0 <= c < n]
    if bad:
        raise ValueError(f"task {task!r}: class id(s) {bad} out of range for dataset {dataset!r}; "
                         f"allowed: 0..{n - 1}")


def check_existing_dir(path: str | Path, what: str, base: Path | None = None) -> None:
    """A data root that must exist before the first stage runs (relative paths are relative to ``base``)."""
    p = Path(path)
    if not p.is_absolute() and base is not None:
        p = base / p
    if not p.is_dir():
        raise ValueError(f"{what}: directory {str(path)!r} does not exist"
                         + (f" (resolved: {p})" if str(p) != str(path) else ""))


def global_batch_error(key: str, batch_size: int, world_size: int) -> str | None:
    """The error message when ``batch_size`` (global) does not split evenly over ``world_size`` processes.

    Shared by the search and the training configs (a global batch is split over the torchrun processes)."""
    if world_size > 1 and batch_size % world_size:
        return (f"{key}: {batch_size} is the global batch over {world_size} processes and must divide evenly; "
                f"allowed: a multiple of {world_size} (each process takes batch_size / world_size)")
    return None


# -- timm registries -------------------------------------------------------------------------------------------
def check_timm_model(name: str) -> None:
    """``timm.is_model``; near misses among timm's names and the project's own are suggested.

    The project's models (``ilnas.nets`` registers them with timm) are :data:`DEFAULT_TIMM_MODELS`, answered
    without importing anything: this module sits below ``ilnas.nets`` and never imports it."""
    if name in DEFAULT_TIMM_MODELS:
        return
    import timm

    if not timm.is_model(name):
        candidates = sorted(set(timm.list_models()) | set(DEFAULT_TIMM_MODELS))
        raise ValueError(f"unknown timm model {name!r}; allowed: any timm model name (timm.list_models()), "
                         f"e.g. {list(DEFAULT_TIMM_MODELS)}." + did_you_mean(name, candidates))


def check_timm_optimizer(name: str) -> None:
    """timm's optimizer registry (``timm.optim.list_optimizers``); ``lookahead_<name>`` wraps any of them."""
    base = name.lower().split("_")[-1]
    if base in DEFAULT_TIMM_OPTIMIZERS and (name.lower() == base or name.lower().startswith("lookahead_")):
        return
    from timm.optim import list_optimizers

    allowed = list_optimizers()
    if base not in allowed or (name.lower() != base and not name.lower().startswith("lookahead_")):
        raise ValueError(f"unknown timm optimizer {name!r}; allowed: timm.optim.list_optimizers() "
                         f"({len(allowed)} names, e.g. 'sgd', 'adamw', 'lamb')." + did_you_mean(name.lower(), allowed))


def check_timm_scheduler(name: str) -> None:
    """timm has no scheduler registry: build the schedule once on a dummy optimizer, as training will."""
    if name in DEFAULT_TIMM_SCHEDULERS:
        return
    import torch
    from timm.scheduler import create_scheduler_v2

    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    try:
        create_scheduler_v2(optimizer, sched=name, num_epochs=10, updates_per_epoch=1)
    except (ValueError, AssertionError) as exc:
        raise ValueError(f"unknown timm scheduler {name!r} ({exc}); allowed: {list(TIMM_SCHEDULERS)}."
                         + did_you_mean(name, TIMM_SCHEDULERS)) from None
