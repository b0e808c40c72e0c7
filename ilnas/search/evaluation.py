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

from collections.abc import Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader

from ilnas.data.tasks import TaskData
from ilnas.space.calibration import calibration_subset, recalibrated
from ilnas.space.supernet import Supernet


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
        calib = calibration_subset(task.train, bn_images, seed + k)
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
