"""Pre-norm transformer block with LayerScale and stochastic depth."""

from typing import Callable, List, Union

import torch
from torch import nn

from .attention import Attention
from .drop_path import DropPath
from .layer_scale import LayerScale
from .mlp import Mlp


def drop_add_residual_stochastic_depth(
    x: torch.Tensor,
    residual_func: Callable[[torch.Tensor], torch.Tensor],
    sample_drop_ratio: float = 0.0,
) -> torch.Tensor:
    """Add a residual computed on a random subset of the batch only (cheaper stochastic depth).

    Args:
        x: tokens [B, N, D].
        residual_func: residual branch.
        sample_drop_ratio: fraction of samples whose branch is skipped.

    Returns:
        ``x`` plus the branch output, scaled by B / subset size, on the kept samples.
    """
    batch = x.shape[0]
    subset_size = max(int(batch * (1 - sample_drop_ratio)), 1)
    kept = torch.randperm(batch, device=x.device)[:subset_size]
    residual = residual_func(x[kept])
    # Rescaling keeps the expected residual equal to the full-batch one.
    out = torch.index_add(x.flatten(1), 0, kept, residual.flatten(1).to(x.dtype), alpha=batch / subset_size)
    return out.view_as(x)


class Block(nn.Module):
    """``x + ls1(attn(norm1(x)))`` then ``x + ls2(mlp(norm2(x)))``, each with stochastic depth.

    A list of tensors (crop groups of different sizes) is processed group by group.

    Args:
        dim: token width.
        num_heads: attention heads.
        mlp_ratio: FFN hidden width as a multiple of ``dim``.
        qkv_bias: bias in the qkv projection.
        proj_bias: bias in the attention output projection.
        ffn_bias: biases in the FFN.
        drop: dropout after projections.
        attn_drop: dropout on attention weights.
        init_values: LayerScale initial value; None or 0 disables LayerScale.
        drop_path: stochastic depth probability.
        act_layer: FFN activation class.
        norm_layer: normalisation class.
        attn_class: attention class.
        ffn_layer: FFN class (``Mlp``, ``SwiGLUFFNFused``, ...).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = False,
        proj_bias: bool = True,
        ffn_bias: bool = True,
        drop: float = 0.0,
        attn_drop: float = 0.0,
        init_values=None,
        drop_path: float = 0.0,
        act_layer: Callable[..., nn.Module] = nn.GELU,
        norm_layer: Callable[..., nn.Module] = nn.LayerNorm,
        attn_class: Callable[..., nn.Module] = Attention,
        ffn_layer: Callable[..., nn.Module] = Mlp,
    ) -> None:
        super().__init__()
        self.norm1 = norm_layer(dim)
        self.attn = attn_class(
            dim, num_heads=num_heads, qkv_bias=qkv_bias, proj_bias=proj_bias, attn_drop=attn_drop, proj_drop=drop
        )
        self.ls1 = LayerScale(dim, init_values=init_values) if init_values else nn.Identity()
        self.drop_path1 = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()

        self.norm2 = norm_layer(dim)
        self.mlp = ffn_layer(
            in_features=dim, hidden_features=int(dim * mlp_ratio), act_layer=act_layer, drop=drop, bias=ffn_bias
        )
        self.ls2 = LayerScale(dim, init_values=init_values) if init_values else nn.Identity()
        self.drop_path2 = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()

        self.sample_drop_ratio = drop_path

    def _attn_residual(self, x: torch.Tensor) -> torch.Tensor:
        return self.ls1(self.attn(self.norm1(x)))

    def _ffn_residual(self, x: torch.Tensor) -> torch.Tensor:
        return self.ls2(self.mlp(self.norm2(x)))

    def _forward_tensor(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and self.sample_drop_ratio > 0.1:
            # High drop rates: skip the computation for the dropped samples altogether.
            x = drop_add_residual_stochastic_depth(x, self._attn_residual, self.sample_drop_ratio)
            return drop_add_residual_stochastic_depth(x, self._ffn_residual, self.sample_drop_ratio)
        if self.training and self.sample_drop_ratio > 0.0:
            x = x + self.drop_path1(self._attn_residual(x))
            return x + self.drop_path2(self._ffn_residual(x))
        x = x + self._attn_residual(x)
        return x + self._ffn_residual(x)

    def forward(self, x: Union[torch.Tensor, List[torch.Tensor]]) -> Union[torch.Tensor, List[torch.Tensor]]:
        """Args: tokens [B, N, D] or a list of them. Returns: the same structure."""
        if isinstance(x, torch.Tensor):
            return self._forward_tensor(x)
        if isinstance(x, list):
            return [self._forward_tensor(group) for group in x]
        raise TypeError(f"Block expects a tensor or a list of tensors, got {type(x).__name__}")


# DINOv2 packs crop groups into one nested sequence with xFormers; here every group is run in turn,
# which gives the same result, so the nested block is the plain block.
NestedTensorBlock = Block
