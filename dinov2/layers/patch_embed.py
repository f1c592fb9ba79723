"""Image to patch embeddings with one strided convolution."""

from typing import Callable, Optional, Tuple, Union

import torch
from torch import nn


def _pair(value: Union[int, Tuple[int, int]]) -> Tuple[int, int]:
    if isinstance(value, tuple):
        if len(value) != 2:
            raise ValueError(f"expected an int or a pair (h, w), got {value}")
        return value
    return (value, value)


class PatchEmbed(nn.Module):
    """Split an image [B, C, H, W] into patches and embed each one: [B, N, D] with N = (H/p)(W/p).

    Args:
        img_size: image size the model is built for (sets ``num_patches``).
        patch_size: patch side in pixels.
        in_chans: input channels.
        embed_dim: embedding width D.
        norm_layer: optional normalisation applied to the embeddings.
        flatten_embedding: return [B, N, D] (True) or [B, H/p, W/p, D] (False).
    """

    def __init__(
        self,
        img_size: Union[int, Tuple[int, int]] = 224,
        patch_size: Union[int, Tuple[int, int]] = 16,
        in_chans: int = 3,
        embed_dim: int = 768,
        norm_layer: Optional[Callable[[int], nn.Module]] = None,
        flatten_embedding: bool = True,
    ) -> None:
        super().__init__()
        image_hw = _pair(img_size)
        patch_hw = _pair(patch_size)
        if image_hw[0] % patch_hw[0] or image_hw[1] % patch_hw[1]:
            raise ValueError(f"img_size {image_hw} is not divisible by patch_size {patch_hw}")
        self.img_size = image_hw
        self.patch_size = patch_hw
        self.patches_resolution = (image_hw[0] // patch_hw[0], image_hw[1] // patch_hw[1])
        self.num_patches = self.patches_resolution[0] * self.patches_resolution[1]
        self.in_chans = in_chans
        self.embed_dim = embed_dim
        self.flatten_embedding = flatten_embedding
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_hw, stride=patch_hw)
        self.norm = norm_layer(embed_dim) if norm_layer else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        patch_h, patch_w = self.patch_size
        if height % patch_h or width % patch_w:
            raise ValueError(
                f"input image size {height}x{width} is not divisible by the patch size {patch_h}x{patch_w}"
            )
        x = self.proj(x)  # [B, D, H/p, W/p]
        grid_h, grid_w = x.shape[-2:]
        x = self.norm(x.flatten(2).transpose(1, 2))  # [B, N, D]
        if not self.flatten_embedding:
            x = x.reshape(-1, grid_h, grid_w, self.embed_dim)
        return x
