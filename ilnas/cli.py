"""The ``ilnas`` command line: ``ilnas search``, ``ilnas retrain``, ``ilnas transfer``."""

from __future__ import annotations

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Interleaving Learning architecture search.")


@app.callback()
def _main() -> None:
    """Interleaving Learning architecture search: search, retrain, transfer."""

# Each sub-package registers its own commands on ``app`` (imported for that side effect).
from ilnas.search import commands as _search_commands  # noqa: E402,F401
from ilnas.train import commands as _train_commands  # noqa: E402,F401

if __name__ == "__main__":  # `python -m ilnas.cli`: run the app the sub-commands registered on
    from ilnas.cli import app as _registered

    _registered()
