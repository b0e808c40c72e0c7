"""The one private timm API the training uses, fenced: ``CheckpointSaver._save``.

:class:`ilnas.train.checkpoint.SafeCheckpointSaver` overrides it to write weights-only files with the state an
exact resume needs. These tests fail when timm renames or re-signs it, or when ``save_checkpoint`` stops writing
``last`` through it (the override would then be silently skipped).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from timm.utils import CheckpointSaver

from ilnas.train.checkpoint import LAST, TIMM_SAVE_SIGNATURE, SafeCheckpointSaver, check_timm_saver


def test_the_installed_timm_has_the_overridden_signature() -> None:
    check_timm_saver()  # raises on a timm whose _save differs


def test_the_check_refuses_a_changed_signature(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(CheckpointSaver, "_save", lambda self, path, epoch: None)
    with pytest.raises(RuntimeError, match=r"CheckpointSaver\._save\('self', 'path', 'epoch'\) is not the _save"):
        check_timm_saver()
    assert TIMM_SAVE_SIGNATURE == ("self", "save_path", "epoch", "metric")


def test_save_checkpoint_writes_last_through_the_override(tmp_path: Path) -> None:
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    saver = SafeCheckpointSaver(model, optimizer, tmp_path, extra_fn=lambda: {"note": "ours", "step": 7})
    saver.save_checkpoint(epoch=0)
    state = torch.load(tmp_path / LAST, map_location="cpu", weights_only=True)  # plain data only
    assert state["extra"] == {"note": "ours", "step": 7} and state["epoch"] == 0
    assert torch.equal(state["state_dict"]["weight"], model.weight.detach())
    assert not (tmp_path / f"tmp{saver.extension}").exists()  # timm's temp file renamed into place
