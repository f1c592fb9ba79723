"""Stochastic depth: drop a whole residual branch per sample."""

import torch
from torch import nn


def drop_path(x: torch.Tensor, drop_prob: float = 0.0, training: bool = False) -> torch.Tensor:
    """Zero the residual branch of random samples and rescale the kept ones.

    Args:
        x: residual branch output [B, ...].
        drop_prob: probability of dropping the branch of one sample.
        training: drop only in training mode.

    Returns:
        Tensor of the shape of ``x``.
    """
    if drop_prob == 0.0 or not training:
        return x
    keep_prob = 1.0 - drop_prob
    # One Bernoulli draw per sample, broadcast over all other dimensions.
    mask_shape = (x.shape[0],) + (1,) * (x.ndim - 1)
    keep = x.new_empty(mask_shape).bernoulli_(keep_prob)
    if keep_prob > 0.0:
        keep.div_(keep_prob)
    return x * keep


class DropPath(nn.Module):
    """Per-sample stochastic depth (drop path) as a module.

    Args:
        drop_prob: probability of dropping the branch of one sample.
    """

    def __init__(self, drop_prob: float = 0.0) -> None:
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return drop_path(x, self.drop_prob, self.training)
