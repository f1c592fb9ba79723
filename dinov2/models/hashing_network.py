"""Inference network: backbone + hash head, giving continuous codes ``u`` for global-size images.

``build_hashing_network(cfg, weights)`` accepts the checkpoint formats of
``dinov2.checkpoint``: this project's training and teacher checkpoints, a
``teacher_checkpoint.pth`` written by the reference SDSH code, or a bare DINOv2 backbone.
"""

import logging

import torch
from torch import nn

from dinov2.layers.hash_head import HashHead

logger = logging.getLogger("dinov2")

# The config sections that decide the network, hence the codes (fingerprints of stored codes use them).
NETWORK_CONFIG_SECTIONS = ("student", "hash", "crops")


def build_hash_head(cfg, embed_dim: int) -> HashHead:
    """The hash head described by ``cfg.hash`` and ``cfg.crops`` for a backbone of width ``embed_dim``.

    ``cfg`` comes validated from ``merge_config`` (crops are multiples of the patch, hash_bit > 0).
    """
    patch = cfg.student.patch_size
    return HashHead(
        embed_dim=embed_dim,
        hash_bit=cfg.hash.hash_bit,
        num_patches_global=(cfg.crops.global_crops_size // patch) ** 2,
        num_patches_local=(cfg.crops.local_crops_size // patch) ** 2,
        patch_proj_dim=cfg.hash.patch_proj_dim,
        pooling=cfg.hash.pooling,
    )


class HashingNetwork(nn.Module):
    """Backbone and hash head of the SDSH teacher, for encoding images.

    Args:
        backbone: a DinoVisionTransformer.
        hash_head: the HashHead trained with it.
    """

    def __init__(self, backbone: nn.Module, hash_head: HashHead):
        super().__init__()
        self.backbone = backbone
        self.hash_head = hash_head

    @property
    def hash_bit(self) -> int:
        return self.hash_head.hash_bit

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Continuous codes ``u`` [B, K] of global-size images [B, 3, H, W]; ``sign`` gives the bits."""
        out = self.backbone.forward_features(images)
        return self.hash_head(out["x_norm_clstoken"], out["x_norm_patchtokens"], view="global")["codes"]
