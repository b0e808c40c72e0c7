"""Run under ``torchrun --nproc_per_node 2``: short data-parallel searches for tests/test_search_ddp.py.

``python -m torch.distributed.run --standalone --nproc_per_node 2 tests/search_ddp_worker.py OUT SCENARIO``.
Each rank writes what it ended with to ``OUT/<name>/rank<r>.pt`` so the test can compare the ranks.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from ilnas.search import SearchConfig, SearchRun
from ilnas.search.parallel import ArchitectureDivergedError

TINY = dict(channels=4, cells=3, nodes=2, batch_size=16, deterministic=True, epochs=1, iterations_per_epoch=1,
            eval_bn_images=16, val_fraction=0.1, sync_check_every=1, batchnorm_stats="global")


def config(**overrides) -> SearchConfig:
    return SearchConfig(**{**TINY, **overrides})


def save(run: SearchRun, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    state = {"arch": {k: v.detach().clone() for k, v in run.arch.state_dict().items()},
             "model": {k: v.detach().clone() for k, v in run.model.state_dict().items()},
             "history": run.history}
    if hasattr(run.strategy, "class_weights"):
        state["class_weights"] = {k: v.detach().clone() for k, v in run.strategy.class_weights.state_dict().items()}
    torch.save(state, out / f"rank{run.world.rank}.pt")


def main(out: Path, scenario: str) -> int:
    torch.set_num_threads(1)
    if scenario == "methods":  # every hypergradient method, IL K = 2; then LFM; then the resume reference
        for method in ("first_order", "finite_difference", "stagewise", "exact"):
            run = SearchRun(config(hypergrad=method), out / method / "work")
            run.run(progress=False)
            save(run, out / method)
        run = SearchRun(config(hypergrad="finite_difference", batchnorm_stats="local"), out / "local" / "work")
        run.run(progress=False)
        save(run, out / "local")
        run = SearchRun(config(strategy="lfm", hypergrad="finite_difference"), out / "lfm" / "work")
        run.run(progress=False)
        save(run, out / "lfm")
        run = SearchRun(config(hypergrad="first_order", epochs=2), out / "straight" / "work")
        run.run(progress=False)
        save(run, out / "straight")
        run.world.close()
        return 0
    if scenario == "cut":  # the same search, stopped after its first epoch (its checkpoint on disk)
        run = SearchRun(config(hypergrad="first_order", epochs=2), out / "resumed" / "work")
        try:
            run.run(progress=False, stop_after_epoch=0)
        except KeyboardInterrupt:
            run.world.close()
            return 0
        return 1
    if scenario == "resume":
        run = SearchRun(config(hypergrad="first_order", epochs=2), out / "resumed" / "work")
        run.run(progress=False)
        (out / "resumed").mkdir(exist_ok=True)
        save(run, out / "resumed")
        (out / "resumed" / f"start{run.world.rank}.json").write_text(json.dumps(run.start_epoch))
        run.world.close()
        return 0
    if scenario == "diverge":  # one rank perturbs its architecture after the broadcast
        run = SearchRun(config(hypergrad="first_order"), out / "diverge" / "work")
        if run.world.rank == 1:
            with torch.no_grad():
                run.arch.alphas_normal.add_(1e-3)
        try:
            run.run(progress=False)
        except ArchitectureDivergedError as exc:
            (out / f"diverged{run.world.rank}.txt").write_text(str(exc))
            return 3
        return 0
    raise SystemExit(f"unknown scenario {scenario!r}")


if __name__ == "__main__":
    raise SystemExit(main(Path(sys.argv[1]), sys.argv[2]))
