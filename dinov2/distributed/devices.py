"""The training device and the synchronisation of plain (not FSDP) replicas across processes."""

import torch

from dinov2.utils.config import ConfigError

from . import get_global_size, get_local_rank, is_enabled


def select_device(cfg) -> torch.device:
    """The device of ``train.device`` (auto: this process's GPU when CUDA is available, else the CPU)."""
    choice = cfg.train.device
    if choice == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device=cuda but CUDA is not available (use train.device=cpu or auto)")
    if choice == "cpu" or (choice == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    return torch.device("cuda", get_local_rank() % torch.cuda.device_count())


def use_fsdp(device: torch.device) -> bool:
    """FSDP for several CUDA processes; CPU processes train plain replicas (tests may switch FSDP on)."""
    return device.type == "cuda" and is_enabled()


@torch.no_grad()
def broadcast_model(model: torch.nn.Module) -> None:
    """Make every rank's parameters and buffers equal to rank 0's (plain modules, several processes)."""
    for tensor in list(model.parameters()) + list(model.buffers()):
        torch.distributed.broadcast(tensor.data, src=0)


@torch.no_grad()
def average_gradients(modules) -> None:
    """Average the gradients of plain (not FSDP) modules over processes with one all-reduce.

    A parameter without a gradient on some rank counts as zero there; it gets the averaged gradient
    on every rank when any rank had one, so the optimizer steps stay identical across ranks.
    """
    params = [p for m in modules for p in m.parameters() if p.requires_grad]
    if not params:
        return
    ref = params[0]
    has_grad = torch.tensor([p.grad is not None for p in params], dtype=ref.dtype, device=ref.device)
    flat = torch.cat(
        [(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1).to(ref.dtype) for p in params] + [has_grad]
    )
    torch.distributed.all_reduce(flat)
    flat[: -len(params)] /= get_global_size()
    offset = 0
    for p, any_grad in zip(params, flat[-len(params) :].tolist()):
        value = flat[offset : offset + p.numel()].view_as(p).to(p.dtype)
        offset += p.numel()
        if any_grad > 0:
            p.grad = value.clone()
