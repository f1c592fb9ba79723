"""CPU cores this process may use, and the thread counts kept within them.

A process may be limited below ``os.cpu_count()`` by its affinity mask (``taskset``, SLURM's
``--cpus-per-task``) and by a cgroup CPU quota (containers, CI runners). Torch's intra-op pool,
numba's pool and the data-loader workers all size themselves from the machine's core count by
default, so a CPU run beside another one, or inside a quota, would start more busy threads than it
has cores; their spinning at parallel-region barriers then costs far more than the lost
parallelism. ``limit_cpu_threads`` gives torch (and numba, which follows torch in
``dinov2.eval.hashing``) this process's share of the usable cores, less one core per data-loader
worker, since each worker is a busy process of its own (torch runs workers with one thread).
"""

import logging
import math
import os
from typing import Optional

import torch

logger = logging.getLogger("dinov2")

_CGROUP_V2_MAX = "/sys/fs/cgroup/cpu.max"
_CGROUP_V1_QUOTA = "/sys/fs/cgroup/cpu/cpu.cfs_quota_us"
_CGROUP_V1_PERIOD = "/sys/fs/cgroup/cpu/cpu.cfs_period_us"


def _read(path: str) -> Optional[str]:
    try:
        with open(path, encoding="ascii") as f:
            return f.read().strip()
    except OSError:
        return None


def cgroup_cpu_quota(v2_max: str = _CGROUP_V2_MAX, v1_quota: str = _CGROUP_V1_QUOTA, v1_period: str = _CGROUP_V1_PERIOD):
    """The cgroup CPU quota in cores (e.g. 1.5), or None when there is none or it cannot be read."""
    text = _read(v2_max)
    if text:
        quota, _, period = text.partition(" ")
        if quota != "max" and quota.isdigit() and period.isdigit() and int(period) > 0:
            return int(quota) / int(period)
        return None
    quota, period = _read(v1_quota), _read(v1_period)
    if quota and period and quota.lstrip("-").isdigit() and period.isdigit():
        if int(quota) > 0 and int(period) > 0:
            return int(quota) / int(period)
    return None


def usable_cpus() -> int:
    """Whole CPU cores this process may run on: its affinity mask, capped by a cgroup quota (at least 1)."""
    if hasattr(os, "sched_getaffinity"):
        cores = len(os.sched_getaffinity(0))
    else:
        cores = os.cpu_count() or 1
    quota = cgroup_cpu_quota()
    if quota is not None:
        cores = min(cores, math.floor(quota))
    return max(1, cores)


def thread_budget(cores: int, processes: int, loader_workers: int) -> int:
    """Intra-op threads of one process: its share of ``cores`` less one per loader worker, at least 1."""
    share = max(1, cores // max(1, processes))
    return max(1, share - max(0, loader_workers))


def limit_cpu_threads(processes: int = 1, loader_workers: int = 0) -> int:
    """Set torch's intra-op threads to this process's budget (see ``thread_budget``) and return it.

    An explicit ``OMP_NUM_THREADS`` is the user's choice and is kept.
    """
    if os.environ.get("OMP_NUM_THREADS"):
        return torch.get_num_threads()
    threads = thread_budget(usable_cpus(), processes, loader_workers)
    if torch.get_num_threads() != threads:
        logger.info(f"using {threads} CPU thread(s): {usable_cpus()} usable core(s), {processes} process(es) here, "
                    f"{loader_workers} loader worker(s)")
        torch.set_num_threads(threads)
    return threads
