"""Training checkpoints: timm's CheckpointSaver (last + best, written to a temp file then renamed), made
``torch.load(weights_only=True)``-safe and carrying everything an exact resume needs.

timm's saver pickles ``args`` when given; we pass ``args=None`` and add our own plain-data ``extra``
(scheduler state, RNG state, history rows, the config as JSON-able dict, the genotype dict).
Loading never falls back silently: an unreadable, damaged (zip member CRC-32 mismatch: ``torch.load`` does
not check them), incomplete or mismatched file raises :class:`CheckpointError` naming the file and what is
wrong. :func:`check_resume` runs the identity check before a run writes anything into its directory.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from timm.utils import CheckpointSaver
from timm.utils.model import get_state_dict, unwrap_model

from ilnas.errors import IntegrityError
from ilnas.utils.io import short_reason, verify_zip_members

LAST = "last.pth.tar"
BEST = "model_best.pth.tar"  # no longer written: kept so old run directories can be recognised
REQUIRED_KEYS = ("epoch", "state_dict", "optimizer", "extra")
# The one set of weights a run reports, logs and hands on: the last epoch's, its EMA when EMA is on.
FINAL_WEIGHTS = "final.pth"
FINAL, FINAL_EMA = "final", "final_ema"


class CheckpointError(IntegrityError, RuntimeError):
    """A checkpoint that cannot be used to resume or initialise: the message names the file and the problem."""


# timm has no hook for extra state in a checkpoint, so SafeCheckpointSaver overrides the private
# ``CheckpointSaver._save(save_path, epoch, metric)`` that ``save_checkpoint`` calls for the temp file it then
# renames. The fence: the signature checked when a saver is built, and tests/test_timm_private_api.py, which
# fails when timm renames or re-signs the method, or stops calling it.
TIMM_SAVE_SIGNATURE = ("self", "save_path", "epoch", "metric")


def check_timm_saver() -> None:
    """Refuse to build a saver on a timm whose private ``CheckpointSaver._save`` is not the one overridden."""
    import inspect

    import timm

    found = tuple(inspect.signature(CheckpointSaver._save).parameters) if hasattr(CheckpointSaver, "_save") else ()
    if found != TIMM_SAVE_SIGNATURE:
        raise RuntimeError(f"timm {timm.__version__}: CheckpointSaver._save{found or ' (absent)'} is not the "
                           f"_save{TIMM_SAVE_SIGNATURE} ilnas.train.checkpoint overrides; pin timm or update it")


class SafeCheckpointSaver(CheckpointSaver):
    """CheckpointSaver whose files hold only tensors and plain data, plus an ``extra`` dict from ``extra_fn``."""

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, checkpoint_dir: str | os.PathLike,
                 extra_fn: Callable[[], dict[str, Any]], model_ema: torch.nn.Module | None = None,
                 amp_scaler: Any = None, max_history: int = 1):
        check_timm_saver()
        Path(checkpoint_dir).mkdir(parents=True, exist_ok=True)
        super().__init__(model, optimizer, args=None, model_ema=model_ema, amp_scaler=amp_scaler,
                         checkpoint_dir=str(checkpoint_dir), recovery_dir=str(checkpoint_dir),
                         decreasing=False, max_history=max_history)
        self.extra_fn = extra_fn
        # timm's saver writes tmp<ext> and renames it: a kill between the two leaves that file behind
        (Path(checkpoint_dir) / f"tmp{self.extension}").unlink(missing_ok=True)

    def _save(self, save_path: str, epoch: int, metric: float | None = None) -> None:
        state: dict[str, Any] = {
            "epoch": int(epoch),
            "arch": type(unwrap_model(self.model)).__name__.lower(),
            "optimizer": self.optimizer.state_dict(),
            "version": 2,
            "state_dict": get_state_dict(self.model, self.unwrap_fn),
        }
        if self.model_ema is not None:
            state["state_dict_ema"] = get_state_dict(self.model_ema, self.unwrap_fn)
        if self.amp_scaler is not None:
            state[self.amp_scaler.state_dict_key] = self.amp_scaler.state_dict()
        if metric is not None:
            state["metric"] = float(metric)
        state["saver"] = self.state_dict(epoch, metric)
        state["extra"] = self.extra_fn()
        torch.save(state, save_path)


def _read_verified(path: Path, what: str) -> Any:
    """``torch.load(weights_only=True)`` after the zip members' CRC check; CheckpointError names the file."""
    try:
        verify_zip_members(path)
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as exc:
        raise CheckpointError(f"{path}: {what} file does not exist") from exc
    except IntegrityError as exc:
        raise CheckpointError(str(exc)) from None
    except Exception as exc:  # corrupt zip, truncated file, non-weights pickle, ...
        raise CheckpointError(f"{path}: cannot read {what} ({short_reason(exc)})") from exc


