"""The search headline means the same for 5-way and 10-way tasks (issue 18, item 6)."""

from __future__ import annotations

import math

import pytest
import torch
from torch.utils.data import TensorDataset

from ilnas.data.tasks import TaskData
from ilnas.search.evaluation import HEADLINE, acc_above_chance, evaluate, normalized_loss
from ilnas.space.architecture import Architecture
from ilnas.space.supernet import Supernet


def balanced_task(name: str, classes: int, per_class: int = 4) -> TaskData:
    gen = torch.Generator().manual_seed(classes)
    y = torch.arange(classes).repeat(per_class)
    data = TensorDataset(torch.randn(len(y), 1, 8, 8, generator=gen), y)
    return TaskData(name, data, data, data, classes, 1, 8, [str(c) for c in range(classes)])


def test_uniform_predictions_read_chance_for_5_and_10_classes():
    """Zeroed heads predict uniformly: raw loss ln C and accuracy 1/C differ with C, the headline does not."""
    tasks = [balanced_task("five", 5), balanced_task("ten", 10)]
    model = Supernet([5, 10], 1, 4, 3, 1, 1)
    for head in model.heads:
        torch.nn.init.zeros_(head.weight)
        torch.nn.init.zeros_(head.bias)
    m = evaluate(model, Architecture(1), tasks, torch.device("cpu"), batch_size=7, bn_images=16, bn_batch_size=8)
    assert m["val_loss/five"] == pytest.approx(math.log(5)) and m["val_loss/ten"] == pytest.approx(math.log(10))
    assert (m["val_acc/five"], m["val_acc/ten"]) == (pytest.approx(0.2), pytest.approx(0.1))  # argmax of ties: 0
    assert m["val_loss_norm_mean"] == pytest.approx(1.0)
    assert m["val_acc_above_chance_mean"] == pytest.approx(0.0, abs=1e-12)
    assert set(HEADLINE) <= set(m)


@pytest.mark.parametrize("classes", [5, 10])
def test_normalisations(classes):
    assert normalized_loss(math.log(classes), classes) == pytest.approx(1.0)
    assert acc_above_chance(1 / classes, classes) == pytest.approx(0.0)
    assert acc_above_chance(1.0, classes) == 1.0
