"""The hypergradient methods' names: their one home, importable without torch.

``ilnas.search.config`` validates ``search.hypergrad`` against :data:`HypergradMethod` before any compute
starts, so this module imports nothing (the engine and the method modules are torch); the registry in
``ilnas/hypergrad/registry.py`` accepts exactly these names.
"""

from __future__ import annotations

from typing import Literal, get_args

HypergradMethod = Literal["first_order", "finite_difference", "stagewise", "exact"]
METHODS: tuple[str, ...] = get_args(HypergradMethod)
