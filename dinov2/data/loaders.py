"""Data loaders for training (infinite, sharded by rank) and evaluation (exact shards, indexed samples)."""

import logging
from typing import Any, Callable, List, Optional

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from dinov2 import distributed

from .samplers import EvalShardSampler, InfiniteSampler
from .seeding import PositionedSampler, PositionSeededCollate, PositionSeededDataset

logger = logging.getLogger("dinov2")


class IndexedDataset(Dataset):
    """Wraps a dataset of ``(image, label)`` so that it yields ``(image, label, index)``.

    The index lets evaluation gather per-rank outputs and put them back in dataset order.

    Args:
        dataset: a map-style dataset whose items are ``(image, label)``.
    """

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __getitem__(self, index: int):
        image, label = self.dataset[index]
        return image, label, index

    def __len__(self) -> int:
        return len(self.dataset)


def make_data_loader(
    dataset: Dataset,
    batch_size: int,
    num_workers: int,
    shuffle: bool = True,
    seed: int = 0,
    sampler_advance: int = 0,
    drop_last: bool = True,
    collate_fn: Optional[Callable[[List[Any]], Any]] = None,
    persistent_workers: bool = False,
    pin_memory: Optional[bool] = None,
) -> DataLoader:
    """Training loader: an endless stream of batches, each rank reading its own share of every epoch.

    The randomness of each sample (and of each batch's collation) comes from its position in this
    rank's stream (``dinov2.data.seeding``): the batches are the same with any number of workers and
    after a resume at any iteration.

    Rank and world size come from ``torch.distributed`` when it is initialised, else 0 and 1. An
    exception in a worker (for instance ``ImageLoadError`` for a corrupt file) is re-raised by PyTorch
    in the main process with the worker's message, which names the file.

    Args:
        dataset: map-style dataset.
        batch_size: samples per batch on this rank.
        num_workers: loader worker processes (0 loads in the main process).
        shuffle: shuffle each epoch.
        seed: sampler seed, identical on all ranks.
        sampler_advance: samples of this rank's stream to skip (resume: iteration * batch_size).
        drop_last: drop a last incomplete batch (never reached by an infinite sampler; kept for API parity).
        collate_fn: batch collation, e.g. ``functools.partial(collate_data_and_cast, ...)``.
        persistent_workers: keep workers alive between iterators.
        pin_memory: page-locked batches; None pins when CUDA is available.
        shard: read only this rank's shard; False reads the whole dataset in this process (a caller
            that gives each rank its own datasets).

    Returns:
        A ``DataLoader`` with an ``InfiniteSampler``.
    """
    rank, world_size = distributed.get_global_rank(), distributed.get_global_size()
    sampler = InfiniteSampler(
        sample_count=len(dataset), shuffle=shuffle, seed=seed, start=rank, step=world_size, advance=sampler_advance
    )
    if pin_memory is None:
        pin_memory = torch.cuda.is_available()
    logger.info(
        "training loader: %d samples, batch %d, %d workers, rank %d of %d, shuffle %s, seed %d, advance %d",
        len(dataset),
        batch_size,
        num_workers,
        rank,
        world_size,
        shuffle,
        seed,
        sampler_advance,
    )
    # The loader draws its workers' base seed from its own generator, not from the global one, so
    # creating it leaves the global random stream (restored from a checkpoint on resume) untouched.
    generator = torch.Generator()
    generator.manual_seed(int(np.random.SeedSequence([seed, rank, sampler_advance]).generate_state(1)[0]))
    return DataLoader(
        PositionSeededDataset(dataset, seed, rank),
        sampler=PositionedSampler(sampler, first_position=sampler_advance),
        batch_size=batch_size,
        num_workers=num_workers,
        pin_memory=pin_memory,
        drop_last=drop_last,
        persistent_workers=persistent_workers and num_workers > 0,
        collate_fn=PositionSeededCollate(collate_fn, seed, rank),
        generator=generator,
    )


def make_eval_data_loader(
    dataset: Dataset,
    batch_size: int,
    num_workers: int,
    pin_memory: Optional[bool] = None,
    shard: bool = True,
) -> DataLoader:
    """Evaluation loader over this rank's exact shard; batches are ``(images, labels, indices)``.

    Every sample is seen by exactly one rank (``EvalShardSampler``, no padding, last batch kept).
    Gather images' outputs and indices from all ranks and sort by index to restore dataset order.

    Args:
        dataset: map-style dataset of ``(image, label)``, or an ``IndexedDataset`` already.
        batch_size: samples per batch.
        num_workers: loader worker processes.
        pin_memory: page-locked batches; None pins when CUDA is available.
        shard: read only this rank's shard; False reads the whole dataset in this process (a caller
            that gives each rank its own datasets).

    Returns:
        A finite ``DataLoader``.
    """
    if not isinstance(dataset, IndexedDataset):
        dataset = IndexedDataset(dataset)
    rank, world_size = (distributed.get_global_rank(), distributed.get_global_size()) if shard else (0, 1)
    sampler = EvalShardSampler(len(dataset), rank, world_size)
    if pin_memory is None:
        pin_memory = torch.cuda.is_available()
    return DataLoader(
        dataset,
        sampler=sampler,
        batch_size=batch_size,
        num_workers=num_workers,
        pin_memory=pin_memory,
        drop_last=False,
    )
