"""Checkpointer for the SDSH meta-architecture, with or without FSDP, writing every file atomically.

- Plain modules (one CPU process, one CUDA process, or several CPU processes whose replicas are
  kept equal by gradient averaging): rank 0 saves ``<name>.pth`` with the full state dict; every
  rank loads the same file.
- FSDP (CUDA, torch.distributed): as DINOv2's FSDPCheckpointer, every rank saves its local shard
  to ``<name>.rank_<k>.pth`` (state-dict type LOCAL_STATE_DICT) and reads its own shard back,
  so a sharded run resumes with the same world size.

fvcore's ``Checkpointer`` writes checkpoints and the ``last_checkpoint`` tag in place and loads a
model with ``strict=False``, logging mismatches; here writes are atomic (temporary file, fsync,
``os.replace``) and a checkpoint that does not fit the model is an error naming the file and keys.

Every file is read by ``dinov2.checkpoint.load_torch_file`` (``weights_only=True``), so a checkpoint cannot run code when it
is loaded. FSDP's local state dict holds ``ShardedTensor`` objects, which only a full unpickler can
rebuild; their local shard tensors are saved instead and copied back into the model's own
``ShardedTensor`` objects on load. Each checkpoint also holds every rank's random generator states
(``rng_state``), restored when a run resumes, so a resumed run continues the same random stream.
"""

import contextlib
import logging
import os
from typing import Any, Dict, List, Optional

import torch
from fvcore.common.checkpoint import Checkpointer, PeriodicCheckpointer
from omegaconf import OmegaConf
from torch import nn

from dinov2 import distributed
from dinov2.fsdp import is_fsdp
from dinov2.utils.rng_state import gather_rng_states, restore_rank_rng_state

from .formats import state_dict_mismatches
from .io import CheckpointError, atomic_torch_save, atomic_write_text, load_torch_file

logger = logging.getLogger("dinov2")

_UNREADABLE_HINT = "Move it away (or pass --no-resume with another --output-dir) rather than training over it"


def has_fsdp_modules(model: nn.Module) -> bool:
    """True when ``model`` contains an FSDP wrapper."""
    return any(is_fsdp(m) for m in model.modules())


def rankstr() -> str:
    return f"rank_{distributed.get_global_rank()}"


def _local_tensor(value: Any) -> Any:
    """The local shard of a ``ShardedTensor`` (FSDP's local state dict holds one per rank); other values as they are."""
    from torch.distributed._shard.sharded_tensor import ShardedTensor

    if not isinstance(value, ShardedTensor):
        return value
    shards = value.local_shards()
    if len(shards) != 1:
        raise CheckpointError(f"expected one local shard per rank in the FSDP state dict, found {len(shards)}")
    return shards[0].tensor


def _refuse_non_finite(state: Dict[str, Any], name: str) -> None:
    """Raise CheckpointError (on every rank) when a floating-point tensor of ``state`` holds NaN or inf.

    Saving such weights would replace the last good checkpoint with one that cannot be trained on.
    """
    bad = next((k for k, v in state.items() if torch.is_tensor(v) and v.is_floating_point() and not v.isfinite().all()), None)
    # On the tensors' device, which the process group's backend can reduce (CUDA for NCCL).
    device = next((v.device for v in state.values() if torch.is_tensor(v)), torch.device("cpu"))
    flag = torch.tensor([0.0 if bad is None else 1.0], device=device)
    if distributed.is_enabled():
        torch.distributed.all_reduce(flag)
    if flag.item() > 0:
        where = f"'{bad}'" if bad is not None else "another rank's shard"
        raise CheckpointError(
            f"refusing to save checkpoint '{name}': {where} holds NaN or inf values; the last checkpoint is kept"
        )


def _local_state_dict_context(model: nn.Module):
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
    from torch.distributed.fsdp import StateDictType

    return FSDP.state_dict_type(model, StateDictType.LOCAL_STATE_DICT)


