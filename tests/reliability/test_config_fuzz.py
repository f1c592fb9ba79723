"""Fuzzed configuration values: every bad value is a ConfigError/ValueError naming the key or the value.

Values reach the code both as command-line options (strings parsed by OmegaConf) and as a YAML
file (typed values). Either the run's configuration is refused at merge or validation time, or the
value is usable and the meta-architecture builds; nothing fails deeper inside torch.
"""

import random

import pytest
import yaml

from dinov2.train.ssl_meta_arch import SSLMetaArch
from dinov2.utils.config import ConfigError, merge_config, validate_config

from ..conftest import TINY_OPTS

# Keys consumed by the meta-architecture, the schedules, the data pipeline or the evaluation.
FUZZED_KEYS = [
    "train.batch_size_per_gpu",
    "train.OFFICIAL_EPOCH_LENGTH",
    "train.num_workers",
    "train.seed",
    "train.saveckp_freq",
    "train.centering",
    "optim.epochs",
    "optim.warmup_epochs",
    "optim.base_lr",
    "optim.clip_grad",
    "optim.layerwise_decay",
    "optim.adamw_beta2",
    "teacher.teacher_temp",
    "teacher.warmup_teacher_temp",
    "teacher.momentum_teacher",
    "ibot.mask_sample_probability",
    "ibot.mask_ratio_min_max",
    "crops.global_crops_scale",
    "crops.local_crops_scale",
    "crops.local_crops_number",
    "crops.global_crops_size",
    "crops.local_crops_size",
    "hash.hash_bit",
    "hash.patch_proj_dim",
    "hash.pooling",
    "hash.loss_contrastive",
    "hash.contrastive_temp",
    "dino.head_n_prototypes",
    "dino.head_nlayers",
    "ibot.head_hidden_dim",
    "student.patch_size",
    "student.drop_path_rate",
    "train.train_ratio",
    "data.val_ratio",
    "evaluation.topk",
    "evaluation.batch_size",
    "evaluation.eval_period_iterations",
]

# Command-line spellings: strings for numbers, negatives, zero, huge values, non-finite floats,
# lists and mappings where scalars belong, and the reverse.
CLI_VALUES = ["-1", "0", "-0.5", "1.5", "10000000000000", "abc", "12abc", ".nan", ".inf", "-.inf",
              "[1, 2, 3]", "[]", "[0.9, 0.1]", "[-1, 2]", "{a: 1}", "true", "''", "null", "1e400"]


def _random_yaml_value(rng: random.Random):
    """One typed value for a YAML file: random type, sign and magnitude."""
    kind = rng.choice(["int", "float", "str", "list", "dict", "bool", "none"])
    if kind == "int":
        return rng.choice([-1, 1]) * rng.choice([0, 1, 3, 7, 2**20, 2**31, 10**15])
    if kind == "float":
        return rng.choice([-1.0, 1.0]) * rng.choice([0.0, 1e-9, 0.3, 1.0, 2.5, 1e30, float("inf"), float("nan")])
    if kind == "str":
        return rng.choice(["", "x", "64", "1.0", "none", "-3"])
    if kind == "list":
        return [rng.uniform(-2, 2) for _ in range(rng.randint(0, 3))]
    if kind == "dict":
        return {"k": rng.randint(-5, 5)}
    if kind == "bool":
        return rng.random() < 0.5
    return None


def _key_or_value_named(message: str, key: str, value) -> bool:
    return key in message or str(value) in message or repr(value) in message


def _check(key: str, value, cfg_factory):
    """Merge + validate + build: either refused naming key or value, or a model that builds."""
    try:
        cfg = cfg_factory()
    except ConfigError as error:
        assert _key_or_value_named(str(error), key, value), f"{key}={value!r}: {error}"
        return "refused"
    try:
        SSLMetaArch(cfg)
    except (ConfigError, ValueError) as error:
        assert _key_or_value_named(str(error), key, value), f"{key}={value!r}: {error}"
        return "refused"
    return "accepted"


def test_command_line_values_are_refused_by_name_or_build(tiny_arch):
    # Each merge takes tens of milliseconds: a seeded sample of values per key, plus the checked pairs.
    rng = random.Random(0)
    checked = [("hash.hash_bit", "-1"), ("crops.local_crops_number", "0"), ("teacher.teacher_temp", "0"),
               ("ibot.mask_ratio_min_max", "[0.9, 0.1]")]
    pairs = checked + [(key, value) for key in FUZZED_KEYS for value in rng.sample(CLI_VALUES, 4)]
    outcomes = {}
    for key, value in pairs:
        outcomes[(key, value)] = _check(key, value, lambda k=key, v=value: merge_config(None, [*TINY_OPTS, f"{k}={v}"]))
    # The sweep hits both sides: most values are refused, a few fit their key.
    assert outcomes[("hash.hash_bit", "-1")] == "refused"
    assert outcomes[("crops.local_crops_number", "0")] == "accepted"
    assert outcomes[("teacher.teacher_temp", "0")] == "refused"
    assert outcomes[("ibot.mask_ratio_min_max", "[0.9, 0.1]")] == "refused"
    assert sum(o == "refused" for o in outcomes.values()) > 0.8 * len(outcomes)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_typed_values_from_a_config_file_are_refused_by_name_or_build(tiny_arch, tmp_path, seed):
    rng = random.Random(seed)
    for index in range(25):
        key = rng.choice(FUZZED_KEYS)
        value = _random_yaml_value(rng)
        section, name = key.split(".")
        path = tmp_path / f"fuzz_{index}.yaml"
        path.write_text(yaml.safe_dump({section: {name: value}}))
        _check(key, value, lambda p=str(path): merge_config(p, TINY_OPTS))


@pytest.mark.parametrize(
    "opt, expected",
    [
        ("train.batch_size_per_gpu=-4", "train.batch_size_per_gpu"),
        ("optim.epochs=0", "optim.epochs"),
        ("train.OFFICIAL_EPOCH_LENGTH=0", "train.OFFICIAL_EPOCH_LENGTH"),
        ("ibot.mask_ratio_min_max=[0.1,1.5]", "ibot.mask_ratio_min_max"),
        ("ibot.mask_sample_probability=-0.1", "ibot.mask_sample_probability"),
        ("crops.global_crops_scale=[0.0,1.0]", "crops.global_crops_scale"),
        ("crops.local_crops_number=-1", "crops.local_crops_number"),
        ("teacher.teacher_temp=-0.07", "teacher.teacher_temp"),
        ("teacher.warmup_teacher_temp=.nan", "teacher.warmup_teacher_temp"),
        ("optim.warmup_epochs=5", "optim.warmup_epochs"),
        ("crops.global_crops_size=36", "crops.global_crops_size"),
        ("hash.hash_bit=0", "hash.hash_bit"),
        ("evaluation.topk=0", "evaluation.topk"),
        ("hash.pooling=max", "hash.pooling"),
        ("hash.loss_contrastive=-1", "hash.loss_contrastive"),
        ("hash.contrastive_temp=0", "hash.contrastive_temp"),
    ],
)
def test_validate_config_names_each_key(opt, expected):
    # The config is validated once, where it is merged: the bad value never reaches a consumer.
    with pytest.raises(ConfigError, match=expected.replace(".", r"\.")):
        merge_config(None, [*TINY_OPTS, opt])


def test_default_config_and_tiny_options_are_valid():
    validate_config(merge_config(None, []))
    validate_config(merge_config(None, TINY_OPTS))
