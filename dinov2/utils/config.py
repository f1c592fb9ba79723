"""Configuration set-up for training and evaluation entry points.

The configuration is the default YAML (``dinov2/configs/ssl_default_config.yaml``) merged with the
``--config-file`` and then with ``key=value`` command-line options. Unlike upstream DINOv2, a key
that is not in the default configuration is an error naming the key and where it came from.
"""

import difflib
import logging
import math
import os
from typing import Any, Dict, Iterable, List, Optional

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

from dinov2.configs import POOLINGS, dinov2_default_config
from dinov2.utils.errors import InputError
from dinov2.utils.files import atomic_write_text

logger = logging.getLogger("dinov2")


class ConfigError(InputError, ValueError):
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


# Earlier spellings of reference keys, read as the reference key with a warning (once per process);
# only the reference key is ever written to a saved config.yaml.
DEPRECATED_ALIASES = {"data.root": "train.data_path", "data.train_ratio": "train.train_ratio"}
_warned_aliases = set()


def _apply_aliases(override: DictConfig, source: str) -> DictConfig:
    """``override`` with each deprecated alias moved onto its reference key (ConfigError if both differ)."""
    container = OmegaConf.to_container(override)
    changed = False
    for old, new in DEPRECATED_ALIASES.items():
        old_section, old_key = old.split(".")
        new_section, new_key = new.split(".")
        section = container.get(old_section)
        if not isinstance(section, dict) or old_key not in section:
            continue
        value = section.pop(old_key)
        if not section:
            container.pop(old_section)
        target = container.setdefault(new_section, {})
        if not isinstance(target, dict):
            raise ConfigError(f"config key '{new_section}' in {source} must be a mapping, got {target!r}")
        if new_key in target and target[new_key] != value:
            raise ConfigError(
                f"{source} sets both '{new}' ({target[new_key]!r}) and its deprecated alias '{old}' ({value!r}): keep '{new}'"
            )
        target[new_key] = value
        changed = True
        if old not in _warned_aliases:
            _warned_aliases.add(old)
            logger.warning(f"config key '{old}' (in {source}) is deprecated: it is read as '{new}', the reference key")
    return OmegaConf.create(container) if changed else override


def _leaf_paths(tree: Dict, prefix: str = "") -> List[str]:
    paths = []
    for key, value in tree.items():
        path = f"{prefix}{key}"
        paths.append(path)
        if isinstance(value, dict):
            paths.extend(_leaf_paths(value, path + "."))
    return paths


def suggest_keys(path: str, known: Iterable[str], count: int = 3) -> List[str]:
    """The known dotted keys closest to an unknown ``path`` (whole path first, then by last name)."""
    known = list(known)
    close = difflib.get_close_matches(path, known, n=count, cutoff=0.75)
    leaf = path.rsplit(".", 1)[-1]
    by_leaf = {k.rsplit(".", 1)[-1]: None for k in known}
    for name in difflib.get_close_matches(leaf, list(by_leaf), n=count, cutoff=0.8):
        close.extend(k for k in known if k.rsplit(".", 1)[-1] == name and k not in close)
    return close[:count]


