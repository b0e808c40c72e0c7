"""Speed and memory of one search iteration: K = 1 (DARTS) and K = 2 (IL), every hypergradient method.

    python bench/search_step.py                       # embedded-default size, all methods
    python bench/search_step.py --sizes embedded cifar --iters 2

images/s counts the training images one iteration consumes (K x R x T x batch) over its wall time.
Peak memory: CUDA max_memory_allocated on GPU; on CPU the growth of the process' peak RSS over
the resident size before the timed iterations (each configuration runs in its own subprocess).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

SIZES = {
    "embedded": dict(channels=8, cells=5, in_channels=1, image=8, batch=64),
    "cifar": dict(channels=16, cells=8, in_channels=3, image=32, batch=64),
}
METHODS = ("first_order", "finite_difference", "exact")


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def measure(size: str, k: int, method: str, iters: int, device: str) -> dict:
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
                       device=device, tasks=[{"name": t.name, "dataset": "digits"} for t in tasks])
    run = SearchRun(cfg, "/tmp/ilnas-bench", tasks=tasks)
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
    images = k * cfg.rounds * cfg.inner_steps * s["batch"]
    return {"size": size, "K": k, "method": method, "s_per_iter": dt, "images_per_s": images / dt,
            "peak_mb": max(peak, 0.0), "device": str(run.device)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", nargs="+", default=["embedded"], choices=list(SIZES))
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:  # child process: one configuration, JSON on stdout
        size, k, method = args.one.split(":")
        print(json.dumps(measure(size, int(k), method, args.iters, args.device)))
        return
    rows = []
    for size in args.sizes:
        for k in (1, 2):
            for method in args.methods:
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
