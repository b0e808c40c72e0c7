"""The search configuration: one pydantic model, validated before any compute starts."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ilnas.data.spec import TaskConfig, default_digits_tasks
from ilnas.hypergrad.names import METHODS, HypergradMethod
from ilnas.search.strategies.registry import available_strategies
from ilnas.space.primitives import PRIMITIVES, check_primitives
from ilnas.utils.checks import check_classes, check_device_name

HYPERGRAD_METHODS = METHODS  # kept for ``ilnas.search.HYPERGRAD_METHODS``; the names live in ilnas/hypergrad/names.py


class LFMConfig(BaseModel):
    """Learning from mistakes with class weighting (used when ``strategy: lfm``; see ilnas/search/strategies/lfm.py)."""

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
    """Everything one search needs. K = len(tasks), R = rounds, T = inner_steps (docs/design.md)."""

    model_config = ConfigDict(extra="forbid")

    strategy: str = "interleaving"
    tasks: list[TaskConfig] = Field(default_factory=default_digits_tasks, min_length=1)
    rounds: int = Field(default=1, ge=1)
    inner_steps: int = Field(default=1, ge=1)
    lam: float = Field(default=0.0, ge=0)
    val_on: Literal["own", "final"] = Field(
        default="own", description="own: each model validates the encoder it produced in the last round (the "
        "published reading); final: every model validates the final encoder (retention)")
    optimizer_state: Literal["per_model", "shared"] = Field(
        default="per_model", description="per_model: each of the K models keeps its own SGD momentum (the encoder "
        "handed to model k continues with model k's); shared: one optimizer state for all")
    hypergrad: HypergradMethod = Field(
        default="finite_difference", description="first_order | finite_difference (chained through every stage) | "
        "stagewise (per-stage DARTS hypergradient, summed; the published reading) | exact (autograd; for tests)")
    fd_eps: float = Field(default=0.01, gt=0, description="central-difference step, divided by the adjoint norm")

    epochs: int = Field(default=10, ge=1)
    iterations_per_epoch: int | None = Field(default=None, ge=1)
    batch_size: int = Field(
        default=64, ge=2, description="the global batch of every stream; under torchrun each of W processes "
        "draws a disjoint batch_size / W (W must divide it) and gradients are averaged, so the learning "
        "rates are those of one process with this batch (not rescaled)")
    val_fraction: float = Field(default=0.5, gt=0, lt=1)
    warmup_epochs: int = Field(default=0, ge=0)
    eval_bn_images: int = Field(
        default=256, ge=16, description="training images per task whose statistics recalibrate BatchNorm "
        "before each evaluation (a fixed, seeded subset)")
    early_stop_skips: int | None = Field(
        default=None, ge=1, description="stop the search once the derived normal cell has this many skip "
        "connections (DARTS+; off when null)")
    # collapse diagnostics (ilnas/search/diagnostics.py; docs/search-diagnostics.md)
    hessian_every: int = Field(
        default=0, ge=0, description="epochs between dominant-eigenvalue estimates of the validation loss' "
        "Hessian w.r.t. the alphas (RobustDARTS); 0 = off")
    hessian_iterations: int = Field(default=20, ge=1, description="power iterations per eigenvalue estimate")

    channels: int = Field(default=8, ge=2)
    cells: int = Field(default=5, ge=3, description="cells of the supernet; >= 3 so that it has the two "
                       "reduction cells (at cells//3 and 2*cells//3) whose alphas are derived")
    nodes: int = Field(default=4, ge=1)
    multiplier: int | None = Field(default=None, ge=1)
    stem_multiplier: int = Field(default=3, ge=1)
    partial_channels: int = Field(default=1, ge=1, description="PC-DARTS q: 1/q of the channels per edge; "
                                  "must divide channels")
    # collapse remedies, each off by default (docs/search-remedies.md; ilnas/space/remedies.py)
    arch_steps: int | None = Field(
        default=None, ge=1, description="exactly this many architecture steps, spread evenly over the iterations "
        "after warmup_epochs (equal architecture steps across arms); null = one every iteration after the warm-up")
    edge_normalization: bool | None = Field(
        default=None, description="PC-DARTS edge betas (softmax over a node's inputs, multiplied into each edge "
        "and into derivation); null = on exactly when partial_channels > 1")
    smoothing: Literal["none", "random"] = Field(
        default="none", description="random: SDARTS-RS, uniform noise on the softmaxed alphas in the weight steps")
    smoothing_epsilon: float = Field(
        default=0.3, gt=0, description="SDARTS-RS noise radius after the last epoch (ramps linearly from 0.03)")
    beta_decay: float = Field(
        default=0.0, ge=0, description="beta-DARTS: coefficient of mean logsumexp(alpha) in the architecture "
        "loss after the last epoch, ramping linearly from 0 (their code: 50); 0 = off")
    aux_skip: Literal["none", "linear", "cosine"] = Field(
        default="none", description="DARTS-: an auxiliary skip on every edge, its weight decaying 1 -> 0 "
        "(their default: linear); none = off")
    activation: Literal["softmax", "sigmoid"] = Field(
        default="softmax", description="op weights of an edge: softmax (DARTS) or independent sigmoids (Fair DARTS)")
    zero_one_weight: float = Field(
        default=0.0, ge=0, description="Fair DARTS' zero-one loss weight w0 on the architecture (their code: 10); "
        "0 = off")
    primitives: tuple[str, ...] = Field(
        default=PRIMITIVES, description="candidate ops of every edge (default the DARTS 8); e.g. R-DARTS S2 "
        "[skip_connect, sep_conv_3x3], S3 [none, skip_connect, sep_conv_3x3], S4 [noise, sep_conv_3x3]")

    w_lr: float = Field(default=0.025, gt=0)
    w_lr_min: float = Field(default=0.001, ge=0)
    w_momentum: float = Field(default=0.9, ge=0, lt=1)
    w_weight_decay: float = Field(default=3e-4, ge=0)
    grad_clip: float = Field(default=5.0, gt=0)
    a_lr: float = Field(default=3e-4, gt=0)
    a_betas: tuple[float, float] = (0.5, 0.999)
    a_weight_decay: float = Field(default=1e-3, ge=0)

    seed: int = Field(default=0, ge=0)
    device: str = "auto"
    amp: bool = True
    deterministic: bool = False
    num_workers: int = Field(default=0, ge=0)
    checkpoint_every: int = Field(default=1, ge=1, description="epochs between checkpoints")
    batchnorm_stats: Literal["local", "global"] = Field(
        default="local", description="under torchrun: BatchNorm statistics of each process's own batch (as "
        "DataParallel/DDP searches do; fast) or of the global batch (exactly a one-process search with "
        "batch_size; one all-reduce per BatchNorm call, slow on CPU)")
    sync_check_every: int = Field(
        default=10, ge=1, description="under torchrun: iterations between checksums of the architecture "
        "across ranks (a mismatch stops the search naming the iteration); also checked every epoch")
    lfm: LFMConfig = Field(default_factory=LFMConfig)

    @field_validator("strategy")
    @classmethod
    def _known_strategy(cls, value: str) -> str:
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
        for i, task in enumerate(tasks):
            try:
                check_classes(task.dataset, task.classes, task.name)
            except ValueError as exc:  # named by its key path: search.tasks[i].classes
                raise ValueError(f"tasks[{i}].classes: {exc}") from None
        return tasks

    @field_validator("primitives")
    @classmethod
    def _known_primitives(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return check_primitives(value)

    @model_validator(mode="after")
    def _remedies_consistent(self) -> SearchConfig:
        if self.smoothing == "random" and self.activation != "softmax":
            raise ValueError("smoothing: 'random' with activation: 'sigmoid'; allowed: smoothing 'none' with "
                             "sigmoid (SDARTS-RS perturbs softmax weights on the simplex)")
        step_remedies = {"smoothing": self.smoothing != "none", "beta_decay": self.beta_decay > 0,
                         "zero_one_weight": self.zero_one_weight > 0}
        on = [k for k, v in step_remedies.items() if v]
        if on and self.strategy != "interleaving":
            raise ValueError(f"{', '.join(on)}: set with strategy {self.strategy!r}; allowed: strategy "
                             "'interleaving' (the step-level remedies live in its step) or the remedy off")
        if self.arch_steps is not None and self.iterations_per_epoch is not None:
            eligible = max(0, self.epochs - self.warmup_epochs) * self.iterations_per_epoch
            if self.arch_steps > eligible:
                raise ValueError(f"arch_steps: got {self.arch_steps}; allowed: 1..{eligible} (the iterations after "
                                 f"the warm-up: (epochs {self.epochs} - warmup_epochs {self.warmup_epochs}) x "
                                 f"iterations_per_epoch {self.iterations_per_epoch})")
        return self

    @property
    def uses_edge_normalization(self) -> bool:
        """PC-DARTS edge betas: as set, or (unset) exactly when partial channels are on."""
        return self.partial_channels > 1 if self.edge_normalization is None else self.edge_normalization

    @model_validator(mode="after")
    def _partial_channels_divide(self) -> SearchConfig:
        # every cell's channel count is channels * 2**r, so dividing `channels` is enough
        if self.channels % self.partial_channels:
            divisors = [q for q in range(1, self.channels + 1) if self.channels % q == 0]
            raise ValueError(f"partial_channels: {self.partial_channels} does not divide channels "
                             f"({self.channels}); allowed: {divisors}")
        return self

    @property
    def node_multiplier(self) -> int:
        return self.multiplier or self.nodes
