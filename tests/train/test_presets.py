"""The dataset presets in configs/ merge with the default config and carry the reference protocol's values."""

from pathlib import Path

import pytest

from dinov2.utils.config import merge_config

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
# dataset: (train_ratio, OFFICIAL_EPOCH_LENGTH, eval_period_iterations), the reference protocol (README).
PROTOCOL = {"aid": (0.5, 80, 80), "ucmd": (0.8, 30, 30)}


@pytest.mark.parametrize("dataset", sorted(PROTOCOL))
@pytest.mark.parametrize("bits", [16, 32, 48, 64])
def test_preset_matches_the_protocol(dataset, bits):
    cfg = merge_config(str(CONFIGS / f"{dataset}_{bits}bit.yaml"))
    train_ratio, epoch_length, eval_period = PROTOCOL[dataset]
    assert cfg.hash.hash_bit == bits
    assert cfg.train.train_ratio == train_ratio
    assert cfg.train.OFFICIAL_EPOCH_LENGTH == epoch_length
    assert cfg.evaluation.eval_period_iterations == eval_period
    # Machine-specific values are left for the command line.
    assert cfg.student.pretrained_weights == "" and cfg.train.data_path == ""
    assert cfg.student.arch == "vit_small" and cfg.student.patch_size == 14


def test_demo_preset_uses_the_generated_dataset_and_valid_crops():
    cfg = merge_config(str(CONFIGS / "demo.yaml"))
    assert cfg.train.data_path == "demo"
    assert cfg.crops.global_crops_size % cfg.student.patch_size == 0
    assert cfg.crops.local_crops_size % cfg.student.patch_size == 0
    assert cfg.optim.warmup_epochs <= cfg.optim.epochs
