"""Drop-in for users of the reference SDSH code: its default YAML, its 20 ablation files and its key names.

``tests/fixtures/reference_ssl_default_config.yaml`` is the reference's ``dinov2/configs/ssl_default_config.yaml``
(GitHub syuan8889/SDSH, commit 9f1eae9e) as published; ``configs/ablations/`` holds its ``dinov2/train/config_*``
files (the ``config_wo_awp*`` copies with one added line, ``hash.pooling: mean``).
"""

import logging
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from dinov2.configs import dinov2_default_config
from dinov2.utils import config as config_module
from dinov2.utils.config import ConfigError, merge_config

from ..conftest import TINY_OPTS, make_args

REPO = Path(__file__).resolve().parents[2]
REFERENCE_DEFAULT = REPO / "tests" / "fixtures" / "reference_ssl_default_config.yaml"
ABLATIONS = REPO / "configs" / "ablations"
ADDED_POOLING_LINE = "  pooling: mean  # not in the reference file: its w/o-AWP runs switched pooling in code\n"
# Reference defaults that are paths on the reference authors' machines; here they are empty, set per run.
MACHINE_PATHS = {"train.data_path": "/home/datasets/AID", "student.pretrained_weights": "/dinov2_models/dinov2_vits14_pretrain.pth"}


_leaves = config_module.flatten_config  # {"a.b": value} of a nested dict


def _file_leaves(path):
    return _leaves(OmegaConf.to_container(OmegaConf.load(path)))


def test_defaults_equal_the_reference_default_key_by_key():
    reference = _file_leaves(REFERENCE_DEFAULT)
    ours = _leaves(OmegaConf.to_container(dinov2_default_config))
    missing = sorted(set(reference) - set(ours))
    assert not missing, f"reference keys absent from the default config: {missing}"
    differing = {k: (v, ours[k]) for k, v in reference.items() if ours[k] != v and k not in MACHINE_PATHS}
    assert not differing, f"defaults that differ from the reference: {differing}"
    for key, reference_value in MACHINE_PATHS.items():
        assert reference[key] == reference_value and ours[key] == ""
    # The three values that used to differ, spelled out.
    assert ours["train.num_workers"] == 8 and ours["train.cache_dataset"] is True
    assert ours["compute_precision.student.hash_head.mixed_precision.reduce_dtype"] == "fp16"
    # One key per meaning: the earlier spellings are not declared.
    assert "data.root" not in ours and "data.train_ratio" not in ours


def test_reference_default_loads_verbatim_with_its_values():
    cfg = merge_config(str(REFERENCE_DEFAULT))
    merged = _leaves(OmegaConf.to_container(cfg))
    for key, value in _file_leaves(REFERENCE_DEFAULT).items():
        assert merged[key] == value, key


def test_reference_default_fails_only_for_its_missing_weights_file(tmp_path, tiny_arch):
    from dinov2.train import train as train_module

    out = tmp_path / "run"
    args = make_args(out, config_file=str(REFERENCE_DEFAULT))
    args.opts = []  # the file exactly as published
    with pytest.raises(ConfigError) as info:
        train_module.main(args)
    message = str(info.value)
    assert "/dinov2_models/dinov2_vits14_pretrain.pth" in message and "student.pretrained_weights=" in message
    assert not (out / "config.yaml").exists()  # refused before anything is written


def test_reference_default_trains_with_empty_weights_and_a_data_path(tmp_path, tiny_arch):
    from dinov2.train import train as train_module

    out = tmp_path / "run"
    # The tiny model sizes for speed, then the two values a user of the reference file sets.
    args = make_args(out, "student.pretrained_weights=", "train.data_path=demo", config_file=str(REFERENCE_DEFAULT))
    summary = train_module.main(args)
    assert summary["best_mAP"] is not None
    saved = OmegaConf.load(out / "config.yaml")
    assert saved.train.data_path == "demo" and saved.train.train_ratio == 0.5
    assert saved.student.pretrained_weights == ""
    assert "root" not in saved.data and "train_ratio" not in saved.data
    assert (out / "eval" / "retrieval_metrics.jsonl").is_file()


ABLATION_FILES = sorted(p.name for p in ABLATIONS.iterdir())


def test_all_reference_ablation_files_are_shipped():
    assert len(ABLATION_FILES) == 20
    assert sum(name.startswith("config_wo_awp") for name in ABLATION_FILES) == 8


