"""Config checks shared by every schema (kept free of torch so loading a config stays cheap)."""

from __future__ import annotations


def check_device_name(value: str) -> str:
    """The validator of every ``device`` key: fail before any compute, naming what is allowed."""
    if value not in ("auto", "cpu") and not value.startswith("cuda"):
        raise ValueError(f"unknown device {value!r}; allowed: 'auto', 'cpu', 'cuda', 'cuda:N'")
    return value
