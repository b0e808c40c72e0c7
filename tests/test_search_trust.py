"""What a researcher must be able to trust in a search: its numbers, its derivation, its resumption."""

from __future__ import annotations

import dataclasses
import logging
import os

import pytest
import torch
from torch.utils.data import Subset

from ilnas.data.spec import TaskConfig
from ilnas.hypergrad import unroll
from ilnas.search import (
    SearchConfig,
    SearchRun,
    derive_from_alphas_file,
    derive_genotype_from_file,
    provenance,
    run_search,
)
from ilnas.search.evaluation import evaluate
from ilnas.search.strategies.base import interleaved_stages, train_stages
from ilnas.space.genotype import Genotype, collapse_counts
from ilnas.space.ops import PRIMITIVES

TINY = dict(channels=4, cells=3, nodes=2, batch_size=16, deterministic=True)


def class_sorted(dataset) -> Subset:
    labels = [int(dataset[i][1]) for i in range(len(dataset))]
    return Subset(dataset, sorted(range(len(dataset)), key=lambda i: (labels[i], i)))


def test_evaluation_ignores_validation_order_and_batch_size(tmp_path):
    run = SearchRun(SearchConfig(**TINY), tmp_path)
    for it in range(4):
        run.strategy.step(it, 0.05, update_arch=it > 1)
    shuffled = evaluate(run.model, run.arch, run.tasks, run.device, batch_size=64, bn_images=128, bn_batch_size=16)
    sorted_tasks = [dataclasses.replace(t, val=class_sorted(t.val)) for t in run.tasks]
    by_class = evaluate(run.model, run.arch, sorted_tasks, run.device, batch_size=64, bn_images=128,
                        bn_batch_size=16)
    small = evaluate(run.model, run.arch, sorted_tasks, run.device, batch_size=7, bn_images=128, bn_batch_size=16)
    assert set(shuffled) >= {"val_loss_mean", "val_acc_mean", "val_loss/digits_0_4", "val_acc/digits_5_9"}
    for key, value in shuffled.items():
        assert by_class[key] == pytest.approx(value, rel=1e-5, abs=1e-6), key
        assert small[key] == pytest.approx(value, rel=1e-5, abs=1e-6), key
    # and evaluating moved nothing: the supernet's own running statistics, momenta and mode are as they were
    norms = [m for m in run.model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    momenta = [m.momentum for m in norms]
    before = {k: v.clone() for k, v in run.model.state_dict().items()}
    evaluate(run.model, run.arch, run.tasks, run.device, batch_size=32, bn_images=64)
    assert all(torch.equal(before[k], v) for k, v in run.model.state_dict().items())
    assert run.model.training and [m.momentum for m in norms] == momenta
    # also when the evaluation fails half-way
    broken = [dataclasses.replace(run.tasks[0], val=[("not an image", 0)])]
    with pytest.raises(AttributeError):  # a batch of strings has no .to(): the loop stops half-way
        evaluate(run.model, run.arch, broken, run.device, batch_size=32, bn_images=64)
    assert all(torch.equal(before[k], v) for k, v in run.model.state_dict().items())
    assert run.model.training and [m.momentum for m in norms] == momenta


def test_headline_is_a_mean_over_tasks(tmp_path):
    run = SearchRun(SearchConfig(**TINY), tmp_path)
    m = run.evaluate()
    assert m["val_loss_mean"] == pytest.approx((m["val_loss/digits_0_4"] + m["val_loss/digits_5_9"]) / 2)
    assert "val_loss_sum" not in m


@pytest.mark.parametrize("nodes,multiplier", [(3, 2), (2, 1)])
def test_derivation_concatenates_what_the_search_cell_concatenated(tmp_path, nodes, multiplier):
    cfg = SearchConfig(**{**TINY, "nodes": nodes}, multiplier=multiplier, epochs=1, iterations_per_epoch=1,
                       hypergrad="first_order")
    result = run_search(cfg, tmp_path, progress=False)
    expected = tuple(range(2 + nodes - multiplier, 2 + nodes))
    assert result.genotype.normal_concat == expected and result.genotype.reduce_concat == expected
    assert torch.load(result.alphas, weights_only=True)["multiplier"] == multiplier
    assert derive_genotype_from_file(result.alphas).normal_concat == expected
    cell = SearchRun(cfg, tmp_path / "again").model.encoder.cells[0]
    assert cell.multiplier == multiplier


def test_defaults_are_the_published_reading():
    cfg = SearchConfig()
    assert (cfg.val_on, cfg.optimizer_state) == ("own", "per_model")


@pytest.mark.parametrize("state", ["per_model", "shared"])
def test_virtual_steps_imitate_the_real_optimizer_state(tmp_path, state):
    """Unrolled (virtual) steps from the runner's optimizer state land exactly where the real steps land."""
    cfg = SearchConfig(**TINY, optimizer_state=state, grad_clip=1e9, rounds=2)
    run = SearchRun(cfg, tmp_path)
    lr = run.schedulers[0].get_last_lr()[0]  # the rate the real optimizers step with
    run.strategy.step(0, lr, update_arch=False)  # fill every momentum buffer
    run.strategy.step(1, lr, update_arch=False)
    assert len(run.w_optimizers) == (2 if state == "per_model" else 1)
    stages = interleaved_stages(run.ctx, lr)
    from ilnas.hypergrad import SupernetProblem

    params = {n: p.detach().clone() for n, p in run.model.named_parameters()}
    problem = SupernetProblem(run.model, run.arch)
    virtual, _, _ = unroll(problem, params, stages, run.ctx.inner_hparams())
    # one momentum buffer for all models: what the virtual steps did before per-model state existed
    one_state, _, _ = unroll(problem, params, stages, run.ctx.inner_hparams(optimizer=run.w_optimizers[0]))
    with torch.no_grad():
        weights = {k: v.detach() for k, v in run.arch().items()}
    train_stages(run.ctx, stages, weights, 2)
    for name, p in run.model.named_parameters():
        assert torch.allclose(virtual[name], p, rtol=1e-5, atol=1e-6), name
    stem = run.model.encoder.stem[0].weight
    assert torch.allclose(one_state["encoder.stem.0.weight"], stem, rtol=1e-5, atol=1e-6) == (state == "shared")


def test_per_model_state_keeps_one_encoder_momentum_per_model(tmp_path):
    run = SearchRun(SearchConfig(**TINY), tmp_path)
    run.strategy.step(0, 0.05, update_arch=False)
    p = next(iter(run.model.encoder.parameters()))
    b0, b1 = (opt.state[p]["momentum_buffer"] for opt in run.w_optimizers)
    assert not torch.equal(b0, b1)


def test_collapse_counts_respect_strided_skips():
    g = Genotype(normal=(("skip_connect", 0), ("max_pool_3x3", 1), ("sep_conv_3x3", 0), ("skip_connect", 2)),
                 normal_concat=(2, 3),
                 reduce=(("skip_connect", 0), ("avg_pool_3x3", 1), ("skip_connect", 2), ("dil_conv_3x3", 1)),
                 reduce_concat=(2, 3))
    assert collapse_counts(g) == {"param_free_edges/normal": 3, "skip_edges/normal": 2,
                                  "param_free_edges/reduce": 2, "skip_edges/reduce": 1}


def test_history_carries_collapse_counts_and_derive_can_pick_the_best_epoch(tmp_path):
    cfg = SearchConfig(**TINY, epochs=3, iterations_per_epoch=1, hypergrad="first_order", a_lr=0.3)
    result = run_search(cfg, tmp_path, progress=False)
    assert [row["epoch"] for row in result.history] == [1, 2, 3]
    for row in result.history:
        assert {"param_free_edges/normal", "skip_edges/normal", "param_free_edges/reduce",
                "skip_edges/reduce"} <= set(row)
    state = torch.load(result.alphas, weights_only=True)
    assert [s["epoch"] for s in state["snapshots"]] == [1, 2, 3]
    best = min(result.history, key=lambda r: (r["val_loss_mean"], r["epoch"]))
    picked = derive_from_alphas_file(result.alphas, "best_val")
    assert (picked.epoch, picked.val_loss_mean) == (best["epoch"], pytest.approx(best["val_loss_mean"]))
    # exact: the genotype derived from that epoch's own alphas
    snap = state["snapshots"][best["epoch"] - 1]
    from ilnas.space.genotype import derive_genotype

    expected = derive_genotype(snap["alphas_normal"], snap["alphas_reduce"], steps=2, multiplier=2)
    assert picked.genotype == expected
    assert derive_from_alphas_file(result.alphas, "last").genotype == result.genotype
    with pytest.raises(ValueError, match="derive.select.*best_val"):
        derive_from_alphas_file(result.alphas, "worst")


def test_early_stop_on_skip_count(tmp_path):
    cfg = SearchConfig(**TINY, epochs=4, iterations_per_epoch=1, hypergrad="first_order", early_stop_skips=2,
                       a_lr=1e-6)
    run = SearchRun(cfg, tmp_path)
    with torch.no_grad():  # a collapsed start: every normal edge prefers skip_connect
        run.arch.alphas_normal[:, PRIMITIVES.index("skip_connect")] = 5.0
    result = run.run(progress=False)
    assert result.metrics["stopped_early_epoch"] == 1 and len(result.history) == 1
    assert result.history[-1]["skip_edges/normal"] >= 2
    # off by default: the same start runs every epoch
    assert SearchConfig().early_stop_skips is None


def test_checkpoint_of_other_code_is_set_aside_not_resumed(tmp_path, monkeypatch, caplog):
    cfg = SearchConfig(**TINY, epochs=2, iterations_per_epoch=1, hypergrad="first_order")
    with pytest.raises(KeyboardInterrupt):
        SearchRun(cfg, tmp_path).run(progress=False, stop_after_epoch=0)
    old = provenance.code_version()
    monkeypatch.setattr(provenance, "code_version", lambda: "0123456789ab")
    run = SearchRun(cfg, tmp_path)
    with caplog.at_level(logging.WARNING, logger="ilnas.search"):
        result = run.run(progress=False)
    assert run.start_epoch == 0 and len(result.history) == 2
    aside = tmp_path / f"checkpoint.stale-{old}.pt"
    assert aside.exists() and str(aside) in caplog.text
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=True)["code_version"] == "0123456789ab"


