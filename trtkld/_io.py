"""Atomic file writes shared by every stage that writes a file users rely on.

A reader (TensorRT, a second trtkld process, the user) must see either the old file or the
complete new one, never a truncated mix: write a temporary file in the same directory, fsync
it, ``os.replace`` it over the target, then fsync the directory.
"""
from __future__ import annotations

import os
import tempfile
from typing import IO, Callable, Union

PathLike = Union[str, "os.PathLike[str]"]


def atomic_write(path: PathLike, content: Union[bytes, Callable[[IO[bytes]], None]]) -> None:
    """Write ``content`` (bytes, or a function writing to a binary file object) to ``path``.

    An existing file keeps its permissions; a new one gets 0644. On any error the previous file
    is untouched, the temporary file is removed and the exception (``OSError`` included)
    propagates for the caller to wrap with its own context.
    """
    target = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(target))
    try:
        mode = os.stat(target).st_mode & 0o7777
    except FileNotFoundError:
        mode = 0o644  # mkstemp's 0600 would surprise users sharing a cache
    fd, tmp = tempfile.mkstemp(
        dir=directory, prefix="." + os.path.basename(target) + ".", suffix=".tmp"
    )
    try:
        with os.fdopen(fd, "wb") as f:
            if callable(content):
                content(f)
            else:
                f.write(content)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_directory(directory)


def _fsync_directory(directory: str) -> None:
    """Make the rename durable where the OS allows opening a directory (not on Windows)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
