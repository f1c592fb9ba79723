"""Resizing of absolute position embeddings to another patch grid (bicubic)."""

import math
from typing import Optional, Sequence

import torch
import torch.nn.functional as F


def resize_pos_embed(
    pos_embed: torch.Tensor,
    new_grid: Sequence[int],
    num_prefix_tokens: int = 1,
    old_grid: Optional[Sequence[int]] = None,
    antialias: bool = False,
    offset: float = 0.0,
) -> torch.Tensor:
    """Interpolate the patch part of a position embedding to a new grid; prefix tokens are kept.

    Used at forward time (inputs of another size than the model's) and when loading weights built
    for another image size.

    Args:
        pos_embed: [1, P + N, D] with P prefix tokens and N = old_h * old_w patch positions.
        new_grid: target grid (h, w) in patches.
        num_prefix_tokens: P, the leading positions that are not interpolated (the CLS token).
        old_grid: grid of ``pos_embed``; default: a square grid of N positions.
        antialias: antialiased bicubic interpolation (when downsampling).
        offset: if > 0, interpolate with scale factor (new + offset) / old, as DINOv2 does to avoid
            floating-point errors in the output size; if 0, interpolate to the exact size.

    Returns:
        [1, P + new_h * new_w, D], dtype of ``pos_embed``.
    """
    if pos_embed.ndim != 3 or pos_embed.shape[0] != 1:
        raise ValueError(f"pos_embed must have shape [1, P+N, D], got {list(pos_embed.shape)}")
    new_h, new_w = int(new_grid[0]), int(new_grid[1])
    num_patches = pos_embed.shape[1] - num_prefix_tokens
    if old_grid is None:
        side = math.isqrt(num_patches)
        if side * side != num_patches:
            raise ValueError(
                f"pos_embed has {num_patches} patch positions, not a square grid; pass old_grid explicitly"
            )
        old_grid = (side, side)
    old_h, old_w = int(old_grid[0]), int(old_grid[1])
    if old_h * old_w != num_patches:
        raise ValueError(f"old_grid {old_h}x{old_w} does not match the {num_patches} patch positions of pos_embed")
    if (new_h, new_w) == (old_h, old_w):
        return pos_embed

    dim = pos_embed.shape[-1]
    prefix = pos_embed[:, :num_prefix_tokens]
    # [1, N, D] -> [1, D, old_h, old_w]; interpolation in float32 (bicubic is not implemented for all dtypes).
    grid = pos_embed[:, num_prefix_tokens:].float().reshape(1, old_h, old_w, dim).permute(0, 3, 1, 2)
    if offset:
        size_kwargs = {"scale_factor": ((new_h + offset) / old_h, (new_w + offset) / old_w)}
    else:
        size_kwargs = {"size": (new_h, new_w)}
    grid = F.interpolate(grid, mode="bicubic", antialias=antialias, **size_kwargs)
    if tuple(grid.shape[-2:]) != (new_h, new_w):
        raise RuntimeError(f"interpolated grid is {tuple(grid.shape[-2:])}, expected {(new_h, new_w)}")
    patches = grid.permute(0, 2, 3, 1).reshape(1, new_h * new_w, dim).to(pos_embed.dtype)
    return torch.cat((prefix, patches), dim=1)
