"""Study spec, trial grid, random cells and statistics: validation names the key, keys and budgets are right."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml

from ilnas.space.genotype import DERIVED_PRIMITIVES, Genotype
from ilnas.study.sampling import sample_genotype
from ilnas.study.spec import StudySpecError, load_spec, validate_spec
from ilnas.study.stats import compare, summarize
from ilnas.study.trials import expand_trials

TWO_TASKS = [{"name": "a", "dataset": "digits", "classes": [0, 1, 2, 3, 4]},
             {"name": "b", "dataset": "digits", "classes": [5, 6, 7, 8, 9]}]


def spec_data(**changes) -> dict:
    data = {
        "name": "unit",
        "search_seeds": [0, 1],
        "retrain_seeds": [0],
        "search_images": 384,
        "base": {"device": "cpu", "search": {"tasks": TWO_TASKS, "hypergrad": "first_order", "epochs": 1,
                                             "batch_size": 32, "channels": 4, "cells": 3},
                 "retrain": {"epochs": 1, "channels": 4, "cells": 3}},
        "arms": [{"name": "il", "kind": "search"},
                 {"name": "darts", "kind": "search",
                  "params": {"search": {"tasks": [{"name": "all", "dataset": "digits"}], "batch_size": 64}}},
                 {"name": "random", "kind": "random"},
                 {"name": "darts_v2", "kind": "genotype", "genotype": "DARTS_V2"}],
    }
    data.update(changes)
    return data


@pytest.mark.parametrize("change, key", [
    ({"search_seeds": [0, 0]}, "search_seeds"),
    ({"baseline": "nope"}, "baseline"),
    ({"colour": "red"}, "colour: unknown key"),
    ({"search_images": 100}, "search_images: 100 is not a multiple of arm 'il'"),
    ({"arms": [{"name": "random", "kind": "random"}, {"name": "x", "kind": "genotype"}]}, "kind genotype needs"),
    ({"arms": [{"name": "random", "kind": "random"}, {"name": "x", "kind": "genotype", "genotype": "NOPE"}]},
     "unknown named genotype 'NOPE'"),
    ({"arms": [{"name": "random", "kind": "random"},
               {"name": "il", "params": {"search": {"hypergrad": "second"}}}]}, "arms.il: search.hypergrad"),
    ({"arms": [{"name": "random", "kind": "random"},
               {"name": "il", "params": {"retrain": {"epochs": -1}}}]}, "arms.il: retrain.epochs"),
    ({"arms": [{"name": "random", "kind": "bogus"}]}, "arms[0].kind"),
    ({"arms": [{"name": "random", "kind": "random"}, {"name": "il"},
               {"name": "d", "params": {"search": {"tasks": [{"name": "all", "dataset": "digits"}]}}}]},
     "different numbers of architecture steps (il: 6 steps of 64 images, d: 12 steps of 32 images)"),
    ({"arms": [{"name": "random", "kind": "random"}, {"name": "rs", "kind": "random_search", "candidates": 3}]},
     "reference: kind random_search samples the reference distribution"),
    ({"arms": [{"name": "random", "kind": "random"}, {"name": "rs", "kind": "random"}], "contrasts": [["rs", "x"]]},
     "contrasts: ['rs', 'x'] must name two different arms"),
    ({"reference": {"cells": 10},
      "base": {"device": "cpu", "search": {"tasks": TWO_TASKS, "batch_size": 32, "epochs": 1},
               "retrain": {"recipe": "darts", "val_fraction": 0.0}}},
     "base.retrain.val_fraction: 0.0; the reference distribution"),
])
def test_bad_spec_names_the_key(change: dict, key: str) -> None:
    with pytest.raises(StudySpecError) as info:
        validate_spec(spec_data(**change), "unit.yaml")
    assert key in str(info.value), str(info.value)
    assert str(info.value).startswith("unit.yaml")


def test_override_applies_to_every_trial_and_is_validated(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(spec_data()))
    spec = load_spec(path, ["retrain.epochs=3"])
    assert {t.params["retrain"]["epochs"] for t in expand_trials(spec, ["retrain.epochs=3"])} == {3}
    with pytest.raises(StudySpecError, match=r"arms\.il: search\.hypergrad"):
        load_spec(path, ["search.hypergrad=bogus"])


def test_search_budget_is_images_seen() -> None:
    """IL with K = 2 draws 2 batches of 32 per iteration, DARTS 1 of 64: images and architecture steps match."""
    spec = validate_spec(spec_data())
    trials = {t.arm: t for t in expand_trials(spec) if t.search_seed == 0}
    assert trials["il"].params["search"]["iterations_per_epoch"] == 6
    assert trials["darts"].params["search"]["iterations_per_epoch"] == 6
    assert trials["il"].search_images == trials["darts"].search_images == 384
    assert trials["il"].arch_steps == trials["darts"].arch_steps == 6
    assert trials["random"].search_images == 0


def test_trial_keys_change_only_with_their_arm() -> None:
    before = {(t.arm, t.search_seed): t.key for t in expand_trials(validate_spec(spec_data()))}
    assert len(set(before.values())) == len(before)  # search seeds reach every arm (fixed cells: retrain seeds)
    changed = spec_data()
    changed["arms"][0] = {"name": "il", "params": {"search": {"lam": 0.5}}}
    after = {(t.arm, t.search_seed): t.key for t in expand_trials(validate_spec(changed))}
    assert {k for k in before if before[k] != after[k]} == {("il", 0), ("il", 1)}
    renamed = spec_data()
    renamed["arms"][2] = {"name": "uniform", "kind": "random"}
    renamed["baseline"] = "uniform"
    keys = {(t.arm, t.search_seed): t.key for t in expand_trials(validate_spec(renamed))}
    assert keys[("uniform", 0)] == before[("random", 0)]
    retrain = spec_data()
    retrain["base"]["retrain"]["epochs"] = 2
    assert not set(before.values()) & {t.key for t in expand_trials(validate_spec(retrain))}


def test_random_cells_are_seeded_and_cover_the_space() -> None:
    cells = [sample_genotype(seed) for seed in range(60)]
    assert sample_genotype(3) == sample_genotype(3)
    assert len({c.to_json() for c in cells}) == 60
    ops = {op for c in cells for op, _ in c.normal + c.reduce}
    assert ops == set(DERIVED_PRIMITIVES)
    for c in cells:
        Genotype.from_dict(c.to_dict())  # valid: two distinct inputs per node among its predecessors
        for node in range(4):
            (_, i), (_, j) = c.normal[2 * node: 2 * node + 2]
            assert i != j and max(i, j) < node + 2
    # every input pair of the last node is drawn (uniform over pairs, not only the cell inputs)
    assert len({tuple(i for _, i in c.normal[6:8]) for c in cells}) == 10


def test_statistics_match_scipy_on_cell_means() -> None:
    from scipy import stats

    a, b = [0.91, 0.93, 0.92, 0.95], [0.80, 0.85, 0.83]
    s = summarize("a", [[x] for x in a])
    assert math.isclose(s.mean, 0.9275) and math.isclose(s.std, stats.tstd(a)) and s.cells == 4
    assert s.ci95_low < 0.9275 < s.ci95_high <= 1.0
    c = compare("a", [[x, x] for x in a], "b", [[x] for x in b])  # retrain seeds of one cell are one sample
    ref = stats.ttest_ind(a, b, equal_var=False)
    assert math.isclose(c.p_value, ref.pvalue) and c.p_value < 0.05
    assert math.isclose(c.diff, 0.9275 - 0.8266666, rel_tol=1e-5)
    assert math.isnan(compare("a", [[0.9]], "b", [[x] for x in b]).p_value)


@pytest.mark.parametrize("name", ["study.yaml", "study_cifar.yaml", "study_remedies.yaml"])
def test_shipped_study_specs_validate(name: str) -> None:
    spec = load_spec(Path(__file__).resolve().parents[1] / "configs" / name)
    trials = expand_trials(spec)  # random_search arms wait for the reference distribution
    assert len(trials) == sum(a.kind != "random_search" for a in spec.arms) * len(spec.search_seeds)
    searched = {t.search_images for t in trials if t.kind == "search"}
    assert searched == {spec.search_images}  # every search arm sees the same training images
