"""LeRaC: per-depth rates highest at the input, log-linear rise, all at the base rate at epoch k."""

from __future__ import annotations

import csv
import math

import pytest
import timm

import ilnas.nets  # noqa: F401
from ilnas.data.spec import TaskConfig
from ilnas.space.genotype import DARTS_V2
from ilnas.train import LeRaCConfig, RetrainConfig, retrain
from ilnas.train.lerac import GROUP_KEY, lerac_initial_lr, lerac_lr
from ilnas.train.optim import build_optimizer

LR, RATIO, K = 0.1, 1e-5, 5


def test_formula_endpoints_and_order():
    n = 6
    assert lerac_initial_lr(LR, 0, n, RATIO) == pytest.approx(LR)  # input: the base rate
    assert lerac_initial_lr(LR, n - 1, n, RATIO) == pytest.approx(LR * RATIO)  # classifier: lr * min_ratio
    for t in range(K):
        rates = [lerac_lr(LR, j, n, t, RATIO, K) for j in range(n)]
        assert rates == sorted(rates, reverse=True) and rates[0] == pytest.approx(LR)  # highest at the input
        for j, r in enumerate(rates):
            lr0 = LR * RATIO ** (j / (n - 1))
            assert r == pytest.approx(lr0 * (LR / lr0) ** (t / K), rel=1e-12)
    # log-linear: equal ratios between consecutive epochs
    j = n - 1
    steps = [math.log(lerac_lr(LR, j, n, t + 1, RATIO, K) / lerac_lr(LR, j, n, t, RATIO, K)) for t in range(K)]
    assert steps == pytest.approx([steps[0]] * K)
    assert all(lerac_lr(LR, j, n, K, RATIO, K) == pytest.approx(LR) for j in range(n))


def test_optimizer_groups_follow_the_curriculum_then_the_scheduler():
    lerac = LeRaCConfig(enabled=True, min_ratio=RATIO, epochs=K)
    cfg = RetrainConfig(lr=LR, epochs=10, channels=4, cells=3, lerac=lerac)
    model = timm.create_model("ilnas_cifar", genotype=DARTS_V2, num_classes=3, channels=4, cells=3, auxiliary=False)
    optimizer, scheduler = build_optimizer(model, cfg, cfg.lerac)
    n = 1 + max(g[GROUP_KEY] for g in optimizer.param_groups)
    assert n == 3 + 2  # stem, 3 cells, classifier
    # every parameter sits in exactly one group
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(list(model.parameters()))
    stem_ids = {id(p) for p in model.stem.parameters()}
    head_ids = {id(p) for p in model.classifier.parameters()}
    for t in range(K + 3):
        scheduler.step(t)
        for g in optimizer.param_groups:
            j = g[GROUP_KEY]
            if t <= K:
                assert g["lr"] == pytest.approx(lerac_lr(LR, j, n, t, RATIO, K))
            if ids := {id(p) for p in g["params"]}:
                if ids & stem_ids:
                    assert j == 0
                if ids & head_ids:
                    assert j == n - 1
        if t == K:  # the curriculum hands over to the normal schedule at the base rate, no jump
            assert all(g["lr"] == pytest.approx(LR) for g in optimizer.param_groups)
        if t > K:  # cosine decay after the curriculum, same rate for every group
            rates = {round(g["lr"], 12) for g in optimizer.param_groups}
            assert len(rates) == 1 and rates.pop() < LR


def test_retrain_logs_each_group_rate(tmp_path):
    cfg = RetrainConfig(channels=4, cells=3, epochs=2, batch_size=96, lr=LR, device="cpu",
                        task=TaskConfig(name="d3", dataset="digits", classes=[0, 1, 2]),
                        lerac=LeRaCConfig(enabled=True, min_ratio=RATIO, epochs=K))
    result = retrain(cfg, DARTS_V2, tmp_path)
    rows = list(csv.DictReader(result.history_csv.open()))
    n = 5
    for row in rows:
        t = int(row["epoch"]) - 1  # rows count epochs from 1; the schedule from 0
        logged = [float(row[f"lr_g{j}"]) for j in range(n)]
        assert logged == pytest.approx([lerac_lr(LR, j, n, t, RATIO, K) for j in range(n)], rel=1e-9)
    assert result.metrics["lerac"] is True
