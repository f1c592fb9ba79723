"""Tests of dinov2/run/train/train.py: the training task, its requeue, and the launcher's command line."""

import functools
import json
import os
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest
import submitit

from dinov2.run.train import launch
from dinov2.run.train import train as launcher
from dinov2.run.train.train import Trainer

DIST_VARS = ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")


@pytest.fixture
def slurm_task_env(monkeypatch):
    """Environment of task 5 of an 8-task, 2-node SLURM job, with stale torch.distributed variables."""
    for name in DIST_VARS:
        monkeypatch.setenv(name, "stale")
    monkeypatch.delenv("MASTER_PORT")
    monkeypatch.setenv("SUBMITIT_EXECUTOR", "slurm")
    slurm = {
        "SLURM_JOB_ID": "777",
        "SLURM_NTASKS": "8",
        "SLURM_JOB_NUM_NODES": "2",
        "SLURM_NODEID": "1",
        "SLURM_PROCID": "5",
        "SLURM_LOCALID": "1",
        "SLURM_JOB_NODELIST": "gpu[017-018]",
    }
    for name, value in slurm.items():
        monkeypatch.setenv(name, value)
    for name in ("SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID"):
        monkeypatch.delenv(name, raising=False)


def _record_env(args):
    return {"args": vars(args), "env": {name: os.environ.get(name) for name in DIST_VARS}}


def test_trainer_exports_distributed_env_from_slurm_job(slurm_task_env, parse_launcher_args):
    args = parse_launcher_args(["--output-dir", "/runs/a"])
    record = Trainer(args, train_fn=_record_env)()
    env = record["env"]
    assert env["MASTER_ADDR"] == "gpu017"
    assert (env["RANK"], env["WORLD_SIZE"], env["LOCAL_RANK"], env["LOCAL_WORLD_SIZE"]) == ("5", "8", "1", "4")
    assert 20000 <= int(env["MASTER_PORT"]) < 32000
    assert record["args"]["output_dir"] == "/runs/a"


def test_trainer_keeps_master_port_given_at_submission(slurm_task_env, parse_launcher_args, monkeypatch):
    monkeypatch.setenv("MASTER_PORT", "29511")
    record = Trainer(parse_launcher_args(["--output-dir", "/runs/a"]), train_fn=_record_env)()
    assert record["env"]["MASTER_PORT"] == "29511"


def test_trainer_defaults_to_training_main(slurm_task_env, parse_launcher_args, monkeypatch):
    calls = []
    fake = types.ModuleType("dinov2.train.train")
    fake.main = lambda args: calls.append(args) or "trained"
    monkeypatch.setitem(sys.modules, "dinov2.train.train", fake)
    args = parse_launcher_args(["--output-dir", "/runs/a"])
    assert Trainer(args)() == "trained"
    assert calls == [args]


def test_trainer_reports_missing_training_module(slurm_task_env, parse_launcher_args, monkeypatch):
    monkeypatch.setitem(sys.modules, "dinov2.train.train", None)
    with pytest.raises(RuntimeError, match="cannot import the training entry point dinov2.train.train"):
        Trainer(parse_launcher_args(["--output-dir", "/runs/a"]))()


def test_checkpoint_requeues_a_resuming_trainer(parse_launcher_args):
    args = parse_launcher_args(["--output-dir", "/runs/a", "--no-resume", "--config-file", "c.yaml", "a.b=1"])
    trainer = Trainer(args, train_fn=_record_env)
    delayed = trainer.checkpoint()
    assert isinstance(delayed, submitit.helpers.DelayedSubmission)
    task = delayed.function
    assert type(task) is Trainer and task is not trainer
    assert task.args.no_resume is False
    assert task.args.output_dir == "/runs/a"
    assert (task.args.config_file, task.args.opts) == ("c.yaml", ["a.b=1"])
    assert task.train_fn is _record_env
    assert (delayed.args, delayed.kwargs) == ((), {})
    # The running task keeps its own options.
    assert args.no_resume is True


