"""Checkpoint file I/O: the one ``torch.load`` of the package, atomic writes and the error types.

Reading: ``load_torch_file`` loads on the CPU with ``weights_only=True``, which refuses any pickled
object other than tensors and plain containers, so a tampered or foreign file fails instead of
running code.

Errors: every failure is a ``CheckpointError``; ``CheckpointFormatError`` (also a ValueError) for a
file that is not a checkpoint of a known format (unreadable, unsafe, not a dict, unknown layout) and
``CheckpointNotFoundError`` (also a FileNotFoundError) for a missing file. Messages name the file.

Writing: every writer goes through a temporary file in the destination's directory, ``fsync`` and
``os.replace`` (atomic on POSIX), so a crash, a full disk or a kill during a save leaves the
previous file as it was.
"""

import os
import re
from typing import Any, Dict

import torch

from dinov2.utils.errors import InputError
from dinov2.utils.files import atomic_path, atomic_write, atomic_write_text  # noqa: F401  (re-exported)


class CheckpointError(InputError, RuntimeError):
    """A checkpoint that cannot be read or does not belong to the model being trained."""


class CheckpointFormatError(CheckpointError, ValueError):
    """A file that is not a checkpoint of a known format: unreadable, unsafe, not a dict or of an unknown layout."""


class CheckpointNotFoundError(CheckpointFormatError, FileNotFoundError):
    """No checkpoint file at the given path."""


def atomic_torch_save(obj: Any, path: str) -> str:
    """``torch.save(obj, path)`` through a temporary file and ``os.replace``.

    Args:
        obj: what to save.
        path: destination file.
    Returns:
        ``path``.
    """
    return atomic_write(path, lambda f: torch.save(obj, f), "wb")


def _load_failure(exc: Exception) -> str:
    """Why ``torch.load(weights_only=True)`` failed, in plain words.

    Torch's own message for a file holding other objects than tensors advises loading it with
    ``weights_only=False``, which would run the file's code: only the class it refused is kept.
    """
    refused = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(exc))
    if refused:
        return (
            f"it holds a Python object of class {refused.group(1).lstrip('_')}, and only tensors and plain "
            "containers are loaded from a checkpoint (loading other objects could run code from the file)"
        )
    return "the file is not a torch checkpoint, or it is truncated or corrupt"


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
        raise CheckpointFormatError(f"cannot read checkpoint {path}: {_load_failure(exc)}" + (f". {hint}" if hint else "")) from exc
    if not isinstance(checkpoint, dict):
        raise CheckpointFormatError(f"checkpoint {path} holds a {type(checkpoint).__name__}, expected a dict")
    return checkpoint


def weights_identity(weights: str) -> Dict[str, Any]:
    """Absolute path, size and modification time of a weights file (None for random weights)."""
    if not weights:
        return {"weights": None}
    path = os.path.abspath(weights)
    stat = os.stat(path)
    return {"weights": path, "weights_size": stat.st_size, "weights_mtime_ns": stat.st_mtime_ns}
