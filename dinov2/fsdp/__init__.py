"""Fully Sharded Data Parallel wrapping of the student and teacher sub-modules (CUDA only)."""

from functools import partial
from typing import Iterable, List, Set, Type

import torch
from torch import nn
from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
from torch.distributed.fsdp import MixedPrecision, ShardingStrategy
from torch.distributed.fsdp._runtime_utils import _reshard
from torch.distributed.fsdp.wrap import ModuleWrapPolicy

_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def _dtype(name: str, key: str) -> torch.dtype:
    if name not in _DTYPES:
        raise ValueError(f"{key}: unknown precision '{name}' (expected one of {', '.join(_DTYPES)})")
    return _DTYPES[name]


def get_fsdp_wrapper(model_cfg, modules_to_wrap: Set[Type[nn.Module]] = frozenset(), device_id=None):
    """A callable wrapping a module in FSDP with the sharding and precision of ``model_cfg``.

    Args:
        model_cfg: one ``compute_precision.{student,teacher}.<module>`` config node with
            ``sharding_strategy`` and ``mixed_precision.{param,reduce,buffer}_dtype``.
        modules_to_wrap: module classes wrapped as their own FSDP units (e.g. block chunks).
        device_id: device of this process's units (the current CUDA device when None).
    Returns:
        ``functools.partial`` of FSDP; call it on the module.
    """
    strategies = {
        "NO_SHARD": ShardingStrategy.NO_SHARD,
        "SHARD_GRAD_OP": ShardingStrategy.SHARD_GRAD_OP,
        "FULL_SHARD": ShardingStrategy.FULL_SHARD,
    }
    if model_cfg.sharding_strategy not in strategies:
        raise ValueError(
            f"sharding_strategy: unknown value '{model_cfg.sharding_strategy}' (expected one of {', '.join(strategies)})"
        )
    mp = model_cfg.mixed_precision
    mixed_precision = MixedPrecision(
        param_dtype=_dtype(mp.param_dtype, "param_dtype"),
        reduce_dtype=_dtype(mp.reduce_dtype, "reduce_dtype"),
        buffer_dtype=_dtype(mp.buffer_dtype, "buffer_dtype"),
    )
    if device_id is None:
        device_id = torch.cuda.current_device()
    on_cuda = torch.device("cuda", device_id).type == "cuda" if isinstance(device_id, int) else device_id.type == "cuda"
    return partial(
        FSDP,
        sharding_strategy=strategies[model_cfg.sharding_strategy],
        mixed_precision=mixed_precision,
        device_id=device_id,
        # FSDP can only broadcast rank 0's weights from a GPU; CPU callers broadcast them before wrapping.
        sync_module_states=on_cuda,
        use_orig_params=True,
        auto_wrap_policy=ModuleWrapPolicy(set(modules_to_wrap)) if modules_to_wrap else None,
    )


def is_fsdp(module: nn.Module) -> bool:
    """True when ``module`` is an FSDP wrapper."""
    return isinstance(module, FSDP)


def get_fsdp_modules(module: nn.Module) -> List[nn.Module]:
    """All FSDP units inside ``module`` (including itself), in a fixed order."""
    return FSDP.fsdp_modules(module)


def reshard_fsdp_model(module: nn.Module) -> None:
    """Free the unsharded parameters that SHARD_GRAD_OP keeps after a forward pass."""
    for fsdp_module in get_fsdp_modules(module):
        # With one process FSDP turns SHARD_GRAD_OP into NO_SHARD: nothing is gathered, nothing to free.
        if fsdp_module._has_params and fsdp_module._handle.uses_sharded_strategy:
            _reshard(fsdp_module, fsdp_module._handle, True)


def free_if_fsdp(modules: Iterable[nn.Module]) -> None:
    """Reshard each FSDP module of ``modules``; plain modules are left alone."""
    for module in modules:
        if is_fsdp(module):
            reshard_fsdp_model(module)
