"""Backbones and the inference network built from a config: the one place models are made from ``cfg``."""

import logging
from typing import Optional, Tuple

import torch

from dinov2.checkpoint import (
    CheckpointFormatError,
    load_hashing_state_dict,
    load_pretrained_weights,
    read_checkpoint,
    read_hashing_checkpoint,
)
from dinov2.utils.config import ConfigError
from dinov2.utils.utils import fix_random_seeds

from . import vision_transformer as vits
from .hashing_network import NETWORK_CONFIG_SECTIONS, HashingNetwork, build_hash_head

logger = logging.getLogger("dinov2")

# Checkpoint formats that hold tensors only (reference SDSH teachers, DINOv2 weights): the user's config
# must describe their network.
_FORMATS_WITHOUT_CONFIG = ("sdsh_reference", "dinov2_backbone")


def _known_archs():
    return sorted(name for name, value in vars(vits).items() if name.startswith("vit_") and callable(value))


def build_model(args, only_teacher: bool = False, img_size: int = 224):
    """Build the student and teacher backbones from ``cfg.student``, as DINOv2 does.

    Args:
        args: ``cfg.student`` (arch, patch_size, drop_path_rate, layerscale, drop_path_uniform, ffn_layer,
            block_chunks, qkv_bias, proj_bias, ffn_bias, num_register_tokens, interpolate_antialias,
            interpolate_offset).
        only_teacher: build the teacher only.
        img_size: image size the position embeddings are built for.

    Returns:
        (student, teacher, embed_dim), or (teacher, embed_dim) when ``only_teacher``. The teacher has
        no stochastic depth.
    """
    arch = args.arch
    if arch.endswith("_memeff"):
        arch = arch[: -len("_memeff")]
    factory = getattr(vits, arch, None) if "vit" in arch else None
    if not callable(factory):
        raise ValueError(f"unknown student.arch {args.arch!r}, expected one of {_known_archs()}")
    vit_kwargs = dict(
        img_size=img_size,
        patch_size=args.patch_size,
        init_values=args.layerscale,
        ffn_layer=args.ffn_layer,
        block_chunks=args.block_chunks,
        qkv_bias=args.qkv_bias,
        proj_bias=args.proj_bias,
        ffn_bias=args.ffn_bias,
        num_register_tokens=args.num_register_tokens,
        interpolate_offset=args.interpolate_offset,
        interpolate_antialias=args.interpolate_antialias,
    )
    teacher = factory(**vit_kwargs)
    if only_teacher:
        return teacher, teacher.embed_dim
    student = factory(**vit_kwargs, drop_path_rate=args.drop_path_rate, drop_path_uniform=args.drop_path_uniform)
    return student, teacher, student.embed_dim


def build_model_from_cfg(cfg, only_teacher: bool = False):
    """``build_model(cfg.student, only_teacher, img_size=cfg.crops.global_crops_size)``.

    Args:
        cfg: full configuration.
        only_teacher: build the teacher only.

    Returns:
        as ``build_model``.
    """
    return build_model(cfg.student, only_teacher=only_teacher, img_size=cfg.crops.global_crops_size)


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
    except CheckpointFormatError as exc:
        if fmt in _FORMATS_WITHOUT_CONFIG:
            raise CheckpointFormatError(
                f"{exc}. A {fmt} checkpoint carries no config: pass the --config-file (or key=value options) of "
                "the model it holds"
            ) from None
        raise
    except ConfigError:
        raise
    except (ValueError, RuntimeError) as exc:
        # e.g. an unknown student.arch or pretrained weights of another architecture
        source = weights or cfg.student.pretrained_weights or "random weights"
        raise ConfigError(f"cannot build the network of the config with {source}: {exc}") from None
    return network.to(device).eval(), fmt


__all__ = [
    "NETWORK_CONFIG_SECTIONS",
    "HashingNetwork",
    "build_hash_head",
    "build_hashing_network",
    "build_model",
    "build_model_from_cfg",
    "load_hashing_network",
]
