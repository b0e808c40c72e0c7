"""Speed and memory of one search iteration, and its ratio to the reference DARTS implementation.

    python bench/search_step.py                       # embedded-default size, K = 1 and 2, every method
    python bench/search_step.py --sizes embedded cifar --iters 2 --methods first_order stagewise
    python bench/search_step.py --reference /tmp/pt.darts            # or DARTS_REFERENCE_DIR=/tmp/pt.darts
    python bench/search_step.py --reference /tmp/pt.darts --sizes cifar --iters 1 --rounds 1 --warmup 0

images/s counts the training images one iteration consumes (K x R x T x batch) over its wall time.
Peak memory: CUDA max_memory_allocated on GPU; on CPU the growth of the process' peak RSS over
the resident size before the timed iterations (each configuration runs in its own subprocess).

With a reference (a checkout of khanrc/pt.darts: its ``SearchCNNController`` and ``Architect``; never
part of this repository) one process builds both at the same configuration (K = 1, one torch thread by
default) and times one reference iteration and one of ours alternately, round after round: architecture
step (first order: the validation loss' gradient; second order: ``Architect.unrolled_backward``, ours
``finite_difference``) then the weight step. It prints ``ilnas / reference`` (speed: reference seconds per
iteration over ours) from medians over all rounds, by wall time and by the thread's CPU time (the CPU time
is the steadier figure on a machine shared with other work).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import resource
import statistics
import subprocess
import sys
import time
import types
from collections.abc import Callable
from pathlib import Path

from ilnas.hypergrad.names import METHODS

SIZES = {
    "embedded": dict(channels=8, cells=5, in_channels=1, image=8, batch=64),
    "cifar": dict(channels=16, cells=8, in_channels=3, image=32, batch=64),
}
REFERENCE_ORDERS = {"first": "first_order", "second": "finite_difference"}  # reference order -> our method
W_LR, W_MOMENTUM, W_DECAY, A_LR, A_BETAS, A_DECAY, CLIP = 0.025, 0.9, 3e-4, 3e-4, (0.5, 0.999), 1e-3, 5.0


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def _our_run(size: str, k: int, method: str, device: str):
    import torch
    from torch.utils.data import TensorDataset

    from ilnas.data.tasks import TaskData
    from ilnas.search import SearchConfig, SearchRun

    s = SIZES[size]
    n = s["batch"] * 4
    tasks = []
    for i in range(k):
        g = torch.Generator().manual_seed(i)
        ds = TensorDataset(torch.randn(n, s["in_channels"], s["image"], s["image"], generator=g),
                           torch.randint(0, 5, (n,), generator=g))
        tasks.append(TaskData(f"task{i}", ds, ds, ds, 5, s["in_channels"], s["image"], [str(c) for c in range(5)]))
    cfg = SearchConfig(hypergrad=method, channels=s["channels"], cells=s["cells"], batch_size=s["batch"],
                       device=device, w_lr=W_LR, tasks=[{"name": t.name, "dataset": "digits"} for t in tasks])
    return cfg, SearchRun(cfg, "/tmp/ilnas-bench", tasks=tasks)


def measure(size: str, k: int, method: str, iters: int, device: str) -> dict:
    import torch

    cfg, run = _our_run(size, k, method, device)
    run.strategy.step(0, cfg.w_lr, update_arch=True)  # warm-up: allocator, momentum buffers
    cuda = run.device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    rss0 = _rss_mb()
    t0 = time.perf_counter()
    for i in range(iters):
        run.strategy.step(i + 1, cfg.w_lr, update_arch=True)
    if cuda:
        torch.cuda.synchronize()
    dt = (time.perf_counter() - t0) / iters
    peak = torch.cuda.max_memory_allocated() / 2**20 if cuda else \
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - rss0
    images = k * cfg.rounds * cfg.inner_steps * SIZES[size]["batch"]
    return {"size": size, "K": k, "method": method, "s_per_iter": dt, "images_per_s": images / dt,
            "peak_mb": max(peak, 0.0), "device": str(run.device)}


# -- the reference ---------------------------------------------------------------------------------------------
def _import_reference(ref_dir: Path):
    """Import pt.darts' controller and architect from ``ref_dir`` (shims at import time only, no file edited)."""
    if not (ref_dir / "models" / "search_cnn.py").is_file() or not (ref_dir / "architect.py").is_file():
        raise SystemExit(f"--reference {ref_dir}: no models/search_cnn.py and architect.py there "
                         "(expected a checkout of khanrc/pt.darts)")
    try:
        import graphviz  # noqa: F401  (pt.darts' visualize needs it; the search modules do not)
    except ImportError:
        sys.modules["graphviz"] = types.SimpleNamespace(Digraph=None)
    sys.path.insert(0, str(ref_dir))
    architect = importlib.import_module("architect")
    search_cnn = importlib.import_module("models.search_cnn")
    return search_cnn.SearchCNNController, architect.Architect


