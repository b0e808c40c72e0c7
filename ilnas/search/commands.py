"""``ilnas search`` (registered on ilnas.cli.app)."""

from __future__ import annotations

import logging
from pathlib import Path

import typer

from ilnas.cli import app, load_section
from ilnas.search.config import SearchConfig


@app.command("search")
def search_command(
    config: Path | None = typer.Option(None, "--config", "-c", help="YAML: search section or params.yaml"),
    set_: list[str] = typer.Option([], "--set", help="override, e.g. --set hypergrad=exact --set epochs=2"),
    out: Path = typer.Option(Path("models/search"), "--out", "-o", help="output directory"),
    resume: bool = typer.Option(True, "--resume/--no-resume", help="continue from OUT/checkpoint.pt"),
) -> None:
    """Search a cell architecture by interleaving learning (or another registered strategy)."""
    from ilnas.search.runner import run_search

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    cfg = load_section(SearchConfig, "search", config, set_)
    result = run_search(cfg, out, resume=resume)
    from ilnas import viz

    figures = out / "figures"
    pictures = viz.plot_genotype(result.genotype, figures)
    pictures.append(viz.plot_alpha_history(result.alpha_rows, figures / "alpha_history.png"))
    typer.echo(f"genotype: {result.genotype_json}")
    typer.echo(f"pictures: {', '.join(str(p) for p in pictures)}")
    typer.echo(f"metrics:  {result.metrics_json}")
