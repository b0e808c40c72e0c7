"""The search loop: epochs, learning-rate schedule, evaluation, history, checkpoints, resume."""

from __future__ import annotations

import csv
import io
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
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ilnas.data.loaders import CyclingLoader
from ilnas.data.tasks import TaskData, build_task
from ilnas.search.checkpoint import (
    CheckpointError,
    config_differences,
    load_checkpoint,
    load_state_file,
    save_checkpoint,
)
from ilnas.search.config import SearchConfig
from ilnas.space.architecture import Architecture
from ilnas.space.genotype import Genotype
from ilnas.space.supernet import Supernet
from ilnas.strategies import get_strategy
from ilnas.strategies.base import SearchContext, SearchStrategy
from ilnas.utils.device import amp_enabled, resolve_device, rng_state, seed_everything, set_rng_state
from ilnas.utils.io import atomic_torch_save, atomic_write_json, atomic_write_text

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


@torch.no_grad()
def evaluate(model: Supernet, arch: Architecture, tasks: list[TaskData], device: torch.device,
             batch_size: int) -> dict[str, float]:
    """Loss and accuracy of every head on its full validation split.

    BatchNorm uses batch statistics, as in the architecture step, on cloned buffers: a supernet's running
    statistics lag far behind its mixing weights early in a search (eval-mode accuracy sat at chance
    while training accuracy was 0.97), and evaluating must not move them either.
    """
    from torch.func import functional_call

    was_training = model.training
    model.train()
    weights = arch()
    params = dict(model.named_parameters())
    out: dict[str, float] = {}
    total = 0.0
    for k, task in enumerate(tasks):
        loss_sum, correct, n = 0.0, 0, 0
        for x, y in DataLoader(task.val, batch_size=batch_size, shuffle=False):
            x, y = x.to(device), y.to(device)
            buffers = {name: b.clone() for name, b in model.named_buffers()}
            logits = functional_call(model, {**params, **buffers}, (x, weights, k)).float()
            loss_sum += float(nn.functional.cross_entropy(logits, y, reduction="sum"))
            correct += int((logits.argmax(1) == y).sum())
            n += len(y)
        out[f"val_loss/{task.name}"] = loss_sum / n
        out[f"val_acc/{task.name}"] = correct / n
        total += loss_sum / n
    out["val_loss_sum"] = total
    model.train(was_training)
    return out


def _write_history_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    keys: list[str] = []
    for row in rows:
        keys.extend(k for k in row if k not in keys)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=keys)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def _genotype_line(genotype: Genotype) -> str:
    fmt = lambda cell: " ".join(f"{op}<-{i}" for op, i in cell)  # noqa: E731
    return f"normal[{fmt(genotype.normal)}] reduce[{fmt(genotype.reduce)}]"