def load_checkpoint_file(path: str | os.PathLike) -> dict[str, Any]:
    """Read a training checkpoint with ``weights_only=True``; CheckpointError names the file on any problem."""
    path = Path(path)
    state = _read_verified(path, "checkpoint")
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: not a training checkpoint (got {type(state).__name__}, expected a dict)")
    missing = [k for k in REQUIRED_KEYS if k not in state]
    if missing:
        raise CheckpointError(f"{path}: not an ilnas training checkpoint, missing key(s) {missing}")
    return state


def load_module_state(path: str | os.PathLike, module: torch.nn.Module, state_dict: dict[str, torch.Tensor],
                      what: str = "state_dict") -> None:
    """``module.load_state_dict`` with strict checking; shape / key mismatches name the file."""
    try:
        module.load_state_dict(state_dict, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: {what} does not match the model ({exc})") from exc


def config_mismatch(saved: dict[str, Any], current: dict[str, Any], ignore: tuple[str, ...] = ()) -> list[str]:
    """Keys (dotted) whose values differ between two config dicts, for an error message."""
    diffs: list[str] = []

    def walk(a: Any, b: Any, prefix: str) -> None:
        if isinstance(a, dict) and isinstance(b, dict):
            for key in sorted(set(a) | set(b)):
                name = f"{prefix}{key}"
                if name in ignore:
                    continue
                if key not in a or key not in b:
                    diffs.append(f"{name} (only in {'checkpoint' if key in a else 'config'})")
                else:
                    walk(a[key], b[key], name + ".")
        elif a != b:
            diffs.append(f"{prefix.rstrip('.')}: checkpoint {a!r} != config {b!r}")

    walk(saved, current, "")
    return diffs


def save_final_weights(path: str | os.PathLike, module: torch.nn.Module, weights: str, epoch: int) -> Path:
    """The run's result as a weights-only file: ``state_dict``, ``weights`` (final / final_ema) and ``epoch``."""
    from ilnas.utils.io import atomic_torch_save

    path = Path(path)
    state = {"state_dict": {k: v.detach().cpu() for k, v in unwrap_model(module).state_dict().items()},
             "weights": weights, "epoch": int(epoch), "version": 1}
    return atomic_torch_save(path, state)


def load_weights(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], str]:
    """(state_dict, which) from a final-weights file or a training checkpoint, by the same rule.

    A training checkpoint gives its EMA weights when it has them (``final_ema``), else its model weights:
    the rule :func:`save_final_weights` follows, so fine-tuning starts from what the run reported.
    """
    path = Path(path)
    state = _read_verified(path, "weights")
    if not isinstance(state, dict) or "state_dict" not in state:
        raise CheckpointError(f"{path}: not a weights file (expected a dict with 'state_dict')")
    if "weights" in state:
        return state["state_dict"], str(state["weights"])
    if "state_dict_ema" in state:
        return state["state_dict_ema"], FINAL_EMA
    return state["state_dict"], FINAL


def check_resume(last_path: str | os.PathLike, identity: dict[str, Any], ignore_config: Sequence[str] = ()) -> None:
    """Refuse to resume ``last_path`` when it belongs to a different run, before the run writes anything.

    The same rule ``fit`` applies when it loads the checkpoint (``ignore_config``: config keys that may differ);
    called first so that a refused run leaves its directory (config.json, genotype.json) exactly as it was.
    No checkpoint: nothing to check.
    """
    ignore = tuple(f"config.{k}" for k in ignore_config)
    last_path = Path(last_path)
    if not last_path.exists():
        return
    state = load_checkpoint_file(last_path)
    saved = state["extra"].get("identity", {}) if isinstance(state.get("extra"), dict) else {}
    diffs = config_mismatch(saved, identity, ignore=ignore)
    if diffs:
        raise CheckpointError(f"{last_path}: checkpoint belongs to a different run: {'; '.join(diffs)}. "
                              "Use a fresh output directory or resume=False (--no-resume) to start over.")
