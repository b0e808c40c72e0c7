"""``ilnas search``: a plain function that ``ilnas.cli`` registers (this module does not import the CLI)."""

from __future__ import annotations

import logging
from pathlib import Path

import typer

from ilnas.cli.options import DEBUG, VERSION, set_option


def search_command(
    config: Path | None = typer.Option(None, "--config", "-c", help="YAML: params.yaml or a bare search section"),
    set_: list[str] = set_option("-S search.hypergrad=exact -S seed=7 (or hypergrad=exact)"),
    out: Path = typer.Option(Path("models/search"), "--out", "-o", help="output directory"),
    resume: bool = typer.Option(True, "--resume/--no-resume", help="continue from OUT/checkpoint.pt"),
    version: bool = VERSION,
    debug: bool = DEBUG,
) -> None:
    """Search a cell architecture by interleaving learning (or another registered strategy)."""
    from ilnas.params import load_section

    cfg = load_section("search", config, set_)  # every check before any compute (and before torch loads)
    from ilnas.search.runner import run_search

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    result = run_search(cfg, out, resume=resume)  # under torchrun: every rank searches, rank 0 writes
    import os

    if int(os.environ.get("RANK", "0")) != 0:
        return
    from ilnas import viz

    figures = out / "figures"
    pictures = viz.plot_genotype(result.genotype, figures)
    pictures.append(viz.plot_alpha_history(result.alpha_rows, figures / "alpha_history.png",
                                           primitives=cfg.primitives))
    typer.echo(f"genotype: {result.genotype_json}")
    typer.echo(f"pictures: {', '.join(str(p) for p in pictures)}")
    typer.echo(f"metrics:  {result.metrics_json}")
