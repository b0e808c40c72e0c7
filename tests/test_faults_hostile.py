"""Fault tests, hostile input: an alias bomb, an oversized or absurdly nested params file, a megabyte value.

Each is refused in well under a second with one message naming the file (or key) and the bound, exit 2,
and no error message ever renders an unbounded value. Real files, real ``python -m ilnas.params``.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from ilnas.errors import MAX_MESSAGE_CHARS, InputError, format_error
from ilnas.params import ParamsError, load_params, read_yaml_mapping, validate_params
from ilnas.utils.io import MAX_YAML_BYTES, MAX_YAML_NODES, safe_load_bounded
from tests.test_faults_input import assert_one_block, run


def alias_bomb(levels: int = 9, width: int = 9) -> str:
    """'Billion laughs': ``width ** levels`` scalars from a few hundred bytes, under unknown keys."""
    lines = ["seed: 0", f"l0: &l0 [{', '.join(['lol'] * width)}]"]
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * width)}]" for i in range(1, levels + 1)]
    lines.append(f"search: {{bogus: *l{levels}}}")
    return "\n".join(lines) + "\n"


def test_alias_bomb_is_refused_in_well_under_a_second(tmp_path: Path) -> None:
    bomb = tmp_path / "params.yaml"
    bomb.write_text(alias_bomb())
    assert bomb.stat().st_size < 1000
    started = time.perf_counter()
    with pytest.raises(ParamsError, match="aliases") as info:
        read_yaml_mapping(bomb)
    assert time.perf_counter() - started < 1.0
    assert str(bomb) in str(info.value) and str(MAX_YAML_NODES) in str(info.value)
    proc, _ = run("-m", "ilnas.params", "check", str(bomb), cwd=tmp_path)
    assert_one_block(proc, str(bomb), "aliases", "refused")


@pytest.mark.parametrize("case", ["oversized", "deep_flow", "deep_block", "recursive"])
def test_hostile_shapes_are_refused_fast(tmp_path: Path, case: str) -> None:
    path = tmp_path / "params.yaml"
    if case == "oversized":  # refused from its size on disk, before a byte is read
        path.write_text("seed: 0\n" + "# padding\n" * (MAX_YAML_BYTES // 10 + 10))
        needle = "bytes; refused"
    elif case == "deep_flow":  # PyYAML's scanner is quadratic in flow depth: refused before scanning
        path.write_text("seed: " + "[" * 30000 + "]" * 30000 + "\n")
        needle = "levels deep"
    elif case == "deep_block":
        path.write_text("".join(" " * i + "a:\n" for i in range(200)) + " " * 200 + "b: 1\n")
        needle = "levels deep"
    else:
        path.write_text("seed: 0\nsearch: &s {tasks: [*s]}\n")
        needle = "recursive alias"
    started = time.perf_counter()
    with pytest.raises(ParamsError, match=needle) as info:
        load_params(path)
    assert time.perf_counter() - started < 1.0
    assert str(path) in str(info.value)


def test_override_alias_bomb_is_refused(tmp_path: Path) -> None:
    """An ``-S`` value goes through the same bounded loader (a bomb fits in one argument)."""
    levels = ", ".join(f"&l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, 9))
    value = f"[&l0 [a, a, a, a, a, a, a, a, a], {levels}]"
    started = time.perf_counter()
    with pytest.raises(ParamsError, match="search.tasks.*aliases"):
        load_params(Path(__file__).resolve().parents[1] / "params.yaml", [f"search.tasks={value}"],
                    environment=False)
    assert time.perf_counter() - started < 1.0


def test_error_formatter_never_renders_an_unbounded_value() -> None:
    """Values that reach validation anyway (built in Python, not read from YAML) are quoted bounded."""
    shared: list = ["lol"] * 10
    for _ in range(8):
        shared = [shared] * 10  # 10**9 leaves once expanded; repr() of it would never finish
    started = time.perf_counter()
    with pytest.raises(ParamsError) as info:
        validate_params({"search": {"strategy": "x" * 1_000_000, "bogus": shared},
                         "retrain": {"epochs": shared}, **{f"junk{i}": i for i in range(500)}})
    message = str(info.value)
    assert time.perf_counter() - started < 1.0
    assert "search.strategy" in message and "search.bogus" in message and "junk0" in message
    assert "more problem(s)" in message  # 500 unknown keys: the first ones and a count
    assert len(message) < 8000, len(message)
    block = format_error("prog", InputError("y" * 10 * MAX_MESSAGE_CHARS))
    assert len(block) < MAX_MESSAGE_CHARS + 200 and "more characters" in block


def test_bounded_loader_reads_ordinary_yaml_unchanged() -> None:
    text = (Path(__file__).resolve().parents[1] / "params.yaml").read_text()
    import yaml

    assert safe_load_bounded(text, "params.yaml") == yaml.safe_load(text)
    assert safe_load_bounded("a: &x [1, 2]\nb: *x\n", "s") == {"a": [1, 2], "b": [1, 2]}  # modest aliases ok
    with pytest.raises(ValueError, match="not valid YAML"):
        safe_load_bounded("a: [1, 2\n", "s", ValueError)
