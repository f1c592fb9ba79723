"""Configuration set-up for training and evaluation entry points.

The configuration is the default YAML (``dinov2/configs/ssl_default_config.yaml``) merged with the
``--config-file`` and then with ``key=value`` command-line options. Unlike upstream DINOv2, a key
that is not in the default configuration is an error naming the key and where it came from.
"""

import logging
import math
import os
import random
from typing import Iterable, Optional

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

from dinov2.configs import dinov2_default_config

logger = logging.getLogger("dinov2")


class ConfigError(ValueError):
    """A configuration value or key that cannot be used, with the offending source named."""


def _compatible(expected, value) -> bool:
    """Whether ``value`` may replace the default ``expected`` (None defaults accept anything)."""
    if expected is None or value is None:
        return True
    if isinstance(expected, bool) or isinstance(value, bool):
        return isinstance(expected, bool) and isinstance(value, bool)
    if isinstance(expected, float):
        return isinstance(value, (int, float))
    if isinstance(expected, int):
        return isinstance(value, int)
    if isinstance(expected, (list, dict)):
        return isinstance(value, type(expected))
    if isinstance(expected, str):
        return isinstance(value, (str, int, float))
    return True


def _check_known_keys(default: DictConfig, override: DictConfig, source: str) -> None:
    """Raise ConfigError for the first key of ``override`` that ``default`` does not declare."""
    default_c = OmegaConf.to_container(default)
    override_c = OmegaConf.to_container(override)

    def walk(ref, new, prefix):
        for key, value in new.items():
            path = f"{prefix}{key}"
            if not isinstance(ref, dict) or key not in ref:
                candidates = sorted(ref.keys()) if isinstance(ref, dict) else []
                raise ConfigError(
                    f"unknown config key '{path}' in {source}; "
                    f"known keys at this level: {', '.join(map(str, candidates)) or '(none)'}"
                )
            expected = ref[key]
            if isinstance(value, dict) and isinstance(expected, dict):
                walk(expected, value, path + ".")
            elif not _compatible(expected, value):
                raise ConfigError(
                    f"config key '{path}' in {source}: value {value!r} is a {type(value).__name__}, "
                    f"expected a {type(expected).__name__} like the default {expected!r}"
                )

    walk(default_c, override_c, "")


def merge_config(
    config_file: Optional[str] = None, opts: Optional[Iterable[str]] = None, default: DictConfig = None
) -> DictConfig:
    """Merge default <- config file <- ``key=value`` options, refusing unknown keys.

    Args:
        config_file: path of a YAML file with overrides, or None/empty.
        opts: command-line options of the form ``a.b=value``.
        default: the default configuration (``ssl_default_config.yaml`` when None).
    Returns:
        The merged configuration.
    Raises:
        ConfigError: unreadable file, malformed option or a key the default does not declare.
    """
    cfg = OmegaConf.create(default if default is not None else dinov2_default_config)
    if config_file:
        if not os.path.isfile(config_file):
            raise ConfigError(f"config file not found: {config_file}")
        try:
            file_cfg = OmegaConf.load(config_file)
        except Exception as exc:  # yaml errors come in several types
            raise ConfigError(f"cannot parse config file {config_file}: {exc}") from exc
        if not isinstance(file_cfg, DictConfig):
            raise ConfigError(f"config file {config_file} must hold a mapping of keys, got {type(file_cfg).__name__}")
        _check_known_keys(cfg, file_cfg, f"config file {config_file}")
        cfg = _merge(cfg, file_cfg, f"config file {config_file}")
    opts = list(opts or [])
    for opt in opts:
        if "=" not in opt:
            raise ConfigError(f"command-line option '{opt}' is not of the form key=value")
    if opts:
        try:
            opts_cfg = OmegaConf.from_dotlist(opts)
        except OmegaConfBaseException as exc:
            raise ConfigError(f"cannot parse command-line options {opts}: {exc}") from exc
        _check_known_keys(cfg, opts_cfg, "command-line options")
        cfg = _merge(cfg, opts_cfg, "command-line options")
    return cfg


def _merge(cfg: DictConfig, override: DictConfig, source: str) -> DictConfig:
    try:
        return OmegaConf.merge(cfg, override)
    except (ConfigKeyError, OmegaConfBaseException) as exc:
        raise ConfigError(f"cannot merge {source}: {exc}") from exc


def apply_scaling_rules_to_cfg(cfg: DictConfig, world_size: int = 1) -> DictConfig:
    """Set ``optim.lr`` from ``optim.base_lr`` with the configured scaling rule."""
    if cfg.optim.scaling_rule == "sqrt_wrt_1024":
        base_lr = cfg.optim.base_lr
        cfg.optim.lr = base_lr * math.sqrt(cfg.train.batch_size_per_gpu * world_size / 1024.0)
        logger.info(f"sqrt scaling learning rate; base: {base_lr}, new: {cfg.optim.lr}")
    else:
        raise ConfigError(f"optim.scaling_rule: unknown value '{cfg.optim.scaling_rule}' (expected sqrt_wrt_1024)")
    return cfg


def write_config(cfg: DictConfig, output_dir: str, name: str = "config.yaml") -> str:
    """Write ``cfg`` to ``<output_dir>/<name>`` atomically and return the path."""
    saved_cfg_path = os.path.join(output_dir, name)
    tmp_path = saved_cfg_path + ".tmp"
    with open(tmp_path, "w") as f:
        OmegaConf.save(config=cfg, f=f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp_path, saved_cfg_path)
    return saved_cfg_path


def fix_random_seeds(seed: int = 31) -> None:
    """Seed python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def get_cfg_from_args(args) -> DictConfig:
    """Merged configuration for parsed arguments with ``config_file``, ``opts`` and ``output_dir``."""
    args.output_dir = os.path.abspath(args.output_dir)
    opts = list(getattr(args, "opts", None) or [])
    opts = [o for o in opts if not o.startswith("train.output_dir=")]
    cfg = merge_config(args.config_file, opts)
    cfg.train.output_dir = args.output_dir
    return cfg


def setup(args, world_size: Optional[int] = None, rank: int = 0) -> DictConfig:
    """Create the configuration, output directory and seeds for a run; write ``config.yaml``.

    Args:
        args: parsed arguments with ``config_file``, ``output_dir`` and ``opts``.
        world_size: number of processes (the current process group's when None).
        rank: this process's rank; only rank 0 writes ``config.yaml``.
    Returns:
        The merged configuration with ``optim.lr`` set.
    """
    cfg = get_cfg_from_args(args)
    os.makedirs(args.output_dir, exist_ok=True)
    if world_size is None:
        world_size = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
    fix_random_seeds(cfg.train.seed + rank)
    apply_scaling_rules_to_cfg(cfg, world_size)
    if rank == 0:
        write_config(cfg, args.output_dir)
    return cfg
