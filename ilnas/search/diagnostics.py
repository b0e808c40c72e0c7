"""Per-epoch signs of DARTS' collapse coming, before the derived cell shows it.

* alpha entropy per edge (of its op weights, normalised): ln(#ops) at a uniform start, falling as an edge decides;
* alpha displacement from the search's initial alphas (L2 and max abs): how far the architecture moved;
* the share of parameter-free edges in the currently derived normal cell (DARTS' collapse itself);
* the dominant eigenvalue of the validation loss' Hessian with respect to the alphas (RobustDARTS, Zela et
  al. 2020: it grows before the search degenerates), by power iteration on exact Hessian-vector products
  (double backward), on one fixed, seeded validation batch per task with batch statistics, as RobustDARTS
  computes it (src/search/train_search.py:373-415, model in train mode; the BatchNorm buffers are put back).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn
from torch.utils.data import DataLoader

from ilnas.data.tasks import TaskData
from ilnas.space.architecture import Architecture
from ilnas.space.calibration import calibration_subset
from ilnas.space.genotype import Genotype, collapse_counts

CELLS = ("normal", "reduce")


def edge_entropy(alphas: torch.Tensor, activation: str = "softmax") -> torch.Tensor:
    """Entropy (nats) of each edge's op weights, normalised to sum 1: one value per row of ``alphas``.

    Softmax (DARTS): the weights themselves; sigmoid (Fair DARTS): the independent sigmoids rescaled to sum 1.
    """
    alphas = alphas.detach().float()
    if activation == "softmax":
        logp = torch.log_softmax(alphas, dim=-1)
    else:
        w = torch.sigmoid(alphas)
        logp = torch.log(w / w.sum(-1, keepdim=True))
    return -(logp.exp() * logp).sum(-1)


def alpha_diagnostics(arch: Architecture, alpha0: dict[str, torch.Tensor], genotype: Genotype) -> dict[str, float]:
    """One history row's collapse diagnostics (means per cell; per-edge entropies: :func:`edge_entropies`)."""
    row: dict[str, float] = {}
    for cell in CELLS:
        alphas = getattr(arch, f"alphas_{cell}").detach().float().cpu()
        delta = alphas - alpha0[f"alphas_{cell}"].float().cpu()
        row[f"alpha_entropy/{cell}"] = float(edge_entropy(alphas, arch.activation).mean())
        row[f"alpha_displacement_l2/{cell}"] = float(delta.norm())
        row[f"alpha_displacement_max/{cell}"] = float(delta.abs().max())
    counts = collapse_counts(genotype)
    for cell in CELLS:
        row[f"param_free_share/{cell}"] = counts[f"param_free_edges/{cell}"] / len(getattr(genotype, cell))
    return row


def edge_entropies(arch: Architecture) -> dict[str, list[float]]:
    """Per-edge entropies for the alpha history (``entropy_normal``, ``entropy_reduce``)."""
    return {f"entropy_{cell}": edge_entropy(getattr(arch, f"alphas_{cell}"), arch.activation).cpu().tolist()
            for cell in CELLS}


def dominant_eigenvalue(hvp: Callable[[torch.Tensor], torch.Tensor], dim: int, iterations: int = 20,
                        seed: int = 0, tol: float = 1e-4) -> float:
    """Largest (algebraic) eigenvalue of a symmetric operator given only its products ``hvp(v)``.

    Power iteration finds the eigenvalue of largest magnitude; when that one is negative, a second run on
    ``H - lambda I`` (all its eigenvalues >= 0) finds the largest one, as RobustDARTS' ``max(eigvals(H))``.
    """
    gen = torch.Generator().manual_seed(seed)
    start = torch.randn(dim, generator=gen, dtype=torch.float64)

    def power(op: Callable[[torch.Tensor], torch.Tensor]) -> float:
        v, lam = start / start.norm(), 0.0
        for i in range(iterations):
            w = op(v)
            new = float(v @ w)  # Rayleigh quotient of the unit vector v
            norm = w.norm()
            if norm == 0:
                return 0.0
            v = w / norm
            if i and abs(new - lam) <= tol * max(abs(new), 1e-12):
                return new
            lam = new
        return lam

    lam = power(lambda v: hvp(v).double())
    if lam >= 0:
        return lam
    return lam + power(lambda v: hvp(v).double() - lam * v)


@contextmanager
def _buffers_kept(model: nn.Module) -> Iterator[None]:
    """Train-mode passes update BatchNorm's running statistics: put them (and the mode) back afterwards."""
    saved = {n: b.clone() for n, b in model.named_buffers()}
    was_training = model.training
    try:
        yield
    finally:
        named = dict(model.named_buffers())
        for n, b in saved.items():
            named[n].copy_(b)
        model.train(was_training)


def hessian_eigenvalue(model: nn.Module, arch: Architecture, tasks: Sequence[TaskData], device: torch.device,
                       batch_size: int, iterations: int = 20, seed: int = 0, tol: float = 1e-4) -> float:
    """Dominant eigenvalue of the Hessian of the mean (over tasks) validation loss w.r.t. the alphas.

    The batch of each task is fixed (the first ``batch_size`` of a seeded permutation of its validation
    split), so epochs are compared on the same data.
    """
    params = [arch.alphas_normal, arch.alphas_reduce]
    # observation only: the search's random streams and BatchNorm statistics come out as they went in
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), _buffers_kept(model):
        model.train()
        loss = 0.0
        for k, task in enumerate(tasks):
            x, y = next(iter(DataLoader(calibration_subset(task.val, batch_size, seed + k), batch_size=batch_size)))
            logits = model(x.to(device), arch(), k).float()
            loss = loss + nn.functional.cross_entropy(logits, y.to(device)) / len(tasks)
        grads = torch.autograd.grad(loss, params, create_graph=True)
        flat = torch.cat([g.reshape(-1) for g in grads])

        def hvp(v: torch.Tensor) -> torch.Tensor:
            out = torch.autograd.grad(flat @ v.to(flat), params, retain_graph=True, allow_unused=True)
            return torch.cat([(o if o is not None else torch.zeros_like(p)).reshape(-1).detach().cpu()
                              for o, p in zip(out, params, strict=True)])

        return dominant_eigenvalue(hvp, flat.numel(), iterations, seed, tol)
