"""Tests of the cluster defaults of dinov2/run/submit.py."""

import zlib
from pathlib import Path
from types import SimpleNamespace

import pytest

from dinov2.run.submit import (
    ClusterType,
    get_cluster_type,
    get_slurm_executor_parameters,
    get_slurm_partition,
    get_torch_distributed_env,
    get_user_checkpoint_path,
)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for name in ("SDSH_CLUSTER_TYPE", "SDSH_CHECKPOINT_ROOT", "SLURM_PARTITION"):
        monkeypatch.delenv(name, raising=False)


def test_cluster_type_defaults_to_generic_and_reads_environment(monkeypatch):
    assert get_cluster_type() is ClusterType.GENERIC
    monkeypatch.setenv("SDSH_CLUSTER_TYPE", "RSC")
    assert get_cluster_type() is ClusterType.RSC
    assert get_cluster_type(ClusterType.AWS) is ClusterType.AWS
    monkeypatch.setenv("SDSH_CLUSTER_TYPE", "mars")
    with pytest.raises(ValueError, match="SDSH_CLUSTER_TYPE='mars'"):
        get_cluster_type()


def test_partition_from_environment_then_cluster_default(monkeypatch):
    assert get_slurm_partition() is None
    assert get_slurm_partition(ClusterType.RSC) == "learn"
    monkeypatch.setenv("SLURM_PARTITION", "gpu-long")
    assert get_slurm_partition() == "gpu-long"
    assert get_slurm_partition(ClusterType.RSC) == "gpu-long"


def test_user_checkpoint_path_from_environment_or_home(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert get_user_checkpoint_path() == tmp_path / "home" / "sdsh_runs"
    monkeypatch.setenv("SDSH_CHECKPOINT_ROOT", "~/scratch/runs")
    assert get_user_checkpoint_path() == tmp_path / "home" / "scratch" / "runs"
    assert isinstance(get_user_checkpoint_path(), Path)


def test_executor_parameters_one_task_per_gpu_with_overrides(monkeypatch):
    monkeypatch.setenv("SLURM_PARTITION", "p1")
    params = get_slurm_executor_parameters(nodes=3, num_gpus_per_node=4, timeout_min=60)
    assert params == {
        "mem_gb": 0,
        "gpus_per_node": 4,
        "tasks_per_node": 4,
        "cpus_per_task": 10,
        "nodes": 3,
        "slurm_partition": "p1",
        "timeout_min": 60,
    }
    aws = get_slurm_executor_parameters(1, 8, ClusterType.AWS, slurm_partition="other")
    assert "mem_gb" not in aws
    assert aws["cpus_per_task"] == 12
    assert aws["slurm_partition"] == "other"


def _fake_job_env(**overrides):
    values = dict(job_id="1234", hostnames=["node7", "node8"], global_rank=5, local_rank=1, num_tasks=8, num_nodes=2)
    values.update(overrides)
    return SimpleNamespace(**values)


def test_torch_distributed_env_from_job_environment():
    env = get_torch_distributed_env(_fake_job_env())
    expected_port = 20000 + zlib.crc32(b"1234") % 12000
    assert env == {
        "MASTER_ADDR": "node7",
        "MASTER_PORT": str(expected_port),
        "RANK": "5",
        "WORLD_SIZE": "8",
        "LOCAL_RANK": "1",
        "LOCAL_WORLD_SIZE": "4",
    }
    # Every task of one job agrees on the port; another job id gives another port here.
    assert get_torch_distributed_env(_fake_job_env(global_rank=0))["MASTER_PORT"] == env["MASTER_PORT"]
    assert get_torch_distributed_env(_fake_job_env(job_id="1235"))["MASTER_PORT"] != env["MASTER_PORT"]
    assert get_torch_distributed_env(_fake_job_env(), master_port=29500)["MASTER_PORT"] == "29500"


def test_torch_distributed_env_rejects_uneven_tasks():
    with pytest.raises(RuntimeError, match="7 tasks cannot be spread evenly over 2 nodes"):
        get_torch_distributed_env(_fake_job_env(num_tasks=7))
