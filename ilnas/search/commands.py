"""``ilnas search`` (registered on ilnas.cli.app)."""

from __future__ import annotations

import logging
from pathlib import Path

import typer
import yaml
from pydantic import ValidationError

from ilnas.cli import app
from ilnas.search.config import SearchConfig
from ilnas.utils.overrides import apply_overrides


def load_search_config(path: Path | None, overrides: list[str]) -> SearchConfig:
    """A search config from a YAML file: a bare search mapping, or a params.yaml with a ``search:`` section."""
    data: dict = {}
    if path is not None:
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise typer.BadParameter(f"{path}: cannot read config ({exc})") from exc
        if isinstance(data, dict) and isinstance(data.get("search"), dict):
            data = data["search"]
    data = apply_overrides(data, overrides)
    try:
        return SearchConfig.model_validate(data)
    except ValidationError as exc:
        raise typer.BadParameter(format_validation_error(exc, prefix="search")) from exc


def format_validation_error(exc: ValidationError, prefix: str = "") -> str:
    lines = []
    for err in exc.errors():
        key = ".".join(str(p) for p in ((prefix,) if prefix else ()) + tuple(err["loc"]))
        lines.append(f"{key}: {err['msg']}")
    return "; ".join(lines)


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
    cfg = load_search_config(config, set_)
    result = run_search(cfg, out, resume=resume)
    from ilnas import viz

    figures = out / "figures"
    pictures = viz.plot_genotype(result.genotype, figures)
    pictures.append(viz.plot_alpha_history(result.alpha_rows, figures / "alpha_history.png"))
    typer.echo(f"genotype: {result.genotype_json}")
    typer.echo(f"pictures: {', '.join(str(p) for p in pictures)}")
    typer.echo(f"metrics:  {result.metrics_json}")