def full_state_dict(module: nn.Module) -> Dict[str, torch.Tensor]:
    """The complete, unsharded CPU state dict of ``module`` (FSDP-wrapped or plain).

    With FSDP this is a collective: every rank must call it; rank 0 gets the tensors, the other
    ranks an empty dict.

    Args:
        module: a plain or FSDP-wrapped module.
    Returns:
        ``{name: tensor}`` with the names of the unwrapped module, tensors on the CPU.
    """
    if has_fsdp_modules(module):
        from torch.distributed.fsdp import FullStateDictConfig, StateDictType
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

        config = FullStateDictConfig(offload_to_cpu=True, rank0_only=True)
        with FSDP.state_dict_type(module, StateDictType.FULL_STATE_DICT, config):
            state = module.state_dict()
        return {k: v.detach().cpu().clone() for k, v in state.items()}
    return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}


class FSDPCheckpointer(Checkpointer):
    """fvcore Checkpointer for plain or FSDP models with atomic saves and strict, named-error loads.

    Args:
        model: the module whose ``state_dict`` is saved under ``"model"``.
        save_dir: directory of the checkpoints and the ``last_checkpoint`` tag.
        save_to_disk: False disables saving.
        checkpointables: other objects with ``state_dict``/``load_state_dict`` (optimizer, scaler).
    """

    def __init__(self, model: nn.Module, save_dir: str = "", *, save_to_disk: bool = True, **checkpointables: Any):
        super().__init__(model, save_dir, save_to_disk=save_to_disk, **checkpointables)
        self.sharded = has_fsdp_modules(model)

    def _state_context(self):
        return _local_state_dict_context(self.model) if self.sharded else contextlib.nullcontext()

    def _tag_file(self) -> str:
        name = f"last_checkpoint.{rankstr()}" if self.sharded else "last_checkpoint"
        return os.path.join(self.save_dir, name)

    def writes_files(self) -> bool:
        # Plain replicas are identical on every rank: one copy is enough.
        return self.sharded or distributed.is_main_process()

    def save(self, name: str, **kwargs: Any) -> None:
        """Save model, checkpointables and ``kwargs`` to ``<name>[.rank_<k>].pth`` atomically and tag it."""
        if not self.save_dir or not self.save_to_disk:
            return
        with self._state_context():
            state = self.model.state_dict()
            data = {"model": {k: _local_tensor(v) for k, v in state.items()} if self.sharded else state}
        _refuse_non_finite(data["model"], name)
        # Collective: every rank's generators are saved, whichever rank writes the file.
        data["rng_state"] = gather_rng_states()
        if not self.writes_files():
            return
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data.update(kwargs)
        basename = f"{name}.{rankstr()}.pth" if self.sharded else f"{name}.pth"
        save_file = os.path.join(self.save_dir, basename)
        logger.info(f"saving checkpoint to {save_file}")
        atomic_torch_save(data, save_file)
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        atomic_write_text(self._tag_file(), last_filename_basename)

    def has_checkpoint(self) -> bool:
        return os.path.isfile(self._tag_file())

    def get_checkpoint_file(self) -> str:
        """Path named by the ``last_checkpoint`` tag; an error if the tag names a missing file."""
        tag = self._tag_file()
        with open(tag, encoding="utf-8") as f:
            last_saved = f.read().strip()
        path = os.path.join(self.save_dir, last_saved)
        if not last_saved or not os.path.isfile(path):
            raise CheckpointError(f"{tag} names checkpoint '{last_saved}', which does not exist in {self.save_dir}")
        return path

    def _load_file(self, f: str) -> Dict[str, Any]:
        return load_torch_file(f, hint=_UNREADABLE_HINT)

    def _load_model(self, checkpoint: Any):
        path = getattr(self, "_loading", "checkpoint")
        if "model" not in checkpoint or not isinstance(checkpoint["model"], dict):
            keys = ", ".join(list(checkpoint)[:8])
            raise CheckpointError(f"{path} is not a training checkpoint of this project: no 'model' entry (keys: {keys})")
        with self._state_context():
            current = self.model.state_dict()
            expected = {k: _local_tensor(v) for k, v in current.items()} if self.sharded else current
            saved = checkpoint.pop("model")
            problems = state_dict_mismatches(expected, saved)
            if problems:
                raise CheckpointError(
                    f"{path} does not fit the configured model (a checkpoint from another config?): "
                    + "; ".join(problems[:6])
                )
            if self.sharded:
                # Copy the saved shards into this rank's ShardedTensors, which carry the sharding metadata.
                with torch.no_grad():
                    for key, value in current.items():
                        if expected[key] is not value:
                            expected[key].copy_(saved[key])
                            saved[key] = value
                # FSDP's load hook copies each ``_flat_param`` shard into the unit in place; with
                # use_orig_params the key is then reported as unexpected, and only that is allowed.
                result = self.model.load_state_dict(saved, strict=False)
                unexpected = [k for k in result.unexpected_keys if not k.endswith("_flat_param")]
                if result.missing_keys or unexpected:
                    raise CheckpointError(
                        f"{path} does not fit the sharded model: missing {result.missing_keys[:6]}, "
                        f"unexpected {unexpected[:6]}"
                    )
            else:
                self.model.load_state_dict(saved, strict=True)
        return None

    def resume_or_load(self, path: str, *, resume: bool = True) -> Dict[str, Any]:
        """Resume from the tagged checkpoint (model, checkpointables and random states) or load ``path``.

        Returns:
            The checkpoint's remaining entries (``iteration`` and the ``save`` keyword arguments).
        """
        resuming = resume and self.has_checkpoint()
        source = self.get_checkpoint_file() if resuming else path
        state = super().resume_or_load(path, resume=resume)
        rng_states = state.pop("rng_state", None)
        if resuming and rng_states is not None:
            restore_rank_rng_state(rng_states, source)
        return state

    def load(self, path: str, checkpointables: Optional[List[str]] = None) -> Dict[str, Any]:
        """Load ``path`` into the model and the chosen checkpointables; return the remaining entries.

        Raises:
            CheckpointError: missing, unreadable or foreign file, or one that does not fit the model.
        """
        if not path:
            logger.info("no checkpoint found: training starts from the initial weights")
            return {}
        logger.info(f"loading checkpoint {path}")
        checkpoint = self._load_file(path)
        self._loading = path
        try:
            self._load_model(checkpoint)
        finally:
            del self._loading
        for key in self.checkpointables if checkpointables is None else checkpointables:
            if key in checkpoint:
                try:
                    self.checkpointables[key].load_state_dict(checkpoint.pop(key))
                except (KeyError, ValueError, RuntimeError) as exc:
                    raise CheckpointError(f"cannot restore '{key}' from {path}: {exc}") from exc
            else:
                # E.g. a CPU checkpoint (no grad scaler) resumed on CUDA with fp16: the object starts fresh.
                logger.warning(f"{path} holds no '{key}' state: '{key}' starts from its initial state")
        return checkpoint


