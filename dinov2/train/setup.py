"""The model on its device with its precision handling: FSDP, autocast, the grad scaler and the step.

Precision comes from ``compute_precision``: ``student.backbone.mixed_precision.param_dtype`` is the
autocast dtype of plain modules (FSDP units cast themselves with their own module's dtypes), and
``grad_scaler`` adds a (sharded) grad scaler when that dtype is fp16. On CUDA this is always so; the
CPU trains in fp32 unless ``compute_precision.cpu_mixed_precision`` is true, which runs the very same
mixed-precision path on the CPU (CPU autocast and ``torch.amp.GradScaler("cpu")``).
"""

import contextlib
import math
import os
from typing import Dict, NamedTuple, Optional

import torch
from omegaconf import DictConfig
from torch.distributed.fsdp.sharded_grad_scaler import ShardedGradScaler

from dinov2 import distributed
from dinov2.distributed.devices import average_gradients, broadcast_model, use_fsdp
from dinov2.train.optim import clip_gradients
from dinov2.train.ssl_meta_arch import SSLMetaArch
from dinov2.utils.config import ConfigError, apply_scaling_rules_to_cfg, write_config
from dinov2.utils.utils import fix_random_seeds

_PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def _mixed_precision_dtype(cfg) -> torch.dtype:
    name = cfg.compute_precision.student.backbone.mixed_precision.param_dtype
    if name not in _PRECISIONS:
        raise ConfigError(
            f"compute_precision.student.backbone.mixed_precision.param_dtype: unknown value '{name}' "
            f"(expected one of {', '.join(_PRECISIONS)})"
        )
    return _PRECISIONS[name]


class NonFiniteGradientError(FloatingPointError):
    """A student module's gradient norm is NaN or infinite and no grad scaler skips the step; ``module`` names it."""

    def __init__(self, module: str, norm: float):
        super().__init__(f"gradient of student.{module} is not finite ({norm})")
        self.module = module
        self.norm = norm


class StepResult(NamedTuple):
    """What one training step did.

    Attributes:
        losses: the loss terms (detached), including ``total_loss``.
        stepped: False when the grad scaler skipped the step (inf/NaN gradients): neither the student
            nor the teacher changed.
        grad_norms: each student module's gradient norm before clipping (empty without clipping).
    """

    losses: Dict[str, torch.Tensor]
    stepped: bool
    grad_norms: Dict[str, float]


class TrainingSetup:
    """The model on its device with its precision handling: FSDP, autocast, grad scaler.

    Args:
        cfg: the configuration (``compute_precision.*`` and the model).
        device: the training device.
        fsdp: wrap the modules in FSDP (default ``use_fsdp(device)``: several CUDA processes).
    """

    def __init__(self, cfg, device: torch.device, fsdp: Optional[bool] = None):
        self.device = device
        self.cuda = device.type == "cuda"
        self.fsdp = use_fsdp(device) if fsdp is None else fsdp
        mixed = self.cuda or bool(cfg.compute_precision.cpu_mixed_precision)
        self.dtype = _mixed_precision_dtype(cfg) if mixed else torch.float32
        model = SSLMetaArch(cfg).to(device)
        self.scaler = None
        use_scaler = bool(cfg.compute_precision.grad_scaler) and self.dtype == torch.float16
        if self.fsdp:
            if not self.cuda:
                broadcast_model(model)
            model.prepare_for_distributed_training()
            if use_scaler:
                self.scaler = ShardedGradScaler(device.type)
        else:
            if distributed.is_enabled():
                broadcast_model(model)
            if use_scaler:
                self.scaler = torch.amp.GradScaler(device.type)
        model.fp16_scaler = self.scaler
        self.model = model
        self.input_dtype = self.dtype

    def autocast(self):
        """Autocast of plain modules in the mixed-precision dtype; FSDP units cast themselves, fp32 needs none."""
        if not self.fsdp and self.dtype != torch.float32:
            return torch.autocast(self.device.type, dtype=self.dtype)
        return contextlib.nullcontext()

    def train_step(
        self, optimizer: torch.optim.Optimizer, data: Dict[str, torch.Tensor], teacher_temp: float, momentum: float,
        clip: float,
    ) -> StepResult:
        """One iteration: forward/backward under autocast, gradient averaging, clipping, optimizer step, EMA.

        A step the grad scaler skips (its gradients overflowed) also skips the EMA update, so the
        teacher stays exactly as it was; the scaler lowers its scale for the next step.

        Args:
            optimizer: the student's optimizer (lr and weight decay already set for this iteration).
            data: a batch from ``collate_data_and_cast``.
            teacher_temp: the teacher temperature of this iteration.
            momentum: the teacher EMA momentum of this iteration.
            clip: the gradient-norm limit per student module (0: no clipping).
        Returns:
            A StepResult.
        Raises:
            NonFiniteLossError: a loss term is NaN/inf (nothing changed).
            NonFiniteGradientError: without a grad scaler, a gradient norm is NaN/inf (nothing changed).
        """
        model = self.model
        optimizer.zero_grad(set_to_none=True)
        with self.autocast():
            losses = model.forward_backward(data, teacher_temp=teacher_temp)
        if distributed.is_enabled() and not self.fsdp:
            average_gradients(model.student.values())
        norms: Dict[str, float] = {}
        stepped = True
        if self.scaler is not None:
            if clip:
                self.scaler.unscale_(optimizer)
                norms = clip_gradients(model, clip)
            scale = self.scaler.get_scale()
            # The scaler skips the optimizer step on inf/NaN gradients and then lowers its scale.
            self.scaler.step(optimizer)
            self.scaler.update()
            stepped = self.scaler.get_scale() >= scale
        else:
            if clip:
                norms = clip_gradients(model, clip)
                for name, norm in norms.items():
                    # Without a grad scaler nothing would skip this step: it would spread NaNs into the weights.
                    if not math.isfinite(norm):
                        raise NonFiniteGradientError(name, norm)
            optimizer.step()
        if stepped:
            model.update_teacher(momentum)
        return StepResult(losses, stepped, norms)


def setup_run(cfg: DictConfig, world_size: Optional[int] = None, rank: int = 0) -> DictConfig:
    """Seed this process, scale the learning rate and write ``config.yaml`` for a run's merged config.

    Args:
        cfg: the merged configuration (``get_cfg_from_args``), with ``train.output_dir`` set.
        world_size: number of processes (the current process group's when None).
        rank: this process's rank; only rank 0 writes ``config.yaml``.
    Returns:
        ``cfg`` with ``optim.lr`` set.
    """
    os.makedirs(cfg.train.output_dir, exist_ok=True)
    if world_size is None:
        world_size = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
    fix_random_seeds(cfg.train.seed + rank)
    apply_scaling_rules_to_cfg(cfg, world_size)
    if rank == 0:
        write_config(cfg, cfg.train.output_dir)
    return cfg
