"""Inference network: backbone + hash head, giving continuous codes ``u`` for global-size images.

``build_hashing_network(cfg, weights)`` accepts the checkpoint formats of
``dinov2.checkpoint``: this project's training and teacher checkpoints, a
``teacher_checkpoint.pth`` written by the reference SDSH code, or a bare DINOv2 backbone.
"""

import logging
from typing import Optional, Tuple

import torch
from torch import nn

from dinov2.checkpoint import (
    CheckpointFormatError,
    load_hashing_state_dict,
    load_pretrained_weights,
    read_checkpoint,
    read_hashing_checkpoint,
)
from dinov2.layers.hash_head import HashHead
from dinov2.utils.config import ConfigError, fix_random_seeds

logger = logging.getLogger("dinov2")

# The config sections that decide the network, hence the codes (fingerprints of stored codes use them).
NETWORK_CONFIG_SECTIONS = ("student", "hash", "crops")


def num_patches(crop_size: int, patch_size: int, key: str) -> int:
    """Number of patch tokens of a square crop; the crop size must be a multiple of the patch."""
    if crop_size <= 0 or crop_size % patch_size != 0:
        raise ConfigError(f"{key}={crop_size} is not a positive multiple of student.patch_size={patch_size}")
    return (crop_size // patch_size) ** 2


def build_hash_head(cfg, embed_dim: int) -> HashHead:
    """The hash head described by ``cfg.hash`` and ``cfg.crops`` for a backbone of width ``embed_dim``."""
    if cfg.hash.hash_bit <= 0:
        raise ConfigError(f"hash.hash_bit={cfg.hash.hash_bit} must be a positive number of bits")
    return HashHead(
        embed_dim=embed_dim,
        hash_bit=cfg.hash.hash_bit,
        num_patches_global=num_patches(cfg.crops.global_crops_size, cfg.student.patch_size, "crops.global_crops_size"),
        num_patches_local=num_patches(cfg.crops.local_crops_size, cfg.student.patch_size, "crops.local_crops_size"),
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


def build_hashing_network(cfg, weights: Optional[str] = None) -> HashingNetwork:
    """Build the teacher's backbone and hash head from ``cfg`` and load ``weights``.

    Args:
        cfg: the merged configuration.
        weights: path of a checkpoint (see ``dinov2.checkpoint``), or None for
            random weights (the backbone then gets ``student.pretrained_weights`` if set).
    Returns:
        A HashingNetwork in eval mode on the CPU.
    Raises:
        CheckpointFormatError: unreadable file or a layout that does not match the config.
    """
    from dinov2.models import build_model_from_cfg

    backbone, embed_dim = build_model_from_cfg(cfg, only_teacher=True)
    model = HashingNetwork(backbone, build_hash_head(cfg, embed_dim))
    if weights:
        state_dict, fmt = read_hashing_checkpoint(weights)
        if fmt == "dinov2_backbone":
            load_pretrained_weights(model.backbone, weights, None)
            logger.warning(f"{weights} is a bare DINOv2 backbone: the hash head keeps its random initialisation")
        else:
            load_hashing_state_dict(model, state_dict, f"checkpoint {weights} ({fmt})")
            logger.info(f"loaded {fmt} checkpoint {weights}")
    elif cfg.student.pretrained_weights:
        load_pretrained_weights(model.backbone, cfg.student.pretrained_weights, None)
    return model.eval()


def load_hashing_network(cfg, weights: str, device: torch.device) -> Tuple[HashingNetwork, str]:
    """The teacher's backbone and hash head with ``weights`` loaded, in eval mode on ``device``.

    Random weights (``weights`` empty) are reproducible: the modules are initialised right after
    seeding with ``train.seed``.

    Returns:
        (network, checkpoint format name; ``random`` without weights).
    Raises:
        CheckpointFormatError: unreadable file or a layout that does not match the config.
        ConfigError: the config's network cannot be built with these weights.
    """
    fmt = "random"
    if weights:
        fmt = read_checkpoint(weights)["format"]
    fix_random_seeds(cfg.train.seed)
    try:
        network = build_hashing_network(cfg, weights or None)
    except (CheckpointFormatError, ConfigError):
        raise
    except (ValueError, RuntimeError) as exc:
        # e.g. an unknown student.arch or pretrained weights of another architecture
        source = weights or cfg.student.pretrained_weights or "random weights"
        raise ConfigError(f"cannot build the network of the config with {source}: {exc}") from None
    return network.to(device).eval(), fmt
