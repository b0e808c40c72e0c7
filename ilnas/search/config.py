"""The search configuration: one pydantic model, validated before any compute starts."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ilnas.data.spec import TaskConfig, default_digits_tasks
from ilnas.utils.checks import check_device_name

HYPERGRAD_METHODS = ("first_order", "finite_difference", "exact")


class LFMConfig(BaseModel):
    """Learning from mistakes with class weighting (used when ``strategy: lfm``; see ilnas/strategies/lfm.py)."""

    model_config = ConfigDict(extra="forbid")

    class_weight_lr: float = Field(default=1e-2, gt=0, description="Adam learning rate of the class-weight logits")
    class_weight_init: Literal["val_error", "uniform"] = "val_error"
    class_weight_floor: float = Field(default=0.05, gt=0,
                                      description="added to W1's per-class val error before normalizing (init)")
    first_order_class_weights: Literal["finite_difference", "frozen"] = Field(
        default="finite_difference",
        description="with hypergrad: first_order, c has no first-order gradient: take its unrolled one, or freeze c")
    use_generator: bool = False
    generator_lr: float = Field(default=2e-4, gt=0)
    generator_latent_dim: int = Field(default=32, ge=1)
    generator_hidden: int = Field(default=256, ge=8)
    synthetic_per_batch: int = Field(default=16, ge=0)


class SearchConfig(BaseModel):
    """Everything one search needs. K = len(tasks), R = rounds, T = inner_steps (DESIGN.md section 2)."""

    model_config = ConfigDict(extra="forbid")

    strategy: str = "interleaving"
    tasks: list[TaskConfig] = Field(default_factory=default_digits_tasks, min_length=1)
    rounds: int = Field(default=1, ge=1)
    inner_steps: int = Field(default=1, ge=1)
    lam: float = Field(default=0.0, ge=0)
    val_on: Literal["final", "own"] = "final"
    hypergrad: Literal["first_order", "finite_difference", "exact"] = "finite_difference"
    fd_eps: float = Field(default=0.01, gt=0, description="central-difference step, divided by the adjoint norm")

    epochs: int = Field(default=10, ge=1)
    iterations_per_epoch: int | None = Field(default=None, ge=1)
    batch_size: int = Field(default=64, ge=2)
    val_fraction: float = Field(default=0.5, gt=0, lt=1)
    warmup_epochs: int = Field(default=0, ge=0)

    channels: int = Field(default=8, ge=2)
    cells: int = Field(default=5, ge=1)
    nodes: int = Field(default=4, ge=1)
    multiplier: int | None = Field(default=None, ge=1)
    stem_multiplier: int = Field(default=3, ge=1)
    partial_channels: int = Field(default=1, ge=1)

    w_lr: float = Field(default=0.025, gt=0)
    w_lr_min: float = Field(default=0.001, ge=0)
    w_momentum: float = Field(default=0.9, ge=0, lt=1)
    w_weight_decay: float = Field(default=3e-4, ge=0)
    grad_clip: float = Field(default=5.0, gt=0)
    a_lr: float = Field(default=3e-4, gt=0)
    a_betas: tuple[float, float] = (0.5, 0.999)
    a_weight_decay: float = Field(default=1e-3, ge=0)

    seed: int = 0
    device: str = "auto"
    amp: bool = True
    deterministic: bool = False
    num_workers: int = Field(default=0, ge=0)
    checkpoint_every: int = Field(default=1, ge=1, description="epochs between checkpoints")
    lfm: LFMConfig = Field(default_factory=LFMConfig)

    @field_validator("strategy")
    @classmethod
    def _known_strategy(cls, value: str) -> str:
        from ilnas.strategies import available_strategies

        allowed = available_strategies()
        if value not in allowed:
            raise ValueError(f"unknown strategy {value!r}; allowed: {allowed}")
        return value

    @field_validator("device")
    @classmethod
    def _known_device(cls, value: str) -> str:
        return check_device_name(value)

    @field_validator("tasks")
    @classmethod
    def _unique_names(cls, tasks: list[TaskConfig]) -> list[TaskConfig]:
        names = [t.name for t in tasks]
        if len(set(names)) != len(names):
            raise ValueError(f"task names must be unique, got {names}")
        return tasks

    @property
    def node_multiplier(self) -> int:
        return self.multiplier or self.nodes
