"""Device choice: CUDA when present, CPU otherwise; AMP only where it pays (CUDA)."""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device={name!r} was asked for but CUDA is not available; use 'auto' or 'cpu'")
    return torch.device(name)


def amp_enabled(device: torch.device, requested: bool = True) -> bool:
    return requested and device.type == "cuda"


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seed python, numpy and torch. ``deterministic`` means it on CUDA too: cuBLAS gets the fixed workspace
    it needs for reproducible results (set before the first cuBLAS call), cuDNN picks deterministic
    kernels, and an op without a deterministic implementation raises instead of warning."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False


@contextmanager
def seeded(seed: int, deterministic: bool = False) -> Iterator[None]:
    """Seed everything for one library call, then give back the process-wide deterministic-algorithms flag."""
    previous = torch.are_deterministic_algorithms_enabled()
    try:
        seed_everything(seed, deterministic)
        yield
    finally:
        torch.use_deterministic_algorithms(previous, warn_only=True)


def rng_state() -> dict:
    state = {
        "python": random.getstate(),
        # numpy's state as plain tensors/ints so checkpoints load with weights_only=True
        "numpy": _numpy_state_to_safe(np.random.get_state()),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _numpy_state_to_safe(state: tuple) -> tuple:
    kind, keys, pos, has_gauss, gauss = state
    return (kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss))
