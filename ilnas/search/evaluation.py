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

Headline numbers comparable across task sizes: a 5-way and a 10-way task start at different raw losses
(ln 5 vs ln 10) and accuracies (1/5 vs 1/10), so raw means over tasks compare IL's 5-way tasks with DARTS'
10-way one unfairly. ``val_loss_norm_mean`` (loss / ln C per task) and ``val_acc_above_chance_mean``
((acc - 1/C) / (1 - 1/C) per task) are 1 and 0 for a chance-level model whatever C is.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader

from ilnas.data.tasks import TaskData
from ilnas.space.calibration import calibration_subset, recalibrated
from ilnas.space.supernet import Supernet

HEADLINE = ("val_loss_norm_mean", "val_acc_above_chance_mean")  # what the search prints and compares across K


def normalized_loss(loss: float, num_classes: int) -> float:
    """Cross-entropy in units of a uniform guess's (ln C): 1 at chance for any number of classes."""
    return loss / math.log(num_classes)


def acc_above_chance(acc: float, num_classes: int) -> float:
    """Accuracy rescaled so chance (1/C) is 0 and perfect is 1, for any number of classes."""
    chance = 1.0 / num_classes
    return (acc - chance) / (1.0 - chance)


@torch.no_grad()
def evaluate(model: Supernet, arch: nn.Module, tasks: Sequence[TaskData], device: torch.device, batch_size: int,
             bn_images: int = 256, bn_batch_size: int = 64, seed: int = 0) -> dict[str, float]:
    """Per-task validation loss and accuracy, their raw means and the class-count-free headline means.

    ``batch_size`` only chunks the validation set (eval mode: it cannot change a number);
    ``bn_images`` / ``bn_batch_size`` fix the recalibration (the search's training batch size is natural).
    """
    return evaluate_weights(model, arch(), tasks, device, batch_size, bn_images, bn_batch_size, seed)


@torch.no_grad()
def evaluate_weights(model: Supernet, weights: dict[str, torch.Tensor], tasks: Sequence[TaskData],
                     device: torch.device, batch_size: int, bn_images: int = 256, bn_batch_size: int = 64,
                     seed: int = 0) -> dict[str, float]:
    """:func:`evaluate` for given mixing weights (a projected or perturbed architecture, DARTS-PT)."""
    out: dict[str, float] = {}
    losses, accs, norm_losses, above = [], [], [], []
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
        loss, acc = loss_sum / n, correct / n
        out[f"val_loss/{task.name}"] = loss
        out[f"val_acc/{task.name}"] = acc
        losses.append(loss)
        accs.append(acc)
        norm_losses.append(normalized_loss(loss, task.num_classes))
        above.append(acc_above_chance(acc, task.num_classes))
    out["val_loss_mean"] = sum(losses) / len(losses)
    out["val_acc_mean"] = sum(accs) / len(accs)
    out["val_loss_norm_mean"] = sum(norm_losses) / len(norm_losses)
    out["val_acc_above_chance_mean"] = sum(above) / len(above)
    return out
