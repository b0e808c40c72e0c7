"""The default search's cell across seeds: parameter-free normal edges per seed, and how stable the cell is.

    python bench/cell_seeds.py                         # params.yaml's search, seeds 0 1 2, two at a time
    python bench/cell_seeds.py --seeds 0 1 2 3 4 --config configs/darts.yaml -S search.epochs=2

Each seed is one ``ilnas search`` (the search ``make run`` makes, derivation by magnitude, no cap on
parameter-free edges: the cell the search itself found) in its own process, into a temporary directory. Prints,
per seed, the normal cell and its parameter-free edges, then the arm's stability (edges shared by two seeds'
cells, edit distance, majority edges: ``ilnas.study.cells``). Exit 1 when a seed's normal cell has more than
half its edges parameter-free, so the bound the defaults are held to can be checked from a shell.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ilnas.space.genotype import Genotype, collapse_counts
from ilnas.study.cells import MAX_PARAM_FREE_SHARE, cell_stats

REPO = Path(__file__).resolve().parents[1]


def search(seed: int, config: Path, overrides: list[str], out: Path) -> dict:
    """One seed's search through the CLI; returns its genotype dict and wall seconds."""
    cmd = [sys.executable, "-m", "ilnas", "search", "--config", str(config), "--out", str(out), "--no-resume",
           "-S", f"search.seed={seed}", *[a for o in overrides for a in ("-S", o)]]
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"), MPLBACKEND="Agg")
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"seed {seed}: ilnas search exited {proc.returncode}: {proc.stderr[-1500:]}")
    return {"seed": seed, "genotype": json.loads((out / "genotype.json").read_text()),
            "wall_s": time.perf_counter() - start}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--config", type=Path, default=REPO / "params.yaml")
    parser.add_argument("-S", "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--jobs", type=int, default=2, help="searches at a time (default 2: one per core)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="ilnas-cell-seeds-") as tmp, ThreadPoolExecutor(args.jobs) as pool:
        runs = list(pool.map(lambda s: search(s, args.config, args.overrides, Path(tmp) / f"s{s}"), args.seeds))
    bound = MAX_PARAM_FREE_SHARE
    worst = 0.0
    for r in runs:
        g = r["genotype"]
        free = collapse_counts(Genotype.from_dict(g))["param_free_edges/normal"]
        worst = max(worst, free / len(g["normal"]))
        cell = ", ".join(f"{op}<{idx}" for op, idx in g["normal"])
        print(f"seed {r['seed']}: {free}/{len(g['normal'])} parameter-free normal edges ({r['wall_s']:.0f} s): {cell}")
    stats = cell_stats([r["genotype"] for r in runs])
    print(f"stability over {len(runs)} seeds: shared edges per pair {stats['shared_edges_mean']:.1f}/"
          f"{stats['normal_edges']}, edit distance {stats['edit_distance_mean']:.1f}, majority edges "
          f"{stats['majority_edges']}; cells with at most {bound:.0%} parameter-free: {stats['cells_within_bound']}"
          f" of {len(runs)}")
    return 0 if worst <= bound else 1


if __name__ == "__main__":
    sys.exit(main())
