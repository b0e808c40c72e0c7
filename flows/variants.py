"""A variant (a preset, ``-S`` overrides, or both) checked before anything starts, and the params.yaml it runs on.

Why two passes: ``ilnas.params`` names a bad key with the allowed values (the message a user needs), and
DVC's own ``-S`` (hydra overrides, what ``dvc exp run -S`` applies) produces the file that actually runs.
Both see the same text, so what was validated is what runs. No Prefect import here: a typo costs well
under a second and starts no server.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from flows.dvc_repo import apply_overrides, experiment_name
from ilnas.params import ParamsError, PipelineParams, load_params


@dataclass(frozen=True)
class Variant:
    """What a run will use: validated params, the exact params.yaml text, and its experiment name (None for a
    plain run over the workspace's params.yaml)."""

    params: PipelineParams
    text: str
    experiment: str | None
    overrides: tuple[str, ...]
    preset: str | None


def _preset_path(project: Path, preset: str | None) -> Path | None:
    if not preset:
        return None
    path = Path(preset)
    path = path if path.is_absolute() else project / path
    if not path.is_file():
        choices = sorted(str(p.relative_to(project)) for p in (project / "configs").glob("*.yaml")) \
            if (project / "configs").is_dir() else []
        raise ParamsError(f"--preset {preset}: no such file; presets here: {choices}")
    return path


def resolve_variant(project: str | Path, overrides: Sequence[str] = (), preset: str | None = None,
                    name: str | None = None) -> Variant:
    """Validate ``preset`` (or params.yaml) with ``overrides``; :class:`ParamsError` names the key otherwise."""
    project = Path(project).resolve()
    overrides = tuple(overrides)
    source = _preset_path(project, preset) or project / "params.yaml"
    clean = [o.lstrip("+") for o in overrides]  # hydra's '+key=value' adds a key; ilnas' overrides always may
    load_params(source, clean)  # the friendly message: key, value, allowed values
    with tempfile.TemporaryDirectory(prefix="ilnas-variant-") as tmp:
        staged = Path(tmp) / "params.yaml"
        staged.write_text(source.read_text())
        try:
            # validated keys only get here, so one absent from the file is added ('++': add or override) where
            # plain `dvc exp run -S` would ask for '+key=value'
            apply_overrides(staged, [o if o.startswith(("+", "~")) else "++" + o for o in overrides])
        except ValueError as exc:
            raise ParamsError(str(exc)) from None
        text = staged.read_text()
        params = load_params(staged)
    is_variant = bool(overrides or preset or name)
    experiment = (name or experiment_name(overrides, preset)) if is_variant else None
    return Variant(params=params, text=text, experiment=experiment, overrides=overrides, preset=preset)
