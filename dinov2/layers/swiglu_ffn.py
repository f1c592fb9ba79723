"""SwiGLU feed-forward network (used by vit_giant2)."""

from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn


class SwiGLUFFN(nn.Module):
    """``w3(silu(a) * b)`` where ``[a, b] = w12(x)``.

    Args:
        in_features: input width.
        hidden_features: width of each gate half (default: ``in_features``).
        out_features: output width (default: ``in_features``).
        act_layer: unused, accepted so the block can build any FFN with the same arguments.
        drop: unused, as in DINOv2.
        bias: use biases in both linear layers.
    """

    def __init__(
        self,
        in_features: int,
        hidden_features: Optional[int] = None,
        out_features: Optional[int] = None,
        act_layer: Optional[Callable[..., nn.Module]] = None,
        drop: float = 0.0,
        bias: bool = True,
    ) -> None:
        super().__init__()
        out_features = out_features or in_features
        hidden_features = hidden_features or in_features
        # One matmul for both halves: [B, N, 2 * hidden].
        self.w12 = nn.Linear(in_features, 2 * hidden_features, bias=bias)
        self.w3 = nn.Linear(hidden_features, out_features, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, value = self.w12(x).chunk(2, dim=-1)
        return self.w3(F.silu(gate) * value)


class SwiGLUFFNFused(SwiGLUFFN):
    """SwiGLU with DINOv2's hidden width: 2/3 of the MLP width rounded up to a multiple of 8.

    The computation is the plain one; the name and the width rounding keep checkpoints compatible.

    Args:
        in_features: input width.
        hidden_features: MLP hidden width before the 2/3 rescaling (default: ``in_features``).
        out_features: output width (default: ``in_features``).
        act_layer: unused.
        drop: unused.
        bias: use biases in both linear layers.
    """

    def __init__(
        self,
        in_features: int,
        hidden_features: Optional[int] = None,
        out_features: Optional[int] = None,
        act_layer: Optional[Callable[..., nn.Module]] = None,
        drop: float = 0.0,
        bias: bool = True,
    ) -> None:
        out_features = out_features or in_features
        hidden_features = hidden_features or in_features
        # Keeps the parameter count of a GELU MLP with the same nominal width.
        hidden_features = (int(hidden_features * 2 / 3) + 7) // 8 * 8
        super().__init__(in_features, hidden_features, out_features, bias=bias)