def _reference_step(ref_dir: Path, size: str, order: str, device: str) -> Callable[[], None]:
    """One pt.darts search iteration (its search.py train loop body) at the bench configuration."""
    import torch
    from torch import nn

    controller_cls, architect_cls = _import_reference(ref_dir)
    s = SIZES[size]
    dev = torch.device(device)
    model = controller_cls(s["in_channels"], s["channels"], 5, s["cells"], nn.CrossEntropyLoss().to(dev),
                           n_nodes=4, stem_multiplier=3, device_ids=[0]).to(dev)
    w_optim = torch.optim.SGD(model.weights(), W_LR, momentum=W_MOMENTUM, weight_decay=W_DECAY)
    a_optim = torch.optim.Adam(model.alphas(), A_LR, betas=A_BETAS, weight_decay=A_DECAY)
    architect = architect_cls(model, W_MOMENTUM, W_DECAY)
    g = torch.Generator().manual_seed(0)

    def batch():
        x = torch.randn(s["batch"], s["in_channels"], s["image"], s["image"], generator=g)
        return x.to(dev), torch.randint(0, 5, (s["batch"],), generator=g).to(dev)

    def step() -> None:
        (trn_x, trn_y), (val_x, val_y) = batch(), batch()
        a_optim.zero_grad()
        if order == "first":  # DARTS' first-order architecture step
            model.loss(val_x, val_y).backward()
        else:
            architect.unrolled_backward(trn_x, trn_y, val_x, val_y, W_LR, w_optim)
        a_optim.step()
        w_optim.zero_grad()
        loss = model.criterion(model(trn_x), trn_y)
        loss.backward()
        nn.utils.clip_grad_norm_(model.weights(), CLIP)
        w_optim.step()

    return step


def _timed(step: Callable[[], None], cuda: bool) -> tuple[float, float]:
    import torch

    if cuda:
        torch.cuda.synchronize()
    wall, cpu = time.perf_counter(), time.thread_time()
    step()
    if cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - wall, time.thread_time() - cpu


