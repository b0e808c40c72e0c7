"""Collapse remedies in the search steps: warm-up, architecture-step budget, SDARTS-RS, beta-DARTS, config checks."""

from __future__ import annotations

import json

import pytest
import torch
from pydantic import ValidationError

import ilnas.search.strategies.interleaving as interleaving
from ilnas.data.spec import TaskConfig
from ilnas.search import SearchConfig, SearchRun, derive_genotype_from_file, run_search
from ilnas.search.remedies import ArchStepPlan
from ilnas.space.architecture import num_edges
from ilnas.space.remedies import Remedies, beta_decay_loss, random_smoothing, smoothing_epsilon

TINY = dict(channels=4, cells=3, nodes=2, batch_size=16, deterministic=True, hypergrad="first_order", eval_bn_images=16,
            val_fraction=0.2,
            tasks=[TaskConfig(name="digits_0_4", dataset="digits", classes=[0, 1, 2, 3, 4])])


def _alphas(run: SearchRun) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in run.arch.state_dict().items()}


def _weights(run: SearchRun) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in run.model.parameters()]).clone()


def test_warmup_freezes_the_alphas_bit_for_bit_while_the_weights_train(tmp_path):
    """PC-DARTS: weights only during the warm-up epochs, then architecture steps too."""
    run = SearchRun(SearchConfig(epochs=2, warmup_epochs=1, iterations_per_epoch=2, **TINY), tmp_path)
    alphas0, weights0 = _alphas(run), _weights(run)
    seen = []
    run.run(progress=False, callbacks=[lambda epoch, row: seen.append((_alphas(run), _weights(run), row))])
    (alphas1, weights1, row1), (alphas2, _, row2) = seen
    assert all(torch.equal(alphas0[k], alphas1[k]) for k in alphas0)  # frozen, bit for bit
    assert not torch.equal(weights0, weights1)  # the weights did train
    assert not torch.equal(alphas1["alphas_normal"], alphas2["alphas_normal"])
    assert (row1["arch_updated"], row1["arch_steps"], row2["arch_steps"]) == (0, 0, 2)


def test_arch_step_plan_takes_exactly_the_budget_evenly_after_the_warmup():
    plan = ArchStepPlan(warmup_epochs=1, epochs=3, iterations_per_epoch=4, budget=3)
    due = [i for i in range(12) if plan.due(i)]
    assert len(due) == 3 and due[0] >= 4  # none in the warm-up epoch
    assert max(b - a for a, b in zip([3, *due], [*due, 12])) <= 3  # spread: no gap longer than 8/3 rounded up
    every = ArchStepPlan(warmup_epochs=1, epochs=3, iterations_per_epoch=4, budget=None)
    assert [i for i in range(12) if every.due(i)] == list(range(4, 12))  # no budget: as before
    full = ArchStepPlan(warmup_epochs=1, epochs=3, iterations_per_epoch=4, budget=8)
    assert [i for i in range(12) if full.due(i)] == list(range(4, 12))  # budget = every eligible iteration
    with pytest.raises(ValueError, match=r"search.arch_steps: got 9; allowed: 1..8"):
        ArchStepPlan(warmup_epochs=1, epochs=3, iterations_per_epoch=4, budget=9)


def test_arch_steps_caps_the_steps_taken_and_reports_them(tmp_path):
    cfg = SearchConfig(epochs=2, iterations_per_epoch=3, arch_steps=2, **TINY)
    result = run_search(cfg, tmp_path, progress=False)
    assert result.metrics["arch_steps"] == 2
    assert json.loads(result.metrics_json.read_text())["arch_steps"] == 2
    assert [row["arch_steps"] for row in result.history] == [1, 2]
    # Adam counted exactly two updates of the alphas (six iterations of weight steps)
    state = torch.load(result.checkpoint, weights_only=False)["a_optimizer"]["state"]
    assert {int(s["step"]) for s in state.values()} == {2}
    assert result.metrics["iterations"] == 6


def test_a_resumed_search_keeps_counting_towards_the_budget(tmp_path):
    cfg = SearchConfig(epochs=3, iterations_per_epoch=2, arch_steps=3, **TINY)
    with pytest.raises(KeyboardInterrupt):
        SearchRun(cfg, tmp_path).run(progress=False, stop_after_epoch=0)
    result = SearchRun(cfg, tmp_path).run(progress=False)
    assert [row["arch_steps"] for row in result.history] == [1, 2, 3]
    assert result.metrics["arch_steps"] == 3


