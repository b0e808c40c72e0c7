"""Perturbation-based architecture selection (DARTS-PT, Wang et al. 2021) on a trained supernet.

Magnitude selection trusts the alphas; DARTS-PT asks the supernet instead. Following github
ruocwang/darts-pt (sota/cnn/projection.py, exp_scripts/darts-proj-sota.sh):

* op decisions (projection.py:15-59): pick a not yet decided edge (random order, ``edge_decision random``),
  remove each candidate op in turn (its mixing weight set to 0) and measure the validation accuracy; keep
  the op whose removal hurts most (``crit acc``; or whose removal raises the loss most, ``crit loss``); the
  edge then carries that op alone (one-hot, model_search_darts_proj.py:53-81). Normal cell, then reduce.
* topology decisions (projection.py:62-104), after every edge has its op: pick an undecided node, then
  repeatedly drop the input edge whose removal hurts least until two remain.
* between two decisions the supernet weights are fine-tuned for ``proj_intv`` epochs (their default 5)
  with SGD restarted at a tenth of the search's learning rate, cosine to its minimum (projection.py:126-136).

Differences, all documented in docs/search-diagnostics.md: ``none`` is never a candidate (a genotype cannot
hold it, and removing it changes no output here); the criterion is measured with this project's recalibrated
eval-mode BatchNorm (:mod:`ilnas.search.evaluation`) on the search's validation split, as a class-count-free
mean over tasks; the fine-tuning trains the weights only, on the mean of the tasks' training losses (DARTS-PT
also keeps updating the undecided alphas, projection.py:197-200); no tuning follows the last decision (it
cannot change the genotype).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ilnas.data.loaders import CyclingLoader
from ilnas.data.tasks import TaskData
from ilnas.search.checkpoint import CheckpointError, load_checkpoint
from ilnas.search.config import SearchConfig
from ilnas.search.evaluation import evaluate_weights
from ilnas.search.remedies import build_architecture, build_supernet
from ilnas.space.architecture import Architecture, num_edges
from ilnas.space.genotype import EDGES_PER_NODE, Genotype
from ilnas.space.supernet import Supernet
from ilnas.utils.device import resolve_device, seed_everything

log = logging.getLogger("ilnas.search.selection")

CELLS = ("normal", "reduce")
CRITERIA = {"acc": "val_acc_above_chance_mean", "loss": "val_loss_norm_mean"}


@dataclass(frozen=True)
class PerturbationSettings:
    criterion: str = "acc"  # acc | loss
    tune_epochs: int = 5  # DARTS-PT's proj_intv
    tune_lr_factor: float = 0.1


@dataclass
class Selection:
    genotype: Genotype
    decisions: list[dict[str, Any]] = field(default_factory=list)  # every decision with its measured scores
    tune_steps: int = 0


class Projection:
    """The supernet's mixing weights with DARTS-PT's decisions applied (one-hot ops, dropped input edges)."""

    def __init__(self, arch: Architecture):
        with torch.no_grad():
            self.soft = {k: v.detach().clone() for k, v in arch().items()}
        self.nodes, self.multiplier, self.primitives = arch.nodes, arch.multiplier, tuple(arch.primitives)
        self.starts = [sum(2 + i for i in range(n)) for n in range(self.nodes)]
        self.op: dict[str, dict[int, int]] = {c: {} for c in CELLS}  # edge -> chosen op index
        self.inputs: dict[str, dict[int, list[int]]] = {c: {} for c in CELLS}  # node -> kept input indices

    def weights(self, cell: str | None = None, edge: int | None = None, op: int | None = None,
                drop_edge: int | None = None) -> dict[str, torch.Tensor]:
        """Projected weights; optionally with ``op`` of ``edge`` removed, or all of edge ``drop_edge``."""
        out = dict(self.soft)
        for c in CELLS:
            w = self.soft[c].clone()
            for e, o in self.op[c].items():
                w[e] = 0.0
                w[e, o] = 1.0
            for node, kept in self.inputs[c].items():
                for j in range(node + 2):
                    if j not in kept:
                        w[self.starts[node] + j] = 0.0
            if c == cell and edge is not None and op is not None:
                w[edge, op] = 0.0
            if c == cell and drop_edge is not None:
                w[drop_edge] = 0.0
            out[c] = w
        return out

    def genotype(self) -> Genotype:
        concat = tuple(range(2 + self.nodes - self.multiplier, 2 + self.nodes))
        cells = {c: tuple((self.primitives[self.op[c][self.starts[n] + j]], j) for n in range(self.nodes)
                          for j in sorted(self.inputs[c].get(n, [0, 1]))) for c in CELLS}
        return Genotype(normal=cells["normal"], normal_concat=concat, reduce=cells["reduce"], reduce_concat=concat,
                        primitives=self.primitives)


class PerturbationSelector:
    """Runs DARTS-PT's decisions on ``model`` (fine-tuned in place) for the search config ``config``."""

    def __init__(self, model: Supernet, arch: Architecture, tasks: Sequence[TaskData], config: SearchConfig,
                 settings: PerturbationSettings, device: torch.device):
        if settings.criterion not in CRITERIA:
            raise ValueError(f"derive.perturbation.criterion: got {settings.criterion!r}; allowed: {list(CRITERIA)}")
        self.model, self.tasks, self.cfg, self.settings, self.device = model, list(tasks), config, settings, device
        self.proj = Projection(arch)
        self.rng = torch.Generator().manual_seed(config.seed)
        self.streams = [CyclingLoader(t.train, config.batch_size, seed=config.seed * 1000 + 2 * k)
                        for k, t in enumerate(self.tasks)]
        per_epoch = config.iterations_per_epoch or max(s.batches_per_epoch for s in self.streams)
        self.steps_per_interval = settings.tune_epochs * per_epoch
        self.n_edges = num_edges(self.proj.nodes)
        self.decisions_total = self.n_edges + (self.proj.nodes - 1)  # op per edge, topology per node with > 2 inputs
        self.optimizer = torch.optim.SGD(model.parameters(), lr=config.w_lr * settings.tune_lr_factor,
                                         momentum=config.w_momentum, weight_decay=config.w_weight_decay)
        total = max(1, self.steps_per_interval * (self.decisions_total - 1))
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, total, eta_min=config.w_lr_min)
        self.tune_steps = 0

    def score(self, weights: dict[str, torch.Tensor]) -> float:
        """Higher is better: above-chance accuracy, or minus the normalised loss (class-count-free means)."""
        cfg = self.cfg
        m = evaluate_weights(self.model, weights, self.tasks, self.device, 4 * cfg.batch_size, cfg.eval_bn_images,
                             cfg.batch_size, cfg.seed)
        value = m[CRITERIA[self.settings.criterion]]
        return value if self.settings.criterion == "acc" else -value

    def _pick(self, remaining: list[int]) -> int:
        return remaining[int(torch.randint(len(remaining), (1,), generator=self.rng))]

    def decide_op(self, cell: str) -> dict[str, Any]:
        """projection.py:15-59: the op whose removal from a random undecided edge hurts most."""
        edge = self._pick([e for e in range(self.n_edges) if e not in self.proj.op[cell]])
        names = self.proj.primitives
        scores = {names[o]: self.score(self.proj.weights(cell, edge, o)) for o in range(len(names))
                  if names[o] != "none"}
        best = min(scores, key=lambda name: scores[name])  # worst score without it: it mattered most
        self.proj.op[cell][edge] = names.index(best)
        log.info("DARTS-PT %s edge %d: %s (scores without each op: %s)", cell, edge, best,
                 {k: round(v, 4) for k, v in scores.items()})
        return {"kind": "op", "cell": cell, "edge": edge, "op": best, "score_without": scores}

    def decide_topology(self, cell: str) -> dict[str, Any]:
        """projection.py:62-104: drop the input whose removal hurts least until two remain."""
        node = self._pick([n for n in range(1, self.proj.nodes) if n not in self.proj.inputs[cell]])
        kept, rounds = list(range(node + 2)), []
        while len(kept) > EDGES_PER_NODE:
            scores = {j: self.score(self.proj.weights(cell, drop_edge=self.proj.starts[node] + j)) for j in kept}
            drop = max(kept, key=lambda j: (scores[j], j))  # ties: the later edge, as their >= comparison
            rounds.append({"score_without": scores, "dropped": drop})
            kept.remove(drop)
        self.proj.inputs[cell][node] = kept
        log.info("DARTS-PT %s node %d: inputs %s", cell, node + 2, kept)
        return {"kind": "topology", "cell": cell, "node": node + 2, "inputs": kept, "rounds": rounds}

    def tune(self) -> None:
        """Fine-tune the supernet weights under the projected architecture (mean of the tasks' train losses)."""
        weights = {k: v.detach() for k, v in self.proj.weights().items()}
        self.model.train()
        for _ in range(self.steps_per_interval):
            self.optimizer.zero_grad(set_to_none=True)
            loss = 0.0
            for k, stream in enumerate(self.streams):
                x, y = stream.next()
                logits = self.model(x.to(self.device), weights, k).float()
                loss = loss + nn.functional.cross_entropy(logits, y.to(self.device)) / len(self.streams)
            if not math.isfinite(float(loss.detach())):
                raise FloatingPointError(f"DARTS-PT fine-tuning diverged (loss {float(loss.detach())}) at step "
                                         f"{self.tune_steps}; lower derive.perturbation.tune_lr_factor")
            loss.backward()
            nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
            self.optimizer.step()
            self.scheduler.step()
            self.tune_steps += 1

    def run(self) -> Selection:
        decisions: list[dict[str, Any]] = []
        for t in range(self.decisions_total):
            if t:
                self.tune()
            decide = self.decide_op if t < self.n_edges else self.decide_topology
            decisions.extend(decide(cell) for cell in CELLS)
        return Selection(self.proj.genotype(), decisions, self.tune_steps)


