"""Persistent, cycling, resumable batch streams.

One DataLoader iterator lives for the whole search (never a fresh iterator per step). The
batch order is a pure function of ``(seed, batches consumed)``, so a checkpoint stores one integer
and a resumed run sees exactly the batches an uninterrupted one would.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from torch.utils.data import DataLoader, Dataset, Sampler


class _EndlessBatches(Sampler[list[int]]):
    def __init__(self, n: int, batch_size: int, seed: int, shuffle: bool, drop_last: bool, start: int):
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.shuffle, self.drop_last, self.start = shuffle, drop_last, start

    @property
    def per_cycle(self) -> int:
        return self.n // self.batch_size if self.drop_last else -(-self.n // self.batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        cycle, pos = divmod(self.start, self.per_cycle)
        while True:
            if self.shuffle:
                order = np.random.default_rng([self.seed, cycle]).permutation(self.n)
            else:
                order = np.arange(self.n)
            for b in range(pos, self.per_cycle):
                yield order[b * self.batch_size : (b + 1) * self.batch_size].tolist()
            cycle, pos = cycle + 1, 0


class CyclingLoader:
    """Endless batches from ``dataset``; ``state_dict()`` is the number of batches consumed."""

    def __init__(self, dataset: Dataset, batch_size: int, seed: int, shuffle: bool = True,
                 num_workers: int = 0, pin_memory: bool = False):
        n = len(dataset)  # type: ignore[arg-type]
        if n == 0:
            raise ValueError("CyclingLoader: the dataset is empty")
        self.dataset, self.batch_size, self.seed, self.shuffle = dataset, min(batch_size, n), seed, shuffle
        self.drop_last = n >= 2 * self.batch_size  # never a size-1 tail batch for BatchNorm
        self.num_workers, self.pin_memory = num_workers, pin_memory
        self.consumed = 0
        self._it: Iterator | None = None

    @property
    def batches_per_epoch(self) -> int:
        return _EndlessBatches(len(self.dataset), self.batch_size, 0, False, self.drop_last, 0).per_cycle

    def next(self):
        if self._it is None:
            sampler = _EndlessBatches(len(self.dataset), self.batch_size, self.seed, self.shuffle,
                                      self.drop_last, self.consumed)
            self._it = iter(DataLoader(self.dataset, batch_sampler=sampler, num_workers=self.num_workers,
                                       pin_memory=self.pin_memory))
        batch = next(self._it)
        self.consumed += 1
        return batch

    def state_dict(self) -> dict:
        return {"consumed": self.consumed}

    def load_state_dict(self, state: dict) -> None:
        self.consumed = int(state["consumed"])
        self._it = None