def test_an_arch_step_budget_beyond_the_search_fails_before_any_compute(tmp_path):
    with pytest.raises(ValidationError, match=r"arch_steps: got 7; allowed: 1..6"):
        SearchConfig(epochs=3, warmup_epochs=1, iterations_per_epoch=3, arch_steps=7, **TINY)
    cfg = SearchConfig(epochs=2, warmup_epochs=1, arch_steps=10_000, **TINY)  # iterations from the data
    with pytest.raises(ValueError, match=r"search.arch_steps: got 10000; allowed: 1\.\.\d+"):
        SearchRun(cfg, tmp_path)
    assert not (tmp_path / "checkpoint.pt").exists()


def test_random_smoothing_stays_on_the_simplex_within_epsilon_and_ramps_like_sdarts():
    w = torch.softmax(torch.randn(5, 8, generator=torch.Generator().manual_seed(0)), -1)
    out = random_smoothing(w, 0.1, torch.Generator().manual_seed(1))
    assert torch.allclose(out.sum(-1), torch.ones(5)) and bool((out >= 0).all())
    assert not torch.allclose(out, w)
    again = random_smoothing(w, 0.1, torch.Generator().manual_seed(1))
    assert torch.equal(out, again)  # the draw is fixed by the generator (same on every rank, after a resume)
    tiny = torch.full((1, 4), 0.25)
    spread = random_smoothing(tiny, 1.0, torch.Generator().manual_seed(3))
    assert torch.allclose(spread.sum(), torch.tensor(1.0))  # a row clamped to zeros keeps its argmax
    assert smoothing_epsilon(0.3, 0, 10) == pytest.approx(0.03)
    assert smoothing_epsilon(0.3, 5, 10) == pytest.approx(0.165)
    assert smoothing_epsilon(0.3, 10, 10) == pytest.approx(0.3)


def _recorded_arch_weights(run: SearchRun) -> list[torch.Tensor]:
    seen: list[torch.Tensor] = []
    run.model.register_forward_pre_hook(lambda module, args: seen.append(args[1]["normal"].detach().clone()))
    return seen


def test_sdarts_rs_noise_reaches_the_weight_steps_only_and_leaves_the_alphas_alone(tmp_path):
    run = SearchRun(SearchConfig(epochs=10, iterations_per_epoch=2, smoothing="random", **TINY), tmp_path)
    run.ctx.extra["epoch"] = 5
    seen = _recorded_arch_weights(run)
    before = _alphas(run)
    run.strategy.step(0, 0.025, update_arch=False)
    assert all(torch.equal(before[k], v) for k, v in _alphas(run).items())  # the alphas are never perturbed
    clean = torch.softmax(before["alphas_normal"], -1)
    (weight_step,) = seen
    assert not torch.allclose(weight_step, clean)
    assert torch.allclose(weight_step.sum(-1), torch.ones(num_edges(2)))
    assert float((weight_step - clean).abs().max()) < 2 * smoothing_epsilon(0.3, 5, 10)
    seen.clear()
    run.strategy.step(1, 0.025, update_arch=True)  # first order: the validation forward, then the weight step
    arch_step, weight_step = seen
    assert torch.equal(arch_step, clean)  # the architecture step sees the clean softmax
    assert not torch.allclose(weight_step, torch.softmax(run.arch.alphas_normal.detach(), -1))


def test_smoothing_off_hands_the_weight_steps_the_plain_weights(tmp_path):
    run = SearchRun(SearchConfig(epochs=2, iterations_per_epoch=1, **TINY), tmp_path)
    seen = _recorded_arch_weights(run)
    run.strategy.step(0, 0.025, update_arch=False)
    assert torch.equal(seen[0], torch.softmax(run.arch.alphas_normal.detach(), -1))
    assert Remedies.of(run.config).arch_loss(run.arch, 5) is None


def _hypergradient_sent_to_adam(tmp_path, monkeypatch, **over) -> list[torch.Tensor]:
    sent: list[list[torch.Tensor]] = []
    real = interleaving.apply_hypergradient

    def record(optimizer, params, grads):
        sent.append([g.detach().clone() for g in grads])
        real(optimizer, params, grads)

    monkeypatch.setattr(interleaving, "apply_hypergradient", record)
    run = SearchRun(SearchConfig(epochs=10, iterations_per_epoch=1, **TINY, **over), tmp_path)
    run.ctx.extra["epoch"] = 4
    run.strategy.step(0, 0.025, update_arch=True)
    return sent[0]


