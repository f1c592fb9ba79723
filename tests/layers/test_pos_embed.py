import pytest
import torch
import torch.nn.functional as F

from dinov2.layers import resize_pos_embed


def reference_resize(pos, old, size=None, scale=None):
    dim = pos.shape[-1]
    grid = pos[:, 1:].reshape(1, old[0], old[1], dim).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=size, scale_factor=scale, mode="bicubic", align_corners=False)
    return torch.cat([pos[:, :1], grid.permute(0, 2, 3, 1).reshape(1, -1, dim)], dim=1)


def test_resize_to_exact_size_matches_direct_interpolation():
    torch.manual_seed(0)
    pos = torch.randn(1, 1 + 37 * 37, 8)
    out = resize_pos_embed(pos, (16, 16))
    assert out.shape == (1, 257, 8)
    torch.testing.assert_close(out, reference_resize(pos, (37, 37), size=(16, 16)))


def test_offset_uses_scale_factor_and_keeps_row_major_order():
    torch.manual_seed(0)
    pos = torch.randn(1, 1 + 16, 8)
    out = resize_pos_embed(pos, (3, 6), offset=0.1)
    torch.testing.assert_close(out, reference_resize(pos, (4, 4), scale=(3.1 / 4, 6.1 / 4)))


def test_same_grid_is_returned_unchanged_and_other_layouts_are_refused():
    pos = torch.randn(1, 1 + 9, 4)
    assert resize_pos_embed(pos, (3, 3), offset=0.1) is pos
    with pytest.raises(ValueError, match="square"):
        resize_pos_embed(torch.randn(1, 1 + 10, 4), (3, 3))
    with pytest.raises(ValueError, match="2x4"):
        resize_pos_embed(pos, (3, 3), old_grid=(2, 4))
