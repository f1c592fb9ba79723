"""Cluster-specific defaults for SLURM jobs: partition, checkpoint root and executor parameters.

Nothing here guesses site paths. The cluster type comes from the ``SDSH_CLUSTER_TYPE`` environment
variable (``generic`` when unset), the partition from ``SLURM_PARTITION``, and the root for run
folders from ``SDSH_CHECKPOINT_ROOT`` (``~/sdsh_runs`` when unset).
"""

import os
import zlib
from enum import Enum
from pathlib import Path
from typing import Any, Dict, Optional

CLUSTER_TYPE_ENV = "SDSH_CLUSTER_TYPE"
CHECKPOINT_ROOT_ENV = "SDSH_CHECKPOINT_ROOT"
SLURM_PARTITION_ENV = "SLURM_PARTITION"

# Rendezvous ports are drawn below Linux's default ephemeral range (32768-60999) so that the port
# chosen for a job does not collide with a port the kernel has handed out to an outgoing connection.
_MIN_MASTER_PORT = 20000
_MAX_MASTER_PORT = 32000


class ClusterType(Enum):
    """Kinds of SLURM cluster with known per-task resources; GENERIC for any other cluster."""

    AWS = "aws"
    FAIR = "fair"
    RSC = "rsc"
    GENERIC = "generic"


# Default partitions of the clusters DINOv2 was trained on; a generic cluster has no default.
_DEFAULT_PARTITIONS = {
    ClusterType.AWS: "learnlab",
    ClusterType.FAIR: "learnlab",
    ClusterType.RSC: "learn",
}


def get_cluster_type(cluster_type: Optional[ClusterType] = None) -> ClusterType:
    """Resolve the cluster type.

    Args:
        cluster_type: explicit type; when None, read from ``SDSH_CLUSTER_TYPE``.

    Returns:
        The given type, the type named in the environment, or ClusterType.GENERIC.
    """
    if cluster_type is not None:
        return cluster_type
    name = os.environ.get(CLUSTER_TYPE_ENV, "").strip().lower()
    if not name:
        return ClusterType.GENERIC
    try:
        return ClusterType(name)
    except ValueError:
        known = ", ".join(t.value for t in ClusterType)
        raise ValueError(f"environment variable {CLUSTER_TYPE_ENV}={name!r} is not one of: {known}") from None


def get_slurm_partition(cluster_type: Optional[ClusterType] = None) -> Optional[str]:
    """Default SLURM partition.

    Args:
        cluster_type: cluster type; when None, resolved by get_cluster_type().

    Returns:
        ``SLURM_PARTITION`` when set and non-empty, else the known default partition of the cluster
        type, else None (let SLURM pick the default partition).
    """
    partition = os.environ.get(SLURM_PARTITION_ENV, "").strip()
    if partition:
        return partition
    return _DEFAULT_PARTITIONS.get(get_cluster_type(cluster_type))


def get_user_checkpoint_path() -> Path:
    """Root folder under which the user keeps run folders.

    Returns:
        ``SDSH_CHECKPOINT_ROOT`` (with ``~`` expanded) when set and non-empty, else ``~/sdsh_runs``.
    """
    root = os.environ.get(CHECKPOINT_ROOT_ENV, "").strip()
    if root:
        return Path(root).expanduser()
    return Path.home() / "sdsh_runs"


def get_slurm_executor_parameters(
    nodes: int, num_gpus_per_node: int, cluster_type: Optional[ClusterType] = None, **kwargs: Any
) -> Dict[str, Any]:
    """Parameters for ``submitit.AutoExecutor.update_parameters``: one task per GPU.

    Args:
        nodes: number of nodes.
        num_gpus_per_node: GPUs per node; also the number of tasks (processes) per node.
        cluster_type: cluster type; when None, resolved by get_cluster_type().
        **kwargs: further executor parameters (``timeout_min``, ``slurm_comment``, ...); they override
            the defaults, ``slurm_partition`` included.

    Returns:
        Dict with mem_gb, gpus_per_node, tasks_per_node, cpus_per_task, nodes and slurm_partition
        (None means SLURM's default partition), updated with ``kwargs``.
    """
    cluster_type = get_cluster_type(cluster_type)
    params: Dict[str, Any] = {
        # --mem=0 asks SLURM for all the memory of each node.
        "mem_gb": 0,
        "gpus_per_node": num_gpus_per_node,
        "tasks_per_node": num_gpus_per_node,
        "cpus_per_task": 10,
        "nodes": nodes,
        "slurm_partition": get_slurm_partition(cluster_type),
    }
    if cluster_type == ClusterType.AWS:
        # DINOv2's AWS setting: no memory request, more CPU cores per task.
        params["cpus_per_task"] = 12
        del params["mem_gb"]
    elif cluster_type == ClusterType.RSC:
        params["cpus_per_task"] = 12
    params.update(kwargs)
    return params


def get_torch_distributed_env(job_env: Any, master_port: Optional[int] = None) -> Dict[str, str]:
    """Environment variables for ``torch.distributed`` env:// initialisation, from a submitit job.

    Args:
        job_env: a ``submitit.JobEnvironment`` (or any object with ``job_id``, ``hostnames``,
            ``global_rank``, ``local_rank``, ``num_tasks`` and ``num_nodes``).
        master_port: rendezvous port; when None, derived from the job id so that every task of the
            job (and the job after a requeue, which keeps its id) picks the same port.

    Returns:
        Dict with MASTER_ADDR (first host of the job), MASTER_PORT, RANK, WORLD_SIZE, LOCAL_RANK and
        LOCAL_WORLD_SIZE, as strings.
    """
    num_tasks = int(job_env.num_tasks)
    num_nodes = int(job_env.num_nodes)
    if num_nodes < 1 or num_tasks % num_nodes != 0:
        raise RuntimeError(
            f"job {job_env.job_id}: {num_tasks} tasks cannot be spread evenly over {num_nodes} nodes; "
            "expected the same number of tasks on every node"
        )
    if master_port is None:
        span = _MAX_MASTER_PORT - _MIN_MASTER_PORT
        master_port = _MIN_MASTER_PORT + zlib.crc32(str(job_env.job_id).encode()) % span
    return {
        "MASTER_ADDR": str(job_env.hostnames[0]),
        "MASTER_PORT": str(master_port),
        "RANK": str(job_env.global_rank),
        "WORLD_SIZE": str(num_tasks),
        "LOCAL_RANK": str(job_env.local_rank),
        "LOCAL_WORLD_SIZE": str(num_tasks // num_nodes),
    }