def compare(ref_dir: Path, sizes: list[str], methods: list[str], iters: int, rounds: int, device: str,
            warmup: int = 1) -> None:
    """Reference and ilnas iterations alternately in this one process; medians and ratios per order."""
    import torch

    from ilnas.utils.device import resolve_device

    dev = str(resolve_device(device))
    cuda = dev.startswith("cuda")
    print(f"reference: {ref_dir}  device: {dev}  torch threads: {torch.get_num_threads()}  "
          f"{rounds} rounds x {iters} iteration(s), alternating", flush=True)
    for size in sizes:
        contenders: dict[str, Callable[[], None]] = {}
        for order in REFERENCE_ORDERS:
            contenders[f"reference {order}"] = _reference_step(ref_dir, size, order, dev)
        for method in methods:
            cfg, run = _our_run(size, 1, method, dev)
            contenders[f"ilnas {method}"] = (lambda r=run, c=cfg: r.strategy.step(1, c.w_lr, update_arch=True))
        for _ in range(warmup):  # allocator, momentum buffers, first-call costs
            for step in contenders.values():
                step()
        times: dict[str, list[tuple[float, float]]] = {name: [] for name in contenders}
        for r in range(rounds):
            for name, step in contenders.items():
                times[name].extend(_timed(step, cuda) for _ in range(iters))
            print(f"  {size} round {r + 1}/{rounds}: " + "  ".join(
                f"{name} {times[name][-1][0]:.2f}s" for name in contenders), flush=True)
        med = {name: (statistics.median(t[0] for t in v), statistics.median(t[1] for t in v))
               for name, v in times.items()}
        batch = SIZES[size]["batch"]
        print(f"\n{size} ({SIZES[size]}), K = 1:\n| contender | s/iter (wall) | train img/s | s/iter (CPU) |\n"
              "|---|---|---|---|")
        for name, (wall, cpu) in med.items():
            print(f"| {name} | {wall:.3f} | {batch / wall:.1f} | {cpu:.3f} |")
        for order, method in REFERENCE_ORDERS.items():
            if f"ilnas {method}" in med:
                ref, ours = med[f"reference {order}"], med[f"ilnas {method}"]
                print(f"{size} {order} order: ilnas / reference = {ref[0] / ours[0]:.2f} (wall), "
                      f"{ref[1] / ours[1]:.2f} (CPU time)  [ilnas {method} vs pt.darts]")
        for method in methods:
            if method not in REFERENCE_ORDERS.values() and f"ilnas {method}" in med:
                ref, ours = med["reference second"], med[f"ilnas {method}"]
                print(f"{size} ilnas {method} / reference second order = {ref[0] / ours[0]:.2f} (wall), "
                      f"{ref[1] / ours[1]:.2f} (CPU time)")
        print(flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", nargs="+", default=["embedded"], choices=list(SIZES))
    ap.add_argument("--methods", "--method", nargs="+", default=None, choices=list(METHODS),
                    help="hypergradient methods (default: all; with a reference: first_order finite_difference)")
    ap.add_argument("--iters", type=int, default=3, help="timed iterations per configuration (per round)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--reference", type=Path, default=os.environ.get("DARTS_REFERENCE_DIR") or None,
                    help="a khanrc/pt.darts checkout to compare with (default: $DARTS_REFERENCE_DIR)")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds with a reference")
    ap.add_argument("--threads", type=int, default=1, help="torch threads with a reference")
    ap.add_argument("--warmup", type=int, default=1, help="untimed iterations per contender with a reference")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.reference:
        import torch

        torch.set_num_threads(args.threads)
        compare(Path(args.reference), args.sizes, args.methods or list(REFERENCE_ORDERS.values()), args.iters,
                args.rounds, args.device, args.warmup)
        return
    methods = args.methods or list(METHODS)
    if args.one:  # child process: one configuration, JSON on stdout
        size, k, method = args.one.split(":")
        print(json.dumps(measure(size, int(k), method, args.iters, args.device)))
        return
    rows = []
    for size in args.sizes:
        for k in (1, 2):
            for method in methods:
                out = subprocess.run([sys.executable, __file__, "--one", f"{size}:{k}:{method}",
                                      "--iters", str(args.iters), "--device", args.device],
                                     check=True, capture_output=True, text=True).stdout
                rows.append(json.loads(out.strip().splitlines()[-1]))
                r = rows[-1]
                print(f"{r['size']:>9} K={r['K']} {r['method']:>17}: {r['s_per_iter']:8.3f} s/iter "
                      f"{r['images_per_s']:9.1f} img/s  peak {r['peak_mb']:8.1f} MB  ({r['device']})", flush=True)
    print("\n| size | K | method | s/iter | images/s | peak MB |\n|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['size']} | {r['K']} | {r['method']} | {r['s_per_iter']:.3f} | {r['images_per_s']:.1f} "
              f"| {r['peak_mb']:.0f} |")
    for size in args.sizes:
        base = {r["method"]: r for r in rows if r["size"] == size and r["K"] == 1}
        il = {r["method"]: r for r in rows if r["size"] == size and r["K"] == 2}
        if "first_order" in base:
            for method, r in il.items():
                ratio = r["s_per_iter"] / (2 * base["first_order"]["s_per_iter"])
                print(f"{size}: IL(K=2, {method}) / (2 x DARTS first-order step) = {ratio:.2f}")


if __name__ == "__main__":
    main()
