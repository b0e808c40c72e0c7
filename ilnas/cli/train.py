"""``ilnas retrain`` and ``ilnas transfer``: plain functions that ``ilnas.cli`` registers.

Both read a YAML config (a params.yaml, whose top-level ``seed``/``device`` count as in the pipeline, or a
bare section), apply ``-S key=value`` overrides (the flow's dotted keys) and run; under
``torchrun --nproc_per_node N -m ilnas retrain ...`` they train with DistributedDataParallel.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import typer

from ilnas.cli.options import DEBUG, VERSION, set_option


def retrain_command(
    genotype: Path | None = typer.Option(None, "--genotype", "-g", help="genotype.json (default: DARTS_V2)"),
    config: Path | None = typer.Option(None, "--config", "-c", help="YAML: params.yaml or a bare retrain section"),
    set_: list[str] = set_option("-S retrain.epochs=2 -S retrain.lerac.enabled=true (or epochs=2)"),
    out: Path = typer.Option(Path("models/retrain"), "--out", "-o", help="output directory"),
    resume: bool = typer.Option(True, "--resume/--no-resume", help="continue from OUT/checkpoints/last.pth.tar"),
    version: bool = VERSION,
    debug: bool = DEBUG,
) -> None:
    """Retrain a derived genotype from scratch (timm model ilnas_cifar by default)."""
    from ilnas.params import load_section

    cfg = load_section("retrain", config, set_)
    if config is not None:
        from ilnas.train.config import warn_implicit_recipe

        warn_implicit_recipe("retrain", cfg, str(config))
    from ilnas.train.retraining import retrain

    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("ilnas.train").setLevel(logging.INFO)  # the per-epoch line
    result = retrain(cfg, genotype, out, resume=resume)
    typer.echo(json.dumps({k: _sig4(result.metrics[k]) for k in ("top1", "top5", "params", "macs")
                           if k in result.metrics}))
    typer.echo(f"metrics: {result.metrics_json}")


def transfer_command(
    data_root: Path | None = typer.Option(None, "--data", "-d", help="ImageFolder root with train/ and val/"),
    genotype: Path | None = typer.Option(None, "--genotype", "-g", help="genotype.json (default: DARTS_V2)"),
    config: Path | None = typer.Option(None, "--config", "-c", help="YAML: params.yaml or a bare transfer section"),
    set_: list[str] = set_option("-S transfer.image_size=224 -S transfer.channels=48 (or image_size=224)"),
    out: Path = typer.Option(Path("models/transfer"), "--out", "-o", help="output directory"),
    resume: bool = typer.Option(True, "--resume/--no-resume", help="continue from OUT/checkpoints/last.pth.tar"),
    version: bool = VERSION,
    debug: bool = DEBUG,
) -> None:
    """Train/evaluate the ImageNet-style network on an ImageFolder: top-1, top-5, params, MACs, images/s."""
    from ilnas.params import ParamsError, load_section
    from ilnas.utils.checks import check_existing_dir

    cfg = load_section("transfer", config, set_)
    if config is not None:
        from ilnas.train.config import warn_implicit_recipe

        warn_implicit_recipe("transfer", cfg, str(config))
    if cfg.data_root is None and data_root is None:
        raise ParamsError("transfer: give --data ROOT (an ImageFolder with train/ and val/), "
                          "or transfer.data_root in the config")
    if data_root is not None:
        try:
            check_existing_dir(data_root, "--data")
        except ValueError as exc:
            raise ParamsError(str(exc)) from None
    from ilnas.train.transfer_eval import transfer

    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("ilnas.train").setLevel(logging.INFO)  # the per-epoch line
    result = transfer(cfg, genotype, out, data_root=data_root, resume=resume)
    keys = ("top1", "top5", "params", "macs", "eval_images_per_s")
    typer.echo(json.dumps({k: _sig4(result.metrics[k]) for k in keys if k in result.metrics}))
    typer.echo(f"metrics: {result.metrics_json}")


def _sig4(value: object) -> object:
    """A float as printed: 4 significant digits (0.5599, not 0.5598885793871866); metrics.json keeps them all."""
    return float(f"{value:.4g}") if isinstance(value, float) else value
