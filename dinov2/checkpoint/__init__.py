"""Checkpoints, one module family: every read, format decision and write of a checkpoint goes through here.

- ``io``: the one ``torch.load`` (``weights_only=True``), atomic writes, the error types;
- ``formats``: format detection from the keys and the adaptation of each format to the inference network;
- ``pretrained``: backbone weights (public DINOv2 files) into a backbone, pos_embed interpolated;
- ``training``: the training (resume) checkpointer, FSDP-aware, and the teacher checkpoint writer.
"""

from .formats import (
    REFERENCE_PREFIX_MAP,
    convert_sdsh_reference_state_dict,
    detect_format,
    load_hashing_state_dict,
    read_checkpoint,
    read_hashing_checkpoint,
    state_dict_mismatches,
    strip_module_prefix,
)
from .io import (
    CheckpointError,
    CheckpointFormatError,
    CheckpointNotFoundError,
    atomic_path,
    atomic_torch_save,
    atomic_write_text,
    load_torch_file,
    weights_identity,
)
from .pretrained import load_pretrained_weights
from .training import (
    AtomicPeriodicCheckpointer,
    FSDPCheckpointer,
    full_state_dict,
    has_fsdp_modules,
    save_teacher_checkpoint,
)

__all__ = [
    "REFERENCE_PREFIX_MAP",
    "AtomicPeriodicCheckpointer",
    "CheckpointError",
    "CheckpointFormatError",
    "CheckpointNotFoundError",
    "FSDPCheckpointer",
    "atomic_path",
    "atomic_torch_save",
    "atomic_write_text",
    "convert_sdsh_reference_state_dict",
    "detect_format",
    "full_state_dict",
    "has_fsdp_modules",
    "load_hashing_state_dict",
    "load_pretrained_weights",
    "load_torch_file",
    "read_checkpoint",
    "read_hashing_checkpoint",
    "save_teacher_checkpoint",
    "state_dict_mismatches",
    "strip_module_prefix",
    "weights_identity",
]
