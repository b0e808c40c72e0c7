"""Data-parallel search throughput: training images/s on 1 and N processes (torchrun), and the efficiency.

    python bench/search_scaling.py --nproc 2                 # embedded size (8 ch, 5 cells, digits, K = 2)
    python bench/search_scaling.py --nproc 2 --method first_order --iterations 6 --batchnorm global

Each measurement is a separate torchrun launch of the same search (global batch fixed, so N processes
split it); the clock covers search iterations only (after one warm-up iteration), not start-up or
evaluation. Efficiency = (images/s on N) / (N x images/s on 1). One torch thread per process.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def worker(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(1)
    from ilnas.search import SearchConfig, SearchRun

    cfg = SearchConfig(hypergrad=args.method, batch_size=args.batch_size, channels=args.channels, cells=args.cells,
                       epochs=1, iterations_per_epoch=args.iterations + 1, batchnorm_stats=args.batchnorm)
    run = SearchRun(cfg, args.out / "work")
    lr = run.schedulers[0].get_last_lr()[0]
    run.strategy.step(0, lr, update_arch=True)  # warm-up
    run.world.barrier()
    start = time.perf_counter()
    for it in range(1, args.iterations + 1):
        run.strategy.step(it, lr, update_arch=True)
    run.world.barrier()
    seconds = time.perf_counter() - start
    if run.world.is_main:
        images = args.iterations * cfg.batch_size * len(cfg.tasks) * cfg.rounds * cfg.inner_steps
        (args.out / "result.json").write_text(json.dumps({"images_per_s": images / seconds, "seconds": seconds}))
    run.world.close()


def measure(nproc: int, args: argparse.Namespace) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               __file__, "--worker", "--out", tmp, "--method", args.method, "--iterations", str(args.iterations),
               "--batch-size", str(args.batch_size), "--channels", str(args.channels), "--cells", str(args.cells),
               "--batchnorm", args.batchnorm]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
        done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
        if done.returncode:
            raise SystemExit(done.stdout[-2000:] + done.stderr[-2000:])
        return json.loads((Path(tmp) / "result.json").read_text())["images_per_s"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nproc", type=int, default=2)
    p.add_argument("--method", default="finite_difference")
    p.add_argument("--iterations", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--channels", type=int, default=8)
    p.add_argument("--cells", type=int, default=5)
    p.add_argument("--batchnorm", choices=["local", "global"], default="local", help="search.batchnorm_stats")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(args)
        return
    one = measure(1, args)
    many = measure(args.nproc, args)
    print(f"search scaling ({args.method}, global batch {args.batch_size}, {args.channels} ch, {args.cells} cells, "
          f"{args.iterations} iterations, BatchNorm {args.batchnorm}, 1 thread per process)")
    print(f"  1 process:   {one:8.1f} train img/s")
    print(f"  {args.nproc} processes: {many:8.1f} train img/s")
    print(f"  speed-up {many / one:.2f}x, scaling efficiency {many / (args.nproc * one):.0%}")


if __name__ == "__main__":
    main()
