"""Data lineage through DVC: a dataset root is a dependency of exactly the stages that read it.

The project's own dvc.yaml in a temporary git + DVC repo; the stages are recorded as done with ``dvc commit``
(placeholder outputs: what is tested is which stages DVC considers stale, not what they compute). Changing one
image of the ImageFolder that retrain and transfer read must make ``dvc status`` list prepare (it fingerprints
the root), retrain and transfer, and not search or derive.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from PIL import Image

from tests.conftest import MICRO_PARAMS, init_repo

OUTS = ["data/prepared/x", "data/imagefolder/x", "models/search/x", "metrics/search_history.csv",
        "metrics/search.json", "models/genotype.json", "models/cells/x", "models/search_figures/x",
        "metrics/derive.json", "models/retrain/x", "metrics/retrain_history.csv", "metrics/retrain.json",
        "models/transfer/x", "metrics/transfer_history.csv", "metrics/transfer.json", "metrics/prepare.json"]


def test_changed_image_marks_the_stages_that_read_it(tmp_path: Path) -> None:
    params = MICRO_PARAMS.replace(
        "prepare: {image_size: 16, data_deps: {search: ilnas/data, retrain: ilnas/data, transfer: data/imagefolder}}",
        "prepare: {image_size: 16, data_deps: {search: ilnas/data, retrain: ext/imgs, transfer: ext/imgs}}")
    params = params.replace("retrain: {task: {name: digits, dataset: digits},",
                            "retrain: {task: {name: imgs, dataset: imagefolder, root: ext/imgs},")
    params = params.replace("transfer: {epochs: 1,", "transfer: {data_root: ext/imgs, epochs: 1,")
    assert "ext/imgs}}" in params and "root: ext/imgs}" in params and "data_root: ext/imgs" in params
    project = init_repo(tmp_path / "p")
    (project / "params.yaml").write_text(params)
    for split in ("train", "val"):
        for c in range(2):
            d = project / "ext" / "imgs" / split / f"c{c}"
            d.mkdir(parents=True)
            for i in range(2):
                Image.new("RGB", (8, 8), (100 * c, 10 * i, 0)).save(d / f"{i}.png")
    for rel in OUTS:
        (project / rel).parent.mkdir(parents=True, exist_ok=True)
        (project / rel).write_text("{}\n" if rel.endswith(".json") else "placeholder\n")
    dvc = str(Path(sys.executable).parent / "dvc")
    env = dict(os.environ, DVC_NO_ANALYTICS="1")

    def run(*args: str) -> str:
        proc = subprocess.run([dvc, *args], cwd=project, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return proc.stdout

    run("commit", "-f", "-q")
    assert json.loads(run("status", "--json")) == {}
    Image.new("RGB", (8, 8), (255, 255, 255)).save(project / "ext/imgs/train/c1/0.png")  # one image changes
    stale = set(json.loads(run("status", "--json")))
    assert stale == {"prepare", "retrain", "transfer"}, stale