def test_code_version_covers_the_search_sources():
    assert len(provenance.code_version()) == 12
    assert set(provenance.SEARCH_PACKAGES) >= {"search", "space", "strategies", "hypergrad", "data"}


def test_resume_is_bit_identical_with_augmentation(tmp_path, monkeypatch):
    """A CIFAR-format task with random crop + flip: an interrupted and resumed search sees the same pixels."""
    from test_data import write_cifar10

    from ilnas.data import tasks as tasks_mod

    monkeypatch.setitem(tasks_mod.CIFAR_CLASSES, "cifar10", write_cifar10(tmp_path / "c10", per_batch=12))
    task = TaskConfig(name="c10", dataset="cifar10", root=str(tmp_path / "c10"))
    cfg = SearchConfig(tasks=[task], epochs=3, iterations_per_epoch=2, channels=4, cells=3, nodes=2, batch_size=8,
                       deterministic=True, hypergrad="finite_difference", eval_bn_images=16)
    full = run_search(cfg, tmp_path / "full", progress=False)
    with pytest.raises(KeyboardInterrupt):
        SearchRun(cfg, tmp_path / "cut").run(progress=False, stop_after_epoch=0)
    torch.manual_seed(12345)  # a different global RNG at restart must not matter either
    resumed = run_search(cfg, tmp_path / "cut", progress=False)
    a = torch.load(full.alphas, weights_only=True)
    b = torch.load(resumed.alphas, weights_only=True)
    for key in ("alphas_normal", "alphas_reduce"):
        assert torch.equal(a[key], b[key]), key
    assert full.history[-1]["val_loss_mean"] == resumed.history[-1]["val_loss_mean"]


