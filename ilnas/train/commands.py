"""``ilnas retrain`` and ``ilnas transfer`` (registered on ilnas.cli.app).

Both read a YAML config (a bare section, or a params.yaml with a ``retrain:`` / ``transfer:`` section),
apply ``--set key=value`` overrides and run; under ``torchrun --nproc_per_node N -m ilnas retrain ...``
they train with DistributedDataParallel.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import typer

from ilnas.cli import app, load_section
from ilnas.train.config import RetrainConfig, TransferConfig


@app.command("retrain")
def retrain_command(
    genotype: Path | None = typer.Option(None, "--genotype", "-g", help="genotype.json (default: DARTS_V2)"),
    config: Path | None = typer.Option(None, "--config", "-c", help="YAML: retrain section or params.yaml"),
    set_: list[str] = typer.Option([], "--set", help="override, e.g. --set epochs=2 --set lerac.enabled=true"),
    out: Path = typer.Option(Path("models/retrain"), "--out", "-o", help="output directory"),
    resume: bool = typer.Option(True, "--resume/--no-resume", help="continue from OUT/checkpoints/last.pth.tar"),
) -> None:
    """Retrain a derived genotype from scratch (timm model ilnas_cifar by default)."""
    from ilnas.train.retraining import retrain

    logging.basicConfig(level=logging.WARNING)
    cfg = load_section(RetrainConfig, "retrain", config, set_)
    result = retrain(cfg, genotype, out, resume=resume)  # type: ignore[arg-type]
    typer.echo(json.dumps({k: result.metrics[k] for k in ("top1", "top5", "params", "macs", "best_top1")}))
    typer.echo(f"metrics: {result.metrics_json}")


@app.command("transfer")
def transfer_command(
    data_root: Path | None = typer.Option(None, "--data", "-d", help="ImageFolder root with train/ and val/"),
    genotype: Path | None = typer.Option(None, "--genotype", "-g", help="genotype.json (default: DARTS_V2)"),
    config: Path | None = typer.Option(None, "--config", "-c", help="YAML: transfer section or params.yaml"),
    set_: list[str] = typer.Option([], "--set", help="override, e.g. --set image_size=224 --set channels=48"),
    out: Path = typer.Option(Path("models/transfer"), "--out", "-o", help="output directory"),
    resume: bool = typer.Option(True, "--resume/--no-resume", help="continue from OUT/checkpoints/last.pth.tar"),
) -> None:
    """Train/evaluate the ImageNet-style network on an ImageFolder: top-1, top-5, params, MACs, images/s."""
    from ilnas.train.transfer_eval import transfer

    logging.basicConfig(level=logging.WARNING)
    cfg = load_section(TransferConfig, "transfer", config, set_)
    if cfg.data_root is None and data_root is None:  # type: ignore[attr-defined]
        raise typer.BadParameter("give --data ROOT (or data_root in the config)")
    result = transfer(cfg, genotype, out, data_root=data_root, resume=resume)  # type: ignore[arg-type]
    typer.echo(json.dumps({k: result.metrics[k] for k in ("top1", "top5", "params", "macs", "eval_images_per_s")}))
    typer.echo(f"metrics: {result.metrics_json}")
