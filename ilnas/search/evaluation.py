"""Search evaluation whose numbers do not depend on how the validation set is ordered or batched.

Evaluating a supernet with BatchNorm on batch statistics makes every prediction depend on the other
images of its batch: on a class-sorted validation split (what an ImageFolder task gives) a batch holds one
class, and the same supernet measured val accuracy 0.35 instead of 0.99. The supernet's own running
statistics are no answer either: they were accumulated under earlier mixing weights, so eval mode sits at
chance early in a search. The standard one-shot NAS remedy is used instead: for the current architecture,
recalibrate BatchNorm on a fixed, seeded subset of the task's *training* images (cumulative averages over
the subset; the real statistics are put back afterwards, so they never move), then evaluate in eval mode,
where each image's prediction is independent of the rest. The subset and its batching are fixed by
``(seed, eval_bn_images, batch_size)`` of the search, so the metrics are a function of the weights and the architecture.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn
from torch.utils.data import DataLoader, Subset

from ilnas.data.tasks import TaskData
from ilnas.space.supernet import Supernet


def calibration_subset(task: TaskData, images: int, seed: int) -> Subset:
    """The fixed, seeded subset of ``task.train`` that BatchNorm statistics are recalibrated on."""
    n = len(task.train)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return Subset(task.train, order[: min(images, n)].tolist())


@contextmanager
def recalibrated(model: Supernet, arch_weights: dict[str, torch.Tensor], task: int, calibration: Subset,
                 batch_size: int, device: torch.device, seed: int) -> Iterator[Supernet]:
    """``model`` in eval mode with BatchNorm running statistics averaged over ``calibration``; on exit its own
    statistics, momenta and mode come back exactly (a saved copy of the statistics, not of the whole supernet:
    a deepcopy cost 0.33 s per task and evaluation at the embedded size)."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    saved = [(m.momentum, {n: b.clone() for n, b in m.named_buffers(recurse=False) if b is not None}) for m in norms]
    was_training = model.training
    try:
        for m in norms:
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the calibration batches
        model.train()
        # augmented training images draw from the global RNG: fix it, and give the caller's stream back untouched
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(seed)
            for x, _ in DataLoader(calibration, batch_size=batch_size, shuffle=False):
                model(x.to(device), arch_weights, task)
        yield model.eval()
    finally:
        for m, (momentum, buffers) in zip(norms, saved, strict=True):
            m.momentum = momentum
            for n, b in buffers.items():
                getattr(m, n).copy_(b)
        model.train(was_training)


@torch.no_grad()
def evaluate(model: Supernet, arch: nn.Module, tasks: Sequence[TaskData], device: torch.device, batch_size: int,
             bn_images: int = 256, bn_batch_size: int = 64, seed: int = 0) -> dict[str, float]:
    """Per-task validation loss and accuracy, and their means over tasks (comparable for any K).

    ``batch_size`` only chunks the validation set (eval mode: it cannot change a number);
    ``bn_images`` / ``bn_batch_size`` fix the recalibration (the search's training batch size is natural).
    """
    weights = arch()
    out: dict[str, float] = {}
    losses, accs = [], []
    for k, task in enumerate(tasks):
        calib = calibration_subset(task, bn_images, seed + k)
        loss_sum, correct, n = 0.0, 0, 0
        with recalibrated(model, weights, k, calib, bn_batch_size, device, seed + k) as net:
            for x, y in DataLoader(task.val, batch_size=batch_size, shuffle=False):
                x, y = x.to(device), y.to(device)
                logits = net(x, weights, k).float()
                loss_sum += float(nn.functional.cross_entropy(logits, y, reduction="sum"))
                correct += int((logits.argmax(1) == y).sum())
                n += len(y)
        out[f"val_loss/{task.name}"] = loss_sum / n
        out[f"val_acc/{task.name}"] = correct / n
        losses.append(loss_sum / n)
        accs.append(correct / n)
    out["val_loss_mean"] = sum(losses) / len(losses)
    out["val_acc_mean"] = sum(accs) / len(accs)
    return out
