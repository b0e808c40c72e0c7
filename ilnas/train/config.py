"""Retraining and transfer configuration: pydantic models validated before any compute starts.

Defaults are sized for the embedded default (scikit-learn digits, 8x8 grey) so that ``ilnas retrain``
finishes in about a minute on 2 CPU cores. The paper-scale settings (DARTS / Interleaving Learning,
CIFAR-10) are: ``channels=36, cells=20, epochs=600, batch_size=96, lr=0.025, weight_decay=3e-4,
auxiliary=True, auxiliary_weight=0.4, drop_path_rate=0.2, cutout (re_prob) 1.0, grad_clip=5``;
ImageNet transfer (mobile setting): ``channels=48, cells=14, image_size=224, epochs=250,
batch_size=128, lr=0.1, label_smoothing=0.1``.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ilnas.data.spec import TaskConfig
from ilnas.utils.checks import check_device_name


def _default_task() -> TaskConfig:
    return TaskConfig(name="digits", dataset="digits")


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

    epochs: int = Field(default=12, ge=0)
    batch_size: int = Field(default=64, ge=2)
    lr: float = Field(default=0.05, gt=0)
    lr_min: float = Field(default=0.0, ge=0)
    momentum: float = Field(default=0.9, ge=0, lt=1)
    weight_decay: float = Field(default=3e-4, ge=0)
    opt: str = Field(default="sgd", min_length=1, description="timm optimizer name (create_optimizer_v2)")
    sched: str = Field(default="cosine", min_length=1, description="timm scheduler name (create_scheduler_v2)")
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
    re_prob: float = Field(default=0.0, ge=0, le=1, description="random erasing (cutout) probability")
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


class RetrainConfig(_TrainCommon):
    """Retrain a derived genotype from scratch on a task (CIFAR-style network by default)."""

    model: str = Field(default="ilnas_cifar", min_length=1, description="timm model name")
    task: TaskConfig = Field(default_factory=_default_task)
    val_fraction: float = Field(
        default=0.1, ge=0, lt=1,
        description="held out of the training split to pick the best epoch; 0 evaluates on test (DARTS)",
    )
    lerac: LeRaCConfig = Field(default_factory=LeRaCConfig)


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
    hflip: float = Field(default=0.5, ge=0, le=1)
    in_chans: int = Field(default=3, ge=1)
    channels: int = Field(default=16, ge=2)
    cells: int = Field(default=5, ge=3)
    label_smoothing: float = Field(default=0.1, ge=0, lt=1)
    checkpoint: str | None = Field(default=None, description="initial weights to fine-tune (a retrain checkpoint)")
    eval_batches: int | None = Field(default=None, ge=1, description="cap on evaluation batches (None: all)")
