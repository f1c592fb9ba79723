import functools
import itertools
import os

import pytest
import torch
import torch.multiprocessing as mp

from dinov2 import distributed
from dinov2.data import (
    ClassFolderDataset,
    DataAugmentationDINO,
    ImageLoadError,
    IndexedDataset,
    InfiniteSampler,
    MaskingGenerator,
    collate_data_and_cast,
    make_classification_eval_transform,
    make_data_loader,
    make_eval_data_loader,
)

from ..conftest import free_port

LAYOUT = {"a": [f"a{i}.png" for i in range(5)], "b": [f"b{i}.png" for i in range(4)]}


def _eval_dataset(root):
    return ClassFolderDataset(root, "all", train_ratio=0.5, transform=make_classification_eval_transform(crop_size=8))


def _fake_world(monkeypatch, rank, world_size):
    monkeypatch.setattr(distributed, "get_global_rank", lambda: rank)
    monkeypatch.setattr(distributed, "get_global_size", lambda: world_size)


def test_training_loader_follows_the_infinite_sampler(make_tree):
    dataset = IndexedDataset(_eval_dataset(make_tree(LAYOUT)))
    loader = make_data_loader(dataset, batch_size=4, num_workers=0, seed=5, sampler_advance=3)
    batches = list(itertools.islice(iter(loader), 5))  # 20 samples: more than two epochs of 9
    indices = torch.cat([batch[2] for batch in batches]).tolist()
    expected = list(itertools.islice(iter(InfiniteSampler(9, seed=5, advance=3)), 20))
    assert indices == expected
    images, labels, _ = batches[0]
    assert images.shape == (4, 3, 8, 8)
    assert labels.tolist() == [dataset.dataset.targets[i] for i in expected[:4]]


def test_training_loader_takes_rank_and_world_size_from_the_process_group(make_tree, monkeypatch):
    _fake_world(monkeypatch, rank=1, world_size=2)
    dataset = IndexedDataset(_eval_dataset(make_tree(LAYOUT)))
    loader = make_data_loader(dataset, batch_size=2, num_workers=0, seed=0)
    indices = torch.cat([b[2] for b in itertools.islice(iter(loader), 4)]).tolist()
    assert indices == list(itertools.islice(iter(InfiniteSampler(9, seed=0, start=1, step=2)), 8))


def test_eval_loader_yields_every_sample_once_with_its_index(make_tree, monkeypatch):
    dataset = _eval_dataset(make_tree(LAYOUT))
    seen = []
    for rank in range(3):
        _fake_world(monkeypatch, rank=rank, world_size=3)
        for images, labels, indices in make_eval_data_loader(dataset, batch_size=2, num_workers=0):
            assert labels.tolist() == [dataset.targets[i] for i in indices.tolist()]
            assert images.shape[1:] == (3, 8, 8)
            seen.extend(indices.tolist())
    assert sorted(seen) == list(range(len(dataset))) and len(seen) == len(dataset)


def _training_collate():
    return functools.partial(
        collate_data_and_cast,
        mask_ratio_tuple=(0.1, 0.5),
        mask_probability=0.5,
        dtype=torch.float32,
        n_tokens=4,
        mask_generator=MaskingGenerator(2, min_num_patches=1),
    )


@pytest.mark.parametrize("kind", ["train", "eval"])
def test_worker_error_names_the_corrupt_file(make_tree, kind):
    root = make_tree(LAYOUT)
    (root / "b" / "b2.png").write_bytes(b"")
    if kind == "train":
        augment = DataAugmentationDINO((0.6, 1.0), (0.2, 0.5), 1, global_crops_size=16, local_crops_size=8)
        dataset = ClassFolderDataset(root, "all", train_ratio=0.5, transform=augment)
        loader = make_data_loader(dataset, batch_size=3, num_workers=2, collate_fn=_training_collate())
        batches = itertools.islice(iter(loader), 10)  # 30 samples: b2.png is reached
    else:
        loader = make_eval_data_loader(_eval_dataset(root), batch_size=3, num_workers=2)
        batches = iter(loader)
    with pytest.raises(ImageLoadError, match="b2.png"):
        for _ in batches:
            pass


