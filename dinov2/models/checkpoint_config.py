"""The model part of the config a checkpoint carries, under the config a user passes to a tool.

Every teacher checkpoint this project writes holds the config of its run (``"config"``, YAML). A
tool given ``--weights`` alone builds the network the checkpoint was trained as: the network keys
(``NETWORK_KEYS``: architecture, patch size, crop sizes, hash bits, pooling, heads) come from the
checkpoint, everything else from the user's config file and options over the defaults. A network
key that the user's file or options set to another value than the checkpoint's is refused, naming
the key and both values. Reference SDSH teachers and public DINOv2 weights carry no config: for
them the user's config is used as given.
"""

import os
from typing import Dict, Iterable, List, Optional

from omegaconf import DictConfig, OmegaConf

from dinov2.checkpoint import read_checkpoint
from dinov2.utils.config import ConfigError, merge_config

# Keys whose values decide the network's modules and shapes (what a checkpoint's tensors depend on).
NETWORK_KEYS = (
    "student.arch",
    "student.patch_size",
    "student.layerscale",
    "student.ffn_layer",
    "student.block_chunks",
    "student.qkv_bias",
    "student.proj_bias",
    "student.ffn_bias",
    "student.num_register_tokens",
    "student.interpolate_offset",
    "student.interpolate_antialias",
    "crops.global_crops_size",
    "crops.local_crops_size",
    "hash.hash_bit",
    "hash.patch_proj_dim",
    "hash.pooling",
)
_ABSENT = object()


def stored_config(weights: str) -> Optional[DictConfig]:
    """The config a checkpoint of this project carries, or None (reference teachers, DINOv2 weights)."""
    text = read_checkpoint(weights)["checkpoint"].get("config")
    if not isinstance(text, str) or not text.strip():
        return None
    try:
        stored = OmegaConf.create(text)
    except Exception as exc:  # a YAML error comes in several types
        raise ConfigError(f"checkpoint {weights}: its stored config cannot be read ({exc})") from None
    return stored if isinstance(stored, DictConfig) else None


def _explicit_keys(config_file: Optional[str], opts: Iterable[str]) -> Dict[str, str]:
    """Network keys the user's config file or options set, mapped to where they were set."""
    found = {}
    sources = []
    if config_file:
        sources.append((OmegaConf.load(config_file), f"--config-file {config_file}"))
    opts = [o for o in opts if "=" in o]
    if opts:
        sources.append((OmegaConf.from_dotlist(opts), "the command-line options"))
    for tree, where in sources:
        for key in NETWORK_KEYS:
            if OmegaConf.select(tree, key, default=None) is not None:
                found[key] = where
    return found


def merge_config_for_weights(config_file: Optional[str], opts: Iterable[str], weights: str) -> DictConfig:
    """Defaults <- config file <- options, with the network keys of ``weights``' stored config.

    Args:
        config_file: the user's ``--config-file`` (None or empty for none).
        opts: ``key=value`` options.
        weights: the checkpoint the tool will load (empty: no checkpoint, plain ``merge_config``).
    Returns:
        The validated config.
    Raises:
        ConfigError: a network key set by the user differs from the checkpoint's (the message names the
            key and both values), or the merged config is not valid.
    """
    opts = list(opts or [])
    cfg = merge_config(config_file, opts)
    # A missing file is left to the start-up check (check_run_inputs), whose message says what to pass.
    stored = stored_config(weights) if weights and os.path.isfile(weights) else None
    if stored is None:
        return cfg
    explicit = _explicit_keys(config_file, opts)
    conflicts: List[str] = []
    overrides = []
    for key in NETWORK_KEYS:
        value = OmegaConf.select(stored, key, default=_ABSENT)
        if value is _ABSENT:
            continue
        current = OmegaConf.select(cfg, key)
        if key in explicit and current != value:
            conflicts.append(f"{key}={current!r} ({explicit[key]}) but {weights} was trained with {key}={value!r}")
        elif current != value:
            overrides.append(f"{key}={value}" if value is not None else f"{key}=null")
    if conflicts:
        raise ConfigError(
            "the config disagrees with the checkpoint on the network: "
            + "; ".join(conflicts)
            + ". Leave these keys out (the checkpoint's values are used) or pass the matching config"
        )
    return merge_config(config_file, [*overrides, *opts]) if overrides else cfg
