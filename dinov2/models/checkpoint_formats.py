"""Checkpoint formats understood by the inference network, each adapted by one named function.

Formats (detected from the keys, never from the file name):
- ``sdsh_training``: this project's training checkpoint, ``{"model": SSLMetaArch.state_dict(), ...}``
  with ``teacher.backbone.*`` and ``teacher.hash_head.*`` keys.
- ``sdsh_teacher``: this project's ``teacher_checkpoint.pth``,
  ``{"teacher": {"backbone.*", "hash_head.*", "dino_head.*", "ibot_head.*"}, "mAP", "iteration"}``.
- ``sdsh_reference``: a ``teacher_checkpoint.pth`` written by the reference SDSH code, whose hash
  layers live inside the backbone (``backbone.hash_layer.*``, ``backbone.patch_attn_global.*``, ...).
- ``dinov2_backbone``: a bare DINOv2 backbone state dict (``cls_token``, ``blocks.*``, ...), e.g.
  ``dinov2_vits14_pretrain.pth``.
"""

import os
from typing import Dict, Tuple

import torch

# Reference SDSH module names (inside its backbone) -> this project's hash head.
REFERENCE_PREFIX_MAP = {
    "backbone.patch_attn_global.": "hash_head.pool_global.",
    "backbone.patch_attn_local.": "hash_head.pool_local.",
    "backbone.hash_layer.": "hash_head.hash_layer.",
    "backbone.ibot_layer_patch.": "hash_head.patch_proj.",
}
_HEAD_PREFIXES = ("dino_head.", "ibot_head.")
_BACKBONE_MARKERS = ("cls_token", "pos_embed", "patch_embed.proj.weight")


class CheckpointFormatError(ValueError):
    """A checkpoint file that cannot be read or whose layout is not one of the known formats."""


def load_checkpoint_file(path: str) -> dict:
    """``torch.load`` of ``path`` with ``weights_only=True``; errors name the file."""
    if not os.path.isfile(path):
        raise CheckpointFormatError(f"checkpoint file not found: {path}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointFormatError(
            f"cannot read checkpoint {path}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''} "
            "(truncated file, not a torch checkpoint, or it holds objects other than tensors)"
        ) from exc
    if not isinstance(checkpoint, dict):
        raise CheckpointFormatError(f"checkpoint {path} holds a {type(checkpoint).__name__}, expected a dict")
    return checkpoint


def convert_sdsh_reference_state_dict(state_dict: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Map a reference SDSH teacher state dict onto ``backbone.*`` + ``hash_head.*`` names.

    The reference keeps the pooling, hash and iBOT projection layers inside the backbone; here they
    form the ``hash_head`` module (``pool_global``, ``pool_local``, ``hash_layer``, ``patch_proj``).
    The DINO and iBOT projection heads are kept under their own names.
    """
    converted = {}
    for key, value in state_dict.items():
        for old, new in REFERENCE_PREFIX_MAP.items():
            if key.startswith(old):
                key = new + key[len(old) :]
                break
        converted[key] = value
    return converted


def _strip(state_dict: Dict[str, torch.Tensor], prefix: str) -> Dict[str, torch.Tensor]:
    return {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}


def _strip_module(state_dict: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    return {k[len("module.") :] if k.startswith("module.") else k: v for k, v in state_dict.items()}


def detect_format(checkpoint: dict) -> str:
    """Name of the format of a loaded checkpoint, or raise CheckpointFormatError."""
    model = checkpoint.get("model")
    if isinstance(model, dict) and any(k.startswith("teacher.hash_head.") for k in model):
        return "sdsh_training"
    teacher = checkpoint.get("teacher")
    if isinstance(teacher, dict):
        keys = _strip_module(teacher).keys()
        if any(k.startswith("hash_head.") for k in keys):
            return "sdsh_teacher"
        if any(k.startswith(tuple(REFERENCE_PREFIX_MAP)) for k in keys):
            return "sdsh_reference"
        if any(k.startswith("backbone.") for k in keys):
            return "dinov2_backbone"
    if all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        keys = _strip_module(checkpoint).keys()
        if any(k.startswith("hash_head.") for k in keys):
            return "sdsh_teacher"
        if any(k in _BACKBONE_MARKERS or k.removeprefix("backbone.") in _BACKBONE_MARKERS for k in keys):
            return "dinov2_backbone"
    sample = ", ".join(list(checkpoint.keys())[:8])
    raise CheckpointFormatError(
        "unknown checkpoint layout (expected an SDSH training/teacher checkpoint, a reference SDSH "
        f"teacher_checkpoint.pth or a DINOv2 backbone); top-level keys: {sample}"
    )


def read_hashing_checkpoint(path: str) -> Tuple[Dict[str, torch.Tensor], str]:
    """Read ``path`` and return its ``backbone.*`` + ``hash_head.*`` state dict and its format name.

    For ``dinov2_backbone`` the returned dict holds only backbone keys (the caller loads them with
    ``load_pretrained_weights``, which interpolates pos_embed and reports keys by name).
    """
    checkpoint = load_checkpoint_file(path)
    try:
        fmt = detect_format(checkpoint)
    except CheckpointFormatError as exc:
        raise CheckpointFormatError(f"{path}: {exc}") from None
    if fmt == "sdsh_training":
        state_dict = _strip(checkpoint["model"], "teacher.")
    elif fmt in ("sdsh_teacher", "sdsh_reference", "dinov2_backbone") and isinstance(checkpoint.get("teacher"), dict):
        state_dict = _strip_module(checkpoint["teacher"])
    else:
        state_dict = _strip_module(checkpoint)
    if fmt == "sdsh_reference":
        state_dict = convert_sdsh_reference_state_dict(state_dict)
    if fmt == "dinov2_backbone":
        return {k.removeprefix("backbone."): v for k, v in state_dict.items()}, fmt
    state_dict = {k: v for k, v in state_dict.items() if not k.startswith(_HEAD_PREFIXES)}
    return state_dict, fmt
