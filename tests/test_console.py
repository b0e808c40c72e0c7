"""What the pipeline prints and how DVC shows its pictures: DVC's push hint dropped, the genotype in one compact
line, the plots page in two columns."""

from __future__ import annotations

import inspect
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_the_flow_drops_exactly_the_hint_dvc_repro_writes():
    from dvc.commands.repro import CmdRepro

    from flows.pipeline import DVC_HINTS

    source = inspect.getsource(CmdRepro.run)
    assert DVC_HINTS and all(hint in source for hint in DVC_HINTS)  # DVC's wording: a change fails here


def test_genotype_line_is_compact():
    from ilnas.space.genotype import DARTS_V2
    from stages.derive import compact

    line = compact(DARTS_V2)
    assert "\n" not in line and len(line) < 400 and "Genotype(" not in line
    assert line.startswith("normal[sep_conv_3x3<-0 sep_conv_3x3<-1 ") and " reduce[max_pool_3x3<-0 " in line


def test_plots_page_scales_pictures_to_two_columns():
    from dvc.repo import Repo
    from dvc_render.html import HTML

    with Repo(str(REPO)) as repo:
        template = Path(repo.dvc_dir) / repo.config["plots"]["html_template"]
    page = HTML(template.read_text()).with_element('<img src="a.png">').embed()
    assert '<img src="a.png">' in page and "max-width: calc(50vw" in page and "{plot_divs}" not in page
