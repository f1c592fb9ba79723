"""DINOv2 Vision Transformer backbone (same arguments, behaviour and state-dict names as DINOv2)."""

import logging
from functools import partial
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn
from torch.nn.init import trunc_normal_

from dinov2.layers import MemEffAttention, Mlp, PatchEmbed, SwiGLUFFNFused, resize_pos_embed
from dinov2.layers import NestedTensorBlock as Block

logger = logging.getLogger("dinov2")


class BlockChunk(nn.ModuleList):
    """A run of consecutive blocks, the unit FSDP wraps when ``block_chunks > 0``."""

    def forward(self, x):
        for block in self:
            x = block(x)
        return x


def _identity_ffn(*args, **kwargs) -> nn.Module:
    return nn.Identity()


def _ffn_class(ffn_layer: str) -> Callable[..., nn.Module]:
    if ffn_layer == "mlp":
        return Mlp
    if ffn_layer in ("swiglufused", "swiglu"):
        return SwiGLUFFNFused
    if ffn_layer == "identity":
        return _identity_ffn
    raise ValueError(f"unknown ffn_layer {ffn_layer!r}, expected one of 'mlp', 'swiglu', 'swiglufused', 'identity'")


class DinoVisionTransformer(nn.Module):
    """ViT with CLS token, optional register tokens, a mask token for iBOT and interpolated positions.

    Args:
        img_size: image size the position embeddings are built for.
        patch_size: patch side in pixels.
        in_chans: input channels.
        embed_dim: token width.
        depth: number of blocks.
        num_heads: attention heads.
        mlp_ratio: FFN hidden width / embed_dim.
        qkv_bias: bias in the qkv projections.
        ffn_bias: biases in the FFNs.
        proj_bias: bias in the attention output projections.
        drop_path_rate: stochastic depth rate (of the last block when not uniform).
        drop_path_uniform: same rate for every block instead of a linear ramp from 0.
        init_values: LayerScale initial value (None: no LayerScale).
        embed_layer: patch embedding class.
        act_layer: FFN activation class.
        block_fn: block class.
        ffn_layer: "mlp", "swiglu", "swiglufused" or "identity".
        block_chunks: split the blocks into this many chunks for FSDP wrapping (0: flat list).
        num_register_tokens: extra learned tokens after the CLS token.
        interpolate_antialias: antialias when interpolating position embeddings at forward time.
        interpolate_offset: DINOv2's offset added to the target grid in the interpolation scale factor.
    """

    def __init__(
        self,
        img_size: int = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        ffn_bias: bool = True,
        proj_bias: bool = True,
        drop_path_rate: float = 0.0,
        drop_path_uniform: bool = False,
        init_values: Optional[float] = None,
        embed_layer: Callable[..., nn.Module] = PatchEmbed,
        act_layer: Callable[..., nn.Module] = nn.GELU,
        block_fn: Callable[..., nn.Module] = Block,
        ffn_layer: str = "mlp",
        block_chunks: int = 1,
        num_register_tokens: int = 0,
        interpolate_antialias: bool = False,
        interpolate_offset: float = 0.1,
    ) -> None:
        super().__init__()
        norm_layer = partial(nn.LayerNorm, eps=1e-6)

        self.num_features = self.embed_dim = embed_dim
        self.num_tokens = 1
        self.n_blocks = depth
        self.num_heads = num_heads
        self.patch_size = patch_size
        self.num_register_tokens = num_register_tokens
        self.interpolate_antialias = interpolate_antialias
        self.interpolate_offset = interpolate_offset

        self.patch_embed = embed_layer(img_size=img_size, patch_size=patch_size, in_chans=in_chans, embed_dim=embed_dim)
        num_patches = self.patch_embed.num_patches

        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + self.num_tokens, embed_dim))
        if num_register_tokens < 0:
            raise ValueError(f"num_register_tokens must be >= 0, got {num_register_tokens}")
        self.register_tokens = (
            nn.Parameter(torch.zeros(1, num_register_tokens, embed_dim)) if num_register_tokens else None
        )

        if drop_path_uniform:
            drop_rates = [drop_path_rate] * depth
        else:
            drop_rates = torch.linspace(0, drop_path_rate, depth).tolist()

        ffn_class = _ffn_class(ffn_layer)
        blocks_list = [
            block_fn(
                dim=embed_dim,
                num_heads=num_heads,
                mlp_ratio=mlp_ratio,
                qkv_bias=qkv_bias,
                proj_bias=proj_bias,
                ffn_bias=ffn_bias,
                drop_path=drop_rates[i],
                norm_layer=norm_layer,
                act_layer=act_layer,
                ffn_layer=ffn_class,
                init_values=init_values,
            )
            for i in range(depth)
        ]
        if block_chunks > 0:
            self.chunked_blocks = True
            chunk_size = depth // block_chunks
            # Identity padding keeps the global block index in the state-dict names (blocks.{chunk}.{i}).
            chunks = [[nn.Identity()] * i + blocks_list[i : i + chunk_size] for i in range(0, depth, chunk_size)]
            self.blocks = nn.ModuleList([BlockChunk(chunk) for chunk in chunks])
        else:
            self.chunked_blocks = False
            self.blocks = nn.ModuleList(blocks_list)

        self.norm = norm_layer(embed_dim)
        self.head = nn.Identity()
        self.mask_token = nn.Parameter(torch.zeros(1, embed_dim))

        self.init_weights()

    def init_weights(self) -> None:
        """DINOv2 / timm initialisation: positions trunc-normal .02, CLS and registers N(0, 1e-6), Linear .02."""
        trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        if self.register_tokens is not None:
            nn.init.normal_(self.register_tokens, std=1e-6)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def interpolate_pos_encoding(self, x: torch.Tensor, w: int, h: int) -> torch.Tensor:
        """Position embeddings for an image of another size.

        Args:
            x: tokens [B, 1 + N, D] (only the dtype is used).
            w: image size along dim 2 (rows), in pixels; DINOv2's naming.
            h: image size along dim 3 (columns), in pixels.

        Returns:
            [1, 1 + (w/p)(h/p), D] in the dtype of ``x``.
        """
        new_grid = (w // self.patch_size, h // self.patch_size)
        pos_embed = resize_pos_embed(
            self.pos_embed,
            new_grid,
            num_prefix_tokens=self.num_tokens,
            antialias=self.interpolate_antialias,
            offset=self.interpolate_offset,
        )
        return pos_embed.to(x.dtype)

    def prepare_tokens_with_masks(self, x: torch.Tensor, masks: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Embed patches, replace masked ones by ``mask_token``, add CLS, positions and registers.

        Args:
            x: images [B, C, H, W], H and W multiples of the patch size.
            masks: bool [B, N], True where the patch embedding is replaced by ``mask_token``.

        Returns:
            tokens [B, 1 + R + N, D] ordered CLS, registers, patches.
        """
        _, _, w, h = x.shape
        x = self.patch_embed(x)  # [B, N, D]
        if masks is not None:
            if tuple(masks.shape) != tuple(x.shape[:2]):
                raise ValueError(f"masks have shape {list(masks.shape)}, expected [B, N] = {list(x.shape[:2])}")
            x = torch.where(masks.unsqueeze(-1), self.mask_token.to(x.dtype).unsqueeze(0), x)
        x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1)
        x = x + self.interpolate_pos_encoding(x, w, h)
        if self.register_tokens is not None:
            # Registers have no position embedding, as in DINOv2.
            x = torch.cat((x[:, :1], self.register_tokens.expand(x.shape[0], -1, -1), x[:, 1:]), dim=1)
        return x

    def _output_dict(self, x: torch.Tensor, masks: Optional[torch.Tensor]) -> Dict[str, Optional[torch.Tensor]]:
        x_norm = self.norm(x)
        return {
            "x_norm_clstoken": x_norm[:, 0],
            "x_norm_regtokens": x_norm[:, 1 : self.num_register_tokens + 1],
            "x_norm_patchtokens": x_norm[:, self.num_register_tokens + 1 :],
            "x_prenorm": x,
            "masks": masks,
        }

    def forward_features_list(
        self, x_list: List[torch.Tensor], masks_list: Optional[List[Optional[torch.Tensor]]]
    ) -> List[Dict[str, Optional[torch.Tensor]]]:
        """Crop groups of different sizes, each [B_i, C, H_i, W_i], run group by group through the blocks.

        Args:
            x_list: image groups.
            masks_list: one bool mask [B_i, N_i] or None per group (or None for no masks).

        Returns:
            One ``forward_features`` dict per group.
        """
        if masks_list is None:
            masks_list = [None] * len(x_list)
        if len(masks_list) != len(x_list):
            raise ValueError(f"got {len(x_list)} image groups but {len(masks_list)} masks")
        x = [self.prepare_tokens_with_masks(images, masks) for images, masks in zip(x_list, masks_list)]
        for block in self.blocks:
            x = block(x)
        return [self._output_dict(tokens, masks) for tokens, masks in zip(x, masks_list)]

    def forward_features(
        self,
        x: Union[torch.Tensor, List[torch.Tensor]],
        masks: Optional[Union[torch.Tensor, List[Optional[torch.Tensor]]]] = None,
    ) -> Union[Dict[str, Optional[torch.Tensor]], List[Dict[str, Optional[torch.Tensor]]]]:
        """Normalised CLS, register and patch tokens.

        Args:
            x: images [B, C, H, W], or a list of groups (then ``masks`` is a list too).
            masks: bool [B, N] or None.

        Returns:
            dict with x_norm_clstoken [B, D], x_norm_regtokens [B, R, D], x_norm_patchtokens [B, N, D],
            x_prenorm [B, 1 + R + N, D] and masks; a list of such dicts for a list input.
        """
        if isinstance(x, list):
            return self.forward_features_list(x, masks)
        x_tokens = self.prepare_tokens_with_masks(x, masks)
        for block in self.blocks:
            x_tokens = block(x_tokens)
        return self._output_dict(x_tokens, masks)

    def _flat_blocks(self) -> List[nn.Module]:
        if not self.chunked_blocks:
            return list(self.blocks)
        return [block for chunk in self.blocks for block in chunk if not isinstance(block, nn.Identity)]

    def get_intermediate_layers(
        self,
        x: torch.Tensor,
        n: Union[int, Sequence[int]] = 1,
        reshape: bool = False,
        return_class_token: bool = False,
        norm: bool = True,
    ) -> Tuple:
        """Patch tokens (and CLS tokens) after some blocks.

        Args:
            x: images [B, C, H, W].
            n: the last n blocks, or the indices of the blocks to return.
            reshape: return patch tokens as [B, D, H/p, W/p] instead of [B, N, D].
            return_class_token: return (patch tokens, CLS token [B, D]) pairs.
            norm: apply the final norm.

        Returns:
            tuple with one entry per selected block, in block order.
        """
        blocks = self._flat_blocks()
        wanted = set(range(len(blocks) - n, len(blocks))) if isinstance(n, int) else set(n)
        if not wanted <= set(range(len(blocks))):
            raise ValueError(f"block indices {sorted(wanted)} out of range for {len(blocks)} blocks")
        tokens = self.prepare_tokens_with_masks(x)
        outputs = []
        for index, block in enumerate(blocks):
            tokens = block(tokens)
            if index in wanted:
                outputs.append(self.norm(tokens) if norm else tokens)
        class_tokens = [out[:, 0] for out in outputs]
        patch_tokens = [out[:, 1 + self.num_register_tokens :] for out in outputs]
        if reshape:
            batch, _, height, width = x.shape
            grid = (height // self.patch_size, width // self.patch_size)
            patch_tokens = [out.reshape(batch, *grid, -1).permute(0, 3, 1, 2).contiguous() for out in patch_tokens]
        if return_class_token:
            return tuple(zip(patch_tokens, class_tokens))
        return tuple(patch_tokens)

    def forward(self, *args, is_training: bool = False, **kwargs):
        """Training: the ``forward_features`` output; otherwise ``head`` (Identity) of the CLS token."""
        ret = self.forward_features(*args, **kwargs)
        if is_training:
            return ret
        return self.head(ret["x_norm_clstoken"])


def _memeff_block() -> Callable[..., nn.Module]:
    return partial(Block, attn_class=MemEffAttention)


def vit_small(patch_size: int = 16, num_register_tokens: int = 0, **kwargs) -> DinoVisionTransformer:
    """ViT-S: width 384, depth 12, 6 heads."""
    return DinoVisionTransformer(
        patch_size=patch_size,
        embed_dim=384,
        depth=12,
        num_heads=6,
        mlp_ratio=4,
        block_fn=_memeff_block(),
        num_register_tokens=num_register_tokens,
        **kwargs,
    )


def vit_base(patch_size: int = 16, num_register_tokens: int = 0, **kwargs) -> DinoVisionTransformer:
    """ViT-B: width 768, depth 12, 12 heads."""
    return DinoVisionTransformer(
        patch_size=patch_size,
        embed_dim=768,
        depth=12,
        num_heads=12,
        mlp_ratio=4,
        block_fn=_memeff_block(),
        num_register_tokens=num_register_tokens,
        **kwargs,
    )


def vit_large(patch_size: int = 16, num_register_tokens: int = 0, **kwargs) -> DinoVisionTransformer:
    """ViT-L: width 1024, depth 24, 16 heads."""
    return DinoVisionTransformer(
        patch_size=patch_size,
        embed_dim=1024,
        depth=24,
        num_heads=16,
        mlp_ratio=4,
        block_fn=_memeff_block(),
        num_register_tokens=num_register_tokens,
        **kwargs,
    )


def vit_giant2(patch_size: int = 16, num_register_tokens: int = 0, **kwargs) -> DinoVisionTransformer:
    """ViT-g/2: width 1536, depth 40, 24 heads, SwiGLU FFN (64 channels per head)."""
    kwargs.setdefault("ffn_layer", "swiglufused")
    return DinoVisionTransformer(
        patch_size=patch_size,
        embed_dim=1536,
        depth=40,
        num_heads=24,
        mlp_ratio=4,
        block_fn=_memeff_block(),
        num_register_tokens=num_register_tokens,
        **kwargs,
    )


def vit_demo(patch_size: int = 16, num_register_tokens: int = 0, **kwargs) -> DinoVisionTransformer:
    """Small ViT for the CPU demo: width 192, depth 4, 3 heads (not a published DINOv2 size)."""
    return DinoVisionTransformer(
        patch_size=patch_size,
        embed_dim=192,
        depth=4,
        num_heads=3,
        mlp_ratio=4,
        block_fn=_memeff_block(),
        num_register_tokens=num_register_tokens,
        **kwargs,
    )
