"""Two-layer feed-forward network of a transformer block."""

from typing import Callable, Optional

import torch
from torch import nn


class Mlp(nn.Module):
    """``fc1`` -> activation -> dropout -> ``fc2`` -> dropout.

    Args:
        in_features: input width.
        hidden_features: hidden width (default: ``in_features``).
        out_features: output width (default: ``in_features``).
        act_layer: activation class.
        drop: dropout probability after each linear layer.
        bias: use biases in both linear layers.
    """

    def __init__(
        self,
        in_features: int,
        hidden_features: Optional[int] = None,
        out_features: Optional[int] = None,
        act_layer: Callable[..., nn.Module] = nn.GELU,
        drop: float = 0.0,
        bias: bool = True,
    ) -> None:
        super().__init__()
        out_features = out_features or in_features
        hidden_features = hidden_features or in_features
        self.fc1 = nn.Linear(in_features, hidden_features, bias=bias)
        self.act = act_layer()
        self.fc2 = nn.Linear(hidden_features, out_features, bias=bias)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.drop(self.act(self.fc1(x)))
        return self.drop(self.fc2(x))
