"""Place any cell among a reference distribution of random cells: ``python -m ilnas.study.place``.

    python -m ilnas.study.place models/genotype.json references/<protocol key>.json

Retrains the cell once by the reference's own protocol (seed 0, like every reference cell; cached in
``runs/proxy/``) and prints its validation and test top-1 with their percentiles among the reference's
cells, so a derived cell from ``make run`` can be judged against the random cells a study measured.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ilnas.errors import guarded, strip_debug_flag


def place(genotype_path: str, reference_path: str, cache: str = "runs/proxy") -> dict[str, Any]:
    from ilnas.space.genotype import load_genotype
    from ilnas.study.proxy import evaluate_cell
    from ilnas.study.stats import percentile_of

    try:
        reference = json.loads(Path(reference_path).read_text())
        records, protocol = reference["records"], reference["protocol"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise FileNotFoundError(f"{reference_path}: not a reference distribution written by a study "
                                f"(references/<protocol key>.json): {type(exc).__name__}: {exc}") from None
    result = evaluate_cell(load_genotype(genotype_path), protocol, 0, cache)
    out: dict[str, Any] = {"cells": len(records)}
    for split in ("val", "test"):
        value = result[f"{split}_top1"]
        out[f"{split}_top1"] = value
        out[f"{split}_percentile"] = percentile_of(value, [r[f"{split}_top1"] for r in records])
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ilnas.study.place", description=__doc__.splitlines()[0])
    parser.add_argument("genotype", help="genotype.json (e.g. models/genotype.json)")
    parser.add_argument("reference", help="references/<protocol key>.json, written by a study")
    parser.add_argument("--cache", default="runs/proxy", help="proxy evaluation cache (default: runs/proxy)")
    args = parser.parse_args(strip_debug_flag(list(sys.argv[1:] if argv is None else argv)))
    r = guarded(lambda: place(args.genotype, args.reference, args.cache), "python -m ilnas.study.place")
    print(f"validation top-1 {r['val_top1']:.4f}: percentile {r['val_percentile']:.0f} of {r['cells']} random cells; "
          f"test top-1 {r['test_top1']:.4f}: percentile {r['test_percentile']:.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
