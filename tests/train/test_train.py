"""Tests of dinov2/train/train.py: end-to-end CPU runs of a tiny model on a tiny generated dataset.

Each run trains a width-32, depth-1 ViT for a few iterations in this process through ``main(args)``;
the two-process test spawns gloo workers.
"""

import csv
import json
import math
import os

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from omegaconf import OmegaConf

from dinov2.checkpoint import CheckpointError
from dinov2.loss import HashQuantizationLoss
from dinov2.models import build_hashing_network
from dinov2.models import vision_transformer as vits
from dinov2.train import train as train_module
from dinov2.utils.config import ConfigError, merge_config

from ..conftest import TINY_ARCH, TINY_OPTS, export_torchrun_env, free_port, make_args, tiny_vit

MAX_ITER = 4  # optim.epochs=2 x train.OFFICIAL_EPOCH_LENGTH=2


def read_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def run(output_dir, *opts, **kwargs):
    return train_module.main(make_args(output_dir, *opts, **kwargs))


def teacher_codes(cfg_path, weights, n=2):
    cfg = OmegaConf.load(cfg_path)
    network = build_hashing_network(cfg, weights)
    images = torch.randn(n, 3, cfg.crops.global_crops_size, cfg.crops.global_crops_size)
    with torch.no_grad():
        return network(images)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """One 4-iteration run shared by the tests that only read its outputs."""
    mp_ = pytest.MonkeyPatch()
    mp_.setattr(vits, TINY_ARCH, tiny_vit, raising=False)
    out = tmp_path_factory.mktemp("run")
    summary = run(out)
    yield out, summary
    mp_.undo()


