"""Derivation: DARTS-PT perturbation selection and the P-DARTS cap on skip / parameter-free edges."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn
from torch.utils.data import Subset

from ilnas.data.spec import TaskConfig
from ilnas.data.tasks import TaskData, build_task
from ilnas.params import DeriveConfig
from ilnas.search.config import SearchConfig
from ilnas.search.derivation import Caps, alphas_payload, derive_capped, derive_from_alphas_file
from ilnas.search.selection import PerturbationSelector, PerturbationSettings, perturbation_select
from ilnas.space.architecture import Architecture
from ilnas.space.calibration import calibration_subset, recalibrated
from ilnas.space.genotype import collapse_counts
from ilnas.space.ops import PRIMITIVES
from ilnas.space.supernet import Supernet
from ilnas.utils.io import atomic_torch_save

TASK = TaskConfig(name="digits_0_4", dataset="digits", classes=[0, 1, 2, 3, 4])
MICRO = dict(tasks=[TASK], channels=4, cells=3, nodes=1, batch_size=32, eval_bn_images=64, iterations_per_epoch=1)
DECISIVE, LARGEST = "sep_conv_3x3", "skip_connect"


def small(task: TaskData, n: int = 120) -> TaskData:
    """The task with a shorter validation split: every decision evaluates once per candidate."""
    return dataclasses.replace(task, val=Subset(task.val, range(n)))


def _zero(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.zeros_(m.weight)


@torch.no_grad()
def decisive_supernet() -> tuple[Supernet, Architecture, list, SearchConfig]:
    """A supernet whose normal cell carries the task's signal through sep_conv_3x3 alone, its smallest alpha.

    The normal cell's edge from input 0 gets one channel (the others are zero), which skip and the pools pass on;
    sep_conv_3x3 spreads it over every channel, the other convolutions output zero; everything downstream reads
    every channel but that one, and the cell's inputs reach the head through the normal cell only. The head is
    fitted on those features, so removing skip (the largest alpha) or a pool changes nothing downstream.
    """
    torch.manual_seed(0)
    cfg = SearchConfig(**MICRO)
    task = small(build_task(TASK, seed=0, val_fraction=0.5))
    model, arch = Supernet([5], task.in_channels, 4, 3, 1, 1), Architecture(1)
    row = torch.tensor([0.0 if p == "none" else 1.0 for p in PRIMITIVES])
    row[PRIMITIVES.index(LARGEST)], row[PRIMITIVES.index(DECISIVE)] = 3.0, -1.0
    arch.alphas_normal.copy_(row.expand(2, -1))
    normal, first_reduce, second_reduce = model.encoder.cells
    normal.preprocess0[1].weight[1:] = 0.0  # one input channel on the edge from input 0
    _zero(normal.preprocess1)  # and nothing on the edge from input 1 (every removal there ties)
    for edge in normal.edges:
        for name in ("sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5"):
            _zero(edge.ops[PRIMITIVES.index(name)])
    _zero(first_reduce.preprocess0)  # reads the stem: no path around the normal cell
    first_reduce.preprocess1[1].weight[:, 0] = 0.0
    second_reduce.preprocess0.conv_1.weight[:, 0] = 0.0
    second_reduce.preprocess0.conv_2.weight[:, 0] = 0.0
    weights = arch()
    calib = calibration_subset(task.train, cfg.eval_bn_images, cfg.seed)
    with recalibrated(model, weights, 0, calib, cfg.batch_size, torch.device("cpu"), cfg.seed) as net:
        xs, ys = zip(*[task.train[i] for i in range(len(task.train))], strict=True)
        features = net.encoder(torch.stack(xs), weights)
    head, y = model.heads[0], torch.tensor(ys)
    with torch.enable_grad():
        opt = torch.optim.Adam(head.parameters(), lr=0.1)
        for _ in range(300):
            opt.zero_grad()
            nn.functional.cross_entropy(head(features), y).backward()
            opt.step()
    return model, arch, [task], cfg


def test_perturbation_picks_the_decisive_op_where_magnitude_picks_the_largest_alpha():
    model, arch, tasks, cfg = decisive_supernet()
    assert arch.derive().normal[0] == (LARGEST, 0)
    selection = perturbation_select(model, arch, tasks, cfg, PerturbationSettings(tune_epochs=0))
    assert selection.genotype.normal[0] == (DECISIVE, 0)
    (decision,) = [d for d in selection.decisions if d["kind"] == "op" and d["cell"] == "normal" and d["edge"] == 0]
    without = decision["score_without"]
    assert "none" not in without and without[DECISIVE] < min(v for k, v in without.items() if k != DECISIVE) - 0.2


def test_perturbation_criterion_loss_agrees_and_bad_criterion_is_refused():
    model, arch, tasks, cfg = decisive_supernet()
    selection = perturbation_select(model, arch, tasks, cfg, PerturbationSettings(criterion="loss", tune_epochs=0))
    assert selection.genotype.normal[0] == (DECISIVE, 0)
    with pytest.raises(ValueError, match=r"derive.perturbation.criterion: got 'top5'; allowed: \['acc', 'loss'\]"):
        PerturbationSelector(model, arch, tasks, cfg, PerturbationSettings(criterion="top5"), torch.device("cpu"))


def test_topology_and_tuning_between_decisions():
    """Two nodes: 5 op decisions, then node 3's two inputs (one topology round dropping one of three),
    with tune_epochs x iterations_per_epoch weight steps between every two of the 6 decisions."""
    torch.manual_seed(0)
    cfg = SearchConfig(**{**MICRO, "nodes": 2, "eval_bn_images": 16, "batch_size": 16})
    tasks = [small(build_task(TASK, seed=0, val_fraction=0.5), 32)]
    model, arch = Supernet([5], tasks[0].in_channels, 4, 3, 2, 2), Architecture(2)
    before = [p.detach().clone() for p in model.parameters()]
    alphas = arch.alphas_normal.detach().clone()
    selection = perturbation_select(model, arch, tasks, cfg, PerturbationSettings(tune_epochs=1))
    assert selection.tune_steps == 5
    assert any(not torch.equal(a, p) for a, p in zip(before, model.parameters(), strict=True))
    assert torch.equal(arch.alphas_normal, alphas)  # the alphas are only read
    topo = [d for d in selection.decisions if d["kind"] == "topology"]
    assert [(d["cell"], d["node"], len(d["rounds"])) for d in topo] == [("normal", 3, 1), ("reduce", 3, 1)]
    for d in topo:
        scores, dropped = d["rounds"][0]["score_without"], d["rounds"][0]["dropped"]
        assert dropped not in d["inputs"] and scores[dropped] == max(scores.values())
        node_edges = selection.genotype.normal[2:] if d["cell"] == "normal" else selection.genotype.reduce[2:]
        assert [j for _, j in node_edges] == d["inputs"]


def skip_heavy_arch() -> Architecture:
    """Four nodes whose normal cell derives 4 skips (on nodes 2, 3, 4, 5's strongest edges) and 4 convolutions."""
    arch = Architecture(4)
    with torch.no_grad():
        arch.alphas_normal.zero_()
        start = 0
        for node in range(4):
            arch.alphas_normal[start, PRIMITIVES.index("skip_connect")] = 3.0 + node * 0.1  # skips differ
            arch.alphas_normal[start, PRIMITIVES.index("avg_pool_3x3")] = 2.5  # the skips' runners-up
            arch.alphas_normal[start + 1, PRIMITIVES.index("sep_conv_3x3")] = 2.0
            start += node + 2
    return arch


def test_cap_on_skips_replaces_the_weakest_and_is_recorded(tmp_path):
    arch = skip_heavy_arch()
    plain = arch.derive()
    assert collapse_counts(plain)["skip_edges/normal"] == 4
    path = atomic_torch_save(tmp_path / "alphas.pt", alphas_payload(arch, []))
    assert derive_from_alphas_file(path).prior_applied is False
    capped = derive_from_alphas_file(path, caps=Caps(max_skip_connect=2))
    assert collapse_counts(capped.genotype)["skip_edges/normal"] == 2
    assert capped.prior_applied and capped.replaced == ["normal: skip_connect<-0 (node 2)",
                                                        "normal: skip_connect<-0 (node 3)"]  # weakest first
    # the replaced edges keep their input with the next op (avg pool), the reduce cell is untouched
    assert capped.genotype.normal[:4] == (("avg_pool_3x3", 0), ("sep_conv_3x3", 1),
                                          ("avg_pool_3x3", 0), ("sep_conv_3x3", 1))
    assert capped.genotype.normal[4:] == plain.normal[4:] and capped.genotype.reduce == plain.reduce


def test_cap_on_parameter_free_edges():
    arch = skip_heavy_arch()
    genotype, replaced = derive_capped(arch, Caps(max_parameter_free=2))
    assert collapse_counts(genotype)["param_free_edges/normal"] == 2 and len(replaced) >= 2
    untouched, none = derive_capped(arch, Caps(max_skip_connect=4, max_parameter_free=8))
    assert none == [] and untouched == arch.derive()


def test_perturbation_refuses_other_epochs_and_caps():
    with pytest.raises(ValueError, match=r"derive.select: 'best_val' with derive.selection: perturbation"):
        DeriveConfig(selection="perturbation", select="best_val")
    with pytest.raises(ValueError, match=r"derive.max_skip_connect: 2 with derive.selection: perturbation"):
        DeriveConfig(selection="perturbation", max_skip_connect=2)


def test_selection_from_a_search_checkpoint(tmp_path):
    """The search's own checkpoint holds the supernet DARTS-PT needs; a damaged one is refused by name."""
    from ilnas.search import CheckpointError, SearchRun
    from ilnas.search.selection import select_from_checkpoint

    tasks = [small(build_task(TASK, seed=0, val_fraction=0.5), 32)]
    cfg = SearchConfig(**{**MICRO, "eval_bn_images": 16, "batch_size": 16, "epochs": 1, "deterministic": True})
    result = SearchRun(cfg, tmp_path, tasks=tasks).run(progress=False)
    seen: list[SearchConfig] = []
    selection, epoch = select_from_checkpoint(result.checkpoint, lambda c: seen.append(c) or tasks,
                                              PerturbationSettings(tune_epochs=1))
    assert epoch == 1 and seen == [cfg] and selection.tune_steps == 1  # 2 op decisions, one interval
    assert len(selection.genotype.normal) == 2 and {d["kind"] for d in selection.decisions} == {"op"}
    damaged = tmp_path / "damaged.pt"
    data = bytearray(result.checkpoint.read_bytes())
    data[len(data) // 2] ^= 0xFF
    damaged.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="damaged.pt"):
        select_from_checkpoint(damaged, lambda c: tasks, PerturbationSettings(tune_epochs=1))


def test_derive_stage_records_the_prior(tmp_path, monkeypatch):
    """stages.derive with derive.max_skip_connect: metrics/derive.json says the cap changed the cell, and how."""
    import json

    import stages.derive

    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text("tracking: {enabled: false}\nderive: {max_skip_connect: 2}\n")
    atomic_torch_save(tmp_path / "models/search/alphas.pt", alphas_payload(skip_heavy_arch(), []))
    stages.derive.main(["--params", "params.yaml"])
    metrics = json.loads((tmp_path / "metrics/derive.json").read_text())
    assert metrics["selection"] == "magnitude" and metrics["prior_applied"] is True
    assert metrics["prior_replaced"] == ["normal: skip_connect<-0 (node 2)", "normal: skip_connect<-0 (node 3)"]
    assert metrics["skip_edges/normal"] == 2