@pytest.mark.parametrize("name", ABLATION_FILES)
def test_ablation_file_merges_with_its_values(name, tmp_path):
    path = ABLATIONS / name
    cfg = merge_config(str(path))
    merged = _leaves(OmegaConf.to_container(cfg))
    values = _file_leaves(path)
    assert values and all(merged[k] == v for k, v in values.items())
    text = path.read_text()
    if name.startswith("config_wo_awp"):
        assert values["hash.pooling"] == "mean"
        # The reference's own file (without the added line) loads too, and keeps AWP on.
        original = tmp_path / name
        original.write_text(text.replace(ADDED_POOLING_LINE, ""))
        assert merge_config(str(original)).hash.pooling == "awp"
    else:
        assert "pooling" not in text and cfg.hash.pooling == "awp"


@pytest.mark.parametrize("name", ABLATION_FILES)
def test_ablation_files_train(name, tmp_path, tiny_arch):
    from dinov2.train import train as train_module

    out = tmp_path / "run"
    summary = train_module.main(make_args(out, "optim.epochs=1", config_file=str(ABLATIONS / name)))
    assert summary["last_iteration"] == 1
    saved = _leaves(OmegaConf.to_container(OmegaConf.load(out / "config.yaml")))
    for key, value in _file_leaves(ABLATIONS / name).items():
        assert saved[key] == value, key


@pytest.fixture
def fresh_alias_warnings(monkeypatch):
    monkeypatch.setattr(config_module, "_warned_aliases", set())


def test_deprecated_aliases_map_onto_reference_keys_and_warn_once(tmp_path, caplog, fresh_alias_warnings):
    old = tmp_path / "old.yaml"
    old.write_text("data:\n  root: /data/AID\n  train_ratio: 0.8\n  val_ratio: 0.1\n")
    with caplog.at_level(logging.WARNING, logger="dinov2"):
        cfg = merge_config(str(old))
        again = merge_config(None, ["data.root=/data/UCMD"])
    assert cfg.train.data_path == "/data/AID" and cfg.train.train_ratio == 0.8 and cfg.data.val_ratio == 0.1
    assert again.train.data_path == "/data/UCMD"
    warnings = [r.getMessage() for r in caplog.records if "deprecated" in r.getMessage()]
    assert len(warnings) == 2  # one per alias, the second use of data.root is silent
    assert any("'data.root'" in w and "'train.data_path'" in w for w in warnings)
    assert "root" not in cfg.data and "train_ratio" not in cfg.data


def test_alias_and_reference_key_with_different_values_is_an_error(tmp_path, fresh_alias_warnings):
    both = tmp_path / "both.yaml"
    both.write_text("data:\n  root: /a\ntrain:\n  data_path: /b\n")
    with pytest.raises(ConfigError, match="train.data_path.*data.root"):
        merge_config(str(both))
    # The same value twice is harmless; a later source overrides an earlier one as usual.
    cfg = merge_config(None, ["data.root=/a", "train.data_path=/a"])
    assert cfg.train.data_path == "/a"
    both.write_text("data:\n  root: /a\n")
    assert merge_config(str(both), ["train.data_path=/c"]).train.data_path == "/c"


@pytest.mark.parametrize(
    "opt, suggestion",
    [
        ("train.data_pth=/x", "train.data_path"),
        ("train.train_ration=0.5", "train.train_ratio"),
        ("hash.hash_bits=32", "hash.hash_bit"),
        ("data.num_workers=2", "train.num_workers"),
    ],
)
def test_unknown_key_suggests_the_closest_known_key(opt, suggestion):
    with pytest.raises(ConfigError, match=f"did you mean [^?]*{suggestion}"):
        merge_config(None, [opt])


def test_far_unknown_key_gets_no_suggestion():
    with pytest.raises(ConfigError) as info:
        merge_config(None, ["zzz.qqq=1"])
    assert "did you mean" not in str(info.value)


def test_empty_command_line_value_is_an_empty_string():
    cfg = merge_config(None, ["student.pretrained_weights=", "train.data_path="])
    assert cfg.student.pretrained_weights == "" and cfg.train.data_path == ""


def test_cpu_run_caps_loader_workers_at_usable_cores(monkeypatch, caplog):
    import torch

    from dinov2.data import builders

    cfg = merge_config(None, TINY_OPTS + ["train.num_workers=8"])
    monkeypatch.setattr(builders, "usable_cpus", lambda: 2)  # the name the builder calls
    with caplog.at_level(logging.INFO, logger="dinov2"):
        assert builders.train_loader_workers(cfg, torch.device("cpu")) == 2
    assert any("train.num_workers=8" in r.getMessage() and "2 usable CPU" in r.getMessage() for r in caplog.records)
    assert builders.train_loader_workers(cfg, torch.device("cuda", 0)) == 8
    cfg.train.num_workers = 1
    assert builders.train_loader_workers(cfg, torch.device("cpu")) == 1
