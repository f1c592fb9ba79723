import itertools

import pytest

from dinov2.data import EvalShardSampler, InfiniteSampler


def _take(sampler, count, skip=0):
    return list(itertools.islice(iter(sampler), skip, skip + count))


def test_infinite_sampler_is_deterministic_per_seed():
    assert _take(InfiniteSampler(17, seed=3), 60) == _take(InfiniteSampler(17, seed=3), 60)
    assert _take(InfiniteSampler(17, seed=3), 60) != _take(InfiniteSampler(17, seed=4), 60)


def test_each_epoch_is_a_fresh_permutation():
    stream = _take(InfiniteSampler(11, seed=0), 33)
    epochs = [stream[i : i + 11] for i in range(0, 33, 11)]
    assert all(sorted(epoch) == list(range(11)) for epoch in epochs)
    assert epochs[0] != epochs[1] or epochs[1] != epochs[2]


def test_ranks_share_each_epoch_without_overlap():
    size, world = 10, 3
    shares = [
        _take(InfiniteSampler(size, seed=7, start=rank, step=world), len(range(rank, size, world)))
        for rank in range(world)
    ]
    assert sorted(sum(shares, [])) == list(range(size))
    assert [len(s) for s in shares] == [4, 3, 3]


def test_unshuffled_stream():
    assert _take(InfiniteSampler(7, shuffle=False, start=1, step=3), 7) == [1, 4, 1, 4, 1, 4, 1]


@pytest.mark.parametrize("advance", [0, 1, 3, 4, 10, 23])
@pytest.mark.parametrize("shuffle", [True, False])
def test_advance_skips_exactly_that_many_samples(advance, shuffle):
    full = InfiniteSampler(10, shuffle=shuffle, seed=2, start=1, step=3)
    resumed = InfiniteSampler(10, shuffle=shuffle, seed=2, start=1, step=3, advance=advance)
    assert _take(resumed, 20) == _take(full, 20, skip=advance)


def test_infinite_sampler_rejects_bad_arguments():
    with pytest.raises(ValueError, match="sample_count=0"):
        InfiniteSampler(0)
    with pytest.raises(ValueError, match="start=2, step=2"):
        InfiniteSampler(5, start=2, step=2)
    with pytest.raises(ValueError, match="advance=-1"):
        InfiniteSampler(5, advance=-1)
    with pytest.raises(ValueError, match="seed=-3"):
        InfiniteSampler(5, seed=-3)


@pytest.mark.parametrize("world_size", [1, 2, 3, 4])
@pytest.mark.parametrize("size", [0, 1, 5, 7, 10, 13])
def test_eval_shards_cover_every_index_exactly_once(world_size, size):
    shards = [list(EvalShardSampler(size, rank, world_size)) for rank in range(world_size)]
    for rank, shard in enumerate(shards):
        assert shard == [i for i in range(size) if i % world_size == rank]
        assert len(EvalShardSampler(size, rank, world_size)) == len(shard)
    merged = sum(shards, [])
    assert len(merged) == size and sorted(merged) == list(range(size))


def test_eval_shard_sampler_rejects_bad_rank():
    with pytest.raises(ValueError, match="rank=2, world_size=2"):
        EvalShardSampler(5, 2, 2)
