"""Process-group helpers that behave the same with and without torch.distributed.

With no process group every query answers as a single process (rank 0 of 1) and every collective returns
its input, so training, losses and evaluation run unchanged in one CPU process.

`enable()` starts the process group from the environment of the launcher:
- torchrun: RANK, WORLD_SIZE, LOCAL_RANK (LOCAL_WORLD_SIZE), MASTER_ADDR, MASTER_PORT;
- SLURM (srun / submitit): SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID, SLURM_NODELIST (first host = master);
- neither: a single process, and no process group is created.
"""

import datetime
import logging
import os
import re
from typing import Dict, List, Optional

import torch
import torch.distributed as dist

logger = logging.getLogger("dinov2")

_TORCHRUN_VARS = ("RANK", "WORLD_SIZE")
_SLURM_VARS = ("SLURM_PROCID", "SLURM_NTASKS")
# Port range used when SLURM gives no MASTER_PORT: derived from the job id so every task of a job agrees.
_SLURM_PORT_BASE = 20000
_SLURM_PORT_SPAN = 40000


def is_enabled() -> bool:
    """
    Returns:
        True when a torch.distributed process group is initialised.
    """
    return dist.is_available() and dist.is_initialized()


def get_global_size() -> int:
    """
    Returns:
        The number of processes in the job (1 without a process group).
    """
    return dist.get_world_size() if is_enabled() else 1


def get_global_rank() -> int:
    """
    Returns:
        The rank of this process in the job (0 without a process group).
    """
    return dist.get_rank() if is_enabled() else 0


def get_local_rank() -> int:
    """
    Returns:
        The rank of this process on its machine: LOCAL_RANK as exported by the launcher or `enable()`;
        the global rank when the process group was started without it (single-machine spawn); 0 without
        a process group.
    """
    if not is_enabled():
        return 0
    if "LOCAL_RANK" in os.environ:
        return int(os.environ["LOCAL_RANK"])
    return get_global_rank()


def get_local_size() -> int:
    """
    Returns:
        The number of processes on this machine: LOCAL_WORLD_SIZE as exported by the launcher or
        `enable()`; the world size when absent (single machine); 1 without a process group.
    """
    if not is_enabled():
        return 1
    if "LOCAL_WORLD_SIZE" in os.environ:
        return int(os.environ["LOCAL_WORLD_SIZE"])
    return get_global_size()


def is_main_process() -> bool:
    """
    Returns:
        True on global rank 0 (always true without a process group).
    """
    return get_global_rank() == 0


def first_host_of_nodelist(nodelist: str) -> str:
    """First host name of a SLURM node list, without calling `scontrol`.

    Handles comma-separated entries and bracketed ranges, e.g. "node[01-03,07],gpu5" -> "node01",
    "gpu[5-6]-ib" -> "gpu5-ib".

    Args:
        nodelist: the value of SLURM_NODELIST / SLURM_JOB_NODELIST.

    Returns:
        The first host name.
    """
    text = nodelist.strip()
    if not text:
        raise ValueError("SLURM node list is empty; expected something like 'node[01-03],gpu5'")
    # The first entry ends at the first comma outside brackets.
    depth = 0
    end = len(text)
    for i, char in enumerate(text):
        if char == "[":
            depth += 1
        elif char == "]":
            depth -= 1
        elif char == "," and depth == 0:
            end = i
            break
    entry = text[:end]
    match = re.fullmatch(r"([^\[\]]*)\[([^\]]*)\](.*)", entry)
    if match is None:
        if "[" in entry or "]" in entry:
            raise ValueError(f"Cannot parse SLURM node list {nodelist!r}: unbalanced brackets in {entry!r}")
        return entry
    prefix, ranges, suffix = match.groups()
    # Only the first host is needed: the start of the first range (zero padding kept as written).
    first = ranges.split(",")[0].split("-")[0].strip()
    if not first:
        raise ValueError(f"Cannot parse SLURM node list {nodelist!r}: empty range in {entry!r}")
    if "[" in suffix:
        # Several bracket groups ("rack[1-2]-node[01-04]"): the first host takes the first value of each.
        return prefix + first + first_host_of_nodelist(suffix)
    return prefix + first + suffix


