"""Checkpoint I/O: the one place that reads torch files, names their format, and writes atomically.

Reading: ``load_torch_file`` is the only ``torch.load`` of the package. It loads on the CPU with
``weights_only=True``, which refuses any pickled object other than tensors and plain containers, so
a tampered or foreign file fails instead of running code. ``detect_format`` names the layout of a
loaded checkpoint from its keys (never from the file name):

- ``sdsh_training``: this project's training (resume) checkpoint ``model_*.pth``,
  ``{"model": SSLMetaArch.state_dict(), "optimizer", "iteration", "rng_state", ...}``;
- ``sdsh_teacher``: this project's ``teacher_checkpoint.pth``,
  ``{"teacher": {"backbone.*", "hash_head.*", ...}, "mAP", "iteration", "config"}``;
- ``sdsh_reference``: a ``teacher_checkpoint.pth`` of the reference SDSH code, whose hash layers
  live inside the backbone (``backbone.hash_layer.*``, ``backbone.patch_attn_global.*``, ...);
- ``dinov2_backbone``: a bare DINOv2 backbone state dict (``cls_token``, ``blocks.*``), such as the
  public ``dinov2_vits14_pretrain.pth``.

Errors: every failure is a ``CheckpointError``; ``CheckpointFormatError`` (also a ValueError) for a
file that is not a checkpoint of a known format (unreadable, unsafe, not a dict, unknown layout) and
``CheckpointNotFoundError`` (also a FileNotFoundError) for a missing file. Messages name the file.

Writing: every writer goes through a temporary file in the destination's directory, ``fsync`` and
``os.replace`` (atomic on POSIX), so a crash, a full disk or a kill during a save leaves the
previous file as it was.
"""

import contextlib
import json
import os
from typing import Any, Callable, Dict, Iterator, List

import torch

