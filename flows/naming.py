"""What a Prefect flow run is called and tagged: method, K, hypergradient, seed and the DVC experiment or preset,
so IL and DARTS runs differ at a glance in the Prefect UI's run list (and can be filtered by tag)."""

from __future__ import annotations

from pathlib import Path

from flows.variants import Variant
from stages.common import search_method


def flow_run_identity(variant: Variant) -> tuple[str, list[str]]:
    """``IL K=2 finite_difference seed 0 [darts]`` and tags ``ilnas``, ``method:IL``, ``K:2``, ``hypergrad:...``,
    ``seed:0``, ``exp:<name>`` (``exp:workspace`` for a plain run), ``preset:<file stem>`` when one is used."""
    params = variant.params
    method, k, hypergrad = search_method(params), len(params.search.tasks), params.search.hypergrad
    exp = variant.experiment or "workspace"
    name = f"{method} K={k} {hypergrad} seed {params.seed}" + (f" [{exp}]" if variant.experiment else "")
    tags = ["ilnas", f"method:{method}", f"K:{k}", f"hypergrad:{hypergrad}", f"seed:{params.seed}", f"exp:{exp}"]
    if variant.preset:
        tags.append(f"preset:{Path(variant.preset).stem}")
    return name, tags


def label_flow_run(flow_run_id: str, name: str, tags: list[str]) -> None:
    """Rename and tag the running flow run (keeping the tags it already has, e.g. a deployment's)."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        current = client.read_flow_run(flow_run_id)
        client.update_flow_run(flow_run_id, name=name, tags=list(dict.fromkeys([*current.tags, *tags])))
