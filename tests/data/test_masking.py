import random

import numpy as np
import pytest

from dinov2.data import MaskingGenerator


def test_shape_dtype_and_empty_request():
    generator = MaskingGenerator((16, 12), max_num_patches=96)
    assert generator.get_shape() == (16, 12)
    mask = generator(0)
    assert mask.shape == (16, 12) and mask.dtype == bool and not mask.any()
    assert MaskingGenerator(7).get_shape() == (7, 7)


@pytest.mark.parametrize("requested", [26, 60, 128])
def test_masked_count_stays_between_min_and_requested(requested):
    # The SDSH setting: 16 x 16 grid, blocks of >= 4 patches, at most half the grid per block.
    generator = MaskingGenerator((16, 16), min_num_patches=4, max_num_patches=128)
    random.seed(requested)
    counts = [int(generator(requested).sum()) for _ in range(100)]
    assert all(generator.min_num_patches <= c <= requested for c in counts)
    # Block placement fills the budget closely on average.
    assert np.mean(counts) >= 0.8 * requested


def test_one_block_respects_budget_and_grid():
    generator = MaskingGenerator((10, 10), min_num_patches=4)
    initial = np.zeros((10, 10), dtype=bool)
    initial[:3, :3] = True  # some patches already masked
    random.seed(0)
    for budget in [4, 9, 30]:
        for _ in range(50):
            mask = initial.copy()
            added = generator._add_block(mask, budget)
            assert 0 <= added <= budget
            assert int(mask.sum()) - int(initial.sum()) == added
            if added:
                rows, cols = np.nonzero(mask & ~initial)
                # Blocks are strictly smaller than the grid.
                assert rows.max() - rows.min() + 1 < 10 and cols.max() - cols.min() + 1 < 10


def test_masks_are_rectangles_of_bounded_aspect():
    generator = MaskingGenerator((20, 20), min_num_patches=16, min_aspect=0.5)
    random.seed(1)
    for _ in range(50):
        mask = np.zeros((20, 20), dtype=bool)
        added = generator._add_block(mask, 40)
        rows, cols = np.nonzero(mask)
        height, width = rows.max() - rows.min() + 1, cols.max() - cols.min() + 1
        assert height * width == added  # one filled rectangle
        # aspect in [0.5, 2] before rounding each side; rounding moves it by at most one patch per side
        assert (height - 1) / (width + 1) <= 2.0 and (height + 1) / max(width - 1, 1) >= 0.5


def test_python_random_seed_makes_masks_repeat():
    generator = MaskingGenerator((14, 14), max_num_patches=98)
    random.seed(5)
    first = [generator(50) for _ in range(3)]
    random.seed(5)
    second = [generator(50) for _ in range(3)]
    assert all(np.array_equal(a, b) for a, b in zip(first, second))
