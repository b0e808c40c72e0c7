"""Retraining and transfer configuration: pydantic models validated before any compute starts.

``recipe`` picks a published training recipe; its values fill every key the config does not set (keys set
explicitly win, so a test or a CPU run can shorten ``epochs`` and keep the rest of the recipe):

* ``darts`` (retrain): DARTS' CIFAR-10 evaluation recipe -- 600 epochs, global batch 96, SGD (plain
  momentum 0.9, not Nesterov) lr 0.025 cosine to 0, weight decay 3e-4 on every parameter (BatchNorm and
  biases too), grad clip 5, auxiliary head 0.4, drop path 0.2, 4-pixel padded random crop + flip + Cutout 16,
  the full training set (no held-out split), 36 channels, 20 cells, fp32.
* ``darts`` (transfer): DARTS' ImageNet mobile-setting recipe -- 250 epochs, lr 0.1 for a global batch of
  128 scaled linearly with the global batch, step decay x0.97 per epoch, weight decay 3e-5 on every
  parameter, label smoothing 0.1, auxiliary 0.4, random-resized crop + flip + colour jitter, 48 channels,
  14 cells, 224 px, fp32.
* ``pcdarts``: PC-DARTS' versions -- retrain as ``darts`` with drop path 0.3; transfer as ``darts`` with a
  global batch of 1024 at lr 0.5, five warm-up epochs and PC-DARTS' linear decay (``pcdarts_linear``).
* ``timm``: timm's augmentations (``create_transform``: random-resized crop, RandomErasing, auto-augment,
  EMA when on) and timm's weight-decay rule (no decay on norms and biases); the library defaults, sized for
  the embedded default (scikit-learn digits) so ``ilnas retrain`` finishes in about a minute on 2 CPU cores.

Batch semantics: ``batch_size`` is the global batch, summed over all processes; each of the ``world_size``
processes takes ``batch_size / world_size`` (it must divide). ``lr`` is the rate for ``batch_size`` unless
``lr_base_batch`` is set, in which case the rate used is ``lr * batch_size / lr_base_batch`` (linear scaling).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ilnas.data.spec import TaskConfig
from ilnas.utils.checks import check_device_name, global_batch_error  # noqa: F401 - also ilnas.params's


def _default_task() -> TaskConfig:
    return TaskConfig(name="digits", dataset="digits")


Recipe = Literal["darts", "pcdarts", "timm"]
RECIPE_NAMES = ("darts", "pcdarts", "timm")
PAPER_RECIPES = ("darts", "pcdarts")  # the papers' augmentation pipelines (Cutout / colour jitter), not timm's
DEFAULT_RECIPE = "timm"

# What each recipe sets when the config does not; docs/recipes.md cites the reference code line by line.
# darts: quark0/darts cnn/train.py (CIFAR-10) and cnn/train_imagenet.py (ImageNet): torch.optim.SGD with plain
# momentum (timm's "momentum"; timm's "sgd" is Nesterov), fp32 (no autocast anywhere in their code).
_DARTS_RETRAIN: dict[str, Any] = {
    "epochs": 600, "batch_size": 96, "lr": 0.025, "lr_base_batch": None, "lr_min": 0.0, "sched": "cosine",
    "warmup_epochs": 0, "opt": "momentum", "momentum": 0.9, "weight_decay": 3e-4, "wd_on_norm_and_bias": True,
    "grad_clip": 5.0, "auxiliary": True, "auxiliary_weight": 0.4, "drop_path_rate": 0.2, "val_fraction": 0.0,
    "hflip": 0.5, "cutout": 16, "re_prob": 0.0, "auto_augment": None, "mixup_alpha": 0.0, "cutmix_alpha": 0.0,
    "label_smoothing": 0.0, "ema": False, "channels": 36, "cells": 20, "amp": False,
}
_DARTS_TRANSFER: dict[str, Any] = {
    "epochs": 250, "batch_size": 128, "lr": 0.1, "lr_base_batch": 128, "sched": "step", "decay_epochs": 1.0,
    "decay_rate": 0.97, "warmup_epochs": 0, "opt": "momentum", "momentum": 0.9, "weight_decay": 3e-5,
    "wd_on_norm_and_bias": True, "grad_clip": 5.0, "label_smoothing": 0.1, "auxiliary": True,
    "auxiliary_weight": 0.4, "drop_path_rate": 0.0, "image_size": 224, "crop_pct": 0.875,
    "train_scale_min": 0.08, "hflip": 0.5, "color_jitter": [0.4, 0.4, 0.4, 0.2], "re_prob": 0.0,
    "auto_augment": None, "mixup_alpha": 0.0, "cutmix_alpha": 0.0, "ema": False, "channels": 48, "cells": 14,
    "amp": False,
}
RETRAIN_RECIPES: dict[str, dict[str, Any]] = {
    "darts": _DARTS_RETRAIN,
    # yuhuixu1993/PC-DARTS train.py: DARTS' CIFAR-10 recipe with drop path 0.3
    "pcdarts": {**_DARTS_RETRAIN, "drop_path_rate": 0.3},
    "timm": {},
}
TRANSFER_RECIPES: dict[str, dict[str, Any]] = {
    "darts": _DARTS_TRANSFER,
    # yuhuixu1993/PC-DARTS train_imagenet.py: global batch 1024 at lr 0.5, 5 warm-up epochs, then linear decay
    "pcdarts": {**_DARTS_TRANSFER, "batch_size": 1024, "lr": 0.5, "lr_base_batch": 1024, "sched": "pcdarts_linear",
                "warmup_epochs": 5},
    "timm": {},
}


def _fill_recipe(data: Any, recipes: dict[str, dict[str, Any]]) -> Any:
    """Recipe values for the keys ``data`` does not set (an unknown recipe is left to the field's check)."""
    if not isinstance(data, dict):
        return data
    name = data.get("recipe", DEFAULT_RECIPE)
    if name not in recipes:
        return data
    return {**recipes[name], **data}


class LeRaCConfig(BaseModel):
    """Learning Rate Curriculum: per-depth learning rates during the first ``epochs`` epochs.

    Group j of n (0 = stem, n-1 = classifier) starts at ``lr * min_ratio ** (j / (n-1))`` (highest at the
    input) and rises log-linearly to ``lr`` at epoch ``epochs``; after that the normal scheduler runs.
    """

    model_config = ConfigDict(extra="forbid")

    enabled: bool = False
    min_ratio: float = Field(default=1e-5, gt=0, le=1)
    epochs: int = Field(default=5, ge=1)


class _TrainCommon(BaseModel):
    """Fields shared by retraining and transfer."""

    model_config = ConfigDict(extra="forbid")

    recipe: Recipe = Field(default=DEFAULT_RECIPE, description="darts | pcdarts | timm: which published recipe "
                           "fills unset keys")
    epochs: int = Field(default=12, ge=0)
    batch_size: int = Field(default=64, ge=2, description="global batch over all processes (per process: "
                            "batch_size / world_size)")
    lr: float = Field(default=0.05, gt=0, description="learning rate for the global batch_size, or for "
                      "lr_base_batch images when that is set")
    lr_base_batch: int | None = Field(default=None, ge=1, description="linear scaling: the rate used is "
                                      "lr * batch_size / lr_base_batch; null: lr as given")
    lr_min: float = Field(default=0.0, ge=0)
    momentum: float = Field(default=0.9, ge=0, lt=1)
    weight_decay: float = Field(default=3e-4, ge=0)
    opt: str = Field(default="sgd", min_length=1, description="timm optimizer name (create_optimizer_v2): "
                     "momentum = plain SGD with momentum (DARTS), sgd = Nesterov")
    sched: str = Field(default="cosine", min_length=1, description="timm scheduler name (create_scheduler_v2), "
                       "or pcdarts_linear (ilnas.train.schedules)")
    decay_epochs: float = Field(default=1.0, gt=0, description="step scheduler: epochs between decays")
    decay_rate: float = Field(default=0.97, gt=0, le=1, description="step scheduler: factor per decay")
    wd_on_norm_and_bias: bool = Field(default=False, description="decay BatchNorm and bias too (DARTS); "
                                      "false: timm's rule, no decay on 1-d parameters")
    warmup_epochs: int = Field(default=0, ge=0)
    warmup_lr: float = Field(default=1e-4, ge=0)

    channels: int = Field(default=16, ge=2, description="initial channels (paper: 36 CIFAR, 48 ImageNet)")
    cells: int = Field(default=8, ge=3, description="number of cells (paper: 20 CIFAR, 14 ImageNet)")
    auxiliary: bool = False
    auxiliary_weight: float = Field(default=0.4, ge=0)
    drop_path_rate: float = Field(default=0.0, ge=0, lt=1)

    label_smoothing: float = Field(default=0.0, ge=0, lt=1)
    mixup_alpha: float = Field(default=0.0, ge=0)
    cutmix_alpha: float = Field(default=0.0, ge=0)
    re_prob: float = Field(default=0.0, ge=0, le=1, description="timm RandomErasing probability")
    hflip: float = Field(default=0.5, ge=0, le=1, description="horizontal-flip probability (image datasets)")
    auto_augment: str | None = Field(default=None, description="timm auto-augment policy, e.g. 'rand-m9-mstd0.5'")
    ema: bool = False
    ema_decay: float = Field(default=0.999, gt=0, lt=1)
    grad_clip: float | None = Field(default=5.0, gt=0)

    seed: int = 0
    device: str = "auto"
    amp: bool = True
    channels_last: bool = True
    deterministic: bool = False
    num_workers: int = Field(default=0, ge=0)
    log_interval: int = Field(default=0, ge=0, description="batches between progress-bar refreshes (0: auto)")

    @field_validator("device")
    @classmethod
    def _known_device(cls, value: str) -> str:
        return check_device_name(value)

    @model_validator(mode="after")
    def _check_channels(self):
        if self.channels % 2:
            raise ValueError(f"channels: must be even (reduction cells halve the resolution), got {self.channels}")
        return self

    def effective_lr(self) -> float:
        """The learning rate the optimizer starts from (``lr``, linearly scaled when ``lr_base_batch`` is set)."""
        return self.lr * self.batch_size / self.lr_base_batch if self.lr_base_batch else self.lr

    def per_process_batch(self, world_size: int) -> int:
        """``batch_size / world_size``; an input error (exit 2, one block) naming the key when it does not divide."""
        from ilnas.errors import InputError

        error = global_batch_error("batch_size", self.batch_size, world_size)
        if error:
            raise InputError(error)
        return self.batch_size // max(world_size, 1)


class RetrainConfig(_TrainCommon):
    """Retrain a derived genotype from scratch on a task (CIFAR-style network by default)."""

    model: str = Field(default="ilnas_cifar", min_length=1, description="timm model name")
    task: TaskConfig = Field(default_factory=_default_task)
    val_fraction: float = Field(
        default=0.1, ge=0, lt=1,
        description="held out of the training split for per-epoch monitoring; 0: train on the full training "
        "set and monitor on test (DARTS)",
    )
    cutout: int = Field(default=0, ge=0, description="Cutout side in pixels (darts recipe; 0: off)")
    lerac: LeRaCConfig = Field(default_factory=LeRaCConfig)

    @model_validator(mode="before")
    @classmethod
    def _recipe_defaults(cls, data: Any) -> Any:
        return _fill_recipe(data, RETRAIN_RECIPES)


class TransferConfig(_TrainCommon):
    """Train (or fine-tune) the ImageNet-style network on an ImageFolder and evaluate top-1/top-5/speed."""

    model: str = Field(default="ilnas_imagenet", min_length=1, description="timm model name")
    data_root: str | None = Field(
        default=None, description="ImageFolder root with train/ and val/; None: the caller's embedded default"
    )
    train_split: str = "train"
    val_split: str = "val"
    epochs: int = Field(default=10, ge=0)
    batch_size: int = Field(default=32, ge=2)
    lr: float = Field(default=0.05, gt=0)
    image_size: int = Field(default=32, ge=8, description="paper: 224")
    crop_pct: float = Field(default=0.875, gt=0, le=1)
    train_scale_min: float = Field(default=0.35, gt=0, le=1, description="random-resized-crop scale lower bound")
    color_jitter: list[float] | None = Field(default=None, min_length=3, max_length=4,
                                             description="brightness, contrast, saturation[, hue] (darts recipe)")
    in_chans: int = Field(default=3, ge=1)
    channels: int = Field(default=16, ge=2)
    cells: int = Field(default=5, ge=3)
    label_smoothing: float = Field(default=0.1, ge=0, lt=1)
    checkpoint: str | None = Field(default=None, description="initial weights to fine-tune (a retrain checkpoint)")
    eval_batches: int | None = Field(
        default=None, ge=1, description="evaluate a seeded random subset of eval_batches * batch_size images "
        "(every class represented in proportion; None: all)")

    @model_validator(mode="before")
    @classmethod
    def _recipe_defaults(cls, data: Any) -> Any:
        return _fill_recipe(data, TRANSFER_RECIPES)


_WARNED: set[str] = set()  # messages already logged in this process: each shows once


def warn_implicit_recipe(section: str, cfg: _TrainCommon, source: str = "params") -> str | None:
    """Log a warning, once per process and message, when ``cfg`` did not name its recipe: the default (timm)
    is not the papers' recipe, so a preset that forgets the key would train another way without a word.

    A log record (``ilnas.train``), not a Python warning: the stages' log format carries its level, so the flow
    shows it as a warning. Returns the message, or None when the recipe was set."""
    if "recipe" in cfg.model_fields_set:
        return None
    message = (f"{source}: {section}.recipe is not set, so recipe '{cfg.recipe}' applies "
               f"({RECIPE_SUMMARY[cfg.recipe]}); set {section}.recipe ({' | '.join(RECIPE_NAMES)}) to choose")
    if message not in _WARNED:
        _WARNED.add(message)
        logging.getLogger("ilnas.train").warning("%s", message)
    return message


RECIPE_SUMMARY: Mapping[str, str] = {
    "darts": "DARTS' published recipe",
    "pcdarts": "PC-DARTS' published recipe",
    "timm": "timm's augmentations, not the papers' recipe: numbers not comparable with theirs",
}
