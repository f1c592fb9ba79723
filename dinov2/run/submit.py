"""Submission of a task (a picklable callable) as a SLURM job through submitit.

Every launcher in ``dinov2/run`` shares the options of ``get_args_parser`` and calls ``submit_jobs``.
The task is pickled into ``<output-dir>/submitit/<job id>/`` together with the job's stdout/stderr;
the job runs one process per GPU. ``--local`` runs the same job on this machine with submitit's
LocalExecutor (one node, ``--ngpus`` processes, no SLURM needed), which is useful to check a launch
before queueing it.

SLURM sends the job a signal two minutes before its time limit (and on preemption); submitit then
calls the task's ``checkpoint()`` method and requeues what it returns, up to 30 times.

Cluster defaults: nothing here guesses site paths. The cluster type comes from the
``SDSH_CLUSTER_TYPE`` environment variable (``generic`` when unset), the partition from
``SLURM_PARTITION``, and the root for run folders from ``SDSH_CHECKPOINT_ROOT`` (``~/sdsh_runs``
when unset).
"""

import argparse
import logging
import os
import zlib
from enum import Enum
from pathlib import Path
from typing import Any, Dict, List, Optional

import submitit

from dinov2.utils.errors import InputError

logger = logging.getLogger("dinov2")

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


# ---------------------------------------------------------------------------------------------------
# Submission
# ---------------------------------------------------------------------------------------------------

# Seconds between SLURM's warning signal and the time limit: enough to requeue the job.
SIGNAL_DELAY_S = 120
# Upper bound on requeues after time-outs, so that a job that never finishes stops eventually.
MAX_NUM_TIMEOUT = 30


def get_args_parser(
    description: Optional[str] = None,
    parents: Optional[List[argparse.ArgumentParser]] = None,
    add_help: bool = True,
    epilog: Optional[str] = None,
) -> argparse.ArgumentParser:
    """Command-line options of a job submission.

    Args:
        description: text shown by ``--help``.
        parents: parsers whose options are added (e.g. the training options, built with
            ``add_help=False``).
        add_help: whether to add ``-h/--help``.
        epilog: text shown after the options by ``--help``.

    Returns:
        The parser, with --ngpus, --nodes, --timeout, --partition, --use-volta32, --comment,
        --exclude and --local.
    """
    parser = argparse.ArgumentParser(description=description, parents=parents or [], add_help=add_help, epilog=epilog)
    parser.add_argument(
        "--ngpus", "--gpus", "--gpus-per-node", default=8, type=int, help="GPUs (and processes) per node"
    )
    parser.add_argument("--nodes", "--nnodes", default=1, type=int, help="number of nodes")
    parser.add_argument("--timeout", default=2800, type=int, help="time limit of the job, in minutes")
    parser.add_argument(
        "--partition",
        default=get_slurm_partition(),
        type=str,
        help="SLURM partition (default: $SLURM_PARTITION, else the cluster's default partition)",
    )
    parser.add_argument("--use-volta32", action="store_true", help="request V100-32GB GPUs (constraint volta32gb)")
    parser.add_argument("--comment", default="", type=str, help="comment passed to SLURM, e.g. a priority reason")
    parser.add_argument("--exclude", default="", type=str, help="nodes to exclude, in SLURM's node-list syntax")
    parser.add_argument(
        "--local",
        action="store_true",
        help="run the job on this machine with submitit's LocalExecutor instead of SLURM "
        "(one node, --ngpus processes), and wait for it to finish",
    )
    return parser


class SubmissionError(InputError, ValueError):
    """A submission option that cannot be used (the message names the option and value)."""


def _check_no_control_chars(name: str, value: Optional[str]) -> None:
    # Values end up in '#SBATCH --key=value' lines: a newline would start a new line of the script.
    if value and any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise SubmissionError(f"{name}={value!r} contains a control character (newline, tab, ...); expected plain text")


