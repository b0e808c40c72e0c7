"""Retraining of derived genotypes and ImageNet-style transfer evaluation, built from timm's parts.

Public API: ``retrain(config, genotype, out_dir)`` and ``transfer(config, genotype, out_dir, data_root)``;
configuration in :mod:`ilnas.train.config`. Nothing here imports DVC, Prefect or MLflow.
"""

from __future__ import annotations

from ilnas.train.config import LeRaCConfig, RetrainConfig, TransferConfig
from ilnas.utils.lazy import lazy_exports

__all__ = [
    "LeRaCConfig",
    "RetrainConfig",
    "TransferConfig",
    "RetrainResult",
    "TransferResult",
    "CheckpointError",
    "retrain",
    "transfer",
]


_LAZY = {
    "retrain": "ilnas.train.retraining",
    "RetrainResult": "ilnas.train.retraining",
    "CheckpointError": "ilnas.train.checkpoint",
    "transfer": "ilnas.train.transfer_eval",
    "TransferResult": "ilnas.train.transfer_eval",
}


# lazy: importing the configs (done by the pipeline at parse time) must not pull in timm
__getattr__ = lazy_exports(__name__, _LAZY)