def _check_known_keys(default: DictConfig, override: DictConfig, source: str) -> None:
    """Raise ConfigError for the first key of ``override`` that ``default`` does not declare."""
    default_c = OmegaConf.to_container(default)
    override_c = OmegaConf.to_container(override)

    def walk(ref, new, prefix):
        for key, value in new.items():
            path = f"{prefix}{key}"
            if not isinstance(ref, dict) or key not in ref:
                candidates = sorted(ref.keys()) if isinstance(ref, dict) else []
                suggestions = suggest_keys(path, _leaf_paths(default_c))
                hint = f"did you mean {' or '.join(suggestions)}? " if suggestions else ""
                raise ConfigError(
                    f"unknown config key '{path}' in {source}; {hint}"
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
        ConfigError: unreadable file, malformed option, a key the default does not declare, or a value
            ``validate_config`` refuses.
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
        file_cfg = _apply_aliases(file_cfg, f"config file {config_file}")
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
        opts_cfg = _apply_aliases(opts_cfg, "command-line options")
        _check_known_keys(cfg, opts_cfg, "command-line options")
        opts_cfg = _empty_strings_for_null(cfg, opts_cfg)
        cfg = _merge(cfg, opts_cfg, "command-line options")
    # The one value check of the config: everything built from it below takes its values as given.
    return validate_config(cfg)


def _empty_strings_for_null(default: DictConfig, override: DictConfig) -> DictConfig:
    """``key=`` on the command line parses as null: read it as '' where the default is a string."""

    def walk(ref, new):
        for key, value in new.items():
            if isinstance(value, dict) and isinstance(ref.get(key), dict):
                walk(ref[key], value)
            elif value is None and isinstance(ref.get(key), str):
                new[key] = ""

    container = OmegaConf.to_container(override)
    walk(OmegaConf.to_container(default), container)
    return OmegaConf.create(container)


def _merge(cfg: DictConfig, override: DictConfig, source: str) -> DictConfig:
    try:
        return OmegaConf.merge(cfg, override)
    except (ConfigKeyError, OmegaConfBaseException) as exc:
        raise ConfigError(f"cannot merge {source}: {exc}") from exc


# Integer keys: (smallest, largest) allowed value. The upper bounds are sanity limits far above any
# real run; they stop a mistyped value (an extra zero, a seed pasted into a size) before it becomes
# a multi-gigabyte allocation or a schedule array deep inside torch or numpy.
_INT_RANGES = {
    "train.batch_size_per_gpu": (1, 1 << 16),
    "train.OFFICIAL_EPOCH_LENGTH": (1, 10**7),
    "train.saveckp_freq": (1, 10**6),
    "train.num_workers": (0, 1024),
    "train.log_period": (1, 10**9),
    "train.stop_on_collapse_evals": (1, 10**6),
    "train.seed": (0, 2**32 - 1),
    "optim.epochs": (1, 10**6),
    "optim.warmup_epochs": (0, 10**6),
    "optim.freeze_last_layer_epochs": (0, 10**6),
    "teacher.warmup_teacher_temp_epochs": (0, 10**6),
    "hash.hash_bit": (1, 1 << 14),
    "hash.patch_proj_dim": (1, 1 << 14),
    "dino.head_n_prototypes": (1, 1 << 20),
    "dino.head_bottleneck_dim": (1, 1 << 14),
    "dino.head_hidden_dim": (1, 1 << 15),
    "dino.head_nlayers": (1, 64),
    "ibot.head_n_prototypes": (1, 1 << 20),
    "ibot.head_bottleneck_dim": (1, 1 << 14),
    "ibot.head_hidden_dim": (1, 1 << 15),
    "ibot.head_nlayers": (1, 64),
    "student.patch_size": (1, 1024),
    "student.block_chunks": (0, 1024),
    "student.num_register_tokens": (0, 1024),
    "crops.global_crops_size": (1, 8192),
    "crops.local_crops_size": (1, 8192),
    "crops.local_crops_number": (0, 128),
    "evaluation.eval_period_iterations": (0, 10**9),
    "evaluation.batch_size": (1, 1 << 16),
    "evaluation.num_workers": (0, 1024),
    "data.demo_classes": (1, 1000),
    "data.demo_images_per_class": (2, 100000),
    "data.demo_image_size": (8, 8192),
}
# Integer keys where null is also allowed (null keeps the documented default behaviour).
_OPTIONAL_INT_RANGES = {
    "evaluation.topk": (1, 10**9),
    "data.cache_size": (1, 8192),
}
# Float keys: (lower, upper, lower_inclusive, upper_inclusive); None bounds are open-ended.
_FLOAT_RANGES = {
    "optim.base_lr": (0.0, None, True, False),
    "optim.min_lr": (0.0, None, True, False),
    "optim.weight_decay": (0.0, None, True, False),
    "optim.weight_decay_end": (0.0, None, True, False),
    "optim.clip_grad": (0.0, None, True, False),
    "optim.patch_embed_lr_mult": (0.0, None, True, False),
    "optim.layerwise_decay": (0.0, 1.0, False, True),
    "optim.adamw_beta1": (0.0, 1.0, True, False),
    "optim.adamw_beta2": (0.0, 1.0, True, False),
    "teacher.momentum_teacher": (0.0, 1.0, True, True),
    "teacher.final_momentum_teacher": (0.0, 1.0, True, True),
    "teacher.teacher_temp": (0.0, None, False, False),
    "teacher.warmup_teacher_temp": (0.0, None, False, False),
    "dino.loss_weight": (0.0, None, True, False),
    "dino.koleo_loss_weight": (0.0, None, True, False),
    "ibot.loss_weight": (0.0, None, True, False),
    "ibot.mask_sample_probability": (0.0, 1.0, True, True),
    "hash.loss_hash_reg": (0.0, None, True, False),
    "hash.loss_contrastive": (0.0, None, True, False),
    "hash.contrastive_temp": (0.0, None, False, False),
    "hash.loss_balance": (0.0, None, True, False),
    "train.train_ratio": (0.0, 1.0, False, False),
    "data.val_ratio": (0.0, 1.0, True, False),
    "evaluation.holdout_ratio": (0.0, 1.0, True, False),
    "student.drop_path_rate": (0.0, 1.0, True, False),
    "student.interpolate_offset": (0.0, None, True, False),
}
# Keys whose value is an interval [low, high] inside (or at the ends of) [lower, 1].
_INTERVAL_KEYS = {
    "ibot.mask_ratio_min_max": (0.0, True),
    "crops.global_crops_scale": (0.0, False),
    "crops.local_crops_scale": (0.0, False),
}
_CHOICES = {
    "train.centering": ("centering", "sinkhorn_knopp"),
    "train.device": ("auto", "cpu", "cuda"),
    "hash.pooling": POOLINGS,
    "student.ffn_layer": ("mlp", "swiglu", "swiglufused", "identity"),
    "evaluation.select_on": ("query", "val"),
    "data.source": ("class_folders", "image_list", "folder_tree", "parquet", "auto"),
    "optim.scaling_rule": ("sqrt_wrt_1024",),
}
_MISSING = object()
# The weights of every loss term; at least one must be > 0 (hash.loss_hash_reg counts when hash.do_or_not).
_LOSS_WEIGHTS = (
    "dino.loss_weight",
    "dino.koleo_loss_weight",
    "ibot.loss_weight",
    "hash.loss_hash_reg",
    "hash.loss_contrastive",
    "hash.loss_balance",
)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _bounds_text(low, high, low_inclusive: bool, high_inclusive: bool) -> str:
    left = f">= {low}" if low_inclusive else f"> {low}"
    if high is None:
        return left
    return f"{left} and {'<=' if high_inclusive else '<'} {high}"


def validate_config(cfg: DictConfig) -> DictConfig:
    """Check the values of a merged configuration, each against what its consumer can use.

    ``merge_config`` checks keys and types against the default; this checks ranges, choices and
    the relations between keys (crop sizes divisible by the patch size, warm-ups within the
    schedule), so a bad value stops the run at start-up with its key named instead of failing later
    inside torch. Keys absent from ``cfg`` are skipped (partial configs in tests).

    Args:
        cfg: the merged configuration.
    Returns:
        ``cfg`` unchanged.
    Raises:
        ConfigError: naming the first offending key, its value and what was expected.
    """

    def get(key):
        return OmegaConf.select(cfg, key, default=_MISSING)

    def fail(key, value, expected):
        raise ConfigError(f"config key '{key}': value {value!r} is not usable; expected {expected}")

    for key, (low, high) in list(_INT_RANGES.items()) + list(_OPTIONAL_INT_RANGES.items()):
        value = get(key)
        if value is _MISSING or (value is None and key in _OPTIONAL_INT_RANGES):
            continue
        if not _is_int(value) or not low <= value <= high:
            fail(key, value, f"an integer between {low} and {high}")
    for key, (low, high, low_inclusive, high_inclusive) in _FLOAT_RANGES.items():
        value = get(key)
        if value is _MISSING:
            continue
        ok = _is_number(value) and math.isfinite(value)
        ok = ok and (value >= low if low_inclusive else value > low)
        ok = ok and (high is None or (value <= high if high_inclusive else value < high))
        if not ok:
            fail(key, value, "a finite number " + _bounds_text(low, high, low_inclusive, high_inclusive))
    for key, (low, low_inclusive) in _INTERVAL_KEYS.items():
        value = get(key)
        if value is _MISSING:
            continue
        pair = list(value) if OmegaConf.is_list(value) or isinstance(value, (list, tuple)) else None
        ok = pair is not None and len(pair) == 2 and all(_is_number(v) and math.isfinite(v) for v in pair)
        ok = ok and (pair[0] >= low if low_inclusive else pair[0] > low) and pair[0] <= pair[1] <= 1.0
        if not ok:
            shown = OmegaConf.to_container(value) if OmegaConf.is_config(value) else value
            fail(key, shown, f"[low, high] with {'0 <=' if low_inclusive else '0 <'} low <= high <= 1")
    for key, choices in _CHOICES.items():
        value = get(key)
        if value is not _MISSING and value not in choices:
            fail(key, value, f"one of {', '.join(choices)}")
    layerscale = get("student.layerscale")
    if layerscale is not _MISSING and layerscale is not None:
        if not (_is_number(layerscale) and math.isfinite(layerscale) and layerscale >= 0):
            fail("student.layerscale", layerscale, "null or a finite number >= 0")

    patch = get("student.patch_size")
    if _is_int(patch):
        for key in ("crops.global_crops_size", "crops.local_crops_size"):
            size = get(key)
            if _is_int(size) and size % patch:
                fail(key, size, f"a multiple of student.patch_size={patch}")
    if get("ibot.separate_head") is False:
        # dino_head consumes the K-bit codes while iBOT consumes the patch projections: no shared head.
        fail("ibot.separate_head", False, "true (the DINO head takes the hash codes, the iBOT head the patch projections)")
    weights = {key: get(key) for key in _LOSS_WEIGHTS}
    if get("hash.do_or_not") is False:
        weights.pop("hash.loss_hash_reg")
    if all(_is_number(w) for w in weights.values()) and not any(w > 0 for w in weights.values()):
        raise ConfigError(f"every loss is switched off: {', '.join(f'{k}=0' for k in weights)}; set one of them > 0")
    if get("evaluation.select_on") == "val" and _is_number(get("data.val_ratio")) and get("data.val_ratio") <= 0:
        fail("evaluation.select_on", "val", "query, or data.val_ratio > 0 (a validation split to select on)")
    epochs = get("optim.epochs")
    if _is_int(epochs):
        for key in ("optim.warmup_epochs", "optim.freeze_last_layer_epochs"):
            value = get(key)
            if _is_int(value) and value > epochs:
                fail(key, value, f"at most optim.epochs={epochs}")
    return cfg


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
    """Write ``cfg`` to ``<output_dir>/<name>`` atomically (temporary file, fsync, rename) and return the path."""
    return atomic_write_text(os.path.join(output_dir, name), OmegaConf.to_yaml(cfg))


def command_line_opts(args) -> List[str]:
    """The ``key=value`` overrides of parsed arguments: ``opts`` (less ``train.output_dir``, which
    ``--output-dir`` sets), then ``train.device`` from ``--device`` when given."""
    opts = [o for o in (getattr(args, "opts", None) or []) if not o.startswith("train.output_dir=")]
    if getattr(args, "device", None):
        # --device of the entry points (dinov2.utils.cli.config_options), validated like any train.device.
        opts.append(f"train.device={args.device}")
    return opts


def get_cfg_from_args(args) -> DictConfig:
    """Merged configuration for parsed arguments with ``config_file``, ``opts``, ``output_dir`` (and ``device``)."""
    args.output_dir = os.path.abspath(args.output_dir)
    cfg = merge_config(args.config_file, command_line_opts(args))
    cfg.train.output_dir = args.output_dir
    return cfg


def differences_from_default(cfg: DictConfig) -> List[str]:
    """``key: value`` of every key whose value differs from ``ssl_default_config.yaml``, in key order."""
    default = flatten_config(OmegaConf.to_container(OmegaConf.create(dinov2_default_config), resolve=True))
    current = flatten_config(OmegaConf.to_container(cfg, resolve=True))
    return [f"{key}: {current[key]}" for key in sorted(current) if default.get(key, _MISSING) != current[key]]


def flatten_config(tree: Dict, prefix: str = "") -> Dict[str, Any]:
    """A nested dict as ``{"a.b.c": value}``."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flatten_config(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat
