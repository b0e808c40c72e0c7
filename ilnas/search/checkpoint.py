"""Search checkpoints: everything needed to continue bit-for-bit, written atomically, loaded weights-only.

Every file read here (checkpoints, alphas files) has its zip members' CRC-32s verified before
``torch.load``, which does not check them: a flipped byte is a :class:`CheckpointError` naming the file,
never a resume from a silently wrong tensor.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from ilnas.errors import IntegrityError
from ilnas.utils.io import atomic_torch_save, short_reason, verify_zip_members

CHECKPOINT_VERSION = 1


class CheckpointError(IntegrityError, RuntimeError):
    """A checkpoint that cannot be used: the message names the file and what is wrong."""


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> Path:
    return atomic_torch_save(path, {"checkpoint_version": CHECKPOINT_VERSION, **state})


def load_state_file(path: str | os.PathLike) -> dict[str, Any]:
    """``torch.load(weights_only=True)`` of a dict; every failure becomes a CheckpointError naming the file."""
    path = Path(path)
    try:
        verify_zip_members(path)
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise CheckpointError(f"{path}: is a directory, not a checkpoint file") from None
    except IntegrityError as exc:
        raise CheckpointError(str(exc)) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, pickle.UnpicklingError, ValueError) as exc:
        raise CheckpointError(f"{path}: corrupt or unreadable ({short_reason(exc)})") from exc
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: expected a dict of tensors, got {type(state).__name__}")
    return state


def load_checkpoint(path: str | os.PathLike, required: tuple[str, ...] = ()) -> dict[str, Any]:
    path = Path(path)
    state = load_state_file(path)
    if state.get("checkpoint_version") != CHECKPOINT_VERSION:
        raise CheckpointError(f"{path}: not an ilnas search checkpoint "
                              f"(checkpoint_version={state.get('checkpoint_version')!r}, "
                              f"expected {CHECKPOINT_VERSION})")
    missing = [k for k in required if k not in state]
    if missing:
        raise CheckpointError(f"{path}: checkpoint lacks {missing}")
    return state


def config_differences(saved: dict[str, Any], current: dict[str, Any], ignore: tuple[str, ...]) -> list[str]:
    keys = (set(saved) | set(current)) - set(ignore)
    return sorted(k for k in keys if saved.get(k) != current.get(k))
