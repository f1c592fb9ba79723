"""Optimizer, per-iteration schedules and gradient clipping of the SDSH trainer (as DINOv2's train.py)."""

from typing import Dict, List

import torch

from dinov2.fsdp import is_fsdp
from dinov2.utils.utils import CosineScheduler


def build_optimizer(cfg, params_groups: List[Dict]) -> torch.optim.Optimizer:
    """AdamW over the parameter groups (lr and weight decay are set every iteration)."""
    return torch.optim.AdamW(params_groups, betas=(cfg.optim.adamw_beta1, cfg.optim.adamw_beta2))


def build_schedulers(cfg) -> Dict[str, CosineScheduler]:
    """Per-iteration schedules over ``optim.epochs * train.OFFICIAL_EPOCH_LENGTH`` iterations (DINOv2).

    Returns:
        ``lr`` (linear warm-up over ``optim.warmup_epochs`` then cosine to ``optim.min_lr``), ``wd``
        (cosine ``weight_decay`` -> ``weight_decay_end``), ``momentum`` (cosine ``momentum_teacher`` ->
        ``final_momentum_teacher``), ``teacher_temp`` (linear ``warmup_teacher_temp`` -> ``teacher_temp``
        over ``warmup_teacher_temp_epochs``, then constant) and ``last_layer_lr`` (``lr`` but 0 for
        ``freeze_last_layer_epochs``).
    """
    # Ranges (epochs > 0, warm-up and freeze within the epochs) are checked by validate_config.
    epoch_length = cfg.train.OFFICIAL_EPOCH_LENGTH
    total = cfg.optim.epochs * epoch_length
    lr = dict(
        base_value=cfg.optim.lr,
        final_value=cfg.optim.min_lr,
        total_iters=total,
        warmup_iters=cfg.optim.warmup_epochs * epoch_length,
        start_warmup_value=0,
    )
    schedules = {
        "lr": CosineScheduler(**lr),
        "wd": CosineScheduler(cfg.optim.weight_decay, cfg.optim.weight_decay_end, total),
        "momentum": CosineScheduler(cfg.teacher.momentum_teacher, cfg.teacher.final_momentum_teacher, total),
        "teacher_temp": CosineScheduler(
            base_value=cfg.teacher.teacher_temp,
            final_value=cfg.teacher.teacher_temp,
            total_iters=cfg.teacher.warmup_teacher_temp_epochs * epoch_length,
            warmup_iters=cfg.teacher.warmup_teacher_temp_epochs * epoch_length,
            start_warmup_value=cfg.teacher.warmup_teacher_temp,
        ),
        "last_layer_lr": CosineScheduler(**lr),
    }
    schedules["last_layer_lr"].schedule[: cfg.optim.freeze_last_layer_epochs * epoch_length] = 0
    return schedules


def apply_optim_scheduler(optimizer: torch.optim.Optimizer, lr: float, wd: float, last_layer_lr: float) -> None:
    """Set each group's lr and weight decay from its ``lr_multiplier``, ``wd_multiplier`` and ``is_last_layer``."""
    for group in optimizer.param_groups:
        group["weight_decay"] = wd * group["wd_multiplier"]
        group["lr"] = (last_layer_lr if group["is_last_layer"] else lr) * group["lr_multiplier"]


def clip_gradients(model: torch.nn.Module, max_norm: float) -> Dict[str, float]:
    """Clip the gradient norm of each student sub-module to ``max_norm`` (FSDP units clip themselves).

    Returns:
        Each sub-module's gradient norm before clipping.
    """
    norms = {}
    for name, module in model.student.items():
        if is_fsdp(module):
            norms[name] = float(module.clip_grad_norm_(max_norm))
        else:
            norms[name] = float(torch.nn.utils.clip_grad_norm_(module.parameters(), max_norm))
    return norms
