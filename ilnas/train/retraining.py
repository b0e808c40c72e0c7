"""Retrain a derived genotype from scratch (DARTS' "evaluation" phase) with timm's training parts.

Outputs in ``out_dir``: ``metrics.json`` (final), ``history.csv`` (one row per epoch, incl. the LeRaC group
rates), ``checkpoints/last.pth.tar`` and ``checkpoints/model_best.pth.tar``, ``config.json``, ``genotype.json``.
Runs single-process or under ``torchrun`` (DDP; only rank 0 writes files).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import timm
from torch import nn
from torch.utils.data import Dataset

import ilnas.nets  # noqa: F401  (registers ilnas_cifar / ilnas_imagenet in timm)
from ilnas.data.prepare import load_stage_tasks
from ilnas.data.tasks import TaskData, build_task
from ilnas.nets.profile import count_macs, count_params
from ilnas.space.genotype import DARTS_V2, Genotype, load_genotype
from ilnas.train.augment import darts_cifar_transforms, darts_tensor_transform, timm_image_transforms
from ilnas.train.checkpoint import LAST, CheckpointError, check_resume
from ilnas.train.config import PAPER_RECIPES, RetrainConfig
from ilnas.train.distributed import setup_distributed
from ilnas.train.engine import RESUME_IGNORED, EpochCallback, fit
from ilnas.train.evaluation import eval_loader, evaluate
from ilnas.utils.device import seeded
from ilnas.utils.io import atomic_write_json, atomic_write_text

__all__ = ["RetrainResult", "retrain", "build_model", "CheckpointError"]

@dataclass
class RetrainResult:
    """Final metrics (JSON-serialisable) and where the artifacts are."""

    metrics: dict[str, Any]
    out_dir: Path
    metrics_json: Path
    history_csv: Path
    checkpoint: Path  # the final weights (EMA when on): what the metrics, the logged model and transfer use
    last_checkpoint: Path
    history: list[dict[str, Any]] = field(default_factory=list, repr=False)
    model: nn.Module | None = field(default=None, repr=False)


def build_model(name: str, genotype: Genotype | str | os.PathLike | None, num_classes: int, in_chans: int,
                channels: int, cells: int, auxiliary: bool = False, drop_path_rate: float = 0.0) -> nn.Module:
    """``timm.create_model`` for ilnas networks (genotype, channels, cells...) or any other timm model."""
    if name.startswith("ilnas"):
        return timm.create_model(name, genotype=load_genotype(genotype) if genotype is not None else DARTS_V2,
                                 num_classes=num_classes, in_chans=in_chans, channels=channels, cells=cells,
                                 auxiliary=auxiliary, drop_path_rate=drop_path_rate)
    return timm.create_model(name, num_classes=num_classes, in_chans=in_chans, drop_path_rate=drop_path_rate or None)


class _Augmented(Dataset):
    """Applies a tensor transform to (image, label) samples of an already-tensorised dataset."""

    def __init__(self, base: Dataset, transform: Any):
        self.base, self.transform = base, transform

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, i: int):
        x, y = self.base[i]
        return self.transform(x.clone()), y


def retrain_transforms(cfg: RetrainConfig, size: int = 32) -> tuple[Any, Any]:
    """(train, eval) transforms for an image task: the recipe's pipeline with the task dataset's statistics."""
    if cfg.recipe in PAPER_RECIPES:
        return darts_cifar_transforms(cfg.task.dataset, size, cfg.hflip, cfg.cutout)
    return timm_image_transforms(cfg.task.dataset, size, cfg.hflip, cfg.auto_augment, cfg.re_prob)


def build_retrain_data(cfg: RetrainConfig, manifest_dir: str | os.PathLike | None = None
                       ) -> tuple[Dataset, Dataset, Dataset, int, int, int]:
    """(train, per-epoch eval, test, num_classes, in_channels, image_size) for the configured task.

    ``manifest_dir``: load the splits through the manifest 'prepare' wrote for the retrain stage
    (fingerprints checked); None builds the task from the config. The per-epoch evaluation set is the
    validation split (``val_fraction`` of the training data); with ``val_fraction=0`` (darts) the model
    trains on the full training set and is monitored on the test split, as DARTS reports.
    """
    task = cfg.task

    def load(**kwargs: Any) -> TaskData:
        if manifest_dir is not None:
            return load_stage_tasks(manifest_dir, "retrain", [task], cfg.seed, cfg.val_fraction, **kwargs)[0]
        return build_task(task, seed=cfg.seed, val_fraction=cfg.val_fraction, **kwargs)

    if task.dataset == "digits":
        if cfg.auto_augment:
            raise ValueError("auto_augment: digits tasks are pre-normalised 8x8 tensors; auto-augment policies "
                             "need image datasets (cifar10, cifar100, imagefolder)")
        data = load()
        train: Dataset = data.train
        if cfg.recipe in PAPER_RECIPES:
            train = _Augmented(train, darts_tensor_transform(data.image_size, cfg.hflip, cfg.cutout))
        elif cfg.re_prob > 0:
            from timm.data.random_erasing import RandomErasing

            train = _Augmented(train, RandomErasing(probability=cfg.re_prob, mode="pixel", device="cpu"))
    else:
        size = 32  # CIFAR; ImageFolder images are resized to the same 32x32
        train_tf, eval_tf = retrain_transforms(cfg, size)
        data = load(train_transform=train_tf, eval_transform=eval_tf, image_size=size)
        train = data.train
    eval_ds = data.val if cfg.val_fraction > 0 and len(data.val) > 0 else data.test  # type: ignore[arg-type]
    return train, eval_ds, data.test, data.num_classes, data.in_channels, data.image_size


def retrain(
    config: RetrainConfig,
    genotype: Genotype | str | os.PathLike | None,
    out_dir: str | os.PathLike,
    resume: bool = True,
    callbacks: Sequence[EpochCallback] = (),
    manifest_dir: str | os.PathLike | None = None,
) -> RetrainResult:
    """Train the network of ``genotype`` on ``config.task``; resume from ``out_dir``'s last checkpoint.

    ``callbacks`` are ``cb(epoch, row)`` called on rank 0 after each epoch (the pipeline logs them to MLflow).
    ``manifest_dir``: the prepared manifests to load the task through (see :func:`build_retrain_data`).
    A corrupt or mismatched checkpoint raises :class:`CheckpointError`; it never restarts silently.
    The reported test metrics, ``checkpoint`` (``final.pth``) and ``model`` are one set of weights: the last
    epoch's, EMA when on (``metrics["weights"]``).
    """
    out = Path(out_dir)
    geno = load_genotype(genotype) if genotype is not None else None
    ctx = setup_distributed(config.device)
    with seeded(config.seed, config.deterministic):
        try:
            train_ds, eval_ds, test_ds, num_classes, in_chans, image_size = build_retrain_data(config, manifest_dir)
            model = build_model(config.model, geno, num_classes, in_chans, config.channels, config.cells,
                                config.auxiliary, config.drop_path_rate)
            identity = {
                "kind": "retrain",
                "config": config.model_dump(mode="json"),
                "genotype": geno.to_dict() if geno is not None else None,
            }
            if resume:  # a refusal must come before any write into the run directory
                check_resume(out / "checkpoints" / LAST, identity, RESUME_IGNORED)
            if ctx.is_main:
                out.mkdir(parents=True, exist_ok=True)
                atomic_write_text(out / "config.json", config.model_dump_json(indent=2) + "\n")
                if geno is not None:
                    geno.to_json(out / "genotype.json")
            eval_on = "val" if eval_ds is not test_ds else "test"
            fitted = fit(config, model, train_ds, eval_ds, num_classes, out, ctx, resume=resume, callbacks=callbacks,
                         lerac=config.lerac, identity=identity, desc="retrain", eval_split=eval_on)
            use_amp = config.amp and ctx.device.type == "cuda"
            channels_last = config.channels_last and ctx.device.type == "cuda"
            test = evaluate(fitted.eval_model, eval_loader(test_ds, config.batch_size, ctx, config.num_workers), ctx,
                            num_classes, use_amp, channels_last, desc="test")
            input_size = (in_chans, image_size, image_size)
            last = fitted.history[-1] if fitted.history else {}
            metrics: dict[str, Any] = {
                "top1": test["top1"],
                "top5": test["top5"],
                "topk": test["topk"],
                "loss": test["loss"],
                "weights": fitted.weights,
                "weights_epoch": len(fitted.history),  # counted from 1, as the history rows
                "params": count_params(model),
                "macs": count_macs(model, input_size),
                # the maximum over epochs of the per-epoch evaluation: selection on that set, never the headline
                f"max_epoch_top1_on_{eval_on}": fitted.best_metric,
                "max_epoch": fitted.best_epoch,
                "epoch_eval_set": eval_on,
                "final_epoch_eval_top1": last.get(f"{eval_on}_top1"),
                "epochs": len(fitted.history),
                "train_images": len(train_ds),  # type: ignore[arg-type]
                "train_images_per_s": last.get("train_images_per_s"),
                "test_images": test["n"],
                "num_classes": num_classes,
                "input_size": list(input_size),
                "model": config.model,
                "recipe": config.recipe,
                "ema": config.ema,
                "lerac": config.lerac.enabled,
                "world_size": ctx.world_size,
                "global_batch": config.batch_size,
                "per_process_batch": config.batch_size // ctx.world_size,
                "lr_effective": config.effective_lr(),
            }
            metrics_json = out / "metrics.json"
            if ctx.is_main:
                atomic_write_json(metrics_json, metrics)
            return RetrainResult(metrics=metrics, out_dir=out, metrics_json=metrics_json,
                                 history_csv=out / "history.csv", checkpoint=fitted.final_weights,
                                 last_checkpoint=fitted.last_checkpoint, history=fitted.history,
                                 model=fitted.eval_model)
        finally:
            ctx.close()
