"""The search loop: epochs, learning-rate schedule, evaluation, history, checkpoints, resume."""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from ilnas.data.loaders import CyclingLoader
from ilnas.data.tasks import TaskData, build_task
from ilnas.search import provenance
from ilnas.search.checkpoint import CheckpointError, config_differences, load_checkpoint, save_checkpoint
from ilnas.search.config import SearchConfig
from ilnas.search.derivation import alphas_payload
from ilnas.search.diagnostics import alpha_diagnostics, edge_entropies, hessian_eigenvalue
from ilnas.search.evaluation import evaluate
from ilnas.search.parallel import SearchWorld, check_global_batch, local_statistics, use_global_batchnorm
from ilnas.search.remedies import ArchStepPlan, build_architecture, build_supernet, start_epoch
from ilnas.search.strategies import get_strategy
from ilnas.search.strategies.base import SearchContext, SearchStrategy
from ilnas.space.genotype import Genotype, collapse_counts
from ilnas.utils.device import amp_enabled, rng_state, seed_everything, set_rng_state
from ilnas.utils.io import atomic_torch_save, atomic_write_csv, atomic_write_json

log = logging.getLogger("ilnas.search")

EpochCallback = Callable[[int, dict[str, Any]], None]
# settings that may differ between an interrupted run and its resumption
RESUME_MAY_CHANGE = ("device", "num_workers", "amp")


@dataclass
class SearchResult:
    genotype: Genotype
    history: list[dict[str, Any]]
    metrics: dict[str, Any]
    out_dir: Path
    checkpoint: Path
    alphas: Path
    alpha_history: Path
    history_csv: Path
    metrics_json: Path
    genotype_json: Path
    alpha_rows: list[dict[str, Any]] = field(default_factory=list)


def assert_disjoint(weights: nn.Module, hypers: Sequence[nn.Parameter]) -> None:
    """The weight optimizer must never see an architecture (or other hyper) parameter."""
    w_ids = {id(p) for p in weights.parameters()}
    clash = [p.shape for p in hypers if id(p) in w_ids]
    if clash:
        raise AssertionError(f"architecture parameters leaked into the weight parameters: {clash}")


def _build_tasks(config: SearchConfig) -> list[TaskData]:
    tasks = [build_task(t, seed=config.seed, val_fraction=config.val_fraction) for t in config.tasks]
    shapes = {(t.in_channels, t.image_size) for t in tasks}
    if len(shapes) > 1:
        raise ValueError(f"search.tasks must share input channels and image size, got "
                         f"{ {t.name: (t.in_channels, t.image_size) for t in tasks} }")
    return tasks


def _genotype_line(genotype: Genotype) -> str:
    fmt = lambda cell: " ".join(f"{op}<-{i}" for op, i in cell)  # noqa: E731
    return f"normal[{fmt(genotype.normal)}] reduce[{fmt(genotype.reduce)}]"


