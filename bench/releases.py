"""`make run` and `make test` of this release against an earlier one, side by side on one machine.

    python bench/releases.py                          # make run's flow, 2 rounds, against c8884f9
    python bench/releases.py --what test --rounds 1   # the whole suite (what `make test` runs), once each
    python bench/releases.py --base <rev> --new <rev> --what run test

Each revision is checked out clean (``git worktree add --detach``, a temporary directory) and run with this
venv's interpreter, its code first on ``PYTHONPATH`` (the venv's editable install is not touched). The two
alternate, round after round, so a machine that speeds up or slows down during the measurement weighs on both.
``run``: ``python -m flows --force`` (every stage computed: what `make run` does on a fresh clone), with the
flow's per-stage wall times; ``test``: ``pytest -q -n 2 --dist loadfile tests`` (what `make test` runs, ruff
aside). Prints one table: wall seconds per round, and before / now (above 1: this release is faster).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VENV = Path(sys.executable).resolve().parent.parent
COMMANDS = {"run": [sys.executable, "-m", "flows", "--force"],
            "test": [sys.executable, "-m", "pytest", "-q", "-n", "2", "--dist", "loadfile", "-p", "no:cacheprovider",
                     "tests"]}


def checkout(rev: str, root: Path) -> Path:
    """A clean worktree of ``rev`` with this venv beside it (as `make install` leaves one in a clone)."""
    path = root / rev.replace("/", "_")
    subprocess.run(["git", "-C", str(REPO), "worktree", "add", "-q", "--detach", str(path), rev], check=True)
    (path / ".venv").symlink_to(VENV)
    return path


def run_once(what: str, path: Path, log: Path) -> tuple[float, int, str]:
    """Wall seconds, exit code and the last line of one run of ``what`` in checkout ``path``."""
    env = dict(os.environ, PYTHONPATH=str(path), PATH=f"{VENV / 'bin'}:{os.environ.get('PATH', '')}",
               OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"), PREFECT_HOME=str(path / ".prefect"),
               PREFECT_SERVER_ANALYTICS_ENABLED="false", MLFLOW_DISABLE_TELEMETRY="true", DVC_NO_ANALYTICS="1",
               DO_NOT_TRACK="1")
    env.pop("PREFECT_API_URL", None)  # each run starts its own temporary server, as `make run` does
    start = time.perf_counter()
    with log.open("w") as fh:
        code = subprocess.run(COMMANDS[what], cwd=path, env=env, stdout=fh, stderr=subprocess.STDOUT).returncode
    wall = time.perf_counter() - start
    lines = [ln for ln in log.read_text().splitlines() if ln.strip()]
    return wall, code, lines[-1][-160:] if lines else ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="c8884f9", help="the earlier release (default: c8884f9)")
    parser.add_argument("--new", default="HEAD", help="this release (default: HEAD)")
    parser.add_argument("--what", nargs="+", choices=sorted(COMMANDS), default=["run"])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--keep", action="store_true", help="keep the checkouts and logs (printed)")
    args = parser.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="ilnas-releases-"))
    revs = {"before": args.base, "now": args.new}
    paths = {label: checkout(rev, root) for label, rev in revs.items()}
    walls: dict[tuple[str, str], list[float]] = {}
    try:
        for what in args.what:
            for r in range(args.rounds):
                for label in ("before", "now") if r % 2 == 0 else ("now", "before"):
                    log = root / f"{what}-{label}-{r}.log"
                    wall, code, last = run_once(what, paths[label], log)
                    walls.setdefault((what, label), []).append(wall)
                    print(f"{what} {label} ({revs[label]}) round {r + 1}: {wall:.0f} s, exit {code}: {last}",
                          flush=True)
        print(f"\n| command | {args.base} (before), s | {args.new} (now), s | before / now |\n|---|---|---|---|")
        for what in args.what:
            b, n = walls[(what, "before")], walls[(what, "now")]
            print(f"| {what} | {' / '.join(f'{x:.0f}' for x in b)} | {' / '.join(f'{x:.0f}' for x in n)} "
                  f"| {statistics.median(b) / statistics.median(n):.2f} |")
    finally:
        if args.keep:
            print(f"checkouts and logs: {root}")
        else:
            for path in paths.values():
                subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(path)], check=False)
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