def _fake_train_module(monkeypatch, get_args_parser):
    monkeypatch.setattr(launcher, "get_train_args_parser", get_args_parser)
    submitted = []
    monkeypatch.setattr(launch, "submit_jobs", lambda task_class, args, name: submitted.append((task_class, args)))
    return submitted


def test_main_submits_trainer_with_both_option_sets(monkeypatch, tmp_path, train_args_parser_factory):
    monkeypatch.delenv("SLURM_PARTITION", raising=False)
    submitted = _fake_train_module(monkeypatch, train_args_parser_factory)
    config = tmp_path / "c.yaml"
    config.write_text("{}\n")
    argv = ["--nodes", "2", "--ngpus", "4", "--partition", "p", "--config-file", str(config)]
    argv += ["--output-dir", str(tmp_path / "run"), "optim.epochs=20", "train.data_path=demo"]
    assert launcher.main(argv) == 0
    [(task_class, args)] = submitted
    assert task_class is Trainer
    assert (args.nodes, args.ngpus, args.partition, args.timeout) == (2, 4, "p", 2800)
    opts = ["optim.epochs=20", "train.data_path=demo"]
    assert (args.config_file, args.output_dir, args.opts) == (str(config), str(tmp_path / "run"), opts)


def test_main_rejects_invalid_options_before_submitting(monkeypatch, capsys, train_args_parser_factory):
    submitted = _fake_train_module(monkeypatch, train_args_parser_factory)
    assert launcher.main(["--ngpus", "2"]) == 2
    assert "error: --output-dir is required" in capsys.readouterr().err
    assert submitted == []


def test_main_help_lists_both_option_sets(monkeypatch, capsys, train_args_parser_factory):
    _fake_train_module(monkeypatch, train_args_parser_factory)
    assert launcher.main(["--help"]) == 0
    out = capsys.readouterr().out
    for option in ("--nodes", "--ngpus", "--local", "--config-file", "--output-dir", "--no-resume"):
        assert option in out


def test_script_runs_from_its_path():
    """``python dinov2/run/train/train.py --help`` works from the installed package, without path edits."""
    script = Path(launcher.__file__)
    result = subprocess.run(
        [sys.executable, str(script), "--help"], capture_output=True, text=True, timeout=120, cwd=script.parents[3]
    )
    assert result.returncode == 0, result.stderr
    for option in ("--nodes", "--ngpus", "--partition", "--timeout", "--local", "--config-file", "--output-dir"):
        assert option in result.stdout


def test_local_job_preempted_then_resumed(parse_launcher_args, tmp_path):
    """A real submitit local job: signalled once, requeued through Trainer.checkpoint, then finished."""

    def train_fn(args):
        out = Path(args.output_dir)
        with (out / "calls.jsonl").open("a") as f:
            f.write(json.dumps({"no_resume": args.no_resume, "rank": os.environ["RANK"]}) + "\n")
        started = out / "started"
        if not started.exists():
            # Written then renamed, so that the test never reads a half-written file.
            (out / "started.tmp").write_text(str(os.getpid()))
            os.replace(out / "started.tmp", started)
            # Long enough for the test to interrupt this first run.
            time.sleep(120)
        return "finished"

    args = parse_launcher_args(["--local", "--ngpus", "1", "--timeout", "5", "--no-resume"])
    args.output_dir = str(tmp_path / "run")
    job = launch.submit_jobs(functools.partial(Trainer, train_fn=train_fn), args, name="test")

    started = tmp_path / "run" / "started"
    deadline = time.monotonic() + 60
    while not started.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert started.exists(), f"the local job did not start; see {job.paths.stderr}"
    # What SLURM does on preemption or near the time limit: signal the job's tasks.
    os.kill(int(started.read_text()), submitit.JobEnvironment._usr_sig())

    assert job.result() == "finished"
    calls = [json.loads(line) for line in (tmp_path / "run" / "calls.jsonl").read_text().splitlines()]
    assert calls == [{"no_resume": True, "rank": "0"}, {"no_resume": False, "rank": "0"}]
