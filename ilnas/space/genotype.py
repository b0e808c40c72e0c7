"""A searched cell architecture as plain data: JSON in, JSON out, validated, never eval'd or pickled."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from ilnas.space.primitives import PRIMITIVES, check_primitives, derived_primitives
from ilnas.utils.io import atomic_write_text

SCHEMA_VERSION = 1
DERIVED_PRIMITIVES: tuple[str, ...] = derived_primitives(PRIMITIVES)
EDGES_PER_NODE = 2

Edge = tuple[str, int]


class GenotypeError(ValueError):
    """A genotype that cannot be built: the message names the field, the value and what is allowed."""


@dataclass(frozen=True)
class Genotype:
    """DARTS' genotype: for each intermediate node, two (op, input) edges; inputs 0 and 1 are the cell inputs.

    ``primitives``: the candidate set of the space it comes from (``search.primitives``; default the DARTS 8);
    every edge's op is one of them other than ``none``.
    """

    normal: tuple[Edge, ...]
    normal_concat: tuple[int, ...]
    reduce: tuple[Edge, ...]
    reduce_concat: tuple[int, ...]
    primitives: tuple[str, ...] = PRIMITIVES

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "primitives", check_primitives(tuple(self.primitives), "primitives"))
        except ValueError as exc:
            raise GenotypeError(str(exc)) from None
        for cell in ("normal", "reduce"):
            edges = tuple((str(op), int(idx)) for op, idx in getattr(self, cell))
            object.__setattr__(self, cell, edges)
            object.__setattr__(self, f"{cell}_concat", tuple(int(i) for i in getattr(self, f"{cell}_concat")))
            _validate_cell(cell, edges, getattr(self, f"{cell}_concat"), derived_primitives(self.primitives))

    @property
    def steps(self) -> int:
        return len(self.normal) // EDGES_PER_NODE

    def to_dict(self) -> dict:
        return {
            "schema_version": SCHEMA_VERSION,
            "normal": [list(e) for e in self.normal],
            "normal_concat": list(self.normal_concat),
            "reduce": [list(e) for e in self.reduce],
            "reduce_concat": list(self.reduce_concat),
            "primitives": list(self.primitives),
        }

    def to_json(self, path: str | os.PathLike | None = None) -> str:
        text = json.dumps(self.to_dict(), indent=2) + "\n"
        if path is not None:
            atomic_write_text(path, text)
        return text

    @classmethod
    def from_dict(cls, data: dict) -> Genotype:
        if not isinstance(data, dict):
            raise GenotypeError(f"genotype must be a JSON object, got {type(data).__name__}")
        version = data.get("schema_version")
        if version != SCHEMA_VERSION:
            raise GenotypeError(f"schema_version: got {version!r}, allowed: {SCHEMA_VERSION}")
        expected = {"schema_version", "normal", "normal_concat", "reduce", "reduce_concat"}
        missing, unknown = expected - set(data), set(data) - expected - {"primitives"}  # older files: DARTS 8
        if missing:
            raise GenotypeError(f"missing field(s) {sorted(missing)}; required: {sorted(expected)}")
        if unknown:
            raise GenotypeError(f"unknown field(s) {sorted(unknown)}; allowed: {sorted(expected)}")
        cells = {}
        for cell in ("normal", "reduce"):
            edges = data[cell]
            if not isinstance(edges, list) or not all(
                isinstance(e, list | tuple) and len(e) == 2 and isinstance(e[0], str)
                and isinstance(e[1], int) and not isinstance(e[1], bool) for e in edges
            ):
                raise GenotypeError(f"{cell}: must be a list of [op_name, input_index] pairs, got {edges!r}")
            concat = data[f"{cell}_concat"]
            if not isinstance(concat, list) or not all(isinstance(i, int) for i in concat):
                raise GenotypeError(f"{cell}_concat: must be a list of node indices, got {concat!r}")
            cells[cell] = tuple((e[0], e[1]) for e in edges)
            cells[f"{cell}_concat"] = tuple(concat)
        primitives = data.get("primitives", list(PRIMITIVES))
        if not isinstance(primitives, list) or not all(isinstance(p, str) for p in primitives):
            raise GenotypeError(f"primitives: must be a list of op names, got {primitives!r}")
        return cls(**cells, primitives=tuple(primitives))

    @classmethod
    def from_json(cls, text_or_path: str | os.PathLike) -> Genotype:
        """Parse JSON text, or read a genotype.json file (errors then name the file)."""
        source = None
        if isinstance(text_or_path, os.PathLike) or not str(text_or_path).lstrip().startswith("{"):
            source = Path(text_or_path)
            try:
                text = source.read_text()
            except OSError as exc:
                raise GenotypeError(f"{source}: cannot read genotype file ({exc.strerror})") from exc
            except UnicodeDecodeError as exc:
                raise GenotypeError(f"{source}: not a text (JSON) file ({exc.reason})") from exc
        else:
            text = str(text_or_path)
        try:
            return cls.from_dict(json.loads(text))
        except json.JSONDecodeError as exc:
            where = f"{source}: " if source else ""
            raise GenotypeError(f"{where}not valid JSON ({exc})") from exc
        except GenotypeError as exc:
            if source is None:
                raise
            raise GenotypeError(f"{source}: {exc}") from exc


def load_genotype(genotype: Genotype | str | os.PathLike) -> Genotype:
    """Accept a Genotype, a path to genotype.json, or its JSON text."""
    if isinstance(genotype, Genotype):
        return genotype
    return Genotype.from_json(genotype)


def _validate_cell(cell: str, edges: tuple[Edge, ...], concat: tuple[int, ...], allowed: tuple[str, ...]) -> None:
    if len(edges) == 0 or len(edges) % EDGES_PER_NODE:
        raise GenotypeError(
            f"{cell}: got {len(edges)} edges; allowed: {EDGES_PER_NODE} edges per intermediate node "
            f"(a positive multiple of {EDGES_PER_NODE})"
        )
    for i, (op, idx) in enumerate(edges):
        node = i // EDGES_PER_NODE
        if op not in allowed:
            raise GenotypeError(f"{cell}[{i}].op: unknown op {op!r}; allowed: {list(allowed)}")
        if not 0 <= idx < node + 2:
            raise GenotypeError(
                f"{cell}[{i}].input: node {node + 2} cannot read from state {idx}; allowed: 0..{node + 1}"
            )
    n_states = len(edges) // EDGES_PER_NODE + 2
    if not concat or any(not 2 <= j < n_states for j in concat) or len(set(concat)) != len(concat):
        raise GenotypeError(
            f"{cell}_concat: got {list(concat)}; allowed: distinct intermediate node indices in 2..{n_states - 1}"
        )


def derive_genotype(
    alphas_normal: torch.Tensor,
    alphas_reduce: torch.Tensor,
    steps: int = 4,
    edge_weights_normal: torch.Tensor | None = None,
    edge_weights_reduce: torch.Tensor | None = None,
    primitives: tuple[str, ...] = PRIMITIVES,
    multiplier: int | None = None,
    activation: str = "softmax",
) -> Genotype:
    """DARTS rule: per node keep the 2 incoming edges whose best non-``none`` op weight is largest.

    ``alphas_*`` are raw logits (edges x ops, columns ``primitives``), turned into op weights by
    ``activation`` (softmax; sigmoid for Fair DARTS); ``edge_weights_*`` are PC-DARTS' normalized betas
    (multiplied into the op weights when given, as github yuhuixu1993/PC-DARTS model_search.py:194-198).
    ``multiplier``: how many of the last nodes the search cell concatenated (default: all ``steps``); the
    genotype concatenates the same ones.
    """
    multiplier = steps if multiplier is None else multiplier
    if not 1 <= multiplier <= steps:
        raise GenotypeError(f"multiplier: got {multiplier}; allowed: 1..{steps} (the number of nodes)")
    if activation not in ("softmax", "sigmoid"):
        raise GenotypeError(f"activation: got {activation!r}; allowed: ['softmax', 'sigmoid']")
    primitives = tuple(primitives)
    if alphas_normal.shape[-1] != len(primitives):
        raise GenotypeError(f"alphas: {alphas_normal.shape[-1]} op columns, but {len(primitives)} primitives "
                            f"{list(primitives)}")

    def parse(alphas: torch.Tensor, edge_w: torch.Tensor | None) -> tuple[Edge, ...]:
        logits = alphas.detach().float().cpu()
        weights = torch.softmax(logits, dim=-1) if activation == "softmax" else torch.sigmoid(logits)
        if edge_w is not None:
            weights = weights * edge_w.detach().float().cpu().unsqueeze(-1)
        none = primitives.index("none") if "none" in primitives else None
        gene: list[Edge] = []
        start = 0
        for node in range(steps):
            n_in = node + 2
            w = weights[start : start + n_in].clone()
            if none is not None:
                w[:, none] = -1.0
            best_w, best_op = w.max(dim=1)
            chosen = sorted(torch.topk(best_w, EDGES_PER_NODE).indices.tolist())
            gene.extend((primitives[int(best_op[j])], int(j)) for j in chosen)
            start += n_in
        return tuple(gene)

    concat = tuple(range(2 + steps - multiplier, 2 + steps))
    return Genotype(
        normal=parse(alphas_normal, edge_weights_normal),
        normal_concat=concat,
        reduce=parse(alphas_reduce, edge_weights_reduce),
        reduce_concat=concat,
        primitives=primitives,
    )


# The published DARTS (second order) CIFAR-10 cell, handy as a known-good genotype for tests and retraining.
DARTS_V2 = Genotype(
    normal=(("sep_conv_3x3", 0), ("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("sep_conv_3x3", 1),
            ("sep_conv_3x3", 1), ("skip_connect", 0), ("skip_connect", 0), ("dil_conv_3x3", 2)),
    normal_concat=(2, 3, 4, 5),
    reduce=(("max_pool_3x3", 0), ("max_pool_3x3", 1), ("skip_connect", 2), ("max_pool_3x3", 1),
            ("max_pool_3x3", 0), ("skip_connect", 2), ("skip_connect", 2), ("max_pool_3x3", 1)),
    reduce_concat=(2, 3, 4, 5),
)


PARAMETER_FREE_OPS = ("skip_connect", "max_pool_3x3", "avg_pool_3x3")


def collapse_counts(genotype: Genotype) -> dict[str, int]:
    """Parameter-free and skip edges per cell: DARTS' collapse shows as these counts growing.

    A ``skip_connect`` on a stride-2 edge of the reduction cell (from a cell input) is a factorized
    reduction with weights, so it is neither parameter-free nor a skip there.
    """
    counts: dict[str, int] = {}
    for cell in ("normal", "reduce"):
        free = skips = 0
        for op, idx in getattr(genotype, cell):
            strided = cell == "reduce" and idx < 2
            if op == "skip_connect" and strided:
                continue
            free += op in PARAMETER_FREE_OPS
            skips += op == "skip_connect"
        counts[f"param_free_edges/{cell}"] = free
        counts[f"skip_edges/{cell}"] = skips
    return counts
