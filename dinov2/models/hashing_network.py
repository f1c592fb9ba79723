"""Inference network: backbone + hash head, giving continuous codes ``u`` for global-size images.

``build_hashing_network(cfg, weights)`` accepts the checkpoint formats of
``dinov2.models.checkpoint_formats``: this project's training and teacher checkpoints, a
``teacher_checkpoint.pth`` written by the reference SDSH code, or a bare DINOv2 backbone.
"""

import logging
from typing import Optional

import torch
from torch import nn

from dinov2.layers.hash_head import HashHead
from dinov2.layers.pos_embed import resize_pos_embed
from dinov2.models.checkpoint_formats import CheckpointFormatError, read_hashing_checkpoint
from dinov2.utils.config import ConfigError

logger = logging.getLogger("dinov2")


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


def load_hashing_state_dict(model: HashingNetwork, state_dict: dict, source: str) -> None:
    """Load a ``backbone.*``/``hash_head.*`` state dict into ``model``; every tensor must land.

    ``pos_embed`` is resized (bicubic) when the checkpoint was built for another image size.
    Any missing, unexpected or mis-shaped key is an error naming it, since a partial load would
    silently produce other codes than the checkpoint's model.
    """
    target = model.state_dict()
    state_dict = dict(state_dict)
    key = "backbone.pos_embed"
    if key in state_dict and key in target and state_dict[key].shape != target[key].shape:
        # pos_embed holds the class token then the patch grid (register tokens have no position).
        side = int(round((target[key].shape[1] - 1) ** 0.5))
        logger.info(f"{source}: resizing {key} {tuple(state_dict[key].shape)} -> {tuple(target[key].shape)}")
        state_dict[key] = resize_pos_embed(state_dict[key], (side, side), num_prefix_tokens=1)
    missing = sorted(set(target) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(target))
    mismatched = [
        f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(target[k].shape)}"
        for k in sorted(set(target) & set(state_dict))
        if tuple(state_dict[k].shape) != tuple(target[k].shape)
    ]
    if missing or unexpected or mismatched:
        parts = []
        if mismatched:
            parts.append("shape mismatch: " + "; ".join(mismatched[:10]))
        if missing:
            parts.append("missing keys: " + ", ".join(missing[:10]) + (" ..." if len(missing) > 10 else ""))
        if unexpected:
            parts.append("unexpected keys: " + ", ".join(unexpected[:10]) + (" ..." if len(unexpected) > 10 else ""))
        raise CheckpointFormatError(f"{source} does not match the configured network ({'; '.join(parts)})")
    model.load_state_dict(state_dict, strict=True)


def build_hashing_network(cfg, weights: Optional[str] = None) -> HashingNetwork:
    """Build the teacher's backbone and hash head from ``cfg`` and load ``weights``.

    Args:
        cfg: the merged configuration.
        weights: path of a checkpoint (see ``dinov2.models.checkpoint_formats``), or None for
            random weights (the backbone then gets ``student.pretrained_weights`` if set).
    Returns:
        A HashingNetwork in eval mode on the CPU.
    Raises:
        CheckpointFormatError: unreadable file or a layout that does not match the config.
    """
    from dinov2.models import build_model_from_cfg
    from dinov2.utils.utils import load_pretrained_weights

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
