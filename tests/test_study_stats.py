"""The study's statistics, reference sampling, random search and calibration rule, on synthetic numbers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ilnas.study import stats
from ilnas.study.calibration import CalibrationSpec, summarize_calibration
from ilnas.study.reference import random_search_pick
from ilnas.study.sampling import reference_genotype, sample_genotype


def test_holm_matches_the_step_down_definition_and_skips_nan() -> None:
    assert stats.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    adjusted = stats.holm([0.02, math.nan, 0.5])
    assert adjusted[0] == pytest.approx(0.04) and math.isnan(adjusted[1]) and adjusted[2] == pytest.approx(0.5)


def test_constant_samples_give_no_p_value_and_intervals_stay_in_bounds() -> None:
    c = stats.compare("a", [[1.0, 1.0], [1.0, 1.0]], "b", [[0.9, 0.9], [0.9, 0.9]], reps=200)
    assert math.isnan(c.p_value) and c.diff == pytest.approx(0.1)  # not p = 0 from degenerate samples
    s = stats.summarize("a", [[0.999, 1.0], [1.0, 1.0], [0.998, 1.0]], reps=500)
    assert 0.0 <= s.ci95_low <= s.mean <= s.ci95_high <= 1.0


def test_the_cell_is_the_unit_retrain_seeds_do_not_shrink_the_test() -> None:
    rng = np.random.default_rng(0)
    cells_a = rng.normal(0.90, 0.01, 5)
    cells_b = rng.normal(0.90, 0.01, 5)
    few = stats.compare("a", [[x] for x in cells_a], "b", [[x] for x in cells_b], reps=200)
    many = stats.compare("a", [[x] * 20 for x in cells_a], "b", [[x] * 20 for x in cells_b], reps=200)
    assert few.p_value == pytest.approx(many.p_value)  # 20 copies per cell are not 20 independent samples


def test_hierarchical_bootstrap_interval_covers_the_mean_and_widens_with_between_cell_spread() -> None:
    tight = stats.summarize("t", [[0.90, 0.91], [0.905, 0.9], [0.9, 0.91]], reps=1000)
    wide = stats.summarize("w", [[0.80, 0.81], [0.95, 0.94], [0.88, 0.9]], reps=1000)
    assert tight.ci95_low <= tight.mean <= tight.ci95_high
    assert (wide.ci95_high - wide.ci95_low) > 3 * (tight.ci95_high - tight.ci95_low)


def test_icc_separates_cell_effects_from_seed_noise() -> None:
    rng = np.random.default_rng(1)
    cells = rng.normal(0, 1.0, 30)
    strong = stats.icc1([[c + rng.normal(0, 0.1), c + rng.normal(0, 0.1)] for c in cells])
    noise = stats.icc1([[rng.normal(0, 1.0), rng.normal(0, 1.0)] for _ in cells])
    assert strong["icc"] > 0.9 and noise["icc"] < 0.4
    assert strong["between_sd"] == pytest.approx(1.0, abs=0.35) and strong["within_sd"] == pytest.approx(0.1, abs=0.05)


def test_detectable_difference_shrinks_with_cells_and_grows_with_comparisons() -> None:
    base = stats.detectable_difference(0.01, 0.01, 10, 2, 1)
    assert stats.detectable_difference(0.01, 0.01, 40, 2, 1) < base < stats.detectable_difference(0.01, 0.01, 10, 2, 4)
    assert base == pytest.approx((2.101 + 0.862) * math.sqrt(0.01 ** 2 + 0.01 ** 2 / 2) * math.sqrt(2 / 10), rel=0.01)


def test_percentile_counts_ties_half_and_has_an_interval() -> None:
    assert stats.percentile_of(0.5, [0.1, 0.5, 0.9, 0.2]) == pytest.approx(62.5)
    point, low, high = stats.percentile_interval([[0.95], [0.96]], list(np.linspace(0.8, 1.0, 50)), reps=300)
    assert 0 <= low <= point <= high <= 100 and point == pytest.approx(77, abs=2)


def test_reference_cells_are_derived_cell_shaped_and_their_own_stream() -> None:
    g = reference_genotype(0)
    assert g != sample_genotype(0)  # not the random arm's cell of seed 0
    assert reference_genotype(0) == g  # deterministic
    for cell in (g.normal, g.reduce):
        assert all(op != "none" for op, _ in cell)
        for node in range(4):
            (_, a), (_, b) = cell[2 * node: 2 * node + 2]
            assert a != b and max(a, b) < node + 2  # two distinct predecessors


def test_random_search_keeps_the_best_validation_cell_of_its_draw() -> None:
    records = [{"index": i, "val_top1": v, "val_loss": 1 - v, "test_top1": 0.5, "genotype": {}}
               for i, v in enumerate([0.80, 0.95, 0.85, 0.90, 0.70, 0.88])]
    pick = random_search_pick(records, 3, seed=4)
    drawn = [records[i] for i in pick["candidates"]]
    assert len(set(pick["candidates"])) == 3 and pick["val_top1"] == max(r["val_top1"] for r in drawn)
    assert random_search_pick(records, 3, seed=4)["index"] == pick["index"]
    assert random_search_pick(records, 6, seed=0)["index"] == 1
    with pytest.raises(ValueError, match="candidates"):
        random_search_pick(records, 7, seed=0)


def test_calibration_rule_prefers_rank_fidelity_among_candidates_that_separate_cells() -> None:
    spec = CalibrationSpec.model_validate({
        "name": "t", "cells": 12, "seeds": [0, 1], "min_icc": 0.3,
        "base": {"recipe": "darts", "val_fraction": 0.2, "epochs": 1, "channels": 4, "cells": 3},
        "candidates": {"faithful": {}, "noisy": {"epochs": 2}}, "target": {"epochs": 3}})
    rng = np.random.default_rng(2)
    truth = np.linspace(0.8, 0.95, 12)
    rec = lambda v: {"val_top1": float(v), "wall_s": 1.0}  # noqa: E731
    records = {"target": {i: [rec(t)] for i, t in enumerate(truth)},
               "faithful": {i: [rec(t + rng.normal(0, 0.003)) for _ in range(2)] for i, t in enumerate(truth)},
               "noisy": {i: [rec(0.9 + rng.normal(0, 0.05)) for _ in range(2)] for i in range(12)}}
    summary = summarize_calibration(spec, records)
    assert summary["chosen"] == "faithful"
    assert summary["candidates"]["faithful"]["kendall_tau"] > 0.8 and summary["candidates"]["noisy"]["icc"] < 0.3
    assert "chosen proxy: faithful" in summary["verdict"]


def test_the_verdict_places_each_arm_against_the_median_random_cell() -> None:
    from ilnas.study.analysis import against_median

    arms = {"il": {"kind": "search", "mean": 0.90, "percentile_ci95_low": 40.0},
            "rs": {"kind": "random_search", "mean": 0.95, "percentile_ci95_low": 62.0},
            "random": {"kind": "random", "mean": 0.88}}
    text = against_median(arms, 0.89)
    assert "median random cell of the reference (test top-1 0.8900)" in text
    assert "il +0.0100;" in text and "rs +0.0600 (percentile interval above 50)" in text
    assert "random " not in text.split(":", 1)[1].split(".", 1)[0]  # the baseline is not placed against itself
    assert text.endswith("Lifted above it beyond doubt: rs.")
    arms["rs"]["percentile_ci95_low"] = 45.0
    assert against_median(arms, 0.89).endswith("none is shown to beat the median random cell.")
    assert against_median(arms, None) == ""