def _launcher_environment() -> Optional[Dict[str, str]]:
    """The torch.distributed variables this process should run with, or None for a single process."""
    env = os.environ
    if all(name in env for name in _TORCHRUN_VARS):
        missing = [name for name in ("MASTER_ADDR", "MASTER_PORT") if name not in env]
        if missing:
            raise RuntimeError(f"torchrun-style launch (RANK/WORLD_SIZE set) but {', '.join(missing)} not set")
        world_size = env["WORLD_SIZE"]
        return {
            "RANK": env["RANK"],
            "WORLD_SIZE": world_size,
            "LOCAL_RANK": env.get("LOCAL_RANK", env["RANK"]),
            "LOCAL_WORLD_SIZE": env.get("LOCAL_WORLD_SIZE", world_size),
            "MASTER_ADDR": env["MASTER_ADDR"],
            "MASTER_PORT": env["MASTER_PORT"],
        }
    if all(name in env for name in _SLURM_VARS):
        nodelist = env.get("SLURM_NODELIST", env.get("SLURM_JOB_NODELIST"))
        if nodelist is None:
            raise RuntimeError("SLURM launch (SLURM_PROCID/SLURM_NTASKS set) but SLURM_NODELIST is not set")
        world_size = int(env["SLURM_NTASKS"])
        n_nodes = int(env.get("SLURM_NNODES", env.get("SLURM_JOB_NUM_NODES", "1")))
        if world_size % n_nodes != 0:
            raise RuntimeError(f"SLURM_NTASKS={world_size} is not a multiple of the node count {n_nodes}")
        port = env.get("MASTER_PORT")
        if port is None:
            port = str(_SLURM_PORT_BASE + int(env.get("SLURM_JOB_ID", "0")) % _SLURM_PORT_SPAN)
        return {
            "RANK": env["SLURM_PROCID"],
            "WORLD_SIZE": str(world_size),
            "LOCAL_RANK": env.get("SLURM_LOCALID", "0"),
            "LOCAL_WORLD_SIZE": str(world_size // n_nodes),
            "MASTER_ADDR": env.get("MASTER_ADDR", first_host_of_nodelist(nodelist)),
            "MASTER_PORT": port,
        }
    return None


def _export(name: str, value: str, overwrite: bool) -> None:
    current = os.environ.get(name)
    if current is not None and current != value and not overwrite:
        raise RuntimeError(
            f"Environment variable {name}={current!r} conflicts with {value!r}; pass overwrite=True to replace it"
        )
    os.environ[name] = value


def enable(*, set_cuda_current_device: bool = True, overwrite: bool = False, allow_nccl_timeout: bool = False) -> None:
    """Start torch.distributed from the launcher's environment (torchrun or SLURM).

    Without launcher variables this is a single process and nothing is initialised (`is_enabled()` stays
    False). The backend is nccl when CUDA is available, gloo otherwise.

    Args:
        set_cuda_current_device: with CUDA, make cuda:LOCAL_RANK the current device.
        overwrite: allow replacing environment variables that are already set with other values.
        allow_nccl_timeout: let NCCL collectives time out (asynchronous error handling) instead of hanging.
    """
    if is_enabled():
        raise RuntimeError("torch.distributed is already initialised; enable() must be called once")
    variables = _launcher_environment()
    if variables is None:
        # The common case, and the entry points call this before their logging is set up: debug only.
        logger.debug("No torchrun or SLURM environment: running as a single process")
        return
    for name, value in variables.items():
        _export(name, value, overwrite)

    use_cuda = torch.cuda.is_available()
    if use_cuda and set_cuda_current_device:
        torch.cuda.set_device(int(variables["LOCAL_RANK"]))
    if use_cuda and allow_nccl_timeout:
        # Both spellings: the variable was renamed with the TORCH_ prefix in recent PyTorch releases.
        _export("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1", overwrite)
        _export("NCCL_ASYNC_ERROR_HANDLING", "1", overwrite)
    backend = "nccl" if use_cuda else "gloo"
    dist.init_process_group(backend=backend, init_method="env://", timeout=datetime.timedelta(minutes=30))
    logger.info(
        "torch.distributed enabled: backend %s, rank %d/%d, local rank %s/%s, master %s:%s",
        backend,
        get_global_rank(),
        get_global_size(),
        variables["LOCAL_RANK"],
        variables["LOCAL_WORLD_SIZE"],
        variables["MASTER_ADDR"],
        variables["MASTER_PORT"],
    )


def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    """Mean of a tensor over all processes.

    Args:
        tensor: a tensor of the same shape on every process.

    Returns:
        A new tensor holding the element-wise mean across processes (a copy of the input alone).
    """
    result = tensor.detach().clone()
    if is_enabled():
        dist.all_reduce(result)
        result /= get_global_size()
    return result


def _gatherable(tensor: torch.Tensor) -> torch.Tensor:
    # gloo has no bool collectives: ship booleans as bytes.
    tensor = tensor.detach().contiguous()
    return tensor.to(torch.uint8) if tensor.dtype == torch.bool else tensor


def all_gather_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenation along dim 0, in rank order, of a tensor that has the same shape on every process.

    Args:
        tensor: [n, ...] with the same shape on every process.

    Returns:
        [world_size * n, ...] (the input alone without a process group).
    """
    if not is_enabled():
        return tensor
    local = _gatherable(tensor)
    parts: List[torch.Tensor] = [torch.empty_like(local) for _ in range(get_global_size())]
    dist.all_gather(parts, local)
    return torch.cat(parts, dim=0).to(tensor.dtype)


def all_gather_variable(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenation along dim 0, in rank order, of tensors whose first dimension differs per process.

    Evaluation shards a dataset unevenly over processes; this puts the pieces back together. The trailing
    dimensions and the dtype must agree across processes.

    Args:
        tensor: [n_rank, ...] on each process.

    Returns:
        [sum of n_rank, ...], rank 0's rows first (the input alone without a process group).
    """
    if not is_enabled():
        return tensor
    local = _gatherable(tensor)
    world_size = get_global_size()
    size = torch.tensor([local.shape[0]], dtype=torch.int64, device=local.device)
    sizes = [torch.zeros_like(size) for _ in range(world_size)]
    dist.all_gather(sizes, size)
    counts = [int(s.item()) for s in sizes]
    max_count = max(counts)
    # all_gather needs equal shapes: pad every piece to the largest, then cut the padding off.
    padded = local.new_zeros((max_count, *local.shape[1:]))
    padded[: local.shape[0]] = local
    parts = [torch.empty_like(padded) for _ in range(world_size)]
    dist.all_gather(parts, padded)
    return torch.cat([part[:count] for part, count in zip(parts, counts)], dim=0).to(tensor.dtype)
