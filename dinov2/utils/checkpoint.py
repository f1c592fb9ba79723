"""Atomic checkpoint I/O: a file is either the old version or the complete new one, never half written.

Every writer goes through a temporary file in the destination's directory, ``fsync`` and
``os.replace`` (atomic on POSIX), so a crash, a full disk or a kill during a save leaves the
previous file as it was.
"""

import contextlib
import json
import os
from typing import Any, Callable, Dict, Iterator, List

import torch


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read or does not belong to the model being trained."""


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


def load_torch_file(path: str) -> Dict[str, Any]:
    """``torch.load(weights_only=True)`` of a checkpoint dict on the CPU, with errors that name the file.

    ``weights_only`` refuses any pickled object other than tensors and plain containers, so a
    tampered or foreign file fails here instead of running code.

    Args:
        path: checkpoint file.
    Returns:
        The loaded dict.
    Raises:
        CheckpointError: missing, truncated or unreadable file, or not a dict.
    """
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint file not found: {path}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        first_line = str(exc).splitlines()[0] if str(exc) else ""
        raise CheckpointError(
            f"cannot read checkpoint {path} ({type(exc).__name__}: {first_line}); the file is truncated, "
            "corrupt, not a torch checkpoint or holds objects other than tensors. Move it away (or pass --no-resume with another --output-dir) "
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
