"""The SLURM launcher around the real training entry point, through submitit's in-process executor."""

import json
import os

import torch

from dinov2.run.submit import get_args_parser, submit_jobs
from dinov2.run.train.train import Trainer
from dinov2.train.train import get_args_parser as get_train_args_parser

from ...conftest import TINY_OPTS


def _iterations(output_dir):
    with open(os.path.join(output_dir, "eval", "retrieval_metrics.jsonl")) as f:
        return [json.loads(line)["iteration"] for line in f if line.strip()]


def test_job_trains_then_a_requeued_job_resumes(tmp_path, tiny_arch, monkeypatch):
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    parser = get_args_parser(parents=[get_train_args_parser(add_help=False)])
    output_dir = tmp_path / "run"
    args = parser.parse_args(["--output-dir", str(output_dir), "--ngpus", "1", "--no-resume", *TINY_OPTS])
    environ = dict(os.environ)
    try:
        submit_jobs(Trainer, args, name="sdsh-test", cluster="debug").result()
        assert _iterations(output_dir) == [1, 3]
        # A requeue (timeout or preemption) resubmits through Trainer.checkpoint: it must resume, not
        # restart, even though the first submission asked for --no-resume.
        requeued = Trainer(args).checkpoint()
        assert requeued.function.args.no_resume is False
        resumed_args = requeued.function.args
        resumed_args.opts = [*TINY_OPTS, "optim.epochs=3"]
        submit_jobs(Trainer, resumed_args, name="sdsh-test", cluster="debug").result()
        assert _iterations(output_dir) == [1, 3, 5]
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
        os.environ.clear()
        os.environ.update(environ)
