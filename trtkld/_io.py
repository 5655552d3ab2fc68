"""File safety shared by every stage: atomic writes, bounded reads of regular files only, and a
folder lock that keeps file pairs consistent. (Layer 0: no trtkld imports; callers pass the
error class their stage raises.)

Writes: a reader (TensorRT, a second trtkld process, the user) sees either the old file or the
complete new one, never a truncated mix. The new content goes to a temporary file with a unique
name in the target's folder, created exclusively (``O_CREAT | O_EXCL`` through
``tempfile.mkstemp``, so a file or symlink planted at a temporary name is never followed or
overwritten), flushed, fsynced, and moved over the target with ``os.replace``; the folder is then
fsynced. On any error (KeyboardInterrupt included) the target is untouched and the temporary
file removed.

Reads: :func:`read_regular_file` opens without blocking, refuses FIFOs, devices, sockets and
folders with a clear error, and refuses files larger than a stated limit, so a FIFO named
``x.cache`` or ``/dev/zero`` can neither hang a run nor fill the memory.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import stat
import tempfile
from collections.abc import Iterator
from typing import IO, Callable, Optional, Union

PathLike = Union[str, "os.PathLike[str]"]

_CHUNK = 1 << 20


def atomic_write(path: PathLike, content: Union[bytes, Callable[[IO[bytes]], None]]) -> str:
    """Write ``content`` (bytes, or a function writing to a binary file object) to ``path``.

    Returns the sha256 (hex) of the bytes written, hashed from this call's own data (the bytes
    given, or the private temporary file before it is renamed), never from a re-read of ``path``
    that another process may have replaced meanwhile.

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
    # mkstemp: O_CREAT | O_EXCL | O_NOFOLLOW-equivalent: an existing name (a planted symlink
    # included) is never opened; another random name is tried instead.
    fd, tmp = tempfile.mkstemp(
        dir=directory, prefix="." + os.path.basename(target) + ".", suffix=".tmp"
    )
    try:
        with os.fdopen(fd, "w+b") as f:
            if callable(content):
                content(f)
                f.flush()
                f.seek(0)
                digest = hashlib.sha256()
                for chunk in iter(lambda: f.read(_CHUNK), b""):
                    digest.update(chunk)
                sha256 = digest.hexdigest()
            else:
                f.write(content)
                sha256 = hashlib.sha256(content).hexdigest()
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_directory(directory)
    return sha256


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


@contextlib.contextmanager
def locked_folder(path: PathLike, *, exclusive: bool = True) -> Iterator[None]:
    """Hold an advisory lock on the folder that holds ``path`` (``flock`` on the folder itself,
    so no lock file is ever left behind).

    Writers of a file pair (a calibration cache and its sidecar) take it exclusively and readers
    shared, so a reader never sees one run's cache with another run's sidecar, and two runs
    writing the same ``--out`` leave one run's complete pair. A no-op where the platform has no
    ``flock`` (Windows) or the folder cannot be opened.
    """
    try:
        import fcntl
    except ImportError:  # Windows: atomic writes and the sidecar's sha256 still hold
        yield
        return
    directory = os.path.dirname(os.path.abspath(os.fspath(path)))
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def _kind_of_mode(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def regular_file_problem(path: PathLike) -> Optional[str]:
    """Why ``path`` is not an existing regular file (after symlinks), or None if it is."""
    try:
        st = os.stat(os.fspath(path))
    except FileNotFoundError:
        return "does not exist"
    except OSError as exc:
        return f"cannot be accessed ({exc.strerror or exc})"
    if stat.S_ISREG(st.st_mode):
        return None
    return f"is {_kind_of_mode(st.st_mode)}, expected a regular file"


def read_regular_file(
    path: PathLike, *, limit: int, what: str, error: type = OSError
) -> bytes:
    """The bytes of ``path``, a regular file of at most ``limit`` bytes; else ``error`` naming
    ``what``, the path, the limit and what was found.

    The file is opened with ``O_NONBLOCK`` so that a FIFO cannot block the open, then checked
    with ``fstat`` on the open descriptor (no race with a rename), then read up to ``limit + 1``
    bytes so a file growing meanwhile (or a device) never makes the read unbounded.
    """
    name = os.fspath(path)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(name, flags)
    except FileNotFoundError:
        raise error(f"cannot read {what} {name!r}: no such file") from None
    except IsADirectoryError:
        raise error(f"cannot read {what} {name!r}: it is a folder, expected a regular file") \
            from None
    except OSError as exc:
        if exc.errno == errno.ENXIO:  # a FIFO or socket with no writer on some systems
            raise error(f"cannot read {what} {name!r}: not a regular file") from None
        raise error(f"cannot read {what} {name!r}: {exc.strerror or exc}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise error(
                f"cannot read {what} {name!r}: it is {_kind_of_mode(st.st_mode)}, expected a "
                f"regular file"
            )
        if st.st_size > limit:
            raise error(
                f"cannot read {what} {name!r}: it is {st.st_size} bytes, more than the limit "
                f"of {limit} bytes for a {what}"
            )
        chunks = []
        total = 0
        while True:
            chunk = os.read(fd, min(_CHUNK, limit + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
            if total > limit:
                raise error(
                    f"cannot read {what} {name!r}: it grew past the limit of {limit} bytes "
                    f"while being read"
                )
        return b"".join(chunks)
    except OSError as exc:
        raise error(f"cannot read {what} {name!r}: {exc.strerror or exc}") from None
    finally:
        os.close(fd)


def file_sha256(path: PathLike) -> str:
    """sha256 (hex) of a regular file's bytes, read in chunks (OSError propagates)."""
    digest = hashlib.sha256()
    with open(os.fspath(path), "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def same_file(a: PathLike, b: PathLike) -> bool:
    """Whether ``a`` and ``b`` name one file: the same inode when both exist, else the same
    resolved path (symlinks followed; case as the filesystem reports it)."""
    a, b = os.fspath(a), os.fspath(b)
    try:
        if os.path.exists(a) and os.path.exists(b):
            return os.path.samefile(a, b)
    except OSError:
        pass
    return os.path.normcase(os.path.realpath(a)) == os.path.normcase(os.path.realpath(b))
