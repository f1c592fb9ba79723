import argparse
import math

import pytest
from omegaconf import OmegaConf

from dinov2.configs import CONFIG_DIR, dinov2_default_config
from dinov2.train.setup import setup_run
from dinov2.utils.config import (
    ConfigError,
    apply_scaling_rules_to_cfg,
    differences_from_default,
    get_cfg_from_args,
    merge_config,
)


def _args(tmp_path, config_file=None, opts=()):
    return argparse.Namespace(config_file=config_file, output_dir=str(tmp_path / "out"), opts=list(opts))


def test_default_config_holds_reference_defaults():
    cfg = dinov2_default_config
    assert cfg.student.arch == "vit_small" and cfg.student.patch_size == 14
    assert cfg.hash.hash_bit == 64 and cfg.hash.loss_hash_reg == 0.01 and cfg.hash.do_or_not is True
    assert cfg.crops.global_crops_size == 224 and cfg.crops.local_crops_size == 98
    assert list(cfg.crops.global_crops_scale) == [0.6, 1.0] and list(cfg.crops.local_crops_scale) == [0.05, 0.5]
    assert cfg.ibot.separate_head is True and list(cfg.ibot.mask_ratio_min_max) == [0.1, 0.6]
    assert cfg.dino.koleo_loss_weight == 0.0 and cfg.dino.head_n_prototypes == 65536
    assert cfg.optim.base_lr == 0.001 and cfg.train.batch_size_per_gpu == 64
    for who in ("student", "teacher"):
        assert set(cfg.compute_precision[who].keys()) == {"backbone", "hash_head", "dino_head", "ibot_head"}


def test_merge_order_default_file_opts(tmp_path):
    override = tmp_path / "exp.yaml"
    override.write_text("hash:\n  hash_bit: 32\ntrain:\n  batch_size_per_gpu: 16\n")
    cfg = merge_config(str(override), ["hash.hash_bit=16", "crops.local_crops_number=2"])
    assert cfg.hash.hash_bit == 16  # opts win over the file
    assert cfg.train.batch_size_per_gpu == 16  # file wins over the default
    assert cfg.crops.local_crops_number == 2
    assert cfg.student.arch == "vit_small"  # untouched default


@pytest.mark.parametrize(
    "opt, named", [("hash.hashbit=32", "hash.hashbit"), ("optim.lr_typo=1", "optim.lr_typo"), ("nosuch.key=1", "nosuch")]
)
def test_unknown_option_key_is_an_error_naming_it(opt, named):
    with pytest.raises(ConfigError, match=f"'{named}'"):
        merge_config(None, [opt])


def test_unknown_key_in_file_names_file_and_key(tmp_path):
    override = tmp_path / "bad.yaml"
    override.write_text("crops:\n  global_crop_size: 224\n")
    with pytest.raises(ConfigError) as info:
        merge_config(str(override))
    assert "crops.global_crop_size" in str(info.value) and str(override) in str(info.value)


def test_malformed_option_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="key=value"):
        merge_config(None, ["hash.hash_bit"])
    with pytest.raises(ConfigError, match="not found"):
        merge_config(str(tmp_path / "missing.yaml"))
    bad = tmp_path / "list.yaml"
    bad.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        merge_config(str(bad))


@pytest.mark.parametrize("opt", ["hash.hash_bit=sixty-four", "hash.hash_bit=64.5", "hash.do_or_not=3", "crops.global_crops_scale=0.5"])
def test_type_mismatch_is_an_error_naming_key_and_value(opt):
    key, value = opt.split("=")
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")) as info:
        merge_config(None, [opt])
    assert value in str(info.value)


def test_compatible_values_are_accepted():
    cfg = merge_config(None, ["optim.base_lr=1", "evaluation.topk=100", "student.pretrained_weights=/w.pth"])
    assert cfg.optim.base_lr == 1 and cfg.evaluation.topk == 100


def test_sqrt_lr_scaling_rule():
    cfg = merge_config(None, ["train.batch_size_per_gpu=64", "optim.base_lr=0.001"])
    apply_scaling_rules_to_cfg(cfg, world_size=4)
    assert cfg.optim.lr == pytest.approx(0.001 * math.sqrt(64 * 4 / 1024))
    with pytest.raises(ConfigError, match="optim.scaling_rule"):
        merge_config(None, ["optim.scaling_rule=linear"])
    cfg.optim.scaling_rule = "linear"  # set after validation: the rule itself still refuses it
    with pytest.raises(ConfigError, match="linear"):
        apply_scaling_rules_to_cfg(cfg)


def test_setup_writes_config_yaml(tmp_path):
    cfg = setup_run(get_cfg_from_args(_args(tmp_path, opts=["hash.hash_bit=48"])), world_size=1)
    saved = OmegaConf.load(tmp_path / "out" / "config.yaml")
    assert saved.hash.hash_bit == 48
    assert saved.optim.lr == pytest.approx(cfg.optim.lr) and cfg.optim.lr > 0
    assert saved.train.output_dir == str(tmp_path / "out")


def test_differences_from_default_name_each_changed_key_and_only_those():
    cfg = merge_config(None, ["hash.hash_bit=48", "train.train_ratio=0.8", "optim.base_lr=0.001"])
    changed = differences_from_default(cfg)
    assert "hash.hash_bit: 48" in changed and "train.train_ratio: 0.8" in changed
    assert not [line for line in changed if line.startswith("optim.base_lr")]  # 0.001 is the default
    assert differences_from_default(merge_config(None, [])) == []


def test_packaged_config_dir_has_default():
    assert (CONFIG_DIR / "ssl_default_config.yaml").is_file()


def test_fractional_hyperparameters_accept_floats():
    # Momenta, temperatures, weights and rates are floats even where the default is a round number.
    cfg = merge_config(None, ["teacher.final_momentum_teacher=0.9995", "dino.loss_weight=0.5", "optim.clip_grad=1.5"])
    assert cfg.teacher.final_momentum_teacher == 0.9995


@pytest.mark.parametrize(
    "opts, key",
    [
        (["ibot.separate_head=false"], "ibot.separate_head"),
        (["dino.loss_weight=0", "ibot.loss_weight=0", "hash.loss_hash_reg=0"], "every loss is switched off"),
        (["evaluation.select_on=val", "data.val_ratio=0"], "evaluation.select_on"),
    ],
)
def test_relations_between_keys_are_refused_where_the_config_is_merged(opts, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        merge_config(None, opts)


def test_a_loss_switched_on_by_any_weight_is_enough():
    cfg = merge_config(None, ["dino.loss_weight=0", "ibot.loss_weight=0", "hash.loss_hash_reg=0.01"])
    assert cfg.hash.loss_hash_reg == 0.01
    with pytest.raises(ConfigError, match="every loss"):
        merge_config(None, ["dino.loss_weight=0", "ibot.loss_weight=0", "hash.do_or_not=false"])
