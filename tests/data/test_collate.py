import random

import numpy as np
import pytest
import torch

from dinov2.data import MaskingGenerator, collate_data_and_cast

GRID = 8
N = GRID * GRID


def _samples(batch, n_local=3, global_size=8, local_size=4):
    """Crop c of image i is filled with the value 100 * i + c, so its position can be checked."""
    samples = []
    for i in range(batch):
        crops = {
            "global_crops": [torch.full((3, global_size, global_size), 100.0 * i + c) for c in range(2)],
            "local_crops": [torch.full((3, local_size, local_size), 100.0 * i + 10 + c) for c in range(n_local)],
            "offsets": (),
        }
        crops["global_crops_teacher"] = crops["global_crops"]
        samples.append((crops, i % 2))
    return samples


def _collate(samples, probability=0.5, ratios=(0.1, 0.5), dtype=torch.float32):
    generator = MaskingGenerator(GRID, max_num_patches=0.5 * N)
    return collate_data_and_cast(samples, ratios, probability, dtype, n_tokens=N, mask_generator=generator)


def test_crop_order_shapes_and_dtype():
    batch = 3
    output = _collate(_samples(batch), dtype=torch.bfloat16)
    globals_, locals_ = output["collated_global_crops"], output["collated_local_crops"]
    assert globals_.shape == (2 * batch, 3, 8, 8) and globals_.dtype == torch.bfloat16
    assert locals_.shape == (3 * batch, 3, 4, 4) and locals_.dtype == torch.bfloat16
    # Crop-major: crop 0 of images 0..B-1, then crop 1 of images 0..B-1.
    assert [globals_[k, 0, 0, 0].item() for k in range(2 * batch)] == [0, 100, 200, 1, 101, 201]
    assert [locals_[k, 0, 0, 0].item() for k in range(3 * batch)] == [10, 110, 210, 11, 111, 211, 12, 112, 212]


@pytest.mark.parametrize("batch, probability", [(4, 0.5), (5, 0.5), (3, 1.0)])
def test_masks_weights_and_counts(batch, probability):
    random.seed(batch)
    output = _collate(_samples(batch), probability=probability)
    masks = output["collated_masks"]
    assert masks.shape == (2 * batch, N) and masks.dtype == torch.bool

    n_masked_crops = int(2 * batch * probability)
    per_crop = masks.sum(-1)
    # Ratios are >= 0.1 of 64 patches, so every masked crop holds some patches.
    assert int((per_crop > 0).sum()) == n_masked_crops

    indices = output["mask_indices_list"]
    assert torch.equal(indices, torch.nonzero(masks.flatten()).flatten())
    assert output["n_masked_patches"].tolist() == [int(masks.sum())]

    weights = output["masks_weight"]
    assert weights.shape == indices.shape
    weight_per_crop = torch.zeros(2 * batch).index_add_(0, indices // N, weights)
    expected = (per_crop > 0).float()
    torch.testing.assert_close(weight_per_crop, expected)

    # Upper bound: sum over masked crops of int(N * upper edge of its ratio interval).
    edges = np.linspace(0.1, 0.5, n_masked_crops + 1)
    assert output["upperbound"] == sum(int(N * e) for e in edges[1:].astype(np.float32))
    assert int(masks.sum()) <= output["upperbound"]


def test_ratios_spread_over_the_interval():
    # With 8 masked crops the ratio intervals are [0.1, 0.15], ..., [0.45, 0.5]: sorted counts increase.
    random.seed(0)
    output = _collate(_samples(8), probability=1.0, ratios=(0.1, 0.5))
    counts = sorted(output["collated_masks"].sum(-1).tolist())
    assert counts[0] <= int(N * 0.15) and counts[-1] > int(N * 0.3)


def test_no_masking():
    output = collate_data_and_cast(_samples(2), (0.1, 0.5), 0.0, torch.float32, n_tokens=N)
    assert not output["collated_masks"].any()
    assert output["masks_weight"].numel() == 0 and output["n_masked_patches"].item() == 0
    assert output["upperbound"] == 0


def test_zero_local_crops_and_size_mismatch():
    output = _collate(_samples(2, n_local=0))
    assert output["collated_local_crops"].numel() == 0
    generator = MaskingGenerator(GRID)
    with pytest.raises(ValueError, match="n_tokens=10"):
        collate_data_and_cast(_samples(2), (0.1, 0.5), 0.5, torch.float32, n_tokens=10, mask_generator=generator)
    with pytest.raises(ValueError, match="mask_generator"):
        collate_data_and_cast(_samples(2), (0.1, 0.5), 0.5, torch.float32, n_tokens=N)
