"""The ``ilnas`` command line: ``ilnas search``, ``ilnas retrain``, ``ilnas transfer``."""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

import typer
import yaml
from pydantic import BaseModel, ValidationError

from ilnas.utils.overrides import OverrideError, apply_overrides

Config = TypeVar("Config", bound=BaseModel)

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Interleaving Learning architecture search.")


@app.callback()
def _main() -> None:
    """Interleaving Learning architecture search: search, retrain, transfer."""

def load_section(model: type[Config], section: str, path: Path | None, overrides: list[str]) -> Config:
    """A config from YAML (a bare mapping, or a params.yaml's ``section``) plus ``--set`` overrides.

    Bad input stops here, before any compute, naming the dotted key and what is allowed.
    """
    data: dict = {}
    if path is not None:
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise typer.BadParameter(f"{path}: cannot read config ({exc})") from exc
        if isinstance(data, dict) and isinstance(data.get(section), dict):
            data = data[section]
    try:
        return model.model_validate(apply_overrides(data, overrides))
    except OverrideError as exc:
        raise typer.BadParameter(str(exc)) from exc
    except ValidationError as exc:
        raise typer.BadParameter("; ".join(
            f"{'.'.join(str(p) for p in (section, *err['loc']))}: {err['msg']}" for err in exc.errors())) from exc


# Each sub-package registers its own commands on ``app`` (imported for that side effect).
from ilnas.search import commands as _search_commands  # noqa: E402,F401
from ilnas.train import commands as _train_commands  # noqa: E402,F401

if __name__ == "__main__":  # `python -m ilnas.cli`: run the app the sub-commands registered on
    from ilnas.cli import app as _registered

    _registered()
