"""``ilnas compare``: a plain function that ``ilnas.cli`` registers (this module does not import the CLI)."""

from __future__ import annotations

from pathlib import Path

import typer

from ilnas.cli.options import DEBUG, VERSION


def compare_command(
    run_ids: list[str] = typer.Argument(None, help="run ids to compare (default: the latest run of each "
                                                   "method / K / hypergradient / seed / DVC experiment)"),
    experiment: str = typer.Option("ilnas", "--experiment", "-e", help="MLflow experiment name"),
    filter_string: str = typer.Option("tags.stage = 'search'", "--filter", "-f",
                                      help="MLflow search filter, e.g. \"tags.stage = 'retrain'\""),
    metric: list[str] = typer.Option(None, "--metric", "-m",
                                     help="metrics to show (default: the headline metrics all runs have)"),
    every: bool = typer.Option(False, "--all", help="every metric all runs have (diagnostics, per-task when shared)"),
    plot: Path | None = typer.Option(None, "--plot", "-p", help="write the per-epoch curves to this PNG"),
    log_to: str | None = typer.Option(None, "--log-to", help="log the table and figure on this run id"),
    tracking_uri: str | None = typer.Option(None, "--tracking-uri",
                                            help="default: $MLFLOW_TRACKING_URI, else sqlite:///<cwd>/mlflow.db"),
    max_runs: int = typer.Option(8, "--max-runs", min=1),
    version: bool = VERSION,
    debug: bool = DEBUG,
) -> None:
    """Compare runs side by side (IL against DARTS): a table of the metrics every run has, and curves per epoch."""
    from ilnas.tracking import telemetry_off
    from ilnas.tracking import tracking_uri as resolve_uri

    telemetry_off()
    from ilnas.compare import compare, log_comparison

    uri = resolve_uri(Path.cwd(), tracking_uri)
    result = compare(uri, experiment, filter_string, run_ids or (), metric or (), plot, max_runs, every)
    typer.echo(result.text, nl=False)
    if result.figure is not None:
        typer.echo(f"figure: {result.figure}")
    if log_to:
        log_comparison(uri, log_to, result)
        typer.echo(f"logged on run {log_to}: comparison.md, comparison.json" + (", figures/" if plot else ""))
