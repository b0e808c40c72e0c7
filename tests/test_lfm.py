"""LFM-CW: class weights as hypers of W2's unrolled update (direction, agreement of methods, pipeline, resume)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from ilnas.data.loaders import CyclingLoader
from ilnas.data.tasks import TaskData
from ilnas.hypergrad import hypergradient
from ilnas.search import SearchConfig, SearchRun, run_search
from ilnas.search.strategies.base import SearchContext, interleaved_stages
from ilnas.search.strategies.lfm import ClassWeightedProblem, LearningFromMistakes
from ilnas.space.genotype import Genotype

TINY = dict(channels=4, cells=3, nodes=2, batch_size=16, deterministic=True, device="cpu")


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny CPU models: one thread is faster than two oversubscribed ones on a shared machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# -- a smooth toy "supernet" on Gaussian blobs: the real strategy, ~20 ms a step -----------------------------


class ToyArch(nn.Module):
    def __init__(self):
        super().__init__()
        self.alphas_normal = nn.Parameter(torch.zeros(1, 2))

    def forward(self) -> dict[str, torch.Tensor]:
        return {"normal": torch.softmax(self.alphas_normal, -1)}


class ToyNet(nn.Module):
    """Two smooth candidate ops mixed by the architecture, one head per task: Supernet's interface."""

    def __init__(self, d: int, h: int, num_classes: list[int]):
        super().__init__()
        self.encoder = nn.ModuleList([nn.Linear(d, h), nn.Linear(d, h)])
        self.heads = nn.ModuleList(nn.Linear(h, n) for n in num_classes)

    def forward(self, x: torch.Tensor, arch_weights: dict[str, torch.Tensor], task: int = 0) -> torch.Tensor:
        w = arch_weights["normal"][0]
        return self.heads[task](w[0] * torch.tanh(self.encoder[0](x)) + w[1] * torch.sin(self.encoder[1](x)))

    def encoder_names(self) -> list[str]:
        return [n for n, _ in self.named_parameters() if n.startswith("encoder.")]

    def head_names(self, k: int) -> list[str]:
        return [n for n, _ in self.named_parameters() if n.startswith(f"heads.{k}.")]


def blobs(hard: int, kind: str, seed: int, train: bool, n: int = 100, d: int = 6) -> TensorDataset:
    """4 well-separated classes; class ``hard`` is ``rare``: 1/8 of the training data, a full share of val."""
    g = torch.Generator().manual_seed(seed)
    xs, ys = [], []
    for c in range(4):
        m = n // 8 if (kind == "rare" and c == hard and train) else n
        xs.append(3.0 * torch.eye(4, d)[c] + 0.3 * torch.randn(m, d, generator=g))
        ys.append(torch.full((m,), c))
    return TensorDataset(torch.cat(xs), torch.cat(ys))


def toy_strategy(hard: int, kind: str, method: str = "finite_difference", seed: int = 0,
                 **lfm) -> LearningFromMistakes:
    torch.manual_seed(seed)
    cfg = SearchConfig(strategy="lfm", hypergrad=method, batch_size=64, device="cpu", a_betas=(0.9, 0.999),
                       lfm={"class_weight_init": "uniform", "class_weight_lr": 0.05, **lfm})
    train, val = blobs(hard, kind, 2 * seed + 1, True), blobs(hard, kind, 2 * seed + 2, False)
    model, arch = ToyNet(6, 16, [4]), ToyArch()
    ctx = SearchContext(config=cfg, model=model, arch=arch,
                        w_optimizer=torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=3e-4),
                        task_names=["toy"], num_classes=[4],
                        train_streams=[CyclingLoader(train, 64, seed=0)], val_streams=[CyclingLoader(val, 64, seed=1)],
                        device=torch.device("cpu"),
                        extra={"tasks": [TaskData("toy", train, val, val, 4, 1, 1, list("abcd"))]})
    strategy = LearningFromMistakes(ctx)
    ctx.a_optimizer = torch.optim.Adam(strategy.hyper_parameters(), lr=3e-3)
    return strategy


def search(strategy: LearningFromMistakes, warmup: int = 30, steps: int = 40) -> list[float]:
    for i in range(warmup):
        strategy.step(i, 0.05, update_arch=False)
    for i in range(steps):
        strategy.step(warmup + i, 0.05, update_arch=True)
    return strategy.class_weights.table()[0]


@pytest.mark.parametrize(("method", "hard", "seed"), [("finite_difference", 1, 0), ("exact", 3, 1),
                                                      ("first_order", 0, 2)])
