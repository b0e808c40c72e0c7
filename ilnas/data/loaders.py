"""Persistent, cycling, resumable batch streams.

One DataLoader iterator lives for the whole search (never a fresh iterator per step). The
batch order is a pure function of ``(seed, batches consumed)``, so a checkpoint stores one integer
and a resumed run sees exactly the batches an uninterrupted one would. Random augmentation is, too:
each batch is fetched under a torch RNG seeded by ``(seed, batch number)`` (the caller's RNG is given back
untouched in the main process, and workers are reseeded per batch), and the loader has a generator of its
own, so neither a resumption nor the number of workers changes a single pixel.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, get_worker_info
from torch.utils.data._utils.collate import default_collate


class _EndlessBatches(Sampler[list[int]]):
    """Global batches in a seeded order; with ``shard = (rank, world)`` each rank yields its slice of each."""

    def __init__(self, n: int, batch_size: int, seed: int, shuffle: bool, drop_last: bool, start: int,
                 shard: tuple[int, int] = (0, 1)):
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.shuffle, self.drop_last, self.start = shuffle, drop_last, start
        self.rank, self.world = shard

    @property
    def per_cycle(self) -> int:
        return self.n // self.batch_size if self.drop_last else -(-self.n // self.batch_size)

    def __iter__(self) -> Iterator[list[tuple[int, int, int]]]:
        """Batches of ``(batch number, position in the global batch, dataset index)``: the first two seed
        the item's augmentation, so it does not depend on how the global batch is split across ranks."""
        cycle, pos = divmod(self.start, self.per_cycle)
        while True:
            if self.shuffle:
                order = np.random.default_rng([self.seed, cycle]).permutation(self.n)
            else:
                order = np.arange(self.n)
            for b in range(pos, self.per_cycle):
                number = cycle * self.per_cycle + b
                batch = order[b * self.batch_size : (b + 1) * self.batch_size]
                part = -(-len(batch) // self.world)
                lo = self.rank * part
                yield [(number, lo + j, int(i)) for j, i in enumerate(batch[lo : lo + part])]
            cycle, pos = cycle + 1, 0


class _SeededFetch(Dataset):
    """Fetches each item with the torch RNG seeded by ``(stream seed, batch number, position)``."""

    def __init__(self, dataset: Dataset, seed: int):
        self.dataset, self.seed = dataset, seed

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int, int]) -> Any:
        return self.__getitems__([key])[0]

    def _fetch(self, keys: Sequence[tuple[int, int, int]]) -> list[Any]:
        items = []
        for number, position, index in keys:
            # the CPU generator the transforms draw from (torch.manual_seed would also seed every accelerator:
            # 87 us per item against 1.2 us)
            torch.default_generator.manual_seed(
                int(np.random.SeedSequence([self.seed, number, position]).generate_state(1)[0]))
            items.append(self.dataset[index])
        return items

    def __getitems__(self, keys: Sequence[tuple[int, int, int]]) -> list[Any]:
        if get_worker_info() is not None:  # a worker's RNG is its own: reseeding it is enough
            return self._fetch(keys)
        with torch.random.fork_rng(devices=[]):  # the caller's RNG stream is given back untouched
            return self._fetch(keys)


class CyclingLoader:
    """Endless batches from ``dataset``; ``state_dict()`` is the number of batches consumed.

    ``batch_size`` is the global batch; with ``shard = (rank, world)`` this rank gets its ``1/world`` slice of
    every global batch (disjoint across ranks, same order and position everywhere).
    """

    def __init__(self, dataset: Dataset, batch_size: int, seed: int, shuffle: bool = True,
                 num_workers: int = 0, pin_memory: bool = False, shard: tuple[int, int] = (0, 1)):
        n = len(dataset)  # type: ignore[arg-type]
        if n == 0:
            raise ValueError("CyclingLoader: the dataset is empty")
        world = shard[1]
        if n < world:
            raise ValueError(f"CyclingLoader: {n} items cannot be shared by {world} processes")
        batch_size = min(batch_size, n)
        self.dataset, self.batch_size, self.seed, self.shuffle = dataset, batch_size - batch_size % world, seed, shuffle
        self.shard = shard
        # never a size-1 tail batch for BatchNorm; with several ranks, never an uneven tail to split
        self.drop_last = n >= 2 * self.batch_size or world > 1
        self.num_workers, self.pin_memory = num_workers, pin_memory
        self.consumed = 0
        self._it: Iterator | None = None

    @property
    def batches_per_epoch(self) -> int:
        return _EndlessBatches(len(self.dataset), self.batch_size, 0, False, self.drop_last, 0).per_cycle

    def next(self):
        if self._it is None:
            sampler = _EndlessBatches(len(self.dataset), self.batch_size, self.seed, self.shuffle,
                                      self.drop_last, self.consumed, self.shard)
            self._it = iter(DataLoader(_SeededFetch(self.dataset, self.seed), batch_sampler=sampler,
                                       num_workers=self.num_workers, pin_memory=self.pin_memory,
                                       collate_fn=default_collate,
                                       generator=torch.Generator().manual_seed(self.seed)))
        batch = next(self._it)
        self.consumed += 1
        return batch

    def state_dict(self) -> dict:
        return {"consumed": self.consumed}

    def load_state_dict(self, state: dict) -> None:
        self.consumed = int(state["consumed"])
        self._it = None
