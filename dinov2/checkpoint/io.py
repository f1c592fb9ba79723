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

import contextlib
import os
from typing import Any, Callable, Dict, Iterator

import torch


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


def weights_identity(weights: str) -> Dict[str, Any]:
    """Absolute path, size and modification time of a weights file (None for random weights)."""
    if not weights:
        return {"weights": None}
    path = os.path.abspath(weights)
    stat = os.stat(path)
    return {"weights": path, "weights_size": stat.st_size, "weights_mtime_ns": stat.st_mtime_ns}