def _augmented_batches(root, num_workers, advance, count, global_state_seed):
    augment = DataAugmentationDINO((0.3, 1.0), (0.1, 0.5), 2, global_crops_size=16, local_crops_size=8)
    dataset = ClassFolderDataset(root, "all", train_ratio=0.5, transform=augment)
    batch_size = 3
    loader = make_data_loader(
        dataset, batch_size=batch_size, num_workers=num_workers, seed=7, sampler_advance=advance * batch_size,
        collate_fn=_training_collate(),
    )
    # The main process's own streams must not matter (a resumed run restores them from a checkpoint).
    torch.manual_seed(global_state_seed)
    return list(itertools.islice(iter(loader), count))


def _assert_same_batches(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for key in x:
            if isinstance(x[key], torch.Tensor):
                assert torch.equal(x[key], y[key]), key
            else:
                assert x[key] == y[key], key


def test_training_batches_depend_only_on_their_stream_position(make_tree):
    """Crops, flips, jitter and masks are the same with 0 or 2 workers and after a resume at batch 2."""
    root = make_tree(LAYOUT)
    reference = _augmented_batches(root, num_workers=0, advance=0, count=5, global_state_seed=0)
    _assert_same_batches(_augmented_batches(root, num_workers=2, advance=0, count=5, global_state_seed=1), reference)
    _assert_same_batches(_augmented_batches(root, num_workers=2, advance=2, count=3, global_state_seed=2), reference[2:])
    _assert_same_batches(_augmented_batches(root, num_workers=0, advance=2, count=3, global_state_seed=3), reference[2:])
    # The randomness is real: two batches of one epoch position differ, and so does another seed.
    assert not torch.equal(reference[0]["collated_global_crops"][0], reference[0]["collated_global_crops"][3])


def test_position_seeding_leaves_the_callers_random_streams_alone():
    import random

    import numpy as np

    from dinov2.data.seeding import scoped_seed

    torch.manual_seed(3)
    random.seed(3)
    np.random.seed(3)
    expected = (torch.rand(2), random.random(), np.random.rand())
    torch.manual_seed(3)
    random.seed(3)
    np.random.seed(3)
    with scoped_seed(1, 2, 3):
        inside = (torch.rand(2), random.random(), np.random.rand())
    with scoped_seed(1, 2, 3):
        assert torch.equal(torch.rand(2), inside[0]) and random.random() == inside[1] and np.random.rand() == inside[2]
    after = (torch.rand(2), random.random(), np.random.rand())
    assert torch.equal(after[0], expected[0]) and after[1:] == expected[1:]


def _gather_worker(rank, world_size, port, root, size):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        dataset = _eval_dataset(root)
        indices, labels = [], []
        for _, batch_labels, batch_indices in make_eval_data_loader(dataset, batch_size=2, num_workers=0):
            indices.extend(batch_indices.tolist())
            labels.extend(batch_labels.tolist())
        gathered = [None] * world_size
        torch.distributed.all_gather_object(gathered, (indices, labels))
        merged = sorted(
            (i, label) for part_indices, part_labels in gathered for i, label in zip(part_indices, part_labels)
        )
        assert [i for i, _ in merged] == list(range(size))
        assert [label for _, label in merged] == dataset.targets
    finally:
        torch.distributed.destroy_process_group()


def test_two_processes_evaluate_every_sample_exactly_once(make_tree):
    root = make_tree(LAYOUT)
    size = sum(len(v) for v in LAYOUT.values())
    mp.spawn(_gather_worker, args=(2, free_port(), str(root), size), nprocs=2, join=True)
