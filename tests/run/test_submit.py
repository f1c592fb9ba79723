"""Tests of dinov2/run/submit.py: options, validation, executor parameters and in-process submission."""

import json
import shutil
from pathlib import Path

import pytest

from dinov2.run.submit import check_args, get_executor_parameters, submit_jobs


class RecordingTask:
    """Task writing the options it receives into its output folder."""

    def __init__(self, args):
        self.args = args

    def __call__(self):
        record = {"output_dir": self.args.output_dir, "config_file": self.args.config_file}
        Path(self.args.output_dir, "task.json").write_text(json.dumps(record))
        return "trained"


def test_parser_defaults_and_training_options(parse_launcher_args):
    args = parse_launcher_args(["--output-dir", "run", "--config-file", "c.yaml", "optim.epochs=2", "train.seed=3"])
    assert (args.ngpus, args.nodes, args.timeout) == (8, 1, 2800)
    assert args.partition is None
    assert (args.use_volta32, args.comment, args.exclude, args.local) == (False, "", "", False)
    assert args.opts == ["optim.epochs=2", "train.seed=3"]
    assert not args.no_resume

    args = parse_launcher_args(["--gpus-per-node", "2", "--nnodes", "3", "--timeout", "90", "--partition", "p", "--local"])
    assert (args.ngpus, args.nodes, args.timeout, args.partition, args.local) == (2, 3, 90, "p", True)


def test_partition_default_from_environment(parse_launcher_args, monkeypatch):
    monkeypatch.setenv("SLURM_PARTITION", "gpu-long")
    assert parse_launcher_args([]).partition == "gpu-long"


def test_executor_parameters_from_args(parse_launcher_args):
    args = parse_launcher_args(
        ["--nodes", "2", "--ngpus", "4", "--timeout", "120", "--partition", "p", "--use-volta32", "--comment", "c"]
    )
    params = get_executor_parameters(args)
    assert params["nodes"] == 2
    assert params["gpus_per_node"] == 4
    assert params["tasks_per_node"] == 4
    assert params["timeout_min"] == 120
    assert params["slurm_partition"] == "p"
    assert params["slurm_constraint"] == "volta32gb"
    assert params["slurm_comment"] == "c"
    assert params["slurm_signal_delay_s"] > 0
    assert "slurm_exclude" not in params
    assert get_executor_parameters(parse_launcher_args(["--exclude", "n[1-2]"]))["slurm_exclude"] == "n[1-2]"


@pytest.mark.parametrize(
    ("argv", "error", "message"),
    [
        ([], ValueError, "--output-dir is required"),
        (["--output-dir", "run", "--ngpus", "0"], ValueError, "--ngpus must be at least 1, got 0"),
        (["--output-dir", "run", "--nodes", "-1"], ValueError, "--nodes must be at least 1, got -1"),
        (["--output-dir", "run", "--timeout", "0"], ValueError, "--timeout must be at least 1"),
        (["--output-dir", "run", "--local", "--nodes", "2"], ValueError, "--local runs on this machine only"),
        (["--output-dir", "run_%j"], ValueError, "contains '%'"),
        (["--output-dir", "run", "--comment", "x\n#SBATCH --mem=1"], ValueError, "--comment.*control character"),
        (["--output-dir", "run", "--config-file", "missing.yaml"], FileNotFoundError, "missing.yaml"),
    ],
)
def test_check_args_rejects(parse_launcher_args, tmp_path, monkeypatch, argv, error, message):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(error, match=message):
        check_args(parse_launcher_args(argv))


def test_submit_jobs_in_process(parse_launcher_args, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("cfg.yaml").write_text("train:\n  seed: 1\n")
    args = parse_launcher_args(["--output-dir", "runs/a", "--config-file", "cfg.yaml", "--ngpus", "1"])

    job = submit_jobs(RecordingTask, args, name="test", cluster="debug")
    assert job.result() == "trained"

    output_dir = tmp_path / "runs" / "a"
    record = json.loads((output_dir / "task.json").read_text())
    # The job gets absolute paths, so it does not depend on the folder it starts in.
    assert record["output_dir"] == str(output_dir)
    assert record["config_file"] == str(tmp_path / "cfg.yaml")
    assert Path(job.paths.folder).parent == output_dir / "submitit"
    # The caller's options are left as they were.
    assert args.output_dir == "runs/a"


def test_submit_jobs_validates_before_creating_anything(parse_launcher_args, tmp_path):
    args = parse_launcher_args(["--output-dir", str(tmp_path / "run"), "--ngpus", "0"])
    with pytest.raises(ValueError, match="--ngpus"):
        submit_jobs(RecordingTask, args, name="test", cluster="debug")
    assert not (tmp_path / "run").exists()


@pytest.mark.skipif(shutil.which("srun") is not None, reason="SLURM is available here")
def test_submit_jobs_without_slurm_suggests_local(parse_launcher_args, tmp_path):
    args = parse_launcher_args(["--output-dir", str(tmp_path / "run")])
    with pytest.raises(RuntimeError, match="--local"):
        submit_jobs(RecordingTask, args, name="test")
