"""Model size and cost: parameters and multiply-adds (via torch.utils.flop_counter), as papers report them."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def _unwrap(model: nn.Module) -> nn.Module:
    return getattr(model, "module", model) if isinstance(model, nn.parallel.DistributedDataParallel) else model


def count_params(model: nn.Module, exclude_auxiliary: bool = True) -> int:
    """Trainable parameters; the auxiliary head is left out by default (DARTS reports it that way)."""
    model = _unwrap(model)
    if exclude_auxiliary and hasattr(model, "non_auxiliary_parameters"):
        params = model.non_auxiliary_parameters()
    else:
        params = list(model.parameters())
    return int(sum(p.numel() for p in params if p.requires_grad))


@torch.no_grad()
def count_macs(model: nn.Module, input_size: tuple[int, int, int], batch_size: int = 1) -> int:
    """Multiply-adds of one forward pass in eval mode (auxiliary head inactive), per ``batch_size`` images.

    FlopCounterMode counts 2 FLOPs per multiply-add of convolutions and matmuls; pooling, BN and
    elementwise ops are not counted (the usual convention for the DARTS "mobile setting" < 600M).
    """
    model = _unwrap(model)
    was_training = model.training
    model.eval()
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    x = torch.zeros(batch_size, *input_size, device=device, dtype=dtype)
    try:
        with FlopCounterMode(display=False) as counter:
            model(x)
    finally:
        model.train(was_training)
    return int(counter.get_total_flops() // 2)