# Reference SDSH module names (inside its backbone) -> this project's hash head; they mark its checkpoints.
REFERENCE_PREFIX_MAP = {
    "backbone.patch_attn_global.": "hash_head.pool_global.",
    "backbone.patch_attn_local.": "hash_head.pool_local.",
    "backbone.hash_layer.": "hash_head.hash_layer.",
    "backbone.ibot_layer_patch.": "hash_head.patch_proj.",
}
_BACKBONE_MARKERS = ("cls_token", "pos_embed", "patch_embed.proj.weight")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read or does not belong to the model being trained."""


class CheckpointFormatError(CheckpointError, ValueError):
    """A file that is not a checkpoint of a known format: unreadable, unsafe, not a dict or of an unknown layout."""


class CheckpointNotFoundError(CheckpointFormatError, FileNotFoundError):
    """No checkpoint file at the given path."""


def _fsync_path(path: str, flags: int) -> None:
    try:
        fd = os.open(path, flags)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems cannot sync directories
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str) -> Iterator[str]:
    """A temporary path beside ``path`` that replaces ``path`` when the ``with`` block succeeds.

    The temporary name keeps the extension (writers such as matplotlib infer the format from it).
    After the block the file is fsynced, renamed over ``path`` and the directory is fsynced; on an
    exception the temporary file is removed and ``path`` is left as it was.

    Args:
        path: destination file.
    Yields:
        The temporary path to write.
    """
    path = os.fspath(path)
    directory, name = os.path.split(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp_path = os.path.join(directory, f".tmp.{os.getpid()}.{name}")
    try:
        yield tmp_path
        _fsync_path(tmp_path, os.O_RDONLY)
        os.replace(tmp_path, path)
    finally:
        if os.path.exists(tmp_path):
            os.remove(tmp_path)
    # Make the rename itself durable.
    _fsync_path(directory, os.O_RDONLY)


def _atomic_write(path: str, write: Callable[[Any], None], mode: str) -> str:
    with atomic_path(path) as tmp_path:
        with open(tmp_path, mode) as f:
            write(f)
    return os.fspath(path)


def atomic_torch_save(obj: Any, path: str) -> str:
    """``torch.save(obj, path)`` through a temporary file and ``os.replace``.

    Args:
        obj: what to save.
        path: destination file.
    Returns:
        ``path``.
    """
    return _atomic_write(path, lambda f: torch.save(obj, f), "wb")


def atomic_write_text(path: str, text: str) -> str:
    """Write ``text`` to ``path`` through a temporary file and ``os.replace``; returns ``path``."""
    return _atomic_write(path, lambda f: f.write(text.encode("utf-8")), "wb")


def load_torch_file(path: str, hint: str = "") -> Dict[str, Any]:
    """``torch.load(weights_only=True)`` of a checkpoint dict on the CPU, with errors that name the file.

    Args:
        path: checkpoint file.
        hint: what to do about an unreadable file, appended to the error message.
    Returns:
        The loaded dict.
    Raises:
        CheckpointNotFoundError: no such file.
        CheckpointFormatError: truncated, corrupt or unsafe file, or not a dict.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointNotFoundError(f"checkpoint file not found: {path}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        first_line = str(exc).splitlines()[0] if str(exc) else ""
        raise CheckpointFormatError(
            f"cannot read checkpoint {path} ({type(exc).__name__}: {first_line}); the file is truncated, "
            "corrupt, not a torch checkpoint or holds objects other than tensors" + (f". {hint}" if hint else "")
        ) from exc
    if not isinstance(checkpoint, dict):
        raise CheckpointFormatError(f"checkpoint {path} holds a {type(checkpoint).__name__}, expected a dict")
    return checkpoint


def strip_module_prefix(state_dict: Dict[str, Any]) -> Dict[str, Any]:
    """The state dict without the ``module.`` prefix that DistributedDataParallel adds."""
    return {k[len("module.") :] if k.startswith("module.") else k: v for k, v in state_dict.items()}


def detect_format(checkpoint: dict) -> str:
    """Name of the format of a loaded checkpoint (see the module docstring), or raise CheckpointFormatError."""
    model = checkpoint.get("model")
    if isinstance(model, dict) and any(k.startswith("teacher.hash_head.") for k in model):
        return "sdsh_training"
    teacher = checkpoint.get("teacher")
    if isinstance(teacher, dict):
        keys = strip_module_prefix(teacher).keys()
        if any(k.startswith("hash_head.") for k in keys):
            return "sdsh_teacher"
        if any(k.startswith(tuple(REFERENCE_PREFIX_MAP)) for k in keys):
            return "sdsh_reference"
        if any(k.startswith("backbone.") for k in keys):
            return "dinov2_backbone"
    if all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        keys = strip_module_prefix(checkpoint).keys()
        if any(k.startswith("hash_head.") for k in keys):
            return "sdsh_teacher"
        if any(k in _BACKBONE_MARKERS or k.removeprefix("backbone.") in _BACKBONE_MARKERS for k in keys):
            return "dinov2_backbone"
    sample = ", ".join(list(checkpoint.keys())[:8])
    raise CheckpointFormatError(
        "unknown checkpoint layout (expected an SDSH training/teacher checkpoint, a reference SDSH "
        f"teacher_checkpoint.pth or a DINOv2 backbone); top-level keys: {sample}"
    )


def read_checkpoint(path: str) -> Dict[str, Any]:
    """``load_torch_file`` and ``detect_format`` of ``path``: the checkpoint and ``"format"``.

    Returns:
        ``{"checkpoint": the loaded dict, "format": its format name}``.
    Raises:
        CheckpointFormatError: as ``load_torch_file``, or an unknown layout (the message names the file).
    """
    checkpoint = load_torch_file(path)
    try:
        fmt = detect_format(checkpoint)
    except CheckpointFormatError as exc:
        raise CheckpointFormatError(f"{path}: {exc}") from None
    return {"checkpoint": checkpoint, "format": fmt}


def state_dict_mismatches(expected: Dict[str, torch.Tensor], found: Dict[str, Any]) -> List[str]:
    """Differences between a model's state dict and a checkpoint's, as readable lines.

    Args:
        expected: the model's ``state_dict()``.
        found: the checkpoint's state dict.
    Returns:
        Lines naming missing keys, unexpected keys and shape mismatches (empty when they match).
    """
    problems = []
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    if missing:
        problems.append(f"missing keys ({len(missing)}): {', '.join(missing[:8])}{' ...' if len(missing) > 8 else ''}")
    if unexpected:
        more = " ..." if len(unexpected) > 8 else ""
        problems.append(f"unexpected keys ({len(unexpected)}): {', '.join(unexpected[:8])}{more}")
    for key in sorted(set(expected) & set(found)):
        a, b = expected[key], found[key]
        if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and tuple(a.shape) != tuple(b.shape):
            problems.append(f"{key}: checkpoint {tuple(b.shape)} vs model {tuple(a.shape)}")
    return problems


def drop_records_from(path: str, iteration: int) -> int:
    """Remove the training records of ``iteration`` and later from a JSON-lines file, atomically.

    A run resumed from the checkpoint of iteration ``iteration - 1`` writes these records again;
    without this, an interrupted run's records past its last checkpoint would appear twice. A
    final line cut short by a kill is dropped too. Records marked ``eval_only`` are kept: they
    describe a given checkpoint, not this run's progress.

    Args:
        path: the JSON-lines file (nothing happens when it does not exist).
        iteration: first iteration whose records are removed.
    Returns:
        The number of lines removed.
    """
    if not os.path.isfile(path):
        return 0
    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    kept = []
    for number, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            if number == len(lines) - 1:
                continue
            raise CheckpointError(f"{path}, line {number + 1}: not a JSON record ({line[:80]!r})") from None
        if isinstance(record, dict) and not record.get("eval_only") and record.get("iteration", -1) >= iteration:
            continue
        kept.append(line)
    removed = len([line for line in lines if line.strip()]) - len(kept)
    if removed:
        atomic_write_text(path, "".join(line + "\n" for line in kept))
    return removed
