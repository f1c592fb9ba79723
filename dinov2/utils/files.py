"""Atomic file writes: a temporary file beside the destination, fsync, then ``os.replace``.

A crash, a full disk or a kill during a write leaves the previous file as it was. No torch here:
the config and the tools' option checks use these before any heavy import.
"""

import contextlib
import os
from typing import Any, Callable, Iterator


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


def atomic_write(path: str, write: Callable[[Any], None], mode: str) -> str:
    """Write ``path`` atomically with ``write(file)`` on a file opened in ``mode``; returns the path."""
    with atomic_path(path) as tmp_path:
        with open(tmp_path, mode) as f:
            write(f)
    return os.fspath(path)


def atomic_write_text(path: str, text: str) -> str:
    """Write ``text`` (UTF-8, newlines as given) to ``path`` atomically; returns the path."""
    return atomic_write(path, lambda f: f.write(text.encode("utf-8")), "wb")
