"""Operating-system write failures (disk full, quota, read-only or forbidden paths) as one-line errors.

A stage that runs out of disk stops with an ``OSError`` from wherever it was writing (zarr's writer
threads, torch.save, a manifest). Its work so far sits in hidden ``.partial`` folders and temp files,
so the one thing a user needs is where the space ran out, how much is free there, and that the same
command resumes once there is room.
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

from cdred_pipeline.errors import StorageError

FULL = {errno.ENOSPC, errno.EDQUOT}
FORBIDDEN = {errno.EROFS, errno.EACCES, errno.EPERM}


def os_error_in(exc: BaseException) -> OSError | None:
    """The first OSError of a write failure in ``exc``'s cause/context chain (worker threads and
    libraries often wrap it), or None."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in FULL | FORBIDDEN:
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


def free_bytes(path: str | os.PathLike) -> int | None:
    """Free bytes on the file system holding ``path`` (its nearest existing parent), or None."""
    p = Path(path).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        return shutil.disk_usage(p).free
    except OSError:
        return None


def ensure_free(path: str | os.PathLike, need: int, what: str) -> None:
    """Refuse, before writing, an output of about ``need`` bytes where less is free (for writers that
    cannot fail cleanly half-way, such as HDF5's C library, which crashes on a full disk)."""
    free = free_bytes(path)
    if free is not None and free < need:
        raise StorageError(f"{what} needs about {human_bytes(need)} at {path}, only {human_bytes(free)} free there; "
                           "free some space or write it elsewhere")


def human_bytes(n: float | None, unknown: str = "-") -> str:
    """``n`` bytes as ``512 B`` / ``1.5 MB`` (powers of 1024); ``unknown`` when the size is not known."""
    if n is None:
        return unknown
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


STAGE_HINT = ("free some space or choose another --workdir, then rerun the same command: finished work is kept "
              "and the run resumes")


def _storage_error_in(exc: BaseException) -> StorageError | None:
    """A StorageError already made by an inner layer (which knew the place better), if any."""
    seen: set[int] = set()
    while exc is not None and not isinstance(exc, StorageError) and id(exc) not in seen:
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return exc if isinstance(exc, StorageError) else None


def as_user_error(exc: BaseException, where: str | os.PathLike, hint: str = STAGE_HINT) -> StorageError | None:
    """A one-line StorageError for a disk-full or forbidden write anywhere in ``exc``'s chain, naming the
    place (the file when the OS says, else ``where``) and its free space, then ``hint``; None for any other
    failure (a bug keeps its traceback)."""
    made = _storage_error_in(exc)
    if made is not None:
        return made
    err = os_error_in(exc)
    if err is None:
        return None
    place = err.filename or where
    if err.errno in FULL:
        free = human_bytes(free_bytes(place), unknown="unknown space")
        return StorageError(f"no space left on the device of {place} ({free} free there); {hint}")
    return StorageError(f"cannot write {place}: {err.strerror}; choose a --workdir (or output) you can write to")
