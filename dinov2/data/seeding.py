"""Random streams tied to a sample's position in the training stream.

The random crops, flips, colour jitter and iBOT masks of the n-th sample a rank reads depend only
on ``(seed, rank, n)``: not on which process draws them (the main process or one of the loader
workers), nor on how many batches that process drew before. So a run resumed from a checkpoint at
any iteration, with any ``train.num_workers``, reads exactly the batches an uninterrupted run reads.

Each sample (and each batch's masks) is drawn under ``scoped_seed``: python's ``random``, numpy's
global generator and torch's CPU generator are seeded for the call and put back afterwards, so the
process's own streams (drop path in the main process) are left as they were.
"""

import contextlib
import random
from typing import Any, Callable, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler, default_collate

_SAMPLE, _BATCH = 0, 1  # stream kinds: a sample's augmentation, a batch's masks


@contextlib.contextmanager
def scoped_seed(*key: int):
    """Run the block with python, numpy and torch (CPU) generators seeded from ``key``, then restore them.

    Args:
        key: non-negative integers naming the stream, e.g. (seed, rank, position, kind).
    """
    saved = random.getstate(), np.random.get_state(), torch.get_rng_state()
    python_seed, numpy_seed, torch_seed = np.random.SeedSequence(list(key)).generate_state(3).tolist()
    random.seed(python_seed)
    np.random.seed(numpy_seed)
    torch.manual_seed(torch_seed)
    try:
        yield
    finally:
        random.setstate(saved[0])
        np.random.set_state(saved[1])
        torch.set_rng_state(saved[2])


class PositionedSampler(Sampler):
    """Yields ``(position, index)``: each index of ``sampler`` with its position in this rank's stream.

    Args:
        sampler: the index stream (e.g. an ``InfiniteSampler`` already advanced by ``first_position``).
        first_position: the stream position of the sampler's first index.
    """

    def __init__(self, sampler: Sampler, first_position: int = 0):
        self.sampler = sampler
        self.first_position = first_position

    def __iter__(self) -> Iterator[Tuple[int, int]]:
        for offset, index in enumerate(self.sampler):
            yield self.first_position + offset, index


class PositionSeededDataset(Dataset):
    """Reads ``dataset[index]`` for a ``(position, index)`` key under the stream of that position.

    Returns ``(*sample, position)`` so that the batch collation can seed itself from its positions.

    Args:
        dataset: map-style dataset with tuple items, e.g. ``(augmented crops, label)``.
        seed: the run's seed.
        rank: this process's rank.
    """

    def __init__(self, dataset: Dataset, seed: int, rank: int):
        self.dataset = dataset
        self.seed = seed
        self.rank = rank

    def __getitem__(self, key: Tuple[int, int]):
        position, index = key
        with scoped_seed(self.seed, self.rank, position, _SAMPLE):
            sample = self.dataset[index]
        return (*sample, position)

    def __len__(self) -> int:
        return len(self.dataset)


class PositionSeededCollate:
    """Collates ``PositionSeededDataset`` items under the stream of the batch's first position.

    Args:
        collate_fn: the collation of the plain samples (None: torch's default collation).
        seed: the run's seed.
        rank: this process's rank.
    """

    def __init__(self, collate_fn: Optional[Callable[[List[Any]], Any]], seed: int, rank: int):
        self.collate_fn = collate_fn if collate_fn is not None else default_collate
        self.seed = seed
        self.rank = rank

    def __call__(self, items: Sequence[tuple]):
        samples = [item[:-1] for item in items]
        with scoped_seed(self.seed, self.rank, items[0][-1], _BATCH):
            return self.collate_fn(samples)