def perturbation_select(model: Supernet, arch: Architecture, tasks: Sequence[TaskData], config: SearchConfig,
                        settings: PerturbationSettings, device: torch.device | None = None) -> Selection:
    """DARTS-PT on a trained supernet (``model`` is fine-tuned in place); the genotype and every decision."""
    device = device or next(model.parameters()).device
    return PerturbationSelector(model, arch, tasks, config, settings, device).run()


def select_from_checkpoint(path: str | os.PathLike, load_tasks: Callable[[SearchConfig], list[TaskData]],
                           settings: PerturbationSettings) -> tuple[Selection, int]:
    """DARTS-PT on the supernet of a search checkpoint (CRC-verified): the selection and the epoch (1-based)
    whose weights and alphas it started from. ``load_tasks`` gives the search's tasks for its config."""
    state = load_checkpoint(path, required=("config", "model", "arch", "epoch"))
    config = SearchConfig(**state["config"])
    tasks = load_tasks(config)
    seed_everything(config.seed, config.deterministic)
    model = build_supernet(config, [t.num_classes for t in tasks], tasks[0].in_channels)
    arch = build_architecture(config)  # DARTS-' auxiliary skip is left out: its schedule ends at weight 0
    try:
        model.load_state_dict(state["model"])
        arch.load_state_dict(state["arch"])
    except (RuntimeError, KeyError) as exc:
        raise CheckpointError(f"{path}: the supernet does not match the search tasks ({exc})") from exc
    device = resolve_device(config.device)
    selection = perturbation_select(model.to(device), arch.to(device), tasks, config, settings, device)
    return selection, int(state["epoch"]) + 1
