"""Multi-head self-attention with a fused qkv projection.

Computed with PyTorch's ``scaled_dot_product_attention``; xFormers' memory-efficient kernel is used by
``MemEffAttention`` only when xFormers is importable and the input is on CUDA.
"""

import functools
import logging
import os
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn

logger = logging.getLogger("dinov2")


@functools.cache
def _xformers_ops() -> Optional[Any]:
    """Return ``xformers.ops`` if it can be used, else None (imported once, on first CUDA call)."""
    if os.environ.get("XFORMERS_DISABLED"):
        return None
    try:
        from xformers import ops
    except Exception as error:  # a broken install raises more than ImportError; it is optional either way
        logger.info("xFormers not used (%s)", error)
        return None
    return ops


class Attention(nn.Module):
    """Self-attention over tokens [B, N, D] with ``qkv`` and ``proj`` linear layers.

    Args:
        dim: token width D.
        num_heads: number of heads (must divide ``dim``).
        qkv_bias: bias in the qkv projection.
        proj_bias: bias in the output projection.
        attn_drop: dropout on the attention weights (training only).
        proj_drop: dropout after the output projection.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        qkv_bias: bool = False,
        proj_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embedding dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        head_dim = dim // num_heads
        self.scale = head_dim**-0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim, bias=proj_bias)
        self.proj_drop = nn.Dropout(proj_drop)

    def _qkv(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, dim = x.shape
        # [B, N, 3, heads, D/heads]
        return self.qkv(x).reshape(batch, tokens, 3, self.num_heads, dim // self.num_heads)

    def _dropout_p(self) -> float:
        return self.attn_drop.p if self.training else 0.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, dim = x.shape
        q, k, v = self._qkv(x).permute(2, 0, 3, 1, 4).unbind(0)  # each [B, heads, N, D/heads]
        x = F.scaled_dot_product_attention(q, k, v, dropout_p=self._dropout_p(), scale=self.scale)
        x = x.transpose(1, 2).reshape(batch, tokens, dim)
        return self.proj_drop(self.proj(x))


class MemEffAttention(Attention):
    """Attention that uses xFormers' kernel on CUDA when available, ``Attention`` otherwise.

    ``attn_bias`` (an xFormers attention bias) is only meaningful with xFormers.
    """

    def forward(self, x: torch.Tensor, attn_bias: Optional[Any] = None) -> torch.Tensor:
        ops = _xformers_ops() if x.is_cuda else None
        if ops is None:
            if attn_bias is not None:
                raise RuntimeError("attn_bias requires xFormers on a CUDA device")
            return super().forward(x)
        batch, tokens, dim = x.shape
        q, k, v = self._qkv(x).unbind(2)  # each [B, N, heads, D/heads], xFormers' layout
        x = ops.memory_efficient_attention(q, k, v, attn_bias=attn_bias, p=self._dropout_p(), scale=self.scale)
        x = x.reshape(batch, tokens, dim)
        return self.proj_drop(self.proj(x))
