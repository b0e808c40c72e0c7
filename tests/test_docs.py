"""The documentation site builds with ``mkdocs build --strict``: every page in the nav, every link and anchor
resolving (a moved heading or a deleted page fails here, not in a reader's browser)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def _nav_pages(nav: list) -> list[str]:
    pages = []
    for entry in nav:
        value = next(iter(entry.values())) if isinstance(entry, dict) else entry
        pages += _nav_pages(value) if isinstance(value, list) else [value]
    return pages


def test_docs_build_strict(tmp_path: Path) -> None:
    mkdocs = str(Path(sys.executable).parent / "mkdocs")
    proc = subprocess.run([mkdocs, "build", "--strict", "--site-dir", str(tmp_path / "site")], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-4000:]
    config = yaml.safe_load((REPO / "mkdocs.yml").read_text())
    for page in _nav_pages(config["nav"]):
        built = tmp_path / "site" / ("index.html" if page == "index.md" else page.removesuffix(".md") + "/index.html")
        assert built.stat().st_size > 0, page


def test_no_docstring_or_config_points_to_a_file_outside_the_repo() -> None:
    """DESIGN.md was never part of the repository: the formulation lives in docs/design.md."""
    offenders = [str(p.relative_to(REPO)) for top in ("ilnas", "stages", "flows", "configs", "docs")
                 for p in (REPO / top).rglob("*") if p.suffix in (".py", ".md", ".yaml")
                 and "DESIGN.md" in p.read_text()]
    offenders += [name for name in ("params.yaml", "README.md", "pyproject.toml")
                  if "DESIGN.md" in (REPO / name).read_text()]
    assert offenders == []
