"""Genotype: JSON round trips, the DARTS derivation rule on alphas with a known answer, validation errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from ilnas.space.genotype import (
    DARTS_V2,
    DERIVED_PRIMITIVES,
    SCHEMA_VERSION,
    Genotype,
    GenotypeError,
    derive_genotype,
    load_genotype,
)
from ilnas.space.ops import PRIMITIVES

OP = {name: i for i, name in enumerate(PRIMITIVES)}


# ------------------------------------------------------------------------------------------ round trips


def test_json_text_round_trip() -> None:
    text = DARTS_V2.to_json()
    data = json.loads(text)
    assert data["schema_version"] == SCHEMA_VERSION
    assert data["normal"][0] == ["sep_conv_3x3", 0]
    back = Genotype.from_json(text)
    assert back == DARTS_V2
    assert Genotype.from_dict(DARTS_V2.to_dict()) == DARTS_V2


def test_json_file_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "genotype.json"
    DARTS_V2.to_json(path)
    assert path.is_file()
    assert not list(path.parent.glob(".*.tmp")), "atomic write left a temp file behind"
    assert Genotype.from_json(path) == DARTS_V2
    assert Genotype.from_json(str(path)) == DARTS_V2
    assert load_genotype(path) == DARTS_V2
    assert load_genotype(DARTS_V2) is DARTS_V2


def test_genotype_is_frozen_and_hashable() -> None:
    with pytest.raises(AttributeError):
        DARTS_V2.normal = ()  # type: ignore[misc]
    assert hash(DARTS_V2) == hash(Genotype.from_json(DARTS_V2.to_json()))
    assert DARTS_V2.steps == 4


# ------------------------------------------------------------------------------------------ derivation


def _two_node_alphas() -> torch.Tensor:
    """5 edges (node 0: from states 0,1; node 1: from states 0,1,2) with a known DARTS answer."""
    a = torch.zeros(5, len(PRIMITIVES))
    a[0, OP["none"]], a[0, OP["sep_conv_3x3"]] = 10.0, 1.0  # none dominates, but is never chosen
    a[1, OP["skip_connect"]] = 3.0
    a[2, OP["sep_conv_5x5"]] = 2.0  # strength e^2/(e^2+7) = 0.51
    a[3, OP["dil_conv_5x5"]] = 4.0  # 0.89
    a[4, OP["avg_pool_3x3"]] = 3.0  # 0.74
    return a


def test_derive_known_answer_and_none_never_chosen() -> None:
    a = _two_node_alphas()
    g = derive_genotype(a, a, steps=2)
    assert g.normal == (("sep_conv_3x3", 0), ("skip_connect", 1), ("dil_conv_5x5", 1), ("avg_pool_3x3", 2))
    assert g.normal_concat == (2, 3)
    assert all(op != "none" for op, _ in g.normal + g.reduce)


def test_derive_none_everywhere_still_picks_real_ops() -> None:
    a = torch.zeros(5, len(PRIMITIVES))
    a[:, OP["none"]] = 20.0
    a[:, OP["max_pool_3x3"]] = 1.0
    g = derive_genotype(a, a, steps=2)
    assert {op for op, _ in g.normal} == {"max_pool_3x3"}


def test_derive_edge_weights_change_choice() -> None:
    a = _two_node_alphas()
    plain = derive_genotype(a, a, steps=2)
    assert [j for _, j in plain.normal[2:]] == [1, 2]
    # PC-DARTS betas: edge 3 (from state 1) is nearly switched off -> node 1 keeps states 0 and 2
    edge_w = torch.tensor([0.5, 0.5, 0.6, 0.1, 0.3])
    pc = derive_genotype(a, a, steps=2, edge_weights_normal=edge_w)
    assert pc.normal[2:] == (("sep_conv_5x5", 0), ("avg_pool_3x3", 2))
    assert pc.reduce == plain.reduce  # reduce betas not given: unchanged
    # betas that agree with the alphas' ranking change nothing
    same = derive_genotype(a, a, steps=2, edge_weights_normal=torch.ones(5))
    assert same == plain


def _reference(alphas: np.ndarray, steps: int) -> list[tuple[str, int]]:
    w = np.exp(alphas - alphas.max(1, keepdims=True))
    w /= w.sum(1, keepdims=True)
    out, start = [], 0
    for node in range(steps):
        rows = w[start : start + node + 2]
        best = [(max(r[k] for k in range(len(PRIMITIVES)) if PRIMITIVES[k] != "none"), j) for j, r in enumerate(rows)]
        chosen = sorted(j for _, j in sorted(best, reverse=True)[:2])
        for j in chosen:
            k = max((k for k in range(len(PRIMITIVES)) if PRIMITIVES[k] != "none"), key=lambda k: rows[j][k])
            out.append((PRIMITIVES[k], j))
        start += node + 2
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_derive_matches_reference_on_random_alphas(seed: int) -> None:
    rng = np.random.default_rng(seed)
    an, ar = rng.normal(size=(14, 8)) * 2, rng.normal(size=(14, 8)) * 2
    g = derive_genotype(torch.tensor(an), torch.tensor(ar), steps=4)
    assert list(g.normal) == _reference(an, 4)
    assert list(g.reduce) == _reference(ar, 4)
    for cell in (g.normal, g.reduce):
        assert len(cell) == 8
        for node in range(4):
            (_, i), (_, j) = cell[2 * node : 2 * node + 2]
            assert i != j and 0 <= i < node + 2 and 0 <= j < node + 2  # 2 distinct predecessors per node


# ------------------------------------------------------------------------------------------ invalid genotypes

VALID_NORMAL = (("sep_conv_3x3", 0), ("skip_connect", 1), ("dil_conv_3x3", 2), ("max_pool_3x3", 0))


def _make(**over: object) -> Genotype:
    kw: dict = {"normal": VALID_NORMAL, "normal_concat": (2, 3), "reduce": VALID_NORMAL, "reduce_concat": (2, 3)}
    kw.update(over)
    return Genotype(**kw)


def test_valid_baseline() -> None:
    assert _make().steps == 2


@pytest.mark.parametrize(
    ("over", "needles"),
    [
        ({"normal": (("conv_7x7", 0),) + VALID_NORMAL[1:]}, ["normal[0].op", "'conv_7x7'", "sep_conv_3x3"]),
        ({"reduce": VALID_NORMAL[:3] + (("none", 1),)}, ["reduce[3].op", "'none'", "allowed"]),
        ({"normal": (("sep_conv_3x3", 2),) + VALID_NORMAL[1:]}, ["normal[0].input", "allowed: 0..1"]),
        ({"normal": VALID_NORMAL[:3] + (("sep_conv_3x3", 4),)}, ["normal[3].input", "allowed: 0..2"]),
        ({"normal": (("sep_conv_3x3", -1),) + VALID_NORMAL[1:]}, ["normal[0].input", "allowed: 0..1"]),
        ({"normal": VALID_NORMAL[:3]}, ["normal", "got 3 edges", "2 edges per intermediate node"]),
        ({"reduce": ()}, ["reduce", "got 0 edges"]),
        ({"normal_concat": (1, 2)}, ["normal_concat", "[1, 2]", "2..3"]),
        ({"reduce_concat": (2, 4)}, ["reduce_concat", "2..3"]),
        ({"normal_concat": (2, 2)}, ["normal_concat", "distinct"]),
        ({"normal_concat": ()}, ["normal_concat"]),
    ],
)
def test_invalid_genotype_names_field_and_allowed(over: dict, needles: list[str]) -> None:
    with pytest.raises(GenotypeError) as info:
        _make(**over)
    for needle in needles:
        assert needle in str(info.value)


def test_unknown_op_message_lists_every_allowed_op() -> None:
    with pytest.raises(GenotypeError) as info:
        _make(normal=(("conv_7x7", 0),) + VALID_NORMAL[1:])
    assert all(op in str(info.value) for op in DERIVED_PRIMITIVES)


def _dict(**over: object) -> dict:
    d = _make().to_dict()
    d.update(over)
    return d


@pytest.mark.parametrize(
    ("data", "needles"),
    [
        (_dict(schema_version=2), ["schema_version", "2", f"allowed: {SCHEMA_VERSION}"]),
        ({k: v for k, v in _dict().items() if k != "schema_version"}, ["schema_version", "None"]),
        ({k: v for k, v in _dict().items() if k != "reduce_concat"}, ["missing", "reduce_concat"]),
        (_dict(extra=1), ["unknown", "extra", "allowed"]),
        (_dict(normal="sep_conv_3x3"), ["normal", "[op_name, input_index]"]),
        (_dict(normal=[["sep_conv_3x3", True]] * 4), ["normal", "[op_name, input_index]"]),
        (_dict(normal=[["sep_conv_3x3", "0"]] * 4), ["normal", "[op_name, input_index]"]),
        (_dict(reduce_concat="2,3"), ["reduce_concat", "list of node indices"]),
        (_dict(normal=[["conv_9x9", 0], ["skip_connect", 1]] * 2), ["normal[0].op", "conv_9x9"]),
        ([1, 2], ["JSON object", "list"]),
    ],
)
def test_from_dict_errors(data: object, needles: list[str]) -> None:
    with pytest.raises(GenotypeError) as info:
        Genotype.from_dict(data)  # type: ignore[arg-type]
    for needle in needles:
        assert needle in str(info.value)


def test_non_json_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "genotype.json"
    path.write_text("Genotype(normal=[('sep_conv_3x3', 0)])  # a repr, not JSON\n")
    with pytest.raises(GenotypeError) as info:
        Genotype.from_json(path)
    assert str(path) in str(info.value) and "not valid JSON" in str(info.value)


def test_binary_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "genotype.json"
    path.write_bytes(b"\x80\x04\x95pickle")
    with pytest.raises(GenotypeError, match="genotype.json"):
        load_genotype(str(path))


def test_invalid_file_content_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(_dict(schema_version=7)))
    with pytest.raises(GenotypeError) as info:
        Genotype.from_json(path)
    assert str(path) in str(info.value) and "schema_version" in str(info.value)


def test_missing_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.json"
    with pytest.raises(GenotypeError, match="nope.json"):
        Genotype.from_json(path)


def test_invalid_json_text() -> None:
    with pytest.raises(GenotypeError, match="not valid JSON"):
        Genotype.from_json('{"schema_version": 1,')
