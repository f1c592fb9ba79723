"""Pretrained backbone weights: public DINOv2 files and backbones of SDSH/DINOv2 checkpoints.

``load_pretrained_weights`` finds the state dict inside the file, strips ``module.``/``backbone.``
prefixes, interpolates ``pos_embed`` (bicubic) to the model's patch grid and reports missing and
unexpected keys by name; a file that matches nothing is an error.
"""

import logging
import math
import os
from typing import Dict, List, Mapping, Optional, Tuple

import torch
from torch import nn

from dinov2.layers import resize_pos_embed

from .io import load_torch_file

logger = logging.getLogger("dinov2")

# Containers tried, in this order, when the checkpoint's top level is not itself a state dict.
_CHECKPOINT_CONTAINERS = ("model", "teacher", "student")
_MAX_NAMES_IN_MESSAGE = 8


def _is_state_dict(obj) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(isinstance(v, torch.Tensor) for v in obj.values())


def _names(keys) -> str:
    keys = list(keys)
    shown = ", ".join(keys[:_MAX_NAMES_IN_MESSAGE])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > _MAX_NAMES_IN_MESSAGE else "")


def _select_state_dict(checkpoint, checkpoint_key: Optional[str], path: str) -> Dict[str, torch.Tensor]:
    """The dict of tensors inside a loaded checkpoint (top level, ``checkpoint_key`` or a known container)."""
    if not isinstance(checkpoint, Mapping):
        raise ValueError(f"checkpoint {path} holds a {type(checkpoint).__name__}, expected a dict of tensors")
    if checkpoint_key is not None and checkpoint_key in checkpoint:
        candidate = checkpoint[checkpoint_key]
    elif _is_state_dict(checkpoint):
        candidate = checkpoint
    elif checkpoint_key is not None:
        raise ValueError(
            f"checkpoint {path} has no entry {checkpoint_key!r} and is not a state dict; "
            f"top-level keys: {_names(checkpoint)}"
        )
    else:
        containers = [key for key in _CHECKPOINT_CONTAINERS if _is_state_dict(checkpoint.get(key))]
        if not containers:
            raise ValueError(
                f"checkpoint {path} is neither a state dict nor holds one under {list(_CHECKPOINT_CONTAINERS)}; "
                f"top-level keys: {_names(checkpoint)}"
            )
        candidate = checkpoint[containers[0]]
        logger.info("Using the state dict under %r of %s", containers[0], path)
    if not _is_state_dict(candidate):
        raise ValueError(f"the selected entry of checkpoint {path} is not a dict of tensors")
    return dict(candidate)


def _strip_prefixes(state_dict: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Remove DDP/FSDP ``module.`` and meta-architecture ``backbone.`` prefixes.

    When keys carry a ``backbone.`` prefix, keys without it belong to other modules (dino_head,
    ibot_head, hash_head, ...) and are dropped. A full training-state dict with ``teacher.backbone.``
    keys is reduced to the teacher backbone.
    """

    def strip_module(key: str) -> str:
        while key.startswith("module."):
            key = key[len("module.") :]
        return key

    state_dict = {strip_module(k): v for k, v in state_dict.items()}
    if not any(k.startswith("backbone.") for k in state_dict):
        for owner in ("teacher.", "student."):
            if any(k.startswith(owner + "backbone.") for k in state_dict):
                state_dict = {k[len(owner) :]: v for k, v in state_dict.items() if k.startswith(owner)}
                break
    if not any(k.startswith("backbone.") for k in state_dict):
        return state_dict
    dropped = sorted(k for k in state_dict if not k.startswith("backbone."))
    if dropped:
        logger.info("Ignoring %d keys of other modules: %s", len(dropped), _names(dropped))
    return {strip_module(k[len("backbone.") :]): v for k, v in state_dict.items() if k.startswith("backbone.")}


def _adapt_pos_embed(model: nn.Module, checkpoint_pos: torch.Tensor, model_pos: torch.Tensor, path: str) -> torch.Tensor:
    """Bicubic interpolation of a checkpoint's position embeddings (same width) to the model's patch grid."""
    num_prefix_tokens = getattr(model, "num_tokens", 1)
    patch_embed = getattr(model, "patch_embed", None)
    new_grid = getattr(patch_embed, "patches_resolution", None)
    if new_grid is None:
        side = math.isqrt(model_pos.shape[1] - num_prefix_tokens)
        new_grid = (side, side)
    resized = resize_pos_embed(checkpoint_pos, new_grid, num_prefix_tokens=num_prefix_tokens)
    logger.info(
        "Interpolated pos_embed of %s from %s to %s", path, list(checkpoint_pos.shape), list(resized.shape)
    )
    return resized


def load_pretrained_weights(model: nn.Module, pretrained_weights: str, checkpoint_key: Optional[str] = None):
    """Load a backbone checkpoint (public DINOv2 weights, an SDSH or DINOv2 training checkpoint) into ``model``.

    Args:
        model: the backbone (e.g. ``DinoVisionTransformer``).
        pretrained_weights: path of a ``torch.save`` file: a plain state dict, or one nested under
            ``checkpoint_key`` or ``model`` / ``teacher`` / ``student``, keys possibly prefixed by
            ``module.`` and ``backbone.``.
        checkpoint_key: entry of the checkpoint holding the state dict, if any.

    Returns:
        ``load_state_dict``'s result with the missing and unexpected keys.

    Raises:
        CheckpointNotFoundError: no such file (a FileNotFoundError).
        CheckpointFormatError: the file cannot be read with ``weights_only=True`` (a RuntimeError).
        ValueError: no state dict found, nothing matches the model, or a tensor has the wrong shape.
    """
    path = os.fspath(pretrained_weights)
    checkpoint = load_torch_file(path)

    state_dict = _strip_prefixes(_select_state_dict(checkpoint, checkpoint_key, path))
    model_state = model.state_dict()
    matched = [k for k in state_dict if k in model_state]
    if not matched:
        raise ValueError(
            f"no key of {path} matches the model: checkpoint keys {_names(state_dict)}; "
            f"model keys {_names(model_state)}"
        )

    mismatched: List[Tuple[str, List[int], List[int]]] = []
    for key in matched:
        value, expected = state_dict[key], model_state[key]
        if value.shape == expected.shape:
            continue
        if key == "pos_embed" and value.ndim == 3 and value.shape[-1] == expected.shape[-1]:
            state_dict[key] = _adapt_pos_embed(model, value, expected, path)
        else:
            mismatched.append((key, list(value.shape), list(expected.shape)))
    if mismatched:
        details = "; ".join(f"{k}: checkpoint {c}, model {m}" for k, c, m in mismatched[:_MAX_NAMES_IN_MESSAGE])
        raise ValueError(f"pretrained weights {path} do not fit the model ({len(mismatched)} shape mismatches): {details}")

    result = model.load_state_dict(state_dict, strict=False)
    logger.info("Loaded %d tensors from %s", len(matched), path)
    if result.missing_keys:
        logger.warning("Keys of the model missing from %s: %s", path, ", ".join(result.missing_keys))
    if result.unexpected_keys:
        logger.warning("Keys of %s not used by the model: %s", path, ", ".join(result.unexpected_keys))
    return result
