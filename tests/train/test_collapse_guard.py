"""A collapsed run says so: CODE COLLAPSE in its log and summary, no "new best" at chance level, and
``train.stop_on_collapse`` stops it.

The tiny runs of tests/conftest.py train for a few iterations; the teacher's codes are made to
collapse by giving every image the same continuous code at evaluation (the encoder output is
replaced after the real forward pass), so the whole evaluation path runs on collapsed codes.
"""

import json

import pytest
import torch

from dinov2.train import evaluator as evaluator_module
from dinov2.train import train as train_module

from ..conftest import make_args


def read_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


@pytest.fixture
def collapsed_codes(monkeypatch):
    """Every image gets the code of the first one (a constant code per bit)."""
    original = evaluator_module.extract_codes

    def one_code(*args, **kwargs):
        codes, labels = original(*args, **kwargs)
        return codes[:1].expand_as(codes).clone(), labels

    monkeypatch.setattr(evaluator_module, "extract_codes", one_code)


def test_collapsed_run_logs_code_collapse_and_never_a_new_best(tmp_path, tiny_arch, collapsed_codes):
    summary = train_module.main(make_args(tmp_path))
    lines = read_jsonl(tmp_path / "eval" / "retrieval_metrics.jsonl")
    assert [line["iteration"] for line in lines] == [1, 3]
    for line in lines:
        assert line["distinct_codes"] == 1 and line["constant_bits_fraction"] == 1.0
        assert line["largest_bucket_fraction"] == 1.0 and line["bit_entropy"] == 0.0
        assert line["collapse"] == "full" and line["new_best"] is False
        assert 0.0 < line["random_codes_mAP"] < 1.0 and 0.0 < line["random_codes_mAP_tie_aware"] < 1.0
        assert line["mAP_tie_aware"] <= line["mAP"]
    log = (tmp_path / "log.txt").read_text()
    assert log.count("CODE COLLAPSE at iteration") == 2
    assert "1 distinct codes for 12 database images" in log
    assert "new best" not in log
    # The summary repeats the verdicts, in the log and in summary.json.
    assert "CODE COLLAPSE at 2 of 2 evaluations (iterations 1, 3)" in log
    assert "no evaluation beat the random-code level" in log
    saved = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert saved["collapse"] == [{"iteration": 1, "collapse": "full"}, {"iteration": 3, "collapse": "full"}]
    assert saved["best_above_chance"] is False and summary["stopped"] == ""
    # Nothing better existed: eval/best still holds the highest-scoring teacher.
    assert (tmp_path / "eval" / "best" / "teacher_checkpoint.pth").is_file()


def test_stop_on_collapse_stops_after_n_collapsed_evaluations(tmp_path, tiny_arch, collapsed_codes):
    opts = ("optim.epochs=4", "train.stop_on_collapse=true", "train.stop_on_collapse_evals=2")
    with pytest.raises(train_module.CodeCollapseError, match="collapsed at 2 evaluations in a row.*iteration 3"):
        train_module.main(make_args(tmp_path, *opts))
    assert [line["iteration"] for line in read_jsonl(tmp_path / "eval" / "retrieval_metrics.jsonl")] == [1, 3]
    assert [m["iteration"] for m in read_jsonl(tmp_path / "training_metrics.json")] == [0, 1, 2, 3]
    saved = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert saved["last_iteration"] == 3 and "train.stop_on_collapse" in saved["stopped"]
    assert "stopped: train.stop_on_collapse" in (tmp_path / "log.txt").read_text()


def test_stop_on_collapse_is_off_by_default_and_its_count_is_checked(tmp_path, tiny_arch):
    from dinov2.utils.config import ConfigError, merge_config, validate_config

    cfg = merge_config("", [])
    assert cfg.train.stop_on_collapse is False and cfg.train.stop_on_collapse_evals == 3
    with pytest.raises(ConfigError, match="train.stop_on_collapse_evals"):
        validate_config(merge_config("", ["train.stop_on_collapse_evals=0"]))


def test_a_teacher_above_chance_is_not_replaced_by_a_collapsed_one(tmp_path, tiny_arch, monkeypatch):
    """Collapsed codes on a class-sorted database can score a higher stable mAP than real codes; they must
    not become the best model."""
    calls = {"n": 0}
    original = evaluator_module.extract_codes

    def good_then_collapsed(model, dataset, *args, **kwargs):
        codes, labels = original(model, dataset, *args, **kwargs)
        calls["n"] += 1
        if calls["n"] <= 2:  # first evaluation (database, queries): codes that give each class its own code
            generator = torch.Generator().manual_seed(0)
            prototypes = torch.randn(int(labels.max()) + 1, codes.shape[1], generator=generator)
            return prototypes[labels], labels
        return codes[:1].expand_as(codes).clone(), labels

    monkeypatch.setattr(evaluator_module, "extract_codes", good_then_collapsed)
    summary = train_module.main(make_args(tmp_path))
    first, second = read_jsonl(tmp_path / "eval" / "retrieval_metrics.jsonl")
    assert first["mAP"] == 1.0 and first["new_best"] is True and first["collapse"] == "ok"
    assert second["collapse"] == "full" and second["new_best"] is False
    assert summary["best_iteration"] == 1 and summary["best_above_chance"] is True
    best = torch.load(tmp_path / "eval" / "best" / "teacher_checkpoint.pth", weights_only=True)
    assert best["iteration"] == 1
    assert (tmp_path / "log.txt").read_text().count("new best") == 1


def test_uniform_dino_targets_are_logged_and_summarised(tmp_path, tiny_arch):
    # A teacher temperature of 1e3 makes every DINO target uniform: the term then carries no signal.
    train_module.main(make_args(tmp_path, "teacher.teacher_temp=1000.0", "teacher.warmup_teacher_temp=1000.0"))
    metrics = read_jsonl(tmp_path / "training_metrics.json")
    assert all(m["dino_target_entropy"] > 0.999 for m in metrics)
    log = (tmp_path / "log.txt").read_text()
    assert log.count("DINO TARGETS UNIFORM: the teacher's DINO targets") == 2
    assert "DINO TARGETS UNIFORM at 2 of 2 evaluations (iterations 1, 3)" in log
    assert log.count("hash.loss_contrastive (now 0.0) ties the two views' codes without it") == 2
    saved = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert [c["iteration"] for c in saved["dino_targets"]] == [1, 3]
    assert all(c["entropy"] > 0.999 for c in saved["dino_targets"])


def test_sharp_dino_targets_give_no_uniform_warning(tmp_path, tiny_arch):
    # At 1e-4 the centred targets are nearly one-hot.
    train_module.main(make_args(tmp_path, "teacher.teacher_temp=0.0001", "teacher.warmup_teacher_temp=0.0001"))
    metrics = read_jsonl(tmp_path / "training_metrics.json")
    assert all(m["dino_target_entropy"] < 0.5 for m in metrics)
    log = (tmp_path / "log.txt").read_text()
    assert "DINO TARGETS UNIFORM" not in log
    assert "DINO target entropy (of the maximum) at the last evaluation: 0." in log
    saved = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert len(saved["dino_targets"]) == 2 and all(c["entropy"] < 0.5 for c in saved["dino_targets"])
