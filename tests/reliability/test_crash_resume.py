"""Crash safety of training: a run killed with SIGKILL resumes and ends where an uninterrupted run ends.

Runs the real entry point (``dinov2/train/train.py``) in subprocesses through the tiny-ViT launcher,
on the CPU with one thread, without and with loader workers: the resumed run must end with exactly
the uninterrupted run's weights (data order, augmentations and masks, drop path, EMA, schedules).
"""

import json
import os
import random
import signal
import subprocess
import time

import pytest
import torch

from ..conftest import TINY_OPTS
from .conftest import PYTHON, subprocess_env

EPOCHS = 6  # x OFFICIAL_EPOCH_LENGTH 2 = 12 iterations; a checkpoint and an evaluation every 2
MAX_ITER = EPOCHS * 2


def _command(launcher, output_dir, num_workers):
    opts = [*TINY_OPTS, f"optim.epochs={EPOCHS}", f"train.num_workers={num_workers}"]
    return [PYTHON, launcher, "--output-dir", str(output_dir), *opts]


def _read_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def _teacher(path):
    model = torch.load(path, map_location="cpu", weights_only=True)["model"]
    return {k: v for k, v in model.items() if k.startswith("teacher.")}


def _wait(proc, timeout=120):
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err.decode()[-3000:]


@pytest.mark.parametrize("num_workers", [0, 2])
def test_sigkill_then_resume_ends_with_the_uninterrupted_weights(tmp_path, launcher, num_workers):
    env = subprocess_env()
    run_a, run_b = tmp_path / "a", tmp_path / "b"
    proc_a = subprocess.Popen(_command(launcher, run_a, num_workers), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc_b = subprocess.Popen(_command(launcher, run_b, num_workers), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    # Kill B at a seeded, arbitrary moment after its first periodic checkpoint is complete.
    deadline = time.monotonic() + 120
    while not (run_b / "last_checkpoint").is_file():
        assert proc_b.poll() is None, proc_b.stderr.read().decode()[-3000:]
        assert time.monotonic() < deadline, "run B wrote no checkpoint"
        time.sleep(0.01)
    time.sleep(random.Random(0).uniform(0.0, 0.2))
    os.kill(proc_b.pid, signal.SIGKILL)
    proc_b.wait()
    assert proc_b.returncode == -signal.SIGKILL
    assert not (run_b / "model_final.pth").exists(), "run B finished before it was killed"
    interrupted_at = torch.load(
        run_b / (run_b / "last_checkpoint").read_text(), map_location="cpu", weights_only=True
    )["iteration"]
    assert interrupted_at < MAX_ITER - 1

    resumed = subprocess.Popen(_command(launcher, run_b, num_workers), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _wait(resumed)
    _wait(proc_a)

    final_a, final_b = (torch.load(r / "model_final.pth", map_location="cpu", weights_only=True) for r in (run_a, run_b))
    assert final_a["iteration"] == final_b["iteration"] == MAX_ITER - 1
    teacher_a, teacher_b = _teacher(run_a / "model_final.pth"), _teacher(run_b / "model_final.pth")
    assert teacher_a.keys() == teacher_b.keys() and teacher_a
    different = [key for key in teacher_a if not torch.equal(teacher_a[key], teacher_b[key])]
    assert not different, f"the resumed teacher differs in {different}"
    # The logs describe one run: each iteration and each evaluation once, evaluations with the same
    # numbers. (Logged losses are medians over a window that restarts with the process, so they may differ.)
    metrics_b = _read_jsonl(run_b / "training_metrics.json")
    assert [m["iteration"] for m in metrics_b] == list(range(MAX_ITER))
    evals_a, evals_b = (_read_jsonl(r / "eval" / "retrieval_metrics.jsonl") for r in (run_a, run_b))
    assert [(e["iteration"], e["mAP"]) for e in evals_b] == [(e["iteration"], e["mAP"]) for e in evals_a]