def test_learned_weights_move_toward_the_class_w1_gets_wrong(method, hard, seed):
    """A class with 1/8 of the training data (high val error, fixable by more weight) ends with the largest weight.

    Uniform start. Measured on 16 (seed, class) draws: 16/16, margin to the next class 2.1-2.8. (Label noise and
    plain overlap gave no consistent direction on this toy: more weight cannot fix those mistakes.)
    """
    c = search(toy_strategy(hard, "rare", method, seed))
    others = max(w for k, w in enumerate(c) if k != hard)
    assert c[hard] > others + 1.0, c
    assert sum(c) == pytest.approx(4.0)


def test_val_error_init_starts_from_w1_mistakes():
    """At the first architecture update (after warmup) c is set once from W1's per-class val error."""
    strategy = toy_strategy(2, "rare", class_weight_init="val_error")
    for i in range(5):
        strategy.step(i, 0.05, update_arch=False)
    assert strategy.class_weights.table()[0] == [1.0, 1.0, 1.0, 1.0] and not strategy.initialized
    strategy.init_from_val_error()
    first = strategy.class_weights.table()[0]
    x, y = strategy.ctx.extra["tasks"][0].val.tensors
    with torch.no_grad():
        pred = strategy.ctx.model(x, strategy.ctx.arch(), 0).argmax(1)
    err = torch.stack([(pred[y == k] != k).float().mean() for k in range(4)]) + 0.05
    assert first == pytest.approx((4 * err / err.sum()).tolist(), rel=1e-5)
    assert max(range(4), key=first.__getitem__) == 2, first
    strategy.class_weights.logits[0].data.zero_()
    strategy.initialized = False
    strategy.step(5, 0.05, update_arch=True)  # the step itself initializes (once), then takes one Adam step
    assert strategy.initialized
    assert strategy.class_weights.table()[0] == pytest.approx(first, abs=0.1)
    strategy.step(6, 0.05, update_arch=True)
    assert strategy.class_weights.table()[0] == pytest.approx(first, abs=0.2)


def test_first_order_can_freeze_the_class_weights():
    strategy = toy_strategy(1, "rare", "first_order", first_order_class_weights="frozen")
    alphas = strategy.ctx.arch.alphas_normal.detach().clone()
    assert search(strategy, warmup=2, steps=3) == [1.0, 1.0, 1.0, 1.0]
    assert not torch.equal(alphas, strategy.ctx.arch.alphas_normal)


# -- the real supernet ----------------------------------------------------------------------------------------


def flat(tensors) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


def test_class_weight_hypergradient_agrees_with_exact_on_a_supernet(tmp_path):
    """float64, small central-difference step (ReLU kinks): finite differences through W2 match autograd for c."""
    run = SearchRun(SearchConfig(strategy="lfm", inner_steps=2, lam=0.1, **TINY), tmp_path)
    strategy: LearningFromMistakes = run.strategy
    strategy.step(0, 0.025, update_arch=False)  # momentum buffers of W2
    w2, cw = strategy.w2.double(), strategy.class_weights.double()
    run.arch.double()
    with torch.no_grad():
        for logits in cw.logits:
            logits.copy_(torch.linspace(-0.5, 0.5, len(logits)))
    stages = interleaved_stages(run.ctx, 0.025, w2)
    for stage in stages:
        stage.batches = [(x.double(), y) for x, y in stage.batches]
    val = [(x.double(), y) for x, y in (run.ctx.batch(s) for s in run.ctx.val_streams)]
    hp = run.ctx.inner_hparams(w2, strategy.w2_optimizer)
    hp.momentum_buffers = {k: v.double() for k, v in hp.momentum_buffers.items()}
    arch_p, c_p = list(run.arch.parameters()), list(cw.parameters())
    params = dict(w2.named_parameters())
    g = {m: hypergradient(m, ClassWeightedProblem(w2, run.arch, cw, arch_p + c_p), params, stages, val, hp,
                          fd_eps=1e-6).grads
         for m in ("finite_difference", "exact", "first_order")}
    c_fd, c_exact = flat(g["finite_difference"][len(arch_p):]), flat(g["exact"][len(arch_p):])
    assert c_exact.abs().max() > 0
    assert float(flat(g["first_order"][len(arch_p):]).abs().max()) == 0.0  # W2 constant: no gradient for c
    assert nn.functional.cosine_similarity(c_fd, c_exact, dim=0) > 0.99
    a_fd, a_exact = flat(g["finite_difference"][: len(arch_p)]), flat(g["exact"][: len(arch_p)])
    assert nn.functional.cosine_similarity(a_fd, a_exact, dim=0) > 0.99
    # c as the only hyper (what first_order + finite_difference class weights runs) gives the same c-gradient
    only_c = hypergradient("finite_difference", ClassWeightedProblem(w2, run.arch, cw, c_p), params, stages, val, hp,
                           fd_eps=1e-6).grads
    assert torch.allclose(flat(only_c), c_fd, rtol=1e-6, atol=1e-12)


