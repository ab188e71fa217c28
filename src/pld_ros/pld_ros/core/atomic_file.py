"""Writing a file so that it is either whole on disk or not there, even if the process is killed or
the machine loses power.

:func:`atomic_write` writes to a temporary file in the destination's directory, flushes and
fsyncs it, renames it over the destination (``os.replace``, atomic within one file system) and
fsyncs the directory so that the rename itself survives a power loss. A reader therefore sees the
old file, no file, or the complete new one, never a prefix. A process killed mid-write leaves its
temporary behind; the temporaries are dot-files ending in :data:`TEMPORARY_SUFFIX`, which listings
skip and :func:`remove_temporaries` deletes (only when no writer can be using the directory).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

TEMPORARY_SUFFIX = ".tmp"
"""Ending of a temporary file of :func:`atomic_write` (its name also starts with a dot)."""


def _new_file_mode() -> int:
    """The mode ``open()`` gives a new file: 0o666 less the process's umask. The umask can only be
    read by setting it, which is not thread-safe (another thread's file would be created with no
    mask meanwhile): it is read once, at import, before a node starts its threads."""
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask


_NEW_FILE_MODE = _new_file_mode()


def is_temporary(path: Path) -> bool:
    """The file is an unfinished write of :func:`atomic_write`."""
    return path.name.startswith(".") and path.name.endswith(TEMPORARY_SUFFIX)


def fsync_directory(directory: Path) -> None:
    """Make the directory's entries (creations, renames, deletions) durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, write: Callable[[BinaryIO], object]) -> Path:
    """Create or replace ``path`` with what ``write`` writes to the binary file it is given,
    atomically and durably; create the directory if needed. If ``write`` raises, the temporary is
    removed, ``path`` is left as it was, and the exception propagates."""
    directory = path.parent
    directory.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMPORARY_SUFFIX, dir=directory)
    try:
        # mkstemp creates the file private (0600); a written episode or weights file must be
        # readable by whoever may read a plain file here (the trainer, a teammate, a web server).
        os.fchmod(fd, _NEW_FILE_MODE)
        with os.fdopen(fd, "wb") as out:
            write(out)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
    fsync_directory(directory)
    return path


def remove_temporaries(directory: Path) -> list[Path]:
    """Delete the temporaries that killed writers left in ``directory``; return their paths.

    Only call it while no process may be writing there: a live writer's temporary would go too,
    and its rename would then fail."""
    removed = []
    for path in sorted(directory.iterdir()) if directory.is_dir() else []:
        if is_temporary(path) and path.is_file():
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                removed.append(path)
    return removed