def test_stream_augmentation_is_a_function_of_position(tmp_path, monkeypatch):
    from test_data import write_cifar10

    from ilnas.data import tasks as tasks_mod
    from ilnas.data.loaders import CyclingLoader
    from ilnas.data.tasks import build_task

    monkeypatch.setitem(tasks_mod.CIFAR_CLASSES, "cifar10", write_cifar10(tmp_path / "c10", per_batch=12))
    data = build_task(TaskConfig(name="c10", dataset="cifar10", root=str(tmp_path / "c10")), seed=0,
                      val_fraction=0.5)
    straight = CyclingLoader(data.train, 8, seed=3)
    batches = [straight.next()[0] for _ in range(5)]
    again = CyclingLoader(data.train, 8, seed=3)
    again.load_state_dict({"consumed": 3})
    torch.manual_seed(99)
    assert torch.equal(again.next()[0], batches[3]) and torch.equal(again.next()[0], batches[4])
    assert not torch.equal(batches[0], batches[2])  # augmentation is on: batches differ


def test_deterministic_means_it():
    from ilnas.utils.device import seeded

    previous = os.environ.get("CUBLAS_WORKSPACE_CONFIG")
    with seeded(0, deterministic=True):
        assert torch.are_deterministic_algorithms_enabled()
        assert not torch.is_deterministic_algorithms_warn_only_enabled()
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] in (":4096:8", ":16:8")
        assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
    if previous is None:
        os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)


