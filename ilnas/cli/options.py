"""Options every ``ilnas`` command shares (``-S``, ``--version``, ``--debug``); imported by the commands.

A module of its own so that imports point one way: ``ilnas.cli`` -> the command modules -> here.
"""

from __future__ import annotations

import os
from importlib import metadata

import typer

from ilnas.errors import ENV_DEBUG


def version_string() -> str:
    try:
        return f"ilnas {metadata.version('ilnas')}"
    except metadata.PackageNotFoundError:  # a source tree that was never installed
        from ilnas import __version__

        return f"ilnas {__version__}"


def _show_version(value: bool) -> None:
    if value:
        typer.echo(version_string())
        raise typer.Exit()


def _debug(value: bool) -> None:
    if value:
        os.environ[ENV_DEBUG] = "1"


VERSION = typer.Option(False, "--version", callback=_show_version, is_eager=True, help="print the version and exit")
DEBUG = typer.Option(False, "--debug", callback=_debug, is_eager=True,
                     help=f"show the traceback of a known error (also: {ENV_DEBUG}=1)")


def set_option(example: str) -> typer.models.OptionInfo:
    """``-S/--set KEY=VALUE``: the flow's dotted keys (``search.epochs=2``, ``seed=7``) or section-relative ones."""
    return typer.Option([], "--set", "-S", metavar="KEY=VALUE",
                        help=f"override, repeatable; dotted keys as in the flow, e.g. {example}")
