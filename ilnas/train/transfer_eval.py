"""Transfer evaluation: the ImageNet-style network of a genotype, trained (or fine-tuned) and evaluated on an
ImageFolder in ImageNet layout (``train/CLASS/*.jpeg``, ``val/CLASS/*.jpeg``).

Reports top-1, top-k (k = min(5, classes)), parameters, multiply-adds and evaluation images/s of the final
weights (the last epoch's, EMA when on). ``eval_batches`` evaluates a seeded random subset (an ImageFolder is
class-sorted, so its first batches would cover a few classes only). Works on a real ImageNet folder given its
path; the embedded default is a small ImageFolder of the digits held-out images. Runs single-process or under
``torchrun`` (``batch_size`` is the global batch; see :mod:`ilnas.train.config`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset, Subset
from torchvision.datasets import ImageFolder

from ilnas.data.tasks import load_image
from ilnas.errors import DataError, DataMissingError
from ilnas.nets.profile import count_macs, count_params
from ilnas.space.genotype import Genotype, load_genotype
from ilnas.train.augment import imagenet_transforms
from ilnas.train.checkpoint import LAST, CheckpointError, check_resume, load_weights
from ilnas.train.config import TransferConfig
from ilnas.train.distributed import setup_distributed
from ilnas.train.engine import RESUME_IGNORED, EpochCallback, fit
from ilnas.train.evaluation import eval_loader, evaluate
from ilnas.train.retraining import build_model
from ilnas.utils.device import seeded
from ilnas.utils.io import atomic_write_json, atomic_write_text

__all__ = ["TransferResult", "transfer", "imagefolder_datasets", "eval_subset"]


@dataclass
class TransferResult:
    metrics: dict[str, Any]
    out_dir: Path
    metrics_json: Path
    history_csv: Path
    checkpoint: Path | None  # the final weights (final.pth)
    history: list[dict[str, Any]] = field(default_factory=list, repr=False)
    model: nn.Module | None = field(default=None, repr=False)


def imagefolder_datasets(root: str | os.PathLike, cfg: TransferConfig) -> tuple[ImageFolder, ImageFolder]:
    """train / val ImageFolders with the recipe's transforms (see :func:`ilnas.train.augment.imagenet_transforms`)."""
    root = Path(root)
    for split in (cfg.train_split, cfg.val_split):
        if not (root / split).is_dir():
            raise DataMissingError(f"{root / split}: missing; an ImageNet-layout folder needs "
                                   f"{cfg.train_split}/CLASS/*.jpeg and {cfg.val_split}/CLASS/*.jpeg")
    train_tf, eval_tf = imagenet_transforms(cfg.recipe, cfg.image_size, cfg.train_scale_min, cfg.hflip, cfg.crop_pct,
                                            cfg.color_jitter, cfg.auto_augment, cfg.re_prob)
    splits = []
    for split, tf in ((cfg.train_split, train_tf), (cfg.val_split, eval_tf)):
        try:
            # a damaged image is an error naming the file and the split, not a DataLoader worker's traceback
            loader = partial(load_image, dataset=f"transfer {split} split ({root / split})")
            splits.append(ImageFolder(str(root / split), transform=tf, loader=loader))
        except FileNotFoundError as exc:  # torchvision: no class folder, or a class folder without images
            raise DataMissingError(f"{root / split}: {exc}; an ImageNet-layout folder needs "
                                   f"{split}/CLASS/*.jpeg") from None
    if splits[0].classes != splits[1].classes:
        raise DataError(f"{root}: class folders differ between {cfg.train_split}/ ({len(splits[0].classes)}) "
                         f"and {cfg.val_split}/ ({len(splits[1].classes)})")
    return splits[0], splits[1]


def eval_subset(dataset: Dataset, n_batches: int | None, batch_size: int, seed: int) -> Dataset:
    """A seeded uniform random subset of ``n_batches * batch_size`` items (all of them when None or more)."""
    n = len(dataset)  # type: ignore[arg-type]
    if n_batches is None or n_batches * batch_size >= n:
        return dataset
    g = torch.Generator().manual_seed(seed)
    keep = torch.randperm(n, generator=g)[: n_batches * batch_size].sort().values
    return Subset(dataset, keep.tolist())