class SearchRun:
    """Builds everything a search needs once, then runs (or resumes) it epoch by epoch."""

    def __init__(self, config: SearchConfig, out_dir: str | os.PathLike, tasks: list[TaskData] | None = None):
        """``tasks`` overrides ``config.tasks`` with ready-made views (benchmarks, synthetic data)."""
        self.config = config
        self.out_dir = Path(out_dir)
        self.device = resolve_device(config.device)
        seed_everything(config.seed, config.deterministic)
        self.tasks = tasks if tasks is not None else _build_tasks(config)
        first = self.tasks[0]
        self.model = Supernet([t.num_classes for t in self.tasks], first.in_channels, config.channels, config.cells,
                              config.nodes, config.node_multiplier, config.stem_multiplier,
                              config.partial_channels).to(self.device)
        self.arch = Architecture(config.nodes, edge_normalization=config.partial_channels > 1).to(self.device)
        self.w_optimizer = torch.optim.SGD(self.model.parameters(), lr=config.w_lr, momentum=config.w_momentum,
                                           weight_decay=config.w_weight_decay)
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(self.w_optimizer, config.epochs,
                                                                    eta_min=config.w_lr_min)
        pin = self.device.type == "cuda"
        stream = lambda ds, salt: CyclingLoader(ds, config.batch_size, seed=config.seed * 1000 + salt,  # noqa: E731
                                                num_workers=config.num_workers, pin_memory=pin)
        self.ctx = SearchContext(
            config=config, model=self.model, arch=self.arch, w_optimizer=self.w_optimizer,
            task_names=[t.name for t in self.tasks], num_classes=[t.num_classes for t in self.tasks],
            train_streams=[stream(t.train, 2 * k) for k, t in enumerate(self.tasks)],
            val_streams=[stream(t.val, 2 * k + 1) for k, t in enumerate(self.tasks)],
            device=self.device, amp=amp_enabled(self.device, config.amp),
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
        self.start_epoch = 0
        self.iteration = 0
        self.initial: dict[str, float] = {}

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

    # -- checkpoints -------------------------------------------------------------------------------
    def state_dict(self, epoch: int) -> dict[str, Any]:
        return {
            "epoch": epoch,
            "iteration": self.iteration,
            "config": self.config.model_dump(mode="json"),
            "model": self.model.state_dict(),
            "arch": self.arch.state_dict(),
            "w_optimizer": self.w_optimizer.state_dict(),
            "a_optimizer": self.a_optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "streams": [s.state_dict() for s in self.ctx.train_streams + self.ctx.val_streams],
            "strategy": self.strategy.state_dict(),
            "rng": rng_state(),
            "history": self.history,
            "alpha_history": self.alpha_rows,
            "initial": self.initial,
        }

    def load(self, path: Path) -> None:
        state = load_checkpoint(path, required=("epoch", "config", "model", "arch", "w_optimizer", "a_optimizer"))
        diff = config_differences(state["config"], self.config.model_dump(mode="json"), RESUME_MAY_CHANGE)
        if diff:
            raise CheckpointError(f"{path}: written by a different search config (differs in {diff}); "
                                  "delete it or run with resume disabled to start over")
        try:
            self.model.load_state_dict(state["model"])
            self.arch.load_state_dict(state["arch"])
            self.w_optimizer.load_state_dict(state["w_optimizer"])
            self.a_optimizer.load_state_dict(state["a_optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
        except (RuntimeError, ValueError, KeyError) as exc:
            raise CheckpointError(f"{path}: does not match this search space ({exc})") from exc
        for s, st in zip(self.ctx.train_streams + self.ctx.val_streams, state["streams"], strict=True):
            s.load_state_dict(st)
        self.strategy.load_state_dict(state.get("strategy", {}))
        set_rng_state(state["rng"])
        self.history, self.alpha_rows = list(state["history"]), list(state["alpha_history"])
        self.initial = dict(state.get("initial", {}))
        self.start_epoch, self.iteration = int(state["epoch"]) + 1, int(state["iteration"])
        log.info("resumed from %s at epoch %d", path, self.start_epoch)

    # -- the loop ------------------------------------------------------------------------------------
    def run(self, resume: bool = True, progress: bool | None = None, callbacks: Sequence[EpochCallback] = (),
            stop_after_epoch: int | None = None) -> SearchResult:
        cfg = self.config
        self.out_dir.mkdir(parents=True, exist_ok=True)
        if resume and self.checkpoint_path.exists():
            self.load(self.checkpoint_path)
        if not self.initial:
            self.initial = {f"initial_{k}": v for k, v in
                            evaluate(self.model, self.arch, self.tasks, self.device, cfg.batch_size).items()}
        n_iter = self.iterations_per_epoch
        for epoch in range(self.start_epoch, cfg.epochs):
            started = time.perf_counter()
            lr = self.scheduler.get_last_lr()[0]
            update_arch = epoch >= cfg.warmup_epochs
            sums: dict[str, float] = {}
            bar = tqdm(range(n_iter), desc=f"search epoch {epoch + 1}/{cfg.epochs}", leave=False,
                       disable=(not progress) if progress is not None else None)
            for _ in bar:
                metrics = self.strategy.step(self.iteration, lr, update_arch)
                self.iteration += 1
                for k, v in metrics.items():
                    sums[k] = sums.get(k, 0.0) + v
                bar.set_postfix({k.split("/")[0][:10]: f"{v:.3f}" for k, v in metrics.items() if "loss" in k})
            self.scheduler.step()
            row: dict[str, Any] = {"epoch": epoch, "lr": lr, "arch_updated": int(update_arch)}
            row.update({k: v / n_iter for k, v in sorted(sums.items())})
            row.update(evaluate(self.model, self.arch, self.tasks, self.device, cfg.batch_size))
            row["epoch_time_s"] = time.perf_counter() - started
            self.history.append(row)
            genotype = self.arch.derive()
            self.alpha_rows.append({"epoch": epoch, **self.arch.softmax_snapshot(), **self.strategy.epoch_extras()})
            log.info("epoch %d/%d lr %.4f | %s | %s", epoch + 1, cfg.epochs, lr,
                     " ".join(f"{k}={v:.4f}" for k, v in row.items() if "/" in k or k == "val_loss_sum"),
                     _genotype_line(genotype))
            last = epoch == cfg.epochs - 1
            if (epoch + 1) % cfg.checkpoint_every == 0 or last or stop_after_epoch == epoch:
                save_checkpoint(self.checkpoint_path, self.state_dict(epoch))
            self._write_history()
            for cb in callbacks:
                cb(epoch, row)
            if stop_after_epoch == epoch and not last:
                raise KeyboardInterrupt(f"stopped after epoch {epoch} (stop_after_epoch)")
        return self._finish()

    def _write_history(self) -> None:
        _write_history_csv(self.out_dir / "history.csv", self.history)
        atomic_write_json(self.out_dir / "alpha_history.json", self.alpha_rows)

    def _finish(self) -> SearchResult:
        out = self.out_dir
        genotype = self.arch.derive()
        genotype.to_json(out / "genotype.json")
        atomic_torch_save(out / "alphas.pt", {
            "nodes": self.config.nodes, **{k: v.detach().cpu() for k, v in self.arch.state_dict().items()},
        })
        self._write_history()
        final = self.history[-1] if self.history else {}
        metrics = {**self.initial, **{k: v for k, v in final.items() if k != "epoch"},
                   "epochs": len(self.history), "iterations": self.iteration,
                   "strategy": self.config.strategy, "hypergrad": self.config.hypergrad}
        atomic_write_json(out / "metrics.json", metrics)
        return SearchResult(genotype=genotype, history=self.history, metrics=metrics, out_dir=out,
                            checkpoint=self.checkpoint_path, alphas=out / "alphas.pt",
                            alpha_history=out / "alpha_history.json", history_csv=out / "history.csv",
                            metrics_json=out / "metrics.json", genotype_json=out / "genotype.json",
                            alpha_rows=self.alpha_rows)


def run_search(config: SearchConfig, out_dir: str | os.PathLike, resume: bool = True, progress: bool | None = None,
               callbacks: Sequence[EpochCallback] = ()) -> SearchResult:
    """Search a cell architecture; resumes from ``out_dir/checkpoint.pt`` when present."""
    return SearchRun(config, out_dir).run(resume=resume, progress=progress, callbacks=callbacks)


def derive_genotype_from_file(path: str | os.PathLike) -> Genotype:
    """Genotype from a search's ``alphas.pt`` (the DARTS rule); errors name the file."""
    from ilnas.space.genotype import derive_genotype

    path = Path(path)
    state = load_state_file(path)
    try:
        arch = Architecture(int(state["nodes"]), edge_normalization="betas_normal" in state)
        arch.load_state_dict({k: v for k, v in state.items() if k != "nodes"})
    except (KeyError, RuntimeError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: not a valid alphas file ({type(exc).__name__}: {exc})") from exc
    w = arch()
    return derive_genotype(arch.alphas_normal, arch.alphas_reduce, arch.nodes,
                           w.get("edge_normal"), w.get("edge_reduce"))