class SearchRun:
    """Builds everything a search needs once, then runs (or resumes) it epoch by epoch."""

    def __init__(self, config: SearchConfig, out_dir: str | os.PathLike, tasks: list[TaskData] | None = None,
                 world: SearchWorld | None = None):
        """``tasks`` overrides ``config.tasks`` with ready-made views (benchmarks, synthetic data).

        ``world``: this process's rank and world size; by default joined from torchrun's environment (one
        process when there is none). Every rank builds the same run; rank 0 alone writes files.
        """
        self.config = config
        self.out_dir = Path(out_dir)
        self.world = world if world is not None else SearchWorld.from_env(config.device)
        check_global_batch(config.batch_size, self.world.world_size)
        self.device = self.world.dist_ctx.device
        seed_everything(config.seed, config.deterministic)
        self.tasks = tasks if tasks is not None else _build_tasks(config)
        first = self.tasks[0]
        self.model = build_supernet(config, [t.num_classes for t in self.tasks], first.in_channels).to(self.device)
        self.arch = build_architecture(config).to(self.device)
        if self.world.distributed:  # every replica starts from rank 0's
            if config.batchnorm_stats == "global":
                use_global_batchnorm(self.model)
            self.world.broadcast_(self.model)
            self.world.broadcast_(self.arch)
        self.w_optimizers = [torch.optim.SGD(group, lr=config.w_lr, momentum=config.w_momentum,
                                             weight_decay=config.w_weight_decay) for group in self._weight_groups()]
        self.w_optimizer = self.w_optimizers[0]
        self.schedulers = [torch.optim.lr_scheduler.CosineAnnealingLR(opt, config.epochs, eta_min=config.w_lr_min)
                           for opt in self.w_optimizers]
        pin = self.device.type == "cuda"
        shard = (self.world.rank, self.world.world_size)
        stream = lambda ds, salt: CyclingLoader(ds, config.batch_size, seed=config.seed * 1000 + salt,  # noqa: E731
                                                num_workers=config.num_workers, pin_memory=pin, shard=shard)
        self.ctx = SearchContext(
            config=config, model=self.model, arch=self.arch, w_optimizer=self.w_optimizer,
            task_names=[t.name for t in self.tasks], num_classes=[t.num_classes for t in self.tasks],
            train_streams=[stream(t.train, 2 * k) for k, t in enumerate(self.tasks)],
            val_streams=[stream(t.val, 2 * k + 1) for k, t in enumerate(self.tasks)],
            device=self.device, amp=amp_enabled(self.device, config.amp), w_optimizers=self.w_optimizers,
            grad_mean=self.world.mean if self.world.distributed else None,
            mean_grads_=self.world.mean_grads_ if self.world.distributed else None,
        )
        self.ctx.extra["tasks"] = self.tasks
        self.strategy: SearchStrategy = get_strategy(config.strategy)(self.ctx)
        hypers = self.strategy.hyper_parameters()
        assert_disjoint(self.model, hypers)
        self.a_optimizer = torch.optim.Adam(hypers, lr=config.a_lr, betas=tuple(config.a_betas),
                                            weight_decay=config.a_weight_decay)
        self.ctx.a_optimizer = self.a_optimizer
        self.history: list[dict[str, Any]] = []
        self.alpha_rows: list[dict[str, Any]] = []
        self.snapshots: list[dict[str, Any]] = []  # raw alphas per epoch, for exact best-epoch derivation
        self.start_epoch = 0
        self.iteration = 0
        self.arch_steps = 0  # architecture steps taken (metrics: arch_steps)
        self.arch_plan = ArchStepPlan.of(config, self.iterations_per_epoch)  # a bad budget fails before compute
        self.stopped_early: int | None = None
        self.initial: dict[str, float] = {}
        self.alpha0 = self.arch.raw_snapshot()  # displacement diagnostics measure from here

    def _weight_groups(self) -> list[list[nn.Parameter]]:
        """One group per model k (encoder + head k) for per-model optimizer state, else one group of all."""
        if self.config.optimizer_state == "shared" or len(self.tasks) == 1:
            return [list(self.model.parameters())]
        named = dict(self.model.named_parameters())
        return [[named[n] for n in self.model.encoder_names() + self.model.head_names(k)]
                for k in range(len(self.tasks))]

    @property
    def checkpoint_path(self) -> Path:
        return self.out_dir / "checkpoint.pt"

    @property
    def iterations_per_epoch(self) -> int:
        cfg = self.config
        if cfg.iterations_per_epoch:
            return cfg.iterations_per_epoch
        longest = max(s.batches_per_epoch for s in self.ctx.train_streams)
        return max(1, math.ceil(longest / (cfg.rounds * cfg.inner_steps)))

    def evaluate(self) -> dict[str, float]:
        """Every rank evaluates all of it, on its own statistics (identical weights: identical numbers)."""
        cfg = self.config
        # the validation split in chunks of 4 training batches: eval mode makes the chunk size change no number,
        # a no-grad forward holds far less than a training step, and fewer calls are faster (per-call overhead)
        with local_statistics():
            return evaluate(self.model, self.arch, self.tasks, self.device, 4 * cfg.batch_size, cfg.eval_bn_images,
                            bn_batch_size=cfg.batch_size, seed=cfg.seed)

    # -- checkpoints -------------------------------------------------------------------------------
    def state_dict(self, epoch: int) -> dict[str, Any]:
        return {
            "epoch": epoch,
            "iteration": self.iteration,
            "arch_steps": self.arch_steps,
            "code_version": provenance.code_version(),
            "world_size": self.world.world_size,
            "config": self.config.model_dump(mode="json"),
            "model": self.model.state_dict(),
            "arch": self.arch.state_dict(),
            "w_optimizers": [o.state_dict() for o in self.w_optimizers],
            "a_optimizer": self.a_optimizer.state_dict(),
            "schedulers": [s.state_dict() for s in self.schedulers],
            "streams": [s.state_dict() for s in self.ctx.train_streams + self.ctx.val_streams],
            "strategy": self.strategy.state_dict(),
            "rng": rng_state(),
            "history": self.history,
            "alpha_history": self.alpha_rows,
            "snapshots": self.snapshots,
            "stopped_early": self.stopped_early,
            "initial": self.initial,
            "alpha0": self.alpha0,
        }

    def _stale(self, path: Path, state: dict[str, Any]) -> bool:
        """A checkpoint written by other search code is set aside (named in the log), never resumed."""
        saved = state.get("code_version")
        current = provenance.code_version()
        if saved == current:
            return False
        aside = path.with_name(f"checkpoint.stale-{saved or 'unknown'}.pt")
        self.world.barrier()  # every rank has read it before rank 0 moves it
        if not self.world.is_main:
            return True
        path.replace(aside)
        log.warning("%s was written by other search code (code version %s, now %s): set aside as %s and "
                    "starting over", path, saved, current, aside)
        return True

    def load(self, path: Path, state: dict[str, Any] | None = None) -> None:
        """Continue from a checkpoint (``state``: its already-loaded contents)."""
        state = state if state is not None else load_checkpoint(path)
        missing = [k for k in ("epoch", "config", "model", "arch", "w_optimizers", "a_optimizer", "schedulers",
                               "snapshots") if k not in state]
        if missing:
            raise CheckpointError(f"{path}: checkpoint lacks {missing}")
        saved_world = int(state.get("world_size", 1))
        if saved_world != self.world.world_size:
            raise CheckpointError(f"{path}: written by a search on {saved_world} process(es), this one runs on "
                                  f"{self.world.world_size}; resume with the same distributed settings (the "
                                  "data shards and batch statistics depend on them) or delete it to start over")
        diff = config_differences(state["config"], self.config.model_dump(mode="json"), RESUME_MAY_CHANGE)
        if diff:
            raise CheckpointError(f"{path}: written by a different search config (differs in {diff}); "
                                  "delete it or run with resume disabled to start over")
        try:
            self.model.load_state_dict(state["model"])
            self.arch.load_state_dict(state["arch"])
            for opt, st in zip(self.w_optimizers, state["w_optimizers"], strict=True):
                opt.load_state_dict(st)
            self.a_optimizer.load_state_dict(state["a_optimizer"])
            for sched, st in zip(self.schedulers, state["schedulers"], strict=True):
                sched.load_state_dict(st)
            self.strategy.load_state_dict(state.get("strategy", {}))
        except (RuntimeError, ValueError, KeyError) as exc:
            raise CheckpointError(f"{path}: does not match this search space ({exc})") from exc
        for s, st in zip(self.ctx.train_streams + self.ctx.val_streams, state["streams"], strict=True):
            s.load_state_dict(st)
        set_rng_state(state["rng"])
        self.history, self.alpha_rows = list(state["history"]), list(state["alpha_history"])
        self.snapshots = list(state["snapshots"])
        self.stopped_early = state.get("stopped_early")
        self.initial = dict(state.get("initial", {}))
        self.alpha0 = dict(state.get("alpha0", self.alpha0))
        self.start_epoch, self.iteration = int(state["epoch"]) + 1, int(state["iteration"])
        self.arch_steps = int(state.get("arch_steps", 0))
        log.info("resumed from %s at epoch %d", path, self.start_epoch + 1)

    # -- the loop ------------------------------------------------------------------------------------
    def run(self, resume: bool = True, progress: bool | None = None, callbacks: Sequence[EpochCallback] = (),
            stop_after_epoch: int | None = None) -> SearchResult:
        """Run the remaining epochs. ``progress``: a tqdm bar (None: only on a TTY); without a bar a
        progress line is logged at most every ``PROGRESS_EVERY_S`` seconds. Callbacks get ``(epoch, row)``
        with epochs numbered from 1, as in the history."""
        cfg = self.config
        self.out_dir.mkdir(parents=True, exist_ok=True)
        if resume and self.checkpoint_path.exists():
            state = load_checkpoint(self.checkpoint_path)
            if not self._stale(self.checkpoint_path, state):
                self.load(self.checkpoint_path, state)
        if not self.initial:
            self.initial = {f"initial_{k}": v for k, v in self.evaluate().items()}
        n_iter = self.iterations_per_epoch
        ticker = _ProgressLog(n_iter * cfg.epochs, self.iteration)
        for epoch in range(self.start_epoch, cfg.epochs):
            if self.stopped_early is not None:
                break
            started = time.perf_counter()
            lr = self.schedulers[0].get_last_lr()[0]
            schedules = start_epoch(self.ctx, epoch)  # remedies' per-epoch values (DARTS- skip weight, ...)
            update_arch = False
            sums: dict[str, float] = {}
            bar = tqdm(range(n_iter), desc=f"search epoch {epoch + 1}/{cfg.epochs}", leave=False, mininterval=2.0,
                       disable=True if not self.world.is_main else (not progress) if progress is not None else None)
            for _ in bar:
                due = self.arch_plan.due(self.iteration)
                metrics = self.strategy.step(self.iteration, lr, due)
                self.arch_steps += due
                update_arch = update_arch or due
                self.iteration += 1
                if self.iteration % cfg.sync_check_every == 0:
                    self.world.check_same_architecture(self.arch, self.iteration)
                for k, v in metrics.items():
                    sums[k] = sums.get(k, 0.0) + v
                bar.set_postfix({k.split("/")[0][:10]: f"{v:.3f}" for k, v in metrics.items() if "loss" in k},
                                refresh=False)
                if bar.disable and self.world.is_main:
                    ticker.tick(self.iteration, epoch + 1, cfg.epochs)
            for sched in self.schedulers:
                sched.step()
            means = {**schedules, "arch_steps": self.arch_steps, **{k: v / n_iter for k, v in sorted(sums.items())}}
            row = self._epoch_row(epoch, lr, update_arch, means, started)
            last = epoch == cfg.epochs - 1
            if cfg.early_stop_skips and row["skip_edges/normal"] >= cfg.early_stop_skips and not last:
                self.stopped_early = epoch + 1
                log.info("early stop after epoch %d: the normal cell has %d skip connections (early_stop_skips %d)",
                         epoch + 1, row["skip_edges/normal"], cfg.early_stop_skips)
            self.world.check_same_architecture(self.arch, self.iteration)
            if (epoch + 1) % cfg.checkpoint_every == 0 or last or stop_after_epoch == epoch or self.stopped_early:
                if self.world.is_main:
                    save_checkpoint(self.checkpoint_path, self.state_dict(epoch))
                self.world.barrier()  # no rank runs ahead of the checkpoint on disk
            if self.world.is_main:
                self._write_history()
            for cb in callbacks:
                cb(epoch + 1, row)
            if stop_after_epoch == epoch and not last:
                raise KeyboardInterrupt(f"stopped after epoch {epoch} (stop_after_epoch)")
        return self._finish()

    def _epoch_row(self, epoch: int, lr: float, update_arch: bool, train_means: dict[str, float],
                   started: float) -> dict[str, Any]:
        """Evaluate, count collapse, snapshot the alphas; one history row (epoch numbered from 1)."""
        cfg = self.config
        row: dict[str, Any] = {"epoch": epoch + 1, "lr": lr, "arch_updated": int(update_arch), **train_means}
        row.update(self.evaluate())
        genotype = self.arch.derive()
        row.update(collapse_counts(genotype))
        row.update(alpha_diagnostics(self.arch, self.alpha0, genotype))
        if cfg.hessian_every and (epoch + 1) % cfg.hessian_every == 0:
            with local_statistics():
                row["hessian_eigenvalue"] = hessian_eigenvalue(self.model, self.arch, self.tasks, self.device,
                                                               cfg.batch_size, cfg.hessian_iterations, cfg.seed)
        row["epoch_time_s"] = time.perf_counter() - started
        self.history.append(row)
        self.alpha_rows.append({"epoch": epoch + 1, **self.arch.softmax_snapshot(), **edge_entropies(self.arch),
                                **self.strategy.epoch_extras()})
        self.snapshots.append({"epoch": epoch + 1, "val_loss_mean": row["val_loss_mean"],
                               **self.arch.raw_snapshot()})
        if not self.world.is_main:
            return row
        log.info("epoch %d/%d lr %.4f | val loss/ln C %.4f, acc above chance %.3f (mean of %s) | "
                 "param-free edges normal %d/%d reduce %d/%d, skips %d/%d | %.1f s", epoch + 1, cfg.epochs, lr,
                 row["val_loss_norm_mean"], row["val_acc_above_chance_mean"],
                 f"{len(self.tasks)} task" + ("s" if len(self.tasks) != 1 else ""),
                 row["param_free_edges/normal"], len(genotype.normal), row["param_free_edges/reduce"],
                 len(genotype.reduce), row["skip_edges/normal"], row["skip_edges/reduce"], row["epoch_time_s"])
        return row

    def _write_history(self) -> None:
        atomic_write_csv(self.out_dir / "history.csv", self.history)
        atomic_write_json(self.out_dir / "alpha_history.json", self.alpha_rows)

    def _finish(self) -> SearchResult:
        """Rank 0 writes the results (the other ranks get the same result object, files written by rank 0)."""
        out = self.out_dir
        genotype = self.arch.derive()
        if self.world.is_main:
            genotype.to_json(out / "genotype.json")
            atomic_torch_save(out / "alphas.pt", alphas_payload(self.arch, self.snapshots))
            self._write_history()
        final = self.history[-1] if self.history else {}
        metrics = {**self.initial, **{k: v for k, v in final.items() if k != "epoch"},
                   "epochs": len(self.history), "iterations": self.iteration,
                   "stopped_early_epoch": self.stopped_early,
                   "strategy": self.config.strategy, "hypergrad": self.config.hypergrad}
        if self.world.is_main:
            atomic_write_json(out / "metrics.json", metrics)
            log.info("searched genotype: %s", _genotype_line(genotype))
        self.world.barrier()
        return SearchResult(genotype=genotype, history=self.history, metrics=metrics, out_dir=out,
                            checkpoint=self.checkpoint_path, alphas=out / "alphas.pt",
                            alpha_history=out / "alpha_history.json", history_csv=out / "history.csv",
                            metrics_json=out / "metrics.json", genotype_json=out / "genotype.json",
                            alpha_rows=self.alpha_rows)


PROGRESS_EVERY_S = 10.0


class _ProgressLog:
    """Without a progress bar (not a TTY: a DVC stage, CI), log iterations done / total, elapsed and ETA."""

    def __init__(self, total: int, done: int):
        self.total, self.start_done = total, done
        self.started = self.last = time.perf_counter()

    def tick(self, done: int, epoch: int, epochs: int) -> None:
        now = time.perf_counter()
        if now - self.last < PROGRESS_EVERY_S or done >= self.total:
            return
        self.last = now
        rate = (done - self.start_done) / max(now - self.started, 1e-9)
        eta = (self.total - done) / rate if rate > 0 else float("nan")
        log.info("search: iteration %d/%d (epoch %d/%d), %.0f s elapsed, ETA %.0f s",
                 done, self.total, epoch, epochs, now - self.started, eta)


def run_search(config: SearchConfig, out_dir: str | os.PathLike, resume: bool = True, progress: bool | None = None,
               callbacks: Sequence[EpochCallback] = ()) -> SearchResult:
    """Search a cell architecture; resumes from ``out_dir/checkpoint.pt`` when present."""
    return SearchRun(config, out_dir).run(resume=resume, progress=progress, callbacks=callbacks)
