"""The interleaved search on a tiny supernet: DARTS equivalence, method agreement, isolation, resume, failures."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from ilnas.data.loaders import CyclingLoader
from ilnas.data.spec import TaskConfig
from ilnas.hypergrad import SupernetProblem, hypergradient
from ilnas.search import CheckpointError, SearchConfig, SearchRun, derive_genotype_from_file, run_search
from ilnas.search.runner import assert_disjoint
from ilnas.search.strategies.base import SearchDivergedError, interleaved_stages
from ilnas.space.genotype import Genotype

TINY = dict(channels=4, cells=3, nodes=2, batch_size=16, deterministic=True)


def one_task() -> list[TaskConfig]:
    return [TaskConfig(name="digits_0_4", dataset="digits", classes=[0, 1, 2, 3, 4])]


def fork(stream: CyclingLoader) -> CyclingLoader:
    twin = CyclingLoader(stream.dataset, stream.batch_size, stream.seed, stream.shuffle)
    twin.load_state_dict(stream.state_dict())
    return twin


def flat(tensors) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


@pytest.mark.parametrize("order", ["first_order", "finite_difference"])
def test_k1_step_is_a_plain_darts_step(tmp_path, order):
    """K=1, R=1, lam=0: one search iteration equals DARTS' architect step + weight step, written out here."""
    run = SearchRun(SearchConfig(tasks=one_task(), hypergrad=order, **TINY), tmp_path)
    run.strategy.step(0, 0.025, update_arch=False)  # fill the SGD momentum buffers first
    model, arch, lr = copy.deepcopy(run.model), copy.deepcopy(run.arch), 0.02
    for g in run.w_optimizer.param_groups:
        g["lr"] = lr
    w_opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=3e-4)
    w_opt.load_state_dict(copy.deepcopy(run.w_optimizer.state_dict()))
    a_opt = torch.optim.Adam(arch.parameters(), lr=3e-4, betas=(0.5, 0.999), weight_decay=1e-3)
    train_stream, val_stream = fork(run.ctx.train_streams[0]), fork(run.ctx.val_streams[0])
    run.strategy.step(1, lr, update_arch=True)

    xt, yt = train_stream.next()
    xv, yv = val_stream.next()
    ce = nn.functional.cross_entropy
    params = list(model.parameters())
    # DARTS' Architect: virtual step w' = w - lr (mu buf + dL/dw + wd w)
    grads = torch.autograd.grad(ce(model(xt, arch(), 0), yt), params)
    unrolled = copy.deepcopy(model)
    with torch.no_grad():
        for p_u, p, g in zip(unrolled.parameters(), params, grads):
            buf = w_opt.state[p]["momentum_buffer"]
            p_u.copy_(p - lr * (0.9 * buf + g + 3e-4 * p))
    if order == "first_order":
        d_alpha = torch.autograd.grad(ce(model(xv, arch(), 0), yv), list(arch.parameters()))
    else:
        val_loss = ce(unrolled(xv, arch(), 0), yv)
        d_alpha = torch.autograd.grad(val_loss, list(arch.parameters()), retain_graph=True)
        v = torch.autograd.grad(val_loss, list(unrolled.parameters()))
        eps = 0.01 / flat(v).norm()
        sides = []
        for sign in (1, -1):
            shifted = copy.deepcopy(model)
            with torch.no_grad():
                for p_s, vi in zip(shifted.parameters(), v):
                    p_s.add_(sign * eps * vi)
            sides.append(torch.autograd.grad(ce(shifted(xt, arch(), 0), yt), list(arch.parameters())))
        d_alpha = [da - lr * (gp - gm) / (2 * eps) for da, gp, gm in zip(d_alpha, *sides)]
    a_opt.zero_grad()
    for p, g in zip(arch.parameters(), d_alpha):
        p.grad = g
    a_opt.step()
    # then DARTS' weight step with the new alphas, gradient clipping at 5
    w_opt.zero_grad()
    ce(model(xt, {k: v.detach() for k, v in arch().items()}, 0), yt).backward()
    nn.utils.clip_grad_norm_(model.parameters(), 5.0)
    w_opt.step()

    for (name, a), b in zip(run.arch.named_parameters(), arch.parameters()):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-7), name
    assert torch.allclose(flat(run.model.parameters()), flat(model.parameters()), rtol=1e-4, atol=1e-6)