def _load_matching(model: nn.Module, path: str) -> tuple[int, str]:
    """Fine-tuning start: copy every tensor whose name and shape match (the classifier usually does not).

    Returns (tensors copied, which weights: ``final`` / ``final_ema``).
    """
    state, which = load_weights(path)
    own = model.state_dict()
    matched = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not matched:
        raise CheckpointError(f"{path}: no tensor matches the transfer model (different architecture or size)")
    model.load_state_dict(matched, strict=False)
    return len(matched), which


def transfer(
    config: TransferConfig,
    genotype: Genotype | str | os.PathLike | None,
    out_dir: str | os.PathLike,
    data_root: str | os.PathLike | None = None,
    callbacks: Sequence[EpochCallback] = (),
    resume: bool = True,
) -> TransferResult:
    """Train ``config.epochs`` epochs on ``data_root/train`` (0: evaluate as is) and evaluate on ``data_root/val``.

    ``data_root`` (the caller's embedded default) is used when ``config.data_root`` is None.
    """
    root = config.data_root or data_root
    if root is None:
        raise ValueError("data_root: none given (config.data_root is null and no default path was passed)")
    out = Path(out_dir)
    geno = load_genotype(genotype) if genotype is not None else None
    ctx = setup_distributed(config.device)
    with seeded(config.seed, config.deterministic):
        try:
            train_ds, val_ds = imagefolder_datasets(root, config)
            num_classes = len(train_ds.classes)
            model = build_model(config.model, geno, num_classes, config.in_chans, config.channels, config.cells,
                                config.auxiliary, config.drop_path_rate)
            loaded, init_weights = _load_matching(model, config.checkpoint) if config.checkpoint else (0, None)
            val_ds = eval_subset(val_ds, config.eval_batches, config.batch_size, config.seed)
            identity = {"kind": "transfer", "config": config.model_dump(mode="json"),
                        "genotype": geno.to_dict() if geno is not None else None}
            if resume:  # a refusal must come before any write into the run directory
                check_resume(out / "checkpoints" / LAST, identity, RESUME_IGNORED)
            if ctx.is_main:
                out.mkdir(parents=True, exist_ok=True)
                atomic_write_text(out / "config.json", config.model_dump_json(indent=2) + "\n")
            fitted = fit(config, model, train_ds, val_ds, num_classes, out, ctx, resume=resume, callbacks=callbacks,
                         identity=identity, desc="transfer", eval_split="test")
            use_amp = config.amp and ctx.device.type == "cuda"
            channels_last = config.channels_last and ctx.device.type == "cuda"
            val = evaluate(fitted.eval_model, eval_loader(val_ds, config.batch_size, ctx, config.num_workers), ctx,
                           num_classes, use_amp, channels_last, desc="transfer val")
            input_size = (config.in_chans, config.image_size, config.image_size)
            metrics: dict[str, Any] = {
                "top1": val["top1"],  # final weights on the evaluation set: the headline
                "top5": val["top5"],
                "topk": val["topk"],
                "loss": val["loss"],
                "weights": fitted.weights,
                "weights_epoch": len(fitted.history),  # counted from 1, as the history rows
                "params": count_params(model),
                "macs": count_macs(model, input_size),
                "eval_images_per_s": val["images_per_s"],
                "eval_images": val["n"],
                "eval_subset": config.eval_batches is not None,
                "num_classes": num_classes,
                "train_images": len(train_ds),
                "epochs": len(fitted.history),
                # the maximum over epochs on the evaluation set is selection on the test set: not a result
                "max_epoch_top1_selected_on_test": fitted.best_metric,
                "max_epoch": fitted.best_epoch,
                "input_size": list(input_size),
                "model": config.model,
                "recipe": config.recipe,
                "fine_tuned_tensors": loaded,
                "init_weights": init_weights,
                "data_root": str(root),
                "world_size": ctx.world_size,
                "global_batch": config.batch_size,
                "per_process_batch": config.batch_size // ctx.world_size,
                "lr_effective": config.effective_lr(),
            }
            metrics_json = out / "metrics.json"
            if ctx.is_main:
                atomic_write_json(metrics_json, metrics)
            return TransferResult(metrics=metrics, out_dir=out, metrics_json=metrics_json,
                                  history_csv=out / "history.csv", checkpoint=fitted.final_weights,
                                  history=fitted.history, model=fitted.eval_model)
        finally:
            ctx.close()