def test_pcdarts_preset_has_pcdarts_search_settings():
    from pathlib import Path

    from ilnas.params import load_params

    s = load_params(Path(__file__).parents[1] / "configs" / "cifar_pcdarts.yaml", environment=False).search
    assert (s.partial_channels, s.batch_size, s.w_lr, s.a_lr, s.warmup_epochs) == (4, 256, 0.1, 6e-4, 15)
    assert s.channels % s.partial_channels == 0


def _imports(path, root) -> set[str]:
    """Project modules a file imports when imported (``if TYPE_CHECKING:`` blocks are annotations only; an
    ``if __name__ == "__main__":`` block runs only when the file is the program, never on import)."""
    import ast

    tree = ast.parse(path.read_text())
    guards = ("TYPE_CHECKING", "__name__ == '__main__'")
    skip = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and ast.unparse(node.test) in guards
            for child in node.body for n in ast.walk(child)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return found


def test_imports_point_down_without_cycles():
    """flows -> stages -> ilnas, and no import loop among the project's modules (packages count as their
    ``__init__``, which is where a package-level loop closes)."""
    from pathlib import Path

    root = Path(__file__).parents[1]
    modules = {}
    for top in ("ilnas", "stages", "flows"):
        for path in (root / top).rglob("*.py"):
            parts = path.relative_to(root).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            modules[name] = path
    graph = {}
    for name, path in modules.items():
        deps = set()
        for imported in _imports(path, root):
            # `import a.b.c` runs a/__init__, a/b/__init__ and a/b/c: every prefix that is a project module
            pieces = imported.split(".")
            deps.update(".".join(pieces[:i]) for i in range(1, len(pieces) + 1) if ".".join(pieces[:i]) in modules)
        deps.discard(name)
        graph[name] = {d for d in deps if not name.startswith(d + ".")}  # a module's own parent packages
    rank = {"flows": 2, "stages": 1, "ilnas": 0}
    upward = [(a, b) for a, deps in graph.items() for b in deps if rank[b.split(".")[0]] > rank[a.split(".")[0]]]
    assert not upward, f"imports pointing up: {upward}"
    # Tarjan's strongly connected components: any component with more than one module is a loop
    index, low, stack, on, loops, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                loops.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    assert not loops, f"import loops: {loops}"
