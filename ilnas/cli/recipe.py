"""``ilnas recipe``: the retrain and transfer recipe a params file resolves to (after validation, recipe values
filled in). A plain function that ``ilnas.cli`` registers (this module does not import the CLI).

    ilnas recipe configs/cifar.yaml        # or: python -m ilnas recipe configs/cifar.yaml

Only the schema is checked (no data roots need to exist): this is what ``dvc repro`` would run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from ilnas.cli.options import DEBUG, VERSION
from ilnas.train.config import PAPER_RECIPES


def describe(params: Any) -> list[str]:
    """One line per training stage: recipe, data, epochs, batch, lr schedule, augmentation, weight decay."""
    world = params.distributed.world_size
    lines = []
    for stage in ("retrain", "transfer"):
        c = getattr(params, stage)
        data = f"{c.task.dataset} ({c.task.root or 'bundled'})" if stage == "retrain" else (c.data_root or
                                                                                           "data/imagefolder")
        sched = (f"cosine {c.effective_lr():g} -> {c.lr_min:g}" if c.sched == "cosine" else
                 f"{c.sched} {c.effective_lr():g} x{c.decay_rate:g} every {c.decay_epochs:g} epoch(s)"
                 if c.sched == "step" else f"{c.sched} from {c.effective_lr():g}")
        if c.warmup_epochs:
            sched += f", {c.warmup_epochs} warm-up epochs"
        if c.recipe in PAPER_RECIPES:
            aug = (f"pad-crop + flip {c.hflip:g} + Cutout {c.cutout}" if stage == "retrain" else
                   f"RRC(scale {c.train_scale_min:g}-1) + flip {c.hflip:g} + jitter {c.color_jitter}")
        else:
            aug = f"timm create_transform (RRC, flip {c.hflip:g}, auto-augment {c.auto_augment}, erasing {c.re_prob:g})"
        lines.append(
            f"{stage}: recipe {c.recipe}, {c.model} {c.channels} ch / {c.cells} cells, data {data}, {c.epochs} epochs, "
            f"global batch {c.batch_size} = {world} x {c.batch_size // world}, lr {sched} "
            f"(lr {c.lr:g} per {c.lr_base_batch or c.batch_size} images), optimizer {c.opt} (momentum {c.momentum:g}), "
            f"weight decay {c.weight_decay:g} on {'every parameter' if c.wd_on_norm_and_bias else 'weights only'}, "
            f"grad clip {c.grad_clip}, aux {c.auxiliary_weight if c.auxiliary else 'off'}, "
            f"drop path {c.drop_path_rate:g}, label smoothing {c.label_smoothing:g}, EMA {c.ema}, "
            f"{'mixed precision' if c.amp else 'fp32'}, augmentation: {aug}"
            + (f", held-out val {c.val_fraction:g}" if stage == "retrain" else ""))
    return lines


def recipe_command(
    params_file: Path = typer.Argument(Path("params.yaml"), help="params file (default: params.yaml)"),
    version: bool = VERSION,
    debug: bool = DEBUG,
) -> None:
    """Print the retrain and transfer recipe a params file resolves to, one line per stage."""
    from ilnas.params import read_params_file, validate_params

    params = validate_params(read_params_file(params_file), source=str(params_file))  # errors name the file
    typer.echo(f"{params_file}:")
    for line in describe(params):
        typer.echo("  " + line)
