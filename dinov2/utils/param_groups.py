"""Optimizer parameter groups: layer-wise lr decay, patch-embed multiplier, no weight decay on
biases, norms and LayerScale gammas, and a flag for the DINO heads' last layer.

Upstream DINOv2 matches names such as ".blocks." with a leading dot, which only works when FSDP
prefixes parameter names; without FSDP (one CPU process) its layer-wise decay silently becomes 1
for every parameter. Here names are matched component by component after removing wrapper
prefixes, so the decay is the same with and without FSDP.
"""

import logging
from collections import defaultdict
from typing import Dict, List, Sequence

from torch import nn

logger = logging.getLogger("dinov2")

_WRAPPER_PREFIXES = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.", "module.", "_orig_mod.")
_EMBEDDING_NAMES = ("pos_embed", "patch_embed", "mask_token", "cls_token", "register_tokens")


def clean_param_name(name: str) -> str:
    """Parameter name without FSDP / DDP / compile wrapper components."""
    for prefix in _WRAPPER_PREFIXES:
        name = name.replace(prefix, "")
    return name


def get_vit_lr_decay_rate(name: str, lr_decay_rate: float, num_layers: int, chunked_blocks: bool = False) -> float:
    """Layer-wise lr multiplier of a backbone parameter.

    Embeddings are layer 0, block i is layer i + 1 and everything after the blocks (final norm)
    is layer ``num_layers + 1``; the multiplier is ``lr_decay_rate ** (num_layers + 1 - layer)``.

    Args:
        name: parameter name inside the backbone (wrapper prefixes are ignored).
        lr_decay_rate: decay per layer (0.9 in the reference).
        num_layers: number of transformer blocks.
        chunked_blocks: True when blocks are grouped as ``blocks.<chunk>.<index>``.
    Returns:
        The lr multiplier.
    """
    parts = clean_param_name(name).split(".")
    if parts and parts[0] == "backbone":
        parts = parts[1:]
    layer_id = num_layers + 1
    if parts and parts[0] in _EMBEDDING_NAMES:
        layer_id = 0
    elif len(parts) > 1 and parts[0] == "blocks":
        index = parts[2] if chunked_blocks else parts[1]
        layer_id = int(index) + 1
    return lr_decay_rate ** (num_layers + 1 - layer_id)


def get_params_groups_with_decay(
    model: nn.Module, lr_decay_rate: float = 1.0, patch_embed_lr_mult: float = 1.0
) -> List[Dict]:
    """One parameter group per trainable parameter, with its lr and weight-decay multipliers.

    Layer-wise decay applies when ``model`` is a backbone (it has ``n_blocks`` > 0); heads get
    multiplier 1.

    Args:
        model: a student sub-module (backbone, hash head or projection head).
        lr_decay_rate: layer-wise decay for backbone blocks.
        patch_embed_lr_mult: extra lr multiplier of the patch embedding.
    Returns:
        A list of dicts with keys params, name, lr_multiplier, wd_multiplier, is_last_layer.
    """
    chunked_blocks = bool(getattr(model, "chunked_blocks", False))
    n_blocks = int(getattr(model, "n_blocks", 0) or 0)
    groups = []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        clean = clean_param_name(name)
        if n_blocks > 0:
            lr_multiplier = get_vit_lr_decay_rate(clean, lr_decay_rate, n_blocks, chunked_blocks)
        else:
            lr_multiplier = 1.0
        parts = clean.split(".")
        no_decay = clean.endswith(".bias") or any("norm" in p for p in parts) or parts[-1] == "gamma"
        if "patch_embed" in parts:
            lr_multiplier *= patch_embed_lr_mult
        groups.append(
            {
                "params": param,
                "name": clean,
                "is_last_layer": "last_layer" in parts,
                "lr_multiplier": lr_multiplier,
                "wd_multiplier": 0.0 if no_decay else 1.0,
            }
        )
        logger.debug(f"{clean}: lr_multiplier={lr_multiplier:.4g}, wd_multiplier={groups[-1]['wd_multiplier']}")
    return groups


def fuse_params_groups(
    all_params_groups: Sequence[Dict], keys: Sequence[str] = ("lr_multiplier", "wd_multiplier", "is_last_layer")
) -> List[Dict]:
    """Merge per-parameter groups that share the values of ``keys`` into one group each."""
    fused = defaultdict(lambda: {"params": []})
    for group in all_params_groups:
        identifier = tuple((k, group[k]) for k in keys)
        entry = fused[identifier]
        for k in keys:
            entry[k] = group[k]
        entry["params"].append(group["params"])
    return list(fused.values())
