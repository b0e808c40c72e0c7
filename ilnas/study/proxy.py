"""The proxy evaluation of a cell: one short retraining, read on a validation split, cached by protocol.

A *protocol* is a ``retrain``-section mapping (the same keys as ``params.yaml``'s ``retrain``, validated by
:class:`ilnas.train.RetrainConfig`) with ``val_fraction > 0``: the network trains on the rest of the training
pool, is read at its last epoch on the validation split (what every selection uses: calibration, random
search, remedy choices) and once on the test split (what the report shows). The per-epoch maximum is never
used: it would select on the set it reports.

Evaluations are cached in ``<cache>/<protocol key>/<cell key>-s<seed>/result.json`` (written last,
atomically), where the protocol key hashes the protocol and the code that computes a retraining. The
reference distribution of random cells, the calibration and every study share this cache, so each
(protocol, cell, seed) is trained once.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from functools import lru_cache
from pathlib import Path
from typing import Any

from ilnas.space.genotype import Genotype
from ilnas.utils.fingerprint import json_digest, source_digest
from ilnas.utils.io import atomic_write_json

RESULT = "result.json"
# what computes a retraining: editing anything else (search, strategies, reports) keeps the cached evaluations
RETRAIN_CODE = ("train", "nets", "space/genotype.py", "space/ops.py", "data", "utils/device.py")
PACKAGE = Path(__file__).resolve().parents[1]


class ProtocolError(ValueError):
    """A protocol that cannot serve as a proxy (no validation split, an invalid retrain key)."""


@lru_cache(maxsize=1)
def retrain_code_version() -> str:
    """Hash of the sources a retraining runs (``RETRAIN_CODE`` under ``ilnas/``)."""
    files = [path for part in RETRAIN_CODE
             for path in (sorted((PACKAGE / part).rglob("*.py")) if (PACKAGE / part).is_dir() else [PACKAGE / part])]
    return source_digest(PACKAGE, files)


def validate_protocol(protocol: dict[str, Any], where: str = "protocol") -> dict[str, Any]:
    """The protocol as a full, validated retrain config (JSON), without its seed; errors name ``where``."""
    from pydantic import ValidationError

    from ilnas.params import format_validation_error
    from ilnas.train.config import RetrainConfig

    try:
        cfg = RetrainConfig.model_validate({**protocol, "seed": 0})
    except ValidationError as exc:
        raise ProtocolError(f"{where}: " + format_validation_error(exc, RetrainConfig)) from None
    if cfg.val_fraction <= 0:
        raise ProtocolError(f"{where}.val_fraction: {cfg.val_fraction}; a proxy needs a validation split to be "
                            "read on (allowed: 0 < val_fraction < 1)")
    data = cfg.model_dump(mode="json")
    data.pop("seed")
    return data


def protocol_key(protocol: dict[str, Any]) -> str:
    payload = {"protocol": validate_protocol(protocol), "code": retrain_code_version()}
    return json_digest(payload)


def cell_key(genotype: Genotype) -> str:
    return hashlib.sha256(genotype.to_json().encode()).hexdigest()[:12]


def evaluation_dir(cache: str | os.PathLike, protocol: dict[str, Any], genotype: Genotype, seed: int) -> Path:
    return Path(cache) / protocol_key(protocol) / f"{cell_key(genotype)}-s{seed}"


def cached_evaluation(cache: str | os.PathLike, protocol: dict[str, Any], genotype: Genotype,
                      seed: int) -> dict[str, Any] | None:
    try:
        return json.loads((evaluation_dir(cache, protocol, genotype, seed) / RESULT).read_text())
    except (OSError, ValueError):
        return None


def evaluate_cell(genotype: Genotype, protocol: dict[str, Any], seed: int, cache: str | os.PathLike,
                  threads: int | None = 1) -> dict[str, Any]:
    """Train ``genotype`` under ``protocol`` with ``seed`` (or read the cached result); never trains twice.

    Returns ``val_top1`` / ``val_loss`` (last epoch, validation split), ``test_top1`` / ``test_loss``,
    ``params``, ``macs``, ``wall_s`` and ``cached``. A non-finite loss raises ``FloatingPointError``.
    """
    done = cached_evaluation(cache, protocol, genotype, seed)
    if done is not None:
        return {**done, "cached": True}
    from ilnas.train import RetrainConfig, retrain

    if threads:
        import torch

        torch.set_num_threads(threads)
    out = evaluation_dir(cache, protocol, genotype, seed)
    config = RetrainConfig.model_validate({**validate_protocol(protocol), "seed": seed})
    started = time.perf_counter()
    res = retrain(config, genotype, out, resume=True)
    last = res.history[-1]
    record = {"cell": cell_key(genotype), "protocol": protocol_key(protocol), "seed": seed,
              "genotype": genotype.to_dict(), "val_top1": float(last["val_top1"]), "val_loss": float(last["val_loss"]),
              "test_top1": float(res.metrics["top1"]), "test_loss": float(res.metrics["loss"]),
              "params": int(res.metrics["params"]), "macs": int(res.metrics["macs"]),
              "val_images": int(round(len_val(config))), "test_images": int(res.metrics["test_images"]),
              "wall_s": round(time.perf_counter() - started, 2)}
    if not all(math.isfinite(record[k]) for k in ("val_loss", "test_loss")):
        raise FloatingPointError(f"cell {record['cell']} seed {seed}: non-finite loss {record}")
    for stale in (out / "checkpoints").glob("*.pth*"):  # a finished evaluation is never resumed
        stale.unlink()
    atomic_write_json(out / RESULT, record)
    return {**record, "cached": False}


def len_val(config: Any) -> int:
    """Validation images the protocol reads (the seeded split of the task's training pool)."""
    from ilnas.data.tasks import build_task

    return len(build_task(config.task, seed=config.seed, val_fraction=config.val_fraction).val)
