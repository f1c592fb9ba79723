"""Cosine schedules and small model helpers."""

import logging

import numpy as np
from torch import nn

logger = logging.getLogger("dinov2")

class CosineScheduler:
    """Per-iteration schedule: ``freeze_iters`` zeros, a linear warm-up, then a cosine from base to final.

    Args:
        base_value: value at the end of the warm-up.
        final_value: value at ``total_iters`` and after.
        total_iters: schedule length.
        warmup_iters: linear warm-up length (from ``start_warmup_value`` to ``base_value``, inclusive).
        start_warmup_value: first warm-up value.
        freeze_iters: leading iterations with value 0.
    """

    def __init__(
        self,
        base_value: float,
        final_value: float,
        total_iters: int,
        warmup_iters: int = 0,
        start_warmup_value: float = 0,
        freeze_iters: int = 0,
    ) -> None:
        if min(total_iters, warmup_iters, freeze_iters) < 0 or warmup_iters + freeze_iters > total_iters:
            raise ValueError(
                f"invalid schedule lengths: total_iters={total_iters}, warmup_iters={warmup_iters}, "
                f"freeze_iters={freeze_iters} (need 0 <= warmup_iters + freeze_iters <= total_iters)"
            )
        self.final_value = final_value
        self.total_iters = total_iters
        freeze = np.zeros(freeze_iters)
        warmup = np.linspace(start_warmup_value, base_value, warmup_iters)
        cosine_iters = total_iters - warmup_iters - freeze_iters
        steps = np.arange(cosine_iters)
        cosine = final_value + 0.5 * (base_value - final_value) * (1 + np.cos(np.pi * steps / max(cosine_iters, 1)))
        self.schedule = np.concatenate((freeze, warmup, cosine))

    def __getitem__(self, it: int) -> float:
        if it >= self.total_iters:
            return self.final_value
        return float(self.schedule[it])


def has_batchnorms(model: nn.Module) -> bool:
    """True if ``model`` contains a BatchNorm layer (these need SyncBatchNorm handling when distributed)."""
    bn_types = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)
    return any(isinstance(module, bn_types) for module in model.modules())