def test_end_to_end_run_writes_logs_manifest_checkpoints_and_evaluations(finished_run, tiny_arch):
    out, summary = finished_run
    metrics = read_jsonl(out / "training_metrics.json")
    assert [m["iteration"] for m in metrics] == list(range(MAX_ITER))  # log_period=1
    assert all(math.isfinite(m["total_loss"]) for m in metrics)
    assert OmegaConf.load(out / "config.yaml").hash.hash_bit == 16

    with open(out / "split_manifest.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3 * 8
    assert sum(r["split"] == "train" for r in rows) == 12 and sum(r["split"] == "query" for r in rows) == 12

    assert (out / "last_checkpoint").read_text() == "model_final.pth"
    assert (out / "model_final.pth").is_file() and (out / "model_0000001.pth").is_file()

    evals = read_jsonl(out / "eval" / "retrieval_metrics.jsonl")
    assert [e["iteration"] for e in evals] == [1, 3]  # eval_period_iterations=2
    assert all(0.0 <= e["mAP"] <= 1.0 and e["select_on"] == "query" and e["bits"] == 16 for e in evals)
    assert summary["best_mAP"] == max(e["mAP"] for e in evals)
    assert 0.0 <= summary["random_codes_mAP"] <= 1.0
    assert summary["training_curves"] == str(out / "training_curves.png")
    assert (out / "training_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    for kind in ("best", "last"):
        path = out / "eval" / kind / "teacher_checkpoint.pth"
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        assert {"teacher", "mAP", "iteration", "config"} <= set(ckpt)
        prefixes = {k.split(".")[0] for k in ckpt["teacher"]}
        assert prefixes == {"backbone", "hash_head", "dino_head", "ibot_head"}
        codes = teacher_codes(out / "config.yaml", str(path))
        assert codes.shape == (2, 16) and torch.isfinite(codes).all()
    last = torch.load(out / "eval" / "last" / "teacher_checkpoint.pth", map_location="cpu", weights_only=True)
    assert last["iteration"] == 3
    # The last teacher checkpoint holds the teacher of the final training checkpoint.
    final = torch.load(out / "model_final.pth", map_location="cpu", weights_only=True)["model"]
    for key, value in last["teacher"].items():
        assert torch.equal(value, final[f"teacher.{key}"]), key


def test_eval_only_scores_the_last_checkpoint_and_given_weights(finished_run, tiny_arch):
    out, summary = finished_run
    before = read_jsonl(out / "eval" / "retrieval_metrics.jsonl")
    run(out, eval_only=True)
    run(out, f"MODEL.WEIGHTS={out / 'eval' / 'best' / 'teacher_checkpoint.pth'}", eval_only=True)
    lines = read_jsonl(out / "eval" / "retrieval_metrics.jsonl")
    assert lines[: len(before)] == before
    from_checkpoint, from_weights = lines[len(before) :]
    # Evaluation is deterministic: the same teacher gives the same mAP as during training.
    assert from_checkpoint["eval_only"] and from_checkpoint["iteration"] == 3
    assert from_checkpoint["mAP"] == pytest.approx(before[-1]["mAP"], abs=1e-9)
    assert from_weights["mAP"] == pytest.approx(summary["best_mAP"], abs=1e-9)


def test_resume_continues_iterations_and_keeps_earlier_files(tmp_path, tiny_arch):
    run(tmp_path)
    first_files = {p.name: p.read_bytes() for p in tmp_path.glob("model_000*.pth")}
    assert set(first_files) == {"model_0000001.pth", "model_0000003.pth"}
    summary = run(tmp_path, "optim.epochs=3")
    assert summary["start_iteration"] == MAX_ITER and summary["last_iteration"] == MAX_ITER + 1
    iterations = [m["iteration"] for m in read_jsonl(tmp_path / "training_metrics.json")]
    assert iterations == list(range(MAX_ITER + 2))
    assert [e["iteration"] for e in read_jsonl(tmp_path / "eval" / "retrieval_metrics.jsonl")] == [1, 3, 5]
    for name, content in first_files.items():
        assert (tmp_path / name).read_bytes() == content
    assert torch.load(tmp_path / "model_final.pth", weights_only=True)["iteration"] == MAX_ITER + 1


def test_non_finite_loss_stops_with_term_and_iteration_and_keeps_checkpoint(tmp_path, tiny_arch, monkeypatch):
    run(tmp_path)
    kept = {name: (tmp_path / name).read_bytes() for name in ("model_final.pth", "last_checkpoint")}
    kept_best = (tmp_path / "eval" / "best" / "teacher_checkpoint.pth").read_bytes()
    monkeypatch.setattr(HashQuantizationLoss, "forward", lambda self, codes: codes.sum() * float("nan"))
    with pytest.raises(train_module.NonFiniteTrainingError, match="hash_reg_loss.*iteration 4") as info:
        run(tmp_path, "optim.epochs=3")
    assert info.value.term == "hash_reg_loss" and info.value.iteration == MAX_ITER
    for name, content in kept.items():
        assert (tmp_path / name).read_bytes() == content
    assert (tmp_path / "eval" / "best" / "teacher_checkpoint.pth").read_bytes() == kept_best
    assert not list(tmp_path.glob("model_0000005*"))


def test_resume_with_a_model_changing_config_is_refused(finished_run, tiny_arch):
    out, _ = finished_run
    config_before = (out / "config.yaml").read_bytes()
    with pytest.raises(ConfigError, match=r"hash\.hash_bit: 16 -> 32"):
        run(out, "hash.hash_bit=32")
    assert (out / "config.yaml").read_bytes() == config_before


def test_truncated_checkpoint_is_an_error_naming_it(tmp_path, tiny_arch):
    run(tmp_path)
    path = tmp_path / "model_final.pth"
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="model_final.pth"):
        run(tmp_path, "optim.epochs=3")
    assert not list(tmp_path.glob("model_0000005*"))


def test_unknown_config_key_on_the_command_line_names_the_key(tmp_path, tiny_arch):
    with pytest.raises(ConfigError, match="train.no_such_key"):
        run(tmp_path, "train.no_such_key=1")


def test_help_shows_options_and_examples():
    text = train_module.get_args_parser().format_help()
    for expected in ("--config-file", "--output-dir", "--no-resume", "--eval-only", "examples:", "torchrun"):
        assert expected in text


def test_schedules_follow_the_dinov2_formulas():
    cfg = merge_config(None, TINY_OPTS + ["optim.epochs=10", "optim.warmup_epochs=2", "teacher.warmup_teacher_temp_epochs=3"])
    cfg.optim.lr = 0.5
    schedules = train_module.build_schedulers(cfg)
    length, total = 2, 20
    warmup = 2 * length
    lr = [schedules["lr"][i] for i in range(total)]
    np.testing.assert_allclose(lr[:warmup], np.linspace(0, 0.5, warmup))
    for i in range(warmup, total):
        t = (i - warmup) / (total - warmup)
        expected = cfg.optim.min_lr + 0.5 * (0.5 - cfg.optim.min_lr) * (1 + math.cos(math.pi * t))
        assert lr[i] == pytest.approx(expected)
    assert schedules["lr"][total + 5] == cfg.optim.min_lr
    temps = [schedules["teacher_temp"][i] for i in range(total)]
    np.testing.assert_allclose(temps[: 3 * length], np.linspace(0.04, 0.07, 3 * length))
    assert all(t == 0.07 for t in temps[3 * length :])
    momentum = [schedules["momentum"][i] for i in range(total)]
    assert momentum[0] == pytest.approx(0.992) and momentum[-1] == pytest.approx(1.0, abs=1e-4)
    assert all(a <= b for a, b in zip(momentum, momentum[1:]))
    wd = [schedules["wd"][i] for i in range(total)]
    assert wd[0] == pytest.approx(0.04) and wd[-1] < 0.4 and schedules["wd"][total] == 0.4
    last = [schedules["last_layer_lr"][i] for i in range(total)]
    assert last[:length] == [0.0] * length and last[length:] == lr[length:]

    groups = [
        {"params": [torch.zeros(1)], "lr_multiplier": 0.3, "wd_multiplier": 0.0, "is_last_layer": False},
        {"params": [torch.zeros(1)], "lr_multiplier": 1.0, "wd_multiplier": 1.0, "is_last_layer": True},
    ]
    optimizer = torch.optim.AdamW(groups)
    train_module.apply_optim_scheduler(optimizer, lr=0.1, wd=0.2, last_layer_lr=0.05)
    assert [(g["lr"], g["weight_decay"]) for g in optimizer.param_groups] == [(pytest.approx(0.03), 0.0), (0.05, 0.2)]


def _replica_worker(rank, world_size, port, output_dir, result_dir):
    setattr(vits, TINY_ARCH, tiny_vit)
    export_torchrun_env(rank, world_size, port)
    captured = {}
    original = train_module.do_train

    def capture(cfg, setup_, evaluator, root, resume):
        captured["initial"] = {k: v.detach().clone() for k, v in setup_.model.teacher.state_dict().items()}
        summary = original(cfg, setup_, evaluator, root, resume)
        captured["teacher"] = {k: v.detach().clone() for k, v in setup_.model.teacher.state_dict().items()}
        return summary

    train_module.do_train = capture
    try:
        train_module.main(make_args(output_dir))
        torch.save(captured["teacher"], os.path.join(result_dir, f"teacher_{rank}.pt"))
        torch.save(captured["initial"], os.path.join(result_dir, f"initial_{rank}.pt"))
    finally:
        train_module.do_train = original
        torch.distributed.destroy_process_group()


def test_two_cpu_processes_keep_identical_replicas_and_write_one_eval_line(tmp_path):
    """gloo, 2 processes: gradients averaged, same teacher on both ranks, one eval line per evaluation."""
    out, results = tmp_path / "run", tmp_path / "results"
    results.mkdir()
    mp.spawn(_replica_worker, args=(2, free_port(), str(out), str(results)), nprocs=2, join=True)
    evals = read_jsonl(out / "eval" / "retrieval_metrics.jsonl")
    assert [e["iteration"] for e in evals] == [1, 3]
    # Every query and database image was encoded once, although each rank encoded half of them.
    assert all(e["num_queries"] == 12 and e["num_database"] == 12 for e in evals)
    assert (out / "log.txt").is_file() and (out / "log.txt.rank1").is_file()
    assert [m["iteration"] for m in read_jsonl(out / "training_metrics.json")] == list(range(MAX_ITER))
    teachers = [torch.load(results / f"teacher_{rank}.pt", weights_only=True) for rank in range(2)]
    initial = torch.load(results / "initial_0.pt", weights_only=True)
    assert teachers[0].keys() == teachers[1].keys()
    for key in teachers[0]:
        assert torch.equal(teachers[0][key], teachers[1][key]), key
    # The replicas did train: the teacher moved away from its initial weights.
    assert any(not torch.equal(teachers[0][k], initial[k]) for k in initial)


def test_selection_on_validation_queries_also_reports_the_test_queries_once(tmp_path, tiny_arch):
    summary = run(tmp_path, "evaluation.select_on=val", "data.val_ratio=0.5")
    lines = read_jsonl(tmp_path / "eval" / "retrieval_metrics.jsonl")
    selection, test = lines[:-1], lines[-1]
    # 3 classes x 8 images: 4 in the database split, of which 2 train and 2 are validation queries.
    assert [e["iteration"] for e in selection] == [1, 3]
    assert all(e["select_on"] == "val" and e["num_queries"] == 6 and e["num_database"] == 6 for e in selection)
    assert test["split"] == "query" and test["selected_on"] == "val" and test["num_queries"] == 12
    assert test["iteration"] == summary["best_iteration"] == max(selection, key=lambda e: e["mAP"])["iteration"]
    assert summary["test_query_mAP"] == test["mAP"]


def test_database_holdout_selects_beside_the_test_queries_and_changes_nothing_else(tmp_path, tiny_arch):
    summary = run(tmp_path / "holdout", "evaluation.holdout_ratio=0.25")
    lines = read_jsonl(tmp_path / "holdout" / "eval" / "retrieval_metrics.jsonl")
    # The reference protocol is untouched: every database image stays, the test queries select eval/best.
    assert [e["iteration"] for e in lines] == [1, 3]
    assert all(e["select_on"] == "query" and e["num_database"] == 12 and e["num_queries"] == 12 for e in lines)
    assert all(0.0 <= e["holdout_mAP"] <= 1.0 for e in lines)
    picked = max(lines, key=lambda e: e["holdout_mAP"])  # the first of equal holdout scores
    assert summary["holdout_iteration"] == picked["iteration"] and summary["holdout_test_mAP"] == picked["mAP"]
    assert summary["holdout_mAP"] == picked["holdout_mAP"]
    assert summary["best_iteration"] == max(lines, key=lambda e: e["mAP"])["iteration"]
    kept = torch.load(tmp_path / "holdout" / "eval" / "best_holdout" / "teacher_checkpoint.pth", weights_only=True)
    assert kept["iteration"] == picked["iteration"]
    # Off by default: no holdout figure, no extra checkpoint.
    plain = run(tmp_path / "plain")
    assert "holdout_iteration" not in plain
    assert not (tmp_path / "plain" / "eval" / "best_holdout").exists()
    assert "holdout_mAP" not in read_jsonl(tmp_path / "plain" / "eval" / "retrieval_metrics.jsonl")[0]


def test_holdout_split_is_the_tail_of_each_class():
    from dinov2.train.evaluator import holdout_split

    val, rest = holdout_split([0] * 8 + [1] * 4 + [2] * 2, 0.25)
    assert val.tolist() == [6, 7, 11, 13] and rest.tolist() == [0, 1, 2, 3, 4, 5, 8, 9, 10, 12]
    assert holdout_split([0, 1], 0.0) is None