def test_beta_decay_adds_its_closed_form_gradient_to_the_hypergradient(tmp_path, monkeypatch):
    """beta-DARTS: d/d alpha_e of lambda * mean_e logsumexp(alpha_e) = lambda * softmax(alpha_e) / E."""
    plain = _hypergradient_sent_to_adam(tmp_path / "a", monkeypatch)
    decayed = _hypergradient_sent_to_adam(tmp_path / "b", monkeypatch, beta_decay=50.0)
    run = SearchRun(SearchConfig(epochs=10, iterations_per_epoch=1, **TINY), tmp_path / "c")  # same seed: same alphas
    lam = 50.0 * 4 / 10  # the linear ramp at epoch 4 of 10 (Beta-DARTS architect.py:81)
    edges = 2 * num_edges(2)
    for got, base, alpha in zip(decayed, plain, [run.arch.alphas_normal, run.arch.alphas_reduce], strict=True):
        closed_form = lam * torch.softmax(alpha.detach(), -1) / edges
        assert torch.allclose(got - base, closed_form, atol=1e-7)
    alphas = [torch.randn(3, 4, requires_grad=True)]
    (g,) = torch.autograd.grad(beta_decay_loss(alphas), alphas)
    assert torch.allclose(g, torch.softmax(alphas[0].detach(), -1) / 3)


def test_zero_one_loss_enters_the_architecture_gradient(tmp_path, monkeypatch):
    plain = _hypergradient_sent_to_adam(tmp_path / "a", monkeypatch, activation="sigmoid")
    pushed = _hypergradient_sent_to_adam(tmp_path / "b", monkeypatch, activation="sigmoid", zero_one_weight=10.0)
    run = SearchRun(SearchConfig(epochs=10, iterations_per_epoch=1, activation="sigmoid", **TINY), tmp_path / "c")
    for got, base, alpha in zip(pushed, plain, [run.arch.alphas_normal, run.arch.alphas_reduce], strict=True):
        s = torch.sigmoid(alpha.detach())
        n = 2 * alpha.numel()
        closed_form = 10.0 * -2 * (s - 0.5) / n * s * (1 - s)
        assert torch.allclose(got - base, closed_form, atol=1e-8)


def test_darts_minus_skip_weight_is_set_per_epoch_and_recorded(tmp_path):
    cfg = SearchConfig(epochs=3, iterations_per_epoch=1, aux_skip="linear", **TINY)
    result = run_search(cfg, tmp_path, progress=False)
    assert [row["aux_skip_rate"] for row in result.history] == pytest.approx([1.0, 2 / 3, 1 / 3])
    assert derive_genotype_from_file(result.alphas) == result.genotype


def test_edge_normalization_alone_searches_betas_and_derives_with_them(tmp_path):
    cfg = SearchConfig(epochs=1, iterations_per_epoch=2, edge_normalization=True, **TINY)
    run = SearchRun(cfg, tmp_path)
    assert cfg.partial_channels == 1 and hasattr(run.arch, "betas_normal")
    betas0 = run.arch.betas_normal.detach().clone()
    result = run.run(progress=False)
    assert not torch.equal(betas0, run.arch.betas_normal.detach())  # the architecture step moved them
    assert derive_genotype_from_file(result.alphas) == result.genotype
    assert not hasattr(SearchRun(SearchConfig(**TINY), tmp_path / "off").arch, "betas_normal")


def test_a_searched_subset_derives_only_its_ops(tmp_path):
    cfg = SearchConfig(epochs=1, iterations_per_epoch=1, primitives=["none", "skip_connect", "sep_conv_3x3"],
                       **TINY)
    result = run_search(cfg, tmp_path, progress=False)
    ops = {op for op, _ in result.genotype.normal + result.genotype.reduce}
    assert ops <= {"skip_connect", "sep_conv_3x3"}
    assert result.genotype.primitives == ("none", "skip_connect", "sep_conv_3x3")
    assert derive_genotype_from_file(result.alphas) == result.genotype
    assert len(result.alpha_rows[0]["normal"][0]) == 3


@pytest.mark.parametrize(("over", "needles"), [
    (dict(smoothing="random", activation="sigmoid"), ["smoothing", "sigmoid", "allowed"]),
    (dict(beta_decay=1.0, strategy="lfm"), ["beta_decay", "lfm", "allowed: strategy 'interleaving'"]),
    (dict(aux_skip="exp"), ["aux_skip", "'none', 'linear' or 'cosine'"]),
    (dict(activation="tanh"), ["activation", "'softmax' or 'sigmoid'"]),
    (dict(primitives=["skip_connect", "conv_9x9"]), ["primitives", "conv_9x9", "allowed", "noise"]),
    (dict(smoothing_epsilon=0), ["smoothing_epsilon", "greater than 0"]),
    (dict(zero_one_weight=-1), ["zero_one_weight", "greater than or equal to 0"]),
])
def test_bad_remedy_settings_name_the_key_and_the_allowed_values(over, needles):
    with pytest.raises(ValidationError) as info:
        SearchConfig(**over)
    assert all(n in str(info.value) for n in needles), str(info.value)