def test_val_error_init_does_not_read_stale_running_statistics(tmp_path):
    """The class-weight start is measured like the search evaluation: BatchNorm recalibrated for the current
    architecture, so W1's running statistics (accumulated under earlier mixing weights) change nothing and
    are left exactly as they were."""
    run = SearchRun(SearchConfig(strategy="lfm", lfm={"class_weight_init": "val_error"}, **TINY), tmp_path)
    strategy: LearningFromMistakes = run.strategy
    for i in range(3):
        strategy.step(i, 0.05, update_arch=False)
    strategy.init_from_val_error()
    clean = strategy.class_weights.table()
    with torch.no_grad():  # statistics no architecture ever produced: eval mode on them is garbage
        for m in run.model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.fill_(50.0)
                m.running_var.fill_(1e-4)
    stale = {k: v.clone() for k, v in run.model.state_dict().items()}
    strategy.init_from_val_error()
    assert strategy.class_weights.table() == clean
    assert all(torch.equal(stale[k], v) for k, v in run.model.state_dict().items()) and run.model.training


DIGITS = dict(epochs=2, iterations_per_epoch=2, val_fraction=0.25, **TINY)


def test_lfm_search_on_digits_writes_a_genotype_and_a_class_weight_history(tmp_path):
    from ilnas.viz import plot_alpha_history, plot_class_weights

    result = run_search(SearchConfig(strategy="lfm", **DIGITS), tmp_path, progress=False)
    assert Genotype.from_json(result.genotype_json) == result.genotype
    rows = json.loads(result.alpha_history.read_text())
    assert [sorted(r["class_weights"]) for r in rows] == [["digits_0_4", "digits_5_9"]] * 2
    assert all(sum(w) == pytest.approx(5.0) for r in rows for w in r["class_weights"].values())
    assert rows[0]["class_weights"] != rows[1]["class_weights"]  # val-error init, then learned
    assert plot_class_weights(rows, tmp_path / "cw.png").stat().st_size > 0
    assert plot_alpha_history(rows, tmp_path / "alphas.png").stat().st_size > 0  # the extra key is no obstacle
    assert {"w2_train_loss/digits_0_4", "arch_val_loss/digits_5_9"} <= set(result.history[-1])


def test_lfm_search_with_the_generator_resumes_exactly(tmp_path):
    """W2, c, their optimizers and the generator (with its own RNG) come back: the resumed run ends identically."""
    cfg = SearchConfig(strategy="lfm", lfm={"use_generator": True, "synthetic_per_batch": 8}, **DIGITS)
    full = run_search(cfg, tmp_path / "full", progress=False)
    assert "generator_loss" in full.history[-1]
    rows = json.loads(full.alpha_history.read_text())
    with pytest.raises(KeyboardInterrupt):
        SearchRun(cfg, tmp_path / "cut").run(progress=False, stop_after_epoch=0)
    resumed = SearchRun(cfg, tmp_path / "cut")
    resumed.load(resumed.checkpoint_path)
    saved = torch.load(resumed.checkpoint_path, weights_only=True)["strategy"]
    for k, v in resumed.strategy.w2.state_dict().items():  # W2 and the class weights are restored
        assert torch.equal(v, saved["w2"][k]), k
    assert resumed.strategy.class_weights.table() == [rows[0]["class_weights"][t] for t in ("digits_0_4", "digits_5_9")]
    assert resumed.strategy.initialized
    result = SearchRun(cfg, tmp_path / "cut").run(progress=False)
    a = torch.load(full.alphas, weights_only=True)
    b = torch.load(result.alphas, weights_only=True)
    for key in ("alphas_normal", "alphas_reduce"):
        assert torch.equal(a[key], b[key]), key
    assert json.loads(result.alpha_history.read_text())[-1]["class_weights"] == rows[-1]["class_weights"]
    assert full.history[-1]["val_loss_mean"] == result.history[-1]["val_loss_mean"]
