"""Tests of dinov2/utils/checkpoint.py: atomic writes and named errors for unreadable checkpoints."""

import os

import pytest
import torch

from dinov2.checkpoint import (
    CheckpointError,
    CheckpointFormatError,
    CheckpointNotFoundError,
    atomic_torch_save,
    atomic_write_text,
    load_torch_file,
    read_checkpoint,
    state_dict_mismatches,
)


def test_atomic_save_round_trips_and_leaves_no_temporary_file(tmp_path):
    path = tmp_path / "ckpt.pth"
    atomic_torch_save({"w": torch.arange(3.0), "iteration": 7}, str(path))
    loaded = load_torch_file(str(path))
    assert torch.equal(loaded["w"], torch.arange(3.0)) and loaded["iteration"] == 7
    assert os.listdir(tmp_path) == ["ckpt.pth"]


def test_failed_save_keeps_the_previous_file(tmp_path):
    path = tmp_path / "ckpt.pth"
    atomic_torch_save({"w": torch.ones(2)}, str(path))
    before = path.read_bytes()
    with pytest.raises(Exception):  # noqa: B017  (whatever pickling raises for a lambda)
        atomic_torch_save({"w": lambda: None}, str(path))
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["ckpt.pth"]


def test_atomic_write_text_replaces_content(tmp_path):
    path = tmp_path / "last_checkpoint"
    atomic_write_text(str(path), "model_0000001.pth")
    atomic_write_text(str(path), "model_final.pth")
    assert path.read_text() == "model_final.pth"


def test_truncated_missing_and_foreign_files_are_named(tmp_path):
    path = tmp_path / "model.pth"
    atomic_torch_save({"w": torch.randn(100)}, str(path))
    path.write_bytes(path.read_bytes()[:50])
    with pytest.raises(CheckpointError, match="model.pth.*truncated"):
        load_torch_file(str(path))
    with pytest.raises(CheckpointError, match="not found: .*absent.pth"):
        load_torch_file(str(tmp_path / "absent.pth"))
    torch.save([1, 2], tmp_path / "list.pth")
    with pytest.raises(CheckpointError, match="list.pth holds a list"):
        load_torch_file(str(tmp_path / "list.pth"))


def test_state_dict_mismatches_names_missing_unexpected_and_shapes():
    expected = {"a": torch.zeros(2), "b": torch.zeros(3), "c": torch.zeros(1)}
    found = {"a": torch.zeros(2), "b": torch.zeros(4), "d": torch.zeros(1)}
    problems = state_dict_mismatches(expected, found)
    assert problems == ["missing keys (1): c", "unexpected keys (1): d", "b: checkpoint (4,) vs model (3,)"]
    assert state_dict_mismatches(expected, dict(expected)) == []


def test_one_error_vocabulary_for_every_reader(tmp_path):
    # Missing files are FileNotFoundErrors, unreadable ones ValueErrors, and both CheckpointErrors.
    with pytest.raises(CheckpointNotFoundError) as missing:
        load_torch_file(str(tmp_path / "absent.pth"))
    assert isinstance(missing.value, FileNotFoundError) and isinstance(missing.value, CheckpointError)
    path = tmp_path / "cut.pth"
    atomic_torch_save({"w": torch.randn(100)}, str(path))
    path.write_bytes(path.read_bytes()[:50])
    with pytest.raises(CheckpointFormatError, match="cut.pth.*Move it away") as unreadable:
        load_torch_file(str(path), hint="Move it away")
    assert isinstance(unreadable.value, ValueError) and not isinstance(unreadable.value, FileNotFoundError)


@pytest.mark.parametrize(
    "content, expected",
    [
        ({"model": {"teacher.hash_head.hash_layer.0.weight": torch.zeros(1)}, "iteration": 3}, "sdsh_training"),
        ({"teacher": {"backbone.cls_token": torch.zeros(1), "hash_head.hash_layer.0.weight": torch.zeros(1)}}, "sdsh_teacher"),
        ({"teacher": {"module.backbone.cls_token": torch.zeros(1), "module.backbone.hash_layer.0.weight": torch.zeros(1)}}, "sdsh_reference"),
        ({"cls_token": torch.zeros(1), "pos_embed": torch.zeros(1), "blocks.0.norm1.weight": torch.zeros(1)}, "dinov2_backbone"),
    ],
)
def test_read_checkpoint_names_each_format(tmp_path, content, expected):
    path = tmp_path / "ckpt.pth"
    torch.save(content, path)
    read = read_checkpoint(str(path))
    assert read["format"] == expected
    assert sorted(read["checkpoint"]) == sorted(content)


def test_read_checkpoint_names_the_file_of_an_unknown_layout(tmp_path):
    path = tmp_path / "other_program.pth"
    torch.save({"state_dict": {"encoder.weight": torch.zeros(1)}, "epoch": 2}, path)
    with pytest.raises(CheckpointFormatError, match="other_program.pth.*unknown checkpoint layout.*state_dict"):
        read_checkpoint(str(path))
