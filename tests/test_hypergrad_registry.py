"""The hypergradient methods by name: one list of names, one registered function per name, nothing else."""

from __future__ import annotations

import pytest
import torch

from ilnas.hypergrad import METHODS, InnerHParams, hypergradient
from ilnas.hypergrad.methods import REGISTRY
from ilnas.hypergrad.registry import register_method
from ilnas.search.config import HYPERGRAD_METHODS, SearchConfig


def test_registry_keys_are_exactly_the_names() -> None:
    assert len(set(METHODS)) == len(METHODS) == len(REGISTRY)
    assert set(REGISTRY) == set(METHODS)
    for name, fn in REGISTRY.items():
        assert fn.__module__ == f"ilnas.hypergrad.methods.{name}"  # one file per method, named after it
    assert HYPERGRAD_METHODS is METHODS
    assert SearchConfig(hypergrad="stagewise").hypergrad == "stagewise"


def test_unknown_names_are_refused() -> None:
    class NoHypers:
        def hypers(self) -> list[torch.Tensor]:
            return []

    with pytest.raises(ValueError, match=r"unknown hypergradient method 'nope'; allowed: \['first_order', "
                                         r"'finite_difference', 'stagewise', 'exact'\]"):
        hypergradient("nope", NoHypers(), {}, [], [], InnerHParams())
    with pytest.raises(ValueError, match="is not in ilnas/hypergrad/names.py"):
        register_method("second_order")
    with pytest.raises(ValueError, match="registered twice"):
        register_method("exact")(lambda state: None)
    assert REGISTRY["exact"].__name__ == "exact"  # the refused registration changed nothing