class AtomicPeriodicCheckpointer(PeriodicCheckpointer):
    """fvcore's PeriodicCheckpointer that also removes old per-rank shard files.

    fvcore deletes ``<prefix>_<iter>.pth``, which does not exist for sharded checkpoints; here the
    file actually written by this rank (named by its ``last_checkpoint`` tag) is the one removed.
    """

    def step(self, iteration: int, **kwargs: Any) -> None:
        iteration = int(iteration)
        state = {"iteration": iteration, **kwargs}
        if (iteration + 1) % self.period == 0:
            self.checkpointer.save(f"{self.file_prefix}_{iteration:07d}", **state)
            if self.max_to_keep is not None and self.checkpointer.writes_files():
                current = self.checkpointer.get_checkpoint_file()
                if not self.recent_checkpoints or self.recent_checkpoints[-1] != current:
                    self.recent_checkpoints.append(current)
                while len(self.recent_checkpoints) > self.max_to_keep:
                    old = self.recent_checkpoints.pop(0)
                    if os.path.isfile(old) and not os.path.basename(old).startswith(f"{self.file_prefix}_final"):
                        os.remove(old)
        if self.max_iter is not None and iteration >= self.max_iter - 1:
            self.checkpointer.save(f"{self.file_prefix}_final", **state)


def save_teacher_checkpoint(model: torch.nn.Module, cfg, path: str, mAP: float, iteration: int) -> None:
    """Write ``{"teacher", "mAP", "iteration", "config"}`` atomically (collective with FSDP; rank 0 writes)."""
    state = full_state_dict(model.teacher)
    if not distributed.is_main_process():
        return
    payload = {"teacher": state, "mAP": float(mAP), "iteration": int(iteration), "config": OmegaConf.to_yaml(cfg)}
    atomic_torch_save(payload, path)