def test_finite_difference_agrees_with_exact_on_a_supernet(tmp_path):
    """K=2, T=2, lam>0, both val_on modes. In float64 with a small central-difference step the two chains agree.

    (At DARTS' eps = 0.01/||u|| the differences also straddle ReLU/max-pool kinks that autograd ignores,
    so on a net this tiny they differ by that smoothing: measured cosine 0.95-0.98, 0.99+ on larger batches.)
    """
    cfg = SearchConfig(inner_steps=2, lam=0.1, **TINY)
    run = SearchRun(cfg, tmp_path)
    run.strategy.step(0, 0.025, update_arch=False)
    stages = interleaved_stages(run.ctx, 0.025)
    val = [(x.double(), y) for x, y in (run.ctx.batch(s) for s in run.ctx.val_streams)]
    for stage in stages:
        stage.batches = [(x.double(), y) for x, y in stage.batches]
    run.model.double()
    run.arch.double()
    hp = run.ctx.inner_hparams()
    hp.momentum_buffers = {k: v.double() for k, v in hp.momentum_buffers.items()}
    params = dict(run.model.named_parameters())
    for val_on in ("final", "own"):
        g = {m: flat(hypergradient(m, SupernetProblem(run.model, run.arch), params, stages, val, hp, val_on,
                                   fd_eps=1e-6).grads)
             for m in ("finite_difference", "exact", "first_order")}
        cos = torch.nn.functional.cosine_similarity(g["finite_difference"], g["exact"], dim=0)
        assert cos > 0.999, (val_on, float(cos))
        # and the unrolled part itself (exact minus first order) is what agrees, not just the shared direct term
        cos_unrolled = torch.nn.functional.cosine_similarity(g["finite_difference"] - g["first_order"],
                                                             g["exact"] - g["first_order"], dim=0)
        assert cos_unrolled > 0.999, (val_on, float(cos_unrolled))


