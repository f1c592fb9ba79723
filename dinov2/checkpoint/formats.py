"""Checkpoint formats: detection from the keys, and adaptation of each format to the inference network.

``detect_format`` names the layout of a loaded checkpoint from its keys (never from the file name):

- ``sdsh_training``: this project's training (resume) checkpoint ``model_*.pth``,
  ``{"model": SSLMetaArch.state_dict(), "optimizer", "iteration", "rng_state", ...}``;
- ``sdsh_teacher``: this project's ``teacher_checkpoint.pth``,
  ``{"teacher": {"backbone.*", "hash_head.*", ...}, "mAP", "iteration", "config"}``;
- ``sdsh_reference``: a ``teacher_checkpoint.pth`` of the reference SDSH code, whose hash layers
  live inside the backbone (``backbone.hash_layer.*``, ``backbone.patch_attn_global.*``, ...);
- ``dinov2_backbone``: a bare DINOv2 backbone state dict (``cls_token``, ``blocks.*``), such as the
  public ``dinov2_vits14_pretrain.pth``.

Each detected layout becomes the ``backbone.*`` + ``hash_head.*`` state dict of ``HashingNetwork``
through one named function (``read_hashing_checkpoint``, ``convert_sdsh_reference_state_dict``), and
``load_hashing_state_dict`` loads it with every tensor accounted for.
"""

import logging
from typing import Any, Dict, List, Tuple

import torch
from torch import nn

from dinov2.layers import resize_pos_embed

from .io import CheckpointFormatError, load_torch_file

logger = logging.getLogger("dinov2")

# Reference SDSH module names (inside its backbone) -> this project's hash head; they mark its checkpoints.
REFERENCE_PREFIX_MAP = {
    "backbone.patch_attn_global.": "hash_head.pool_global.",
    "backbone.patch_attn_local.": "hash_head.pool_local.",
    "backbone.hash_layer.": "hash_head.hash_layer.",
    "backbone.ibot_layer_patch.": "hash_head.patch_proj.",
}
_BACKBONE_MARKERS = ("cls_token", "pos_embed", "patch_embed.proj.weight")


_HEAD_PREFIXES = ("dino_head.", "ibot_head.")


def strip_module_prefix(state_dict: Dict[str, Any]) -> Dict[str, Any]:
    """The state dict without the ``module.`` prefix that DistributedDataParallel adds."""
    return {k[len("module.") :] if k.startswith("module.") else k: v for k, v in state_dict.items()}


def detect_format(checkpoint: dict) -> str:
    """Name of the format of a loaded checkpoint (see the module docstring), or raise CheckpointFormatError."""
    model = checkpoint.get("model")
    if isinstance(model, dict) and any(k.startswith("teacher.hash_head.") for k in model):
        return "sdsh_training"
    teacher = checkpoint.get("teacher")
    if isinstance(teacher, dict):
        keys = strip_module_prefix(teacher).keys()
        if any(k.startswith("hash_head.") for k in keys):
            return "sdsh_teacher"
        if any(k.startswith(tuple(REFERENCE_PREFIX_MAP)) for k in keys):
            return "sdsh_reference"
        if any(k.startswith("backbone.") for k in keys):
            return "dinov2_backbone"
    if all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        keys = strip_module_prefix(checkpoint).keys()
        if any(k.startswith("hash_head.") for k in keys):
            return "sdsh_teacher"
        if any(k in _BACKBONE_MARKERS or k.removeprefix("backbone.") in _BACKBONE_MARKERS for k in keys):
            return "dinov2_backbone"
    sample = ", ".join(list(checkpoint.keys())[:8])
    raise CheckpointFormatError(
        "unknown checkpoint layout (expected an SDSH training/teacher checkpoint, a reference SDSH "
        f"teacher_checkpoint.pth or a DINOv2 backbone); top-level keys: {sample}"
    )


def read_checkpoint(path: str) -> Dict[str, Any]:
    """``load_torch_file`` and ``detect_format`` of ``path``: the checkpoint and ``"format"``.

    Returns:
        ``{"checkpoint": the loaded dict, "format": its format name}``.
    Raises:
        CheckpointFormatError: as ``load_torch_file``, or an unknown layout (the message names the file).
    """
    checkpoint = load_torch_file(path)
    try:
        fmt = detect_format(checkpoint)
    except CheckpointFormatError as exc:
        raise CheckpointFormatError(f"{path}: {exc}") from None
    return {"checkpoint": checkpoint, "format": fmt}


def state_dict_mismatches(expected: Dict[str, torch.Tensor], found: Dict[str, Any]) -> List[str]:
    """Differences between a model's state dict and a checkpoint's, as readable lines.

    Args:
        expected: the model's ``state_dict()``.
        found: the checkpoint's state dict.
    Returns:
        Lines naming missing keys, unexpected keys and shape mismatches (empty when they match).
    """
    problems = []
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    if missing:
        problems.append(f"missing keys ({len(missing)}): {', '.join(missing[:8])}{' ...' if len(missing) > 8 else ''}")
    if unexpected:
        more = " ..." if len(unexpected) > 8 else ""
        problems.append(f"unexpected keys ({len(unexpected)}): {', '.join(unexpected[:8])}{more}")
    for key in sorted(set(expected) & set(found)):
        a, b = expected[key], found[key]
        if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and tuple(a.shape) != tuple(b.shape):
            problems.append(f"{key}: checkpoint {tuple(b.shape)} vs model {tuple(a.shape)}")
    return problems


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


def read_hashing_checkpoint(path: str) -> Tuple[Dict[str, torch.Tensor], str]:
    """Read ``path`` and return its ``backbone.*`` + ``hash_head.*`` state dict and its format name.

    For ``dinov2_backbone`` the returned dict holds only backbone keys (the caller loads them with
    ``load_pretrained_weights``, which interpolates pos_embed and reports keys by name).
    """
    read = read_checkpoint(path)
    checkpoint, fmt = read["checkpoint"], read["format"]
    if fmt == "sdsh_training":
        state_dict = _strip(checkpoint["model"], "teacher.")
    elif fmt in ("sdsh_teacher", "sdsh_reference", "dinov2_backbone") and isinstance(checkpoint.get("teacher"), dict):
        state_dict = strip_module_prefix(checkpoint["teacher"])
    else:
        state_dict = strip_module_prefix(checkpoint)
    if fmt == "sdsh_reference":
        state_dict = convert_sdsh_reference_state_dict(state_dict)
    if fmt == "dinov2_backbone":
        return {k.removeprefix("backbone."): v for k, v in state_dict.items()}, fmt
    state_dict = {k: v for k, v in state_dict.items() if not k.startswith(_HEAD_PREFIXES)}
    return state_dict, fmt


def load_hashing_state_dict(model: nn.Module, state_dict: dict, source: str) -> None:
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
