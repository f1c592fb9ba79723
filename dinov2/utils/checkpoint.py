"""Atomic checkpoint I/O: a file is either the old version or the complete new one, never half written.

Every writer goes through a temporary file in the destination's directory, ``fsync`` and
``os.replace`` (atomic on POSIX), so a crash, a full disk or a kill during a save leaves the
previous file as it was.
"""

import os
from typing import Any, Callable, Dict, List

import torch


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read or does not belong to the model being trained."""


def _atomic_write(path: str, write: Callable[[Any], None], mode: str) -> str:
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp_path = os.path.join(directory, f".{os.path.basename(path)}.tmp.{os.getpid()}")
    try:
        with open(tmp_path, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
    finally:
        if os.path.exists(tmp_path):
            os.remove(tmp_path)
    # Make the rename itself durable.
    try:
        dir_fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return path
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)
    return path


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


def load_torch_file(path: str, weights_only: bool = True) -> Dict[str, Any]:
    """``torch.load`` of a checkpoint dict on the CPU, with errors that name the file.

    Args:
        path: checkpoint file.
        weights_only: refuse arbitrary pickled objects (the default); False only for files this
            project wrote itself whose tensors are not plain (FSDP local shards).
    Returns:
        The loaded dict.
    Raises:
        CheckpointError: missing, truncated or unreadable file, or not a dict.
    """
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint file not found: {path}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=weights_only)
    except Exception as exc:
        first_line = str(exc).splitlines()[0] if str(exc) else ""
        raise CheckpointError(
            f"cannot read checkpoint {path} ({type(exc).__name__}: {first_line}); the file is truncated, "
            "corrupt or not a torch checkpoint. Move it away (or pass --no-resume with another --output-dir) "
            "rather than training over it"
        ) from exc
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(checkpoint).__name__}, expected a dict")
    return checkpoint


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