def test_hypergradients_leave_the_real_model_untouched(tmp_path):
    run = SearchRun(SearchConfig(inner_steps=2, **TINY), tmp_path)
    run.strategy.step(0, 0.025, update_arch=False)
    before = {k: v.clone() for k, v in run.model.state_dict().items()}
    stages = interleaved_stages(run.ctx, 0.025)
    val = [run.ctx.batch(s) for s in run.ctx.val_streams]
    for method in ("finite_difference", "stagewise", "exact"):
        hypergradient(method, SupernetProblem(run.model, run.arch), dict(run.model.named_parameters()), stages,
                      val, run.ctx.inner_hparams())
    after = run.model.state_dict()
    running = [k for k in before if "running_mean" in k or "running_var" in k]
    assert running, "the supernet should track BatchNorm running statistics"
    for k in before:
        assert torch.equal(before[k], after[k]), k
    # the virtual passes only suspend tracking: the next real step moves the statistics again
    norms = [m for m in run.model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert norms and all(m.track_running_stats for m in norms)
    run.strategy.step(1, 0.025, update_arch=False)
    assert not torch.equal(before[running[0]], run.model.state_dict()[running[0]])


def test_weight_and_architecture_parameters_are_disjoint(tmp_path):
    run = SearchRun(SearchConfig(**TINY), tmp_path)
    weights = {id(p) for p in run.w_optimizer.param_groups[0]["params"]}
    hypers = {id(p) for g in run.a_optimizer.param_groups for p in g["params"]}
    assert weights and hypers and not weights & hypers
    run.model.leak = run.arch.alphas_normal  # registering an alpha inside the supernet must be caught
    with pytest.raises(AssertionError, match="leaked"):
        assert_disjoint(run.model, list(run.arch.parameters()))


def test_short_search_on_digits_lowers_summed_validation_loss(tmp_path):
    cfg = SearchConfig(epochs=3, iterations_per_epoch=5, hypergrad="finite_difference", channels=4, cells=3,
                       nodes=2, batch_size=32, deterministic=True)
    result = run_search(cfg, tmp_path, progress=False)
    first, last = result.metrics["initial_val_loss_mean"], result.metrics["val_loss_mean"]
    assert last < first - 0.25, (first, last)  # an untrained supernet stays at ln 5 = 1.61
    assert isinstance(result.genotype, Genotype)
    assert Genotype.from_json(result.genotype_json) == result.genotype
    assert derive_genotype_from_file(result.alphas) == result.genotype
    assert len(result.alpha_rows) == 3 and len(result.alpha_rows[0]["normal"]) == 5
    assert result.history_csv.read_text().splitlines()[0].startswith("epoch,")


def test_resumed_search_ends_with_the_same_alphas(tmp_path):
    cfg = SearchConfig(epochs=3, iterations_per_epoch=2, rounds=2, **TINY)
    full = run_search(cfg, tmp_path / "full", progress=False)
    with pytest.raises(KeyboardInterrupt):
        SearchRun(cfg, tmp_path / "cut").run(progress=False, stop_after_epoch=0)
    resumed = SearchRun(cfg, tmp_path / "cut")
    result = resumed.run(progress=False)
    assert resumed.start_epoch == 1
    a = torch.load(full.alphas, weights_only=True)
    b = torch.load(result.alphas, weights_only=True)
    for key in ("alphas_normal", "alphas_reduce"):
        assert torch.equal(a[key], b[key]), key
    assert full.history[-1]["val_loss_mean"] == result.history[-1]["val_loss_mean"]


def test_nan_loss_names_iteration_and_task_and_keeps_last_checkpoint(tmp_path):
    cfg = SearchConfig(epochs=2, iterations_per_epoch=1, **TINY)
    run = SearchRun(cfg, tmp_path)

    def poison(epoch, row):
        with torch.no_grad():
            run.model.heads[0].weight.fill_(float("nan"))

    with pytest.raises(SearchDivergedError, match=r"iteration 1.*digits_0_4"):
        run.run(progress=False, callbacks=[poison])
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert state["epoch"] == 0
    assert torch.isfinite(state["model"]["heads.0.weight"]).all()


def test_corrupt_or_mismatched_checkpoint_names_the_file(tmp_path):
    cfg = SearchConfig(epochs=1, iterations_per_epoch=1, **TINY)
    (tmp_path / "checkpoint.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="checkpoint.pt.*(corrupt|damaged)"):
        run_search(cfg, tmp_path, progress=False)
    (tmp_path / "checkpoint.pt").unlink()
    run_search(cfg, tmp_path, progress=False)
    with pytest.raises(CheckpointError, match=r"checkpoint.pt.*differs in \['channels'\]"):
        run_search(cfg.model_copy(update={"channels": 6}), tmp_path, progress=False)
    (tmp_path / "alphas.pt").write_bytes(b"\x00\x01")
    with pytest.raises(CheckpointError, match="alphas.pt"):
        derive_genotype_from_file(tmp_path / "alphas.pt")


def test_partial_channel_supernet_searches(tmp_path):
    cfg = SearchConfig(epochs=1, iterations_per_epoch=1, partial_channels=2, hypergrad="exact", **TINY)
    result = run_search(cfg, tmp_path, progress=False)
    state = torch.load(result.alphas, weights_only=True)
    assert "betas_normal" in state and state["betas_normal"].grad is None
    assert result.genotype.steps == 2


def test_cli_search_writes_genotype_and_rejects_bad_values(tmp_path):
    from typer.testing import CliRunner

    from ilnas.cli import app

    runner = CliRunner()
    bad = runner.invoke(app, ["search", "--set", "hypergrad=second", "--out", str(tmp_path)])
    assert bad.exit_code != 0 and "search.hypergrad" in bad.output and "finite_difference" in bad.output
    sets = ["epochs=1", "iterations_per_epoch=1", "channels=4", "cells=3", "nodes=2", "batch_size=16"]
    ok = runner.invoke(app, ["search", "--out", str(tmp_path)] + [a for s in sets for a in ("--set", s)])
    assert ok.exit_code == 0, ok.output
    assert Genotype.from_json(tmp_path / "genotype.json").steps == 2
    assert {p.name for p in (tmp_path / "figures").iterdir()} >= {"normal.png", "reduce.png", "alpha_history.png"}
