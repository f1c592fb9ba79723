"""Index samplers: an infinite training stream per rank and an exact evaluation shard per rank."""

import itertools
from typing import Iterator

import numpy as np
from torch.utils.data.sampler import Sampler


class InfiniteSampler(Sampler):
    """Endless stream of dataset indices for one rank.

    The stream is a sequence of epochs; each epoch is a permutation of ``range(sample_count)`` (or
    the identity without ``shuffle``) of which this rank takes positions ``start, start + step, ...``.
    Every rank uses the same permutation, so the ranks' shares of an epoch are disjoint. Epoch e's
    permutation is drawn from a generator seeded with (seed, e), so whole epochs can be skipped
    without drawing them, which keeps ``advance`` cheap.

    Args:
        sample_count: dataset size.
        shuffle: permute each epoch.
        seed: seed of the permutations (the same on every rank).
        start: this rank's offset (its rank).
        step: stride (the world size).
        advance: number of this rank's samples to skip, e.g. iteration * batch size on resume.
    """

    def __init__(
        self,
        sample_count: int,
        shuffle: bool = True,
        seed: int = 0,
        start: int = 0,
        step: int = 1,
        advance: int = 0,
    ):
        if sample_count < 1:
            raise ValueError(f"sample_count={sample_count} must be >= 1")
        if step < 1 or not 0 <= start < step:
            raise ValueError(f"start={start}, step={step}: expected 0 <= start < step")
        if start >= sample_count:
            raise ValueError(f"start={start} >= sample_count={sample_count}: this rank would get no samples")
        if advance < 0:
            raise ValueError(f"advance={advance} must be >= 0")
        if seed < 0:
            raise ValueError(f"seed={seed} must be >= 0")
        self._sample_count = sample_count
        self._shuffle = shuffle
        self._seed = seed
        self._start = start
        self._step = step
        self._advance = advance

    def _epoch_indices(self, epoch: int) -> np.ndarray:
        if self._shuffle:
            order = np.random.default_rng([self._seed, epoch]).permutation(self._sample_count)
        else:
            order = np.arange(self._sample_count)
        return order[self._start :: self._step]

    def __iter__(self) -> Iterator[int]:
        per_epoch = len(range(self._start, self._sample_count, self._step))
        first_epoch, skip = divmod(self._advance, per_epoch)
        for epoch in itertools.count(first_epoch):
            yield from self._epoch_indices(epoch)[skip:].tolist()
            skip = 0


class EvalShardSampler(Sampler):
    """Rank ``rank``'s share of an evaluation set: indices rank, rank + W, rank + 2W, ... (W = world size).

    Across ranks every index appears exactly once; there is no padding, so shards may differ in
    length by one and no sample is counted twice. Gather the outputs of all ranks together with
    their dataset indices and sort by index to restore the dataset order.

    Args:
        size: dataset size.
        rank: this process's rank.
        world_size: number of processes.
    """

    def __init__(self, size: int, rank: int, world_size: int):
        if size < 0:
            raise ValueError(f"size={size} must be >= 0")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank={rank}, world_size={world_size}: expected 0 <= rank < world_size")
        self._size = size
        self._rank = rank
        self._world_size = world_size

    def __iter__(self) -> Iterator[int]:
        return iter(range(self._rank, self._size, self._world_size))

    def __len__(self) -> int:
        return len(range(self._rank, self._size, self._world_size))
