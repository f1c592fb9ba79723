"""The model on its device with its precision handling: FSDP, autocast and the grad scaler."""

import contextlib
from typing import Optional

import torch

from dinov2 import distributed
from dinov2.distributed.devices import broadcast_model, use_fsdp
from dinov2.train.ssl_meta_arch import SSLMetaArch
from dinov2.utils.config import ConfigError

_PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def _mixed_precision_dtype(cfg) -> torch.dtype:
    name = cfg.compute_precision.student.backbone.mixed_precision.param_dtype
    if name not in _PRECISIONS:
        raise ConfigError(
            f"compute_precision.student.backbone.mixed_precision.param_dtype: unknown value '{name}' "
            f"(expected one of {', '.join(_PRECISIONS)})"
        )
    return _PRECISIONS[name]


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
        self.dtype = _mixed_precision_dtype(cfg) if self.cuda else torch.float32
        model = SSLMetaArch(cfg).to(device)
        self.scaler = None
        use_scaler = self.cuda and cfg.compute_precision.grad_scaler and self.dtype == torch.float16
        if self.fsdp:
            if not self.cuda:
                broadcast_model(model)
            model.prepare_for_distributed_training()
            if use_scaler:
                from torch.distributed.fsdp.sharded_grad_scaler import ShardedGradScaler

                self.scaler = ShardedGradScaler()
        else:
            if distributed.is_enabled():
                broadcast_model(model)
            if use_scaler:
                self.scaler = torch.amp.GradScaler("cuda")
        model.fp16_scaler = self.scaler
        self.model = model
        self.input_dtype = self.dtype

    def autocast(self):
        """Autocast for one CUDA process with plain modules; FSDP casts itself and the CPU runs in fp32."""
        if self.cuda and not self.fsdp and self.dtype != torch.float32:
            return torch.autocast("cuda", dtype=self.dtype)
        return contextlib.nullcontext()
