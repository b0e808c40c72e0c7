"""One home per helper: the CSV writer (ilnas.utils.io) and the fingerprints (ilnas.utils.fingerprint) that the
search, the training and the stages share."""

from __future__ import annotations

import csv
import math
from pathlib import Path

from ilnas.utils.fingerprint import json_digest, source_digest
from ilnas.utils.io import atomic_write_csv
from stages.common import config_hash, write_rows_csv


def test_csv_columns_in_first_seen_order_blank_where_a_row_lacks_one(tmp_path: Path) -> None:
    path = atomic_write_csv(tmp_path / "sub" / "history.csv", [{"epoch": 1, "loss": 0.5}, {"epoch": 2, "acc": 0.9}])
    assert path.read_bytes() == b"epoch,loss,acc\n1,0.5,\n2,,0.9\n"
    assert [p.name for p in path.parent.iterdir()] == ["history.csv"]  # no temp file left behind


def test_stage_csv_drops_timings_and_blanks_non_finite_numbers(tmp_path: Path) -> None:
    rows = [{"epoch": 1, "val_loss": math.nan, "epoch_time_s": 3.2}, {"epoch": 2, "val_loss": 0.25}]
    with write_rows_csv(tmp_path / "m.csv", rows).open(newline="") as fh:
        assert list(csv.DictReader(fh)) == [{"epoch": "1", "val_loss": ""}, {"epoch": "2", "val_loss": "0.25"}]


def test_json_digest_ignores_key_order_and_sees_every_value() -> None:
    a = {"lr": 0.025, "tasks": [{"name": "a"}], "path": Path("x")}
    assert json_digest(a) == json_digest(dict(reversed(list(a.items())))) == config_hash(a)
    assert len(json_digest(a)) == 12 and len(json_digest(a, 16)) == 16
    assert json_digest({**a, "lr": 0.0251}) != json_digest(a)


def test_source_digest_sees_edits_and_moves(tmp_path: Path) -> None:
    (tmp_path / "pkg").mkdir()
    f = tmp_path / "pkg" / "a.py"
    f.write_text("x = 1\n")
    before = source_digest(tmp_path, [f])
    f.write_text("x = 2\n")
    edited = source_digest(tmp_path, [f])
    moved = tmp_path / "b.py"
    f.rename(moved)
    assert len({before, edited, source_digest(tmp_path, [moved])}) == 3
