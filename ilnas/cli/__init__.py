"""The ``ilnas`` command line: ``ilnas search``, ``ilnas retrain``, ``ilnas transfer``, ``ilnas compare``,
``ilnas recipe``.

Imports point one way: this package registers the plain functions of its command modules (``search``,
``train``, ``compare``, ``recipe``), which know nothing of it; the library packages import nothing of the CLI.
Every invocation ends through :func:`ilnas.errors.guarded`: a known error (bad params, a damaged checkpoint or
genotype) prints one block and exits 2 (``--debug``: the traceback).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import click
import typer
from typer.core import TyperGroup

from ilnas.cli.compare import compare_command
from ilnas.cli.options import DEBUG, VERSION
from ilnas.cli.recipe import recipe_command
from ilnas.cli.search import search_command
from ilnas.cli.train import retrain_command, transfer_command
from ilnas.errors import debug_enabled, exit_code_of, fail


class _GuardedGroup(TyperGroup):
    """The command group: a known error ends as one message block on stderr with its exit code (2: input)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except Exception as exc:
            code = exit_code_of(exc)
            if code is None or debug_enabled():
                raise
            fail("ilnas", exc)  # one block (under torchrun: printed by rank 0, every rank exits with the code)


app = typer.Typer(cls=_GuardedGroup, add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Interleaving Learning architecture search.")


@app.callback()
def _main(version: bool = VERSION, debug: bool = DEBUG) -> None:
    """Interleaving Learning architecture search: search, retrain, transfer."""


app.command("search")(search_command)
app.command("retrain")(retrain_command)
app.command("transfer")(transfer_command)
app.command("compare")(compare_command)
app.command("recipe")(recipe_command)


def main(argv: Sequence[str] | None = None) -> Any:
    """``python -m ilnas`` / ``python -m ilnas.cli``."""
    return app(args=list(argv) if argv is not None else None, prog_name="ilnas")
