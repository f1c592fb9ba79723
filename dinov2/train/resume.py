"""Resuming: the checkpoints of an output directory belong to the config that wrote them.

A run resumes from ``<output-dir>``'s last checkpoint only when the model-shaping keys of its config
(``MODEL_CONFIG_PREFIXES``) equal those of the ``config.yaml`` written beside the checkpoints.
"""

import os
from typing import List

from omegaconf import OmegaConf

from dinov2.utils.config import ConfigError, flatten_config

# Config sections whose values shape the model: a checkpoint is only resumed under the same values.
MODEL_CONFIG_PREFIXES = ("student.", "hash.", "crops.", "dino.head_", "ibot.head_")


# Keys of those sections that do not change a resumed model (the pretrained weights only initialise it).
MODEL_CONFIG_EXEMPT = ("student.pretrained_weights",)


def model_config_differences(old_cfg, new_cfg) -> List[str]:
    """Model-shaping keys (``MODEL_CONFIG_PREFIXES``) whose values differ, as ``key: old -> new``."""
    old = flatten_config(OmegaConf.to_container(old_cfg, resolve=True))
    new = flatten_config(OmegaConf.to_container(new_cfg, resolve=True))
    keys = sorted(k for k in set(old) | set(new) if k.startswith(MODEL_CONFIG_PREFIXES) and k not in MODEL_CONFIG_EXEMPT)
    return [f"{k}: {old.get(k, '<absent>')!r} -> {new.get(k, '<absent>')!r}" for k in keys if old.get(k) != new.get(k)]


def has_resume_state(output_dir: str) -> bool:
    """Whether ``output_dir`` holds a ``last_checkpoint`` tag (of plain or sharded checkpoints)."""
    return any(name.startswith("last_checkpoint") for name in os.listdir(output_dir)) if os.path.isdir(output_dir) else False


def check_resume_config(new_cfg, output_dir: str) -> None:
    """Refuse to resume the checkpoints of ``output_dir`` under a config that changes the model.

    Raises:
        ConfigError: naming the differing keys, when ``<output_dir>/config.yaml`` and a checkpoint exist.
    """
    saved = os.path.join(output_dir, "config.yaml")
    if not (os.path.isfile(saved) and has_resume_state(output_dir)):
        return
    try:
        old_cfg = OmegaConf.load(saved)
    except Exception as exc:
        raise ConfigError(f"cannot read {saved}, the config of the checkpoints in {output_dir}: {exc}") from exc
    differences = model_config_differences(old_cfg, new_cfg)
    if differences:
        raise ConfigError(
            f"the checkpoints in {output_dir} were trained with {saved}, which differs in keys that change the model: "
            + "; ".join(differences)
            + ". Resuming would load a checkpoint from another config: use another --output-dir, or keep these values"
        )