def check_args(args: argparse.Namespace) -> None:
    """Validate submission options before anything is created or queued.

    Args:
        args: parsed options of get_args_parser, with ``output_dir`` (and optionally ``config_file``)
            from the task's parser.

    Raises:
        SubmissionError: (a ValueError) a missing output folder, a count below 1, several nodes with --local, or a value
            that cannot be written safely into the SLURM script.
        FileNotFoundError: ``config_file`` is given but is not a file.
    """
    output_dir = getattr(args, "output_dir", None)
    if not output_dir:
        example = get_user_checkpoint_path() / "experiments" / "<run name>"
        raise SubmissionError(f"--output-dir is required (for example {example})")
    # SLURM and submitit expand '%' patterns in log paths, so a literal '%' would misplace the logs.
    if "%" in output_dir:
        raise SubmissionError(f"--output-dir {output_dir!r} contains '%'; expected a plain folder path")
    for name in ("ngpus", "nodes", "timeout"):
        value = getattr(args, name)
        if value < 1:
            raise SubmissionError(f"--{name} must be at least 1, got {value}")
    if args.local and args.nodes > 1:
        raise SubmissionError(f"--local runs on this machine only; got --nodes {args.nodes}, expected 1")
    _check_no_control_chars("--output-dir", output_dir)
    _check_no_control_chars("--partition", args.partition)
    _check_no_control_chars("--comment", args.comment)
    _check_no_control_chars("--exclude", args.exclude)
    config_file = getattr(args, "config_file", None)
    if config_file and not os.path.isfile(config_file):
        raise FileNotFoundError(f"--config-file {config_file!r} does not exist or is not a file")


def get_executor_parameters(args: argparse.Namespace) -> Dict[str, Any]:
    """Executor parameters of a submission.

    Args:
        args: parsed options of get_args_parser.

    Returns:
        Parameters for ``submitit.AutoExecutor.update_parameters`` (``name`` excluded): nodes,
        gpus_per_node, tasks_per_node (one per GPU), timeout_min, slurm_partition and, when asked
        for, slurm_constraint, slurm_comment and slurm_exclude.
    """
    extra: Dict[str, Any] = {}
    if args.use_volta32:
        extra["slurm_constraint"] = "volta32gb"
    if args.comment:
        extra["slurm_comment"] = args.comment
    if args.exclude:
        extra["slurm_exclude"] = args.exclude
    return get_slurm_executor_parameters(
        nodes=args.nodes,
        num_gpus_per_node=args.ngpus,
        timeout_min=args.timeout,
        slurm_signal_delay_s=SIGNAL_DELAY_S,
        slurm_partition=args.partition,
        **extra,
    )


def submit_jobs(task_class: Any, args: argparse.Namespace, name: str, cluster: Optional[str] = None) -> submitit.Job:
    """Submit ``task_class(args)`` as one job.

    The task receives a copy of ``args`` whose ``output_dir`` and ``config_file`` are absolute, so
    that the job does not depend on the folder it starts in. Job logs go to
    ``<output-dir>/submitit/<job id>/``.

    Args:
        task_class: callable class taking the options; its instances must be picklable.
        args: parsed options of get_args_parser plus the task's own options.
        name: job name shown by the scheduler.
        cluster: submitit executor name ("slurm", "local" or "debug"); when None, "local" with
            ``--local`` and "slurm" otherwise.

    Returns:
        The submitted submitit job.
    """
    check_args(args)
    job_args = argparse.Namespace(**vars(args))
    job_args.output_dir = os.path.abspath(args.output_dir)
    if getattr(args, "config_file", None):
        job_args.config_file = os.path.abspath(args.config_file)
    if cluster is None:
        cluster = "local" if args.local else "slurm"

    Path(job_args.output_dir).mkdir(parents=True, exist_ok=True)
    log_folder = Path(job_args.output_dir) / "submitit" / "%j"
    try:
        executor = submitit.AutoExecutor(folder=log_folder, cluster=cluster, slurm_max_num_timeout=MAX_NUM_TIMEOUT)
    except RuntimeError as e:
        raise RuntimeError(f"cannot create the '{cluster}' executor ({e}); use --local to run on this machine") from e
    executor.update_parameters(name=name, **get_executor_parameters(args))

    job = executor.submit(task_class(job_args))
    logger.info("Submitted job %s (%s executor)", job.job_id, cluster)
    logger.info("Job logs: %s", job.paths.folder)
    logger.info("Checkpoints and results: %s", job_args.output_dir)
    return job
