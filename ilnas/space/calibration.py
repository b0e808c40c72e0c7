"""BatchNorm statistics recalibrated for one architecture: what makes a supernet's eval-mode numbers mean
something (see :mod:`ilnas.search.evaluation`). Used by the search evaluation and by LFM's class-weight start.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset


def calibration_subset(train: Dataset, images: int, seed: int) -> Subset:
    """The fixed, seeded subset of a task's training set that BatchNorm statistics are recalibrated on."""
    n = len(train)  # type: ignore[arg-type]
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return Subset(train, order[: min(images, n)].tolist())


@contextmanager
def recalibrated(model: nn.Module, arch_weights: dict[str, torch.Tensor], task: int, calibration: Subset,
                 batch_size: int, device: torch.device, seed: int) -> Iterator[nn.Module]:
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
