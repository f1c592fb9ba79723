"""CPU cores of this process and the thread budget within them (dinov2/utils/cpu.py)."""

import os

import pytest
import torch

from dinov2.utils import cpu


@pytest.mark.parametrize(
    "cores, processes, workers, expected",
    [(2, 1, 0, 2), (2, 1, 1, 1), (16, 2, 2, 6), (16, 4, 0, 4), (1, 1, 4, 1), (3, 4, 0, 1)],
)
def test_thread_budget_shares_the_cores(cores, processes, workers, expected):
    assert cpu.thread_budget(cores, processes, workers) == expected


def test_cgroup_v2_quota(tmp_path):
    v2 = tmp_path / "cpu.max"
    v2.write_text("150000 100000\n")
    assert cpu.cgroup_cpu_quota(str(v2), "", "") == pytest.approx(1.5)
    v2.write_text("max 100000\n")
    assert cpu.cgroup_cpu_quota(str(v2), "", "") is None


def test_cgroup_v1_quota(tmp_path):
    quota, period = tmp_path / "quota", tmp_path / "period"
    quota.write_text("200000\n")
    period.write_text("100000\n")
    assert cpu.cgroup_cpu_quota(str(tmp_path / "absent"), str(quota), str(period)) == pytest.approx(2.0)
    quota.write_text("-1\n")
    assert cpu.cgroup_cpu_quota(str(tmp_path / "absent"), str(quota), str(period)) is None


def test_usable_cpus_is_capped_by_the_quota(monkeypatch):
    monkeypatch.setattr(cpu, "cgroup_cpu_quota", lambda: 1.5)
    assert cpu.usable_cpus() == 1
    monkeypatch.setattr(cpu, "cgroup_cpu_quota", lambda: None)
    assert cpu.usable_cpus() == max(1, len(os.sched_getaffinity(0)))


def test_limit_cpu_threads_sets_torch_and_keeps_an_explicit_choice(monkeypatch):
    before = torch.get_num_threads()
    try:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
        monkeypatch.setattr(cpu, "usable_cpus", lambda: 4)
        assert cpu.limit_cpu_threads(processes=2, loader_workers=1) == 1
        assert torch.get_num_threads() == 1
        monkeypatch.setenv("OMP_NUM_THREADS", "3")
        torch.set_num_threads(3)
        assert cpu.limit_cpu_threads(processes=2, loader_workers=1) == 3
    finally:
        torch.set_num_threads(before)
