"""A teacher checkpoint describes its network: tools given --weights alone build it (dinov2/models/checkpoint_config.py)."""

import pytest
import torch
from omegaconf import OmegaConf

from dinov2.models.checkpoint_config import merge_config_for_weights
from dinov2.utils.config import ConfigError, merge_config

from ..conftest import TINY_OPTS


def _teacher(path, opts):
    cfg = merge_config(None, opts)
    torch.save({"teacher": {"hash_head.x": torch.zeros(1)}, "config": OmegaConf.to_yaml(cfg)}, path)
    return str(path)


def test_the_network_comes_from_the_checkpoint(tmp_path):
    weights = _teacher(tmp_path / "t.pth", [*TINY_OPTS, "hash.hash_bit=24", "hash.pooling=mean"])
    cfg = merge_config_for_weights(None, [], weights)
    assert cfg.hash.hash_bit == 24 and cfg.hash.pooling == "mean"
    trained = merge_config(None, TINY_OPTS)
    assert cfg.student.arch == trained.student.arch and cfg.crops.global_crops_size == trained.crops.global_crops_size
    # Keys outside the network stay the user's (or the defaults).
    assert merge_config_for_weights(None, ["train.train_ratio=0.3"], weights).train.train_ratio == 0.3


def test_a_disagreeing_option_or_file_is_refused_naming_key_and_values(tmp_path):
    weights = _teacher(tmp_path / "t.pth", [*TINY_OPTS, "hash.hash_bit=24"])
    with pytest.raises(ConfigError, match=r"hash\.hash_bit=64 \(the command-line options\).*hash\.hash_bit=24"):
        merge_config_for_weights(None, ["hash.hash_bit=64"], weights)
    config_file = tmp_path / "other.yaml"
    config_file.write_text("hash:\n  hash_bit: 16\n")
    with pytest.raises(ConfigError, match=rf"--config-file {config_file}.*hash\.hash_bit=24"):
        merge_config_for_weights(str(config_file), [], weights)


def test_an_agreeing_config_is_accepted(tmp_path):
    weights = _teacher(tmp_path / "t.pth", [*TINY_OPTS, "hash.hash_bit=24"])
    assert merge_config_for_weights(None, [*TINY_OPTS, "hash.hash_bit=24"], weights).hash.hash_bit == 24


def test_a_checkpoint_without_config_uses_the_users(tmp_path):
    path = tmp_path / "dinov2_weights.pth"
    torch.save({"cls_token": torch.zeros(1, 1, 8)}, path)
    assert merge_config_for_weights(None, ["hash.hash_bit=16"], str(path)).hash.hash_bit == 16
