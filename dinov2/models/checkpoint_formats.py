"""Adaptation of each checkpoint format to the inference network, one named function per format.

The formats and their detection live with the checkpoint I/O in ``dinov2.utils.checkpoint``
(``detect_format``); here each detected layout becomes the ``backbone.*`` + ``hash_head.*`` state
dict of ``HashingNetwork``.
"""

from typing import Dict, Tuple

import torch

from dinov2.utils.checkpoint import (  # noqa: F401  (CheckpointFormatError and detect_format are used from here)
    REFERENCE_PREFIX_MAP,
    CheckpointFormatError,
    detect_format,
    read_checkpoint,
    strip_module_prefix,
)

_HEAD_PREFIXES = ("dino_head.", "ibot_head.")


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
