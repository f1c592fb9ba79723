"""Quantisation regulariser of SDSH: pulls every continuous code entry towards -1 or +1."""

import torch
from torch import nn


class HashQuantizationLoss(nn.Module):
    """mean(| |u| - 1 |) over all code entries, so that sign(u) loses little information."""

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        """
        Args:
            codes: [B, K] continuous hash codes u.

        Returns:
            Scalar float32 loss (0 exactly when every entry is -1 or +1).
        """
        return (codes.float().abs() - 1.0).abs().mean()
