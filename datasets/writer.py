"""Writing episode stores: :class:`EpisodeWriter` (collection), :class:`RgbWriter` (render-visual),
:func:`copy_dataset` and :func:`write_array`.

Design (docs/design.md §6), on zarr's public API only:

* Every array is chunked along time only (about 2 MB per chunk, Blosc). Appends are buffered in
  memory per array and handed to zarr as whole chunks (``array[a:b] = rows`` with ``a`` and ``b`` on
  chunk boundaries, up to 16 chunks / 32 MB per write so that zarr compresses them in parallel and
  its fixed cost per write stays small; an idle writer thread takes 4 whole chunks, so writing
  overlaps appending), so appending N episodes costs O(N): a resize only rewrites a small
  ``zarr.json`` and no whole chunk is read back or written twice. The one exception is the partial
  tail chunk per array that each :meth:`EpisodeWriter.flush` writes (from the chunk's start to the
  array's end, so zarr encodes it without reading anything back); the buffer keeps its rows, and a
  later whole-chunk write replaces it.
* A store is written under a temporary name (``.<name>.partial`` next to the final path) and renamed
  to its final name by :meth:`EpisodeWriter.close` after it is consolidated and structurally valid;
  a directory with the final name is therefore always complete.
* One writer per store: an exclusive ``flock`` on ``.<name>.lock``; a second writer gets a
  :class:`~cdred_pipeline.errors.DatasetError` at once, or with ``wait=True`` (the ``package``
  commands, through :func:`output_lock` for non-zarr outputs too) waits for the first and then
  finds its finished output. :func:`publish` replaces an existing output in one atomic rename (a
  file) or exchange (a folder), so the final name never holds a partial output.
* Resume: :meth:`EpisodeWriter.resume` reopens the partial store of a killed run; ``num_episodes``
  says how many episodes are durably stored (everything up to the last :meth:`flush`), and a stage
  skips those. Episodes are committed by ``meta/episode_ends``, written last in every flush; rows
  beyond the last committed episode are discarded on resume.
* Durability: zarr's local store writes every chunk file under a temporary name and renames it, so
  a kill never leaves a half-written chunk. The fsync of a whole chunk's file and of the folders
  holding only it starts as soon as zarr has written it (a whole chunk is never written again).
  :meth:`EpisodeWriter.flush` waits
  for those and fsyncs every other chunk file and every chunk folder written since the last flush
  (concurrently, one batch for all step arrays) before it writes ``meta/episode_ends``, and fsyncs
  that too; ``close`` fsyncs every other file and folder of the store before the atomic rename
  that publishes it, and then the parent folder. So every byte of a published store, and of every
  committed episode of a partial one, was fsynced; each chunk write is fsynced once.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import math
import os
import shutil
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from cdred_pipeline.errors import DatasetError

from . import layout as L

__all__ = ["EpisodeWriter", "RgbWriter", "copy_dataset", "write_array", "output_lock", "publish"]


# --------------------------------------------------------------------------------------- locking
class _Lock:
    """An exclusive ``flock`` on the lock file of a store path: non-blocking (a second writer gets a
    one-line DatasetError at once) or, with ``wait``, blocking until the other writer is done."""

    def __init__(self, path: Path, wait: bool = False) -> None:
        self.file = L.lock_path(path)
        self.file.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(self.file, "a+")
        try:
            fcntl.flock(self._fh, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            self._fh.close()
            self._fh = None
            raise DatasetError(f"{path}: another process is writing this dataset (lock {self.file.name}); "
                               "wait for it to finish") from None

    def release(self) -> None:
        """Unlock and close the lock file (idempotent)."""
        if self._fh is not None:
            fcntl.flock(self._fh, fcntl.LOCK_UN)
            self._fh.close()
            self._fh = None


@contextmanager
def output_lock(path: str | os.PathLike, *, wait: bool = True) -> Iterator[None]:
    """Hold the writer lock of the output ``path`` (``.<name>.lock`` next to it, the lock
    :class:`EpisodeWriter` takes): a second writer of the same output waits for the first (or, without
    ``wait``, fails with one line), then sees its finished output."""
    lock = _Lock(Path(path), wait=wait)
    try:
        yield
    finally:
        lock.release()


# ------------------------------------------------------------------------------------ fsync
_POOLS: dict[str, ThreadPoolExecutor] = {}
_POOLS_LOCK = threading.Lock()


def _forget_pools() -> None:
    """In a forked child: the parent's threads do not exist there, so its pools (and lock) are dropped."""
    global _POOLS_LOCK
    _POOLS.clear()
    _POOLS_LOCK = threading.Lock()


os.register_at_fork(after_in_child=_forget_pools)


def _threads(name: str, workers: int) -> ThreadPoolExecutor:
    """The process's thread pool ``name``, made on first use."""
    with _POOLS_LOCK:
        if name not in _POOLS:
            _POOLS[name] = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=f"cdred-{name}")
        return _POOLS[name]


def _pool() -> ThreadPoolExecutor:
    """The fsync threads: fsyncs wait on the device, not the CPU, so more threads than cores."""
    return _threads("fsync", 8)


def _fsync_path(path: Path | str, *, strict: bool) -> None:
    """fsync a file or folder; one that cannot be opened (removed meanwhile) is skipped. ``strict``:
    fsync errors raise (files: their bytes must be on disk); else they are ignored (folders: some
    filesystems refuse to fsync a directory)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        if strict:
            raise
    finally:
        os.close(fd)


def _fsync_dir(path: Path | str) -> None:
    _fsync_path(path, strict=False)


def _fsync_file(path: str) -> None:
    _fsync_path(path, strict=True)


def _fsync_all(files: Iterable[str], dirs: Iterable[str] = ()) -> None:
    """fsync ``files`` and ``dirs`` concurrently: each fsync waits for a device cache flush, and
    issued from several threads the flushes overlap and the kernel batches them."""
    jobs = [_pool().submit(_fsync_file, f) for f in files] + [_pool().submit(_fsync_dir, d) for d in dirs]
    for j in jobs:
        j.result()


def _fsync_tree(path: Path, skip: Iterable[str] = (), files: Iterable[str] = (), dirs: Iterable[str] = ()) -> None:
    """fsync every file and folder under ``path``, and the extra ``files`` and ``dirs``, in one
    concurrent batch: the data is on disk before the atomic rename. ``skip`` names paths already
    fsynced and not written since (chunk files and their folders that a column's durable flush or
    its batches synced), which need no second device flush."""
    skip = set(skip)
    files, dirs = list(files), list(dirs)
    for root, _dirs, names in os.walk(os.path.abspath(path)):
        files.extend(f for f in (os.path.join(root, n) for n in names) if f not in skip)
        if root not in skip:
            dirs.append(root)
    _fsync_all(files, dirs)


_RENAME_EXCHANGE = 2  # renameat2 flag: swap two paths atomically (Linux 3.15+, local file systems)


def _exchange(a: Path, b: Path) -> bool:
    """Swap ``a`` and ``b`` in one atomic rename (renameat2 RENAME_EXCHANGE); False where the system
    or the file system does not offer it."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd = -100
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    if ctypes.get_errno() in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
        return False
    raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()), str(b))


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def publish(tmp: Path, final: Path, overwrite: bool) -> None:
    """Atomically move a finished store (or file) from its temporary name to ``final``, replacing an
    existing ``final`` only with ``overwrite``; then fsync the parent folder. A file replaces a file in
    one rename and a folder is swapped in with one atomic exchange, so ``final`` is always whole and
    never missing (where the file system cannot exchange, the old folder is moved aside first)."""
    if not final.exists():
        os.replace(tmp, final)
    elif not overwrite:
        raise DatasetError(f"{final}: already exists; pass overwrite=True (--force) to replace it")
    elif not tmp.is_dir() and not final.is_dir():
        os.replace(tmp, final)
    elif _exchange(tmp, final):
        _remove(tmp)  # now the old output
    else:
        trash = final.with_name(f".{final.name}.old{os.getpid()}")
        os.replace(final, trash)
        os.replace(tmp, final)
        _remove(trash)
    _fsync_dir(final.parent)


# --------------------------------------------------------------------------------------- columns
#: One zarr write covers up to this many whole chunks (zarr compresses a write's chunks in parallel)
#: and at most this many bytes of buffered rows: few, large writes keep zarr's fixed cost per write
#: (metadata update, chunk indexing) small against the encoding, as in a whole-array write.
_BATCH_CHUNKS = 16
_BATCH_BYTES = 32 << 20
#: Whole chunks buffered from which a column hands them to its writer thread when that is idle.
_EARLY_CHUNKS = 4


def _writers() -> ThreadPoolExecutor:
    """The batch writer threads: a full batch is written while the caller goes on appending."""
    return _threads("writer", 4)


class _Column:
    """One zarr array appended along axis 0 in whole chunks.

    ``base`` is the chunk-aligned row where the in-memory buffer starts; the rows before it are on
    disk in whole chunks, or being written. Once the buffer holds ``batch_rows`` rows (whole
    chunks), or ``early_rows`` while the writer thread is idle, that thread hands its whole chunks
    to zarr in one write and starts the fsyncs of their chunk files and folders (whole chunks are
    never written again), while the caller appends into a second buffer; at most one batch per
    column is in flight. :meth:`flush` also writes the buffered partial chunk but keeps its rows
    in memory, so the next write rewrites that chunk whole.

    Durability: :meth:`flush` waits for the batches' fsyncs, then fsyncs every other chunk file and
    every chunk folder written since the last flush (concurrently, see :func:`_fsync_all`). Those
    paths are then listed in :attr:`synced` until written again, so the finish path's
    :func:`_fsync_tree` does not flush them a second time.
    """

    def __init__(self, array: Any, folder: Path, length: int | None = None) -> None:
        self.array = array
        self.folder = os.path.abspath(folder)
        self.rows = int(array.chunks[0])
        self.row_shape = tuple(int(d) for d in array.shape[1:])
        self.dtype = np.dtype(array.dtype)
        n = int(array.shape[0]) if length is None else int(length)
        self.base = (n // self.rows) * self.rows
        row_bytes = self.dtype.itemsize * max(1, math.prod(self.row_shape))
        self.batch_rows = self.rows * max(1, min(_BATCH_CHUNKS, _BATCH_BYTES // (self.rows * row_bytes)))
        #: whole chunks go to an idle writer thread from this many rows on, so writing overlaps appending
        self.early_rows = min(self.batch_rows, self.rows * _EARLY_CHUNKS)
        self._buf = np.empty((0, *self.row_shape), dtype=self.dtype)
        self._spare: np.ndarray | None = None  # the buffer of the last batch, reused once it is written
        self._nbuf = 0
        self._job: Future | None = None  # the batch in flight
        self._fsyncs: list[Future] = []  # fsyncs of chunk files that batches wrote, not yet waited for
        self._dirty_files: set[str] = set()  # chunk files written since the last sync, not yet fsynced
        self._dirty_dirs: set[str] = set()  # chunk folders changed since the last sync, not yet fsynced
        #: chunk files and folders fsynced by :meth:`flush` and not written since
        self.synced: set[str] = set()
        if n > self.base:
            self.append(np.asarray(array[self.base:n]))

    @classmethod
    def create(cls, root: Any, folder: Path, key: str, row_shape: tuple[int, ...], dtype: str, chunk_bytes: int,
               compression: str = L.DEFAULT_COMPRESSION, clevel: int | None = None) -> "_Column":
        """A new empty array ``key`` under the root group ``root`` of the store folder ``folder``."""
        parent, _, name = key.rpartition("/")
        group = root.require_group(parent) if parent else root
        rows = L.chunk_rows(row_shape, dtype, chunk_bytes)
        arr = group.create_array(
            name, shape=(0, *row_shape), dtype=dtype, chunks=(rows, *(max(1, d) for d in row_shape)),
            compressors=L.compressors(dtype, compression, clevel), fill_value=np.zeros((), dtype=dtype).item(),
            chunk_key_encoding=L.CHUNK_KEY_ENCODING, config=L.array_config(),
        )
        return cls(arr, Path(folder) / key, 0)

    @property
    def length(self) -> int:
        """Rows appended so far (on disk, in flight or buffered)."""
        return self.base + self._nbuf

    def append(self, rows: np.ndarray) -> None:
        """Copy ``rows`` into the buffer (the caller may reuse its arrays); every ``batch_rows`` rows
        go to a writer thread. A long block of whole chunks is written at once, without the copy."""
        rows = np.asarray(rows)
        n, end = len(rows), self._nbuf + len(rows)
        if end < len(self._buf):  # the common case: a short block that fits
            self._buf[self._nbuf:end] = rows
            self._nbuf = end
            if end >= self.early_rows and self._idle():
                self._send_batch()
            return
        if self._nbuf == 0 and n >= self.batch_rows:
            whole = (n // self.rows) * self.rows
            self.wait()
            self._job = _writers().submit(self._store_batch, np.ascontiguousarray(rows[:whole], dtype=self.dtype),
                                          self.base)
            self.wait()
            self.base += whole
            rows = rows[whole:]
        while len(rows):
            if self._nbuf == len(self._buf):
                self._grow(len(rows))
            k = min(len(rows), len(self._buf) - self._nbuf)
            self._buf[self._nbuf:self._nbuf + k] = rows[:k]
            self._nbuf += k
            rows = rows[k:]
            if self._nbuf == self.batch_rows or (self._nbuf >= self.early_rows and self._idle()):
                self._send_batch()

    def _idle(self) -> bool:
        """No batch in flight (or it is done): the writer thread could take whole chunks now."""
        return self._job is None or self._job.done()

    def _grow(self, want: int) -> None:
        cap = min(self.batch_rows, max(4 * len(self._buf), self._nbuf + want, 256))
        buf = np.empty((cap, *self.row_shape), dtype=self.dtype)
        buf[:self._nbuf] = self._buf[:self._nbuf]
        self._buf = buf

    def _send_batch(self) -> None:
        """Hand the buffer's whole chunks to a writer thread (after the previous batch is done) and go
        on in the other buffer, which takes the rows of the partial chunk."""
        whole = (self._nbuf // self.rows) * self.rows
        self.wait()
        spare = self._spare if self._spare is not None and len(self._spare) >= len(self._buf) else None
        spare = np.empty_like(self._buf) if spare is None else spare
        rest = self._nbuf - whole
        spare[:rest] = self._buf[whole:self._nbuf]
        self._job = _writers().submit(self._store_batch, self._buf[:whole], self.base)
        self._buf, self._spare = spare, self._buf
        self.base += whole
        self._nbuf = rest

    def wait(self) -> None:
        """Wait for the batch in flight (re-raising its error) and record what it wrote."""
        job, self._job = self._job, None
        if job is not None:
            written, files, fsyncs = job.result()
            self._record(written, files)
            self._fsyncs.extend(fsyncs)

    def _store_batch(self, data: np.ndarray, base: int) -> tuple[range, set[str], list[Future]]:
        """Write whole chunks at row ``base`` and start the fsyncs of their files and of the folders
        that hold only that chunk (they are final; the shared ``c`` folder waits for the flush);
        returns the chunk indices written, those paths and the fsyncs in flight."""
        written = self._store(data, base)
        files, dirs = set(), set()
        for i in written:
            file, folders = self._chunk_paths(i)
            files.add(file)
            dirs.update(folders[:-1])
        jobs = [_pool().submit(_fsync_file, f) for f in sorted(files)]
        jobs += [_pool().submit(_fsync_dir, d) for d in sorted(dirs)]
        return written, files | dirs, jobs

    def _store(self, data: np.ndarray, base: int) -> range:
        """Write ``data`` at row ``base`` (raising the array's length first); returns the indices of
        the chunks written. Rows of width 0 (no physics state) have no chunk files."""
        end = base + len(data)
        if self.array.shape[0] < end:
            self.array.resize((end, *self.row_shape))
        if data.size == 0:
            return range(0)
        self.array[base:end] = data
        return range(base // self.rows, (end - 1) // self.rows + 1)

    def _record(self, written: range, synced: set[str]) -> None:
        """Note the chunk files and folders of the chunks ``written`` as changed since the last sync;
        the paths in ``synced`` are fsynced already."""
        for index in written:
            file, dirs = self._chunk_paths(index)
            for path, dirty in ((file, self._dirty_files), *((d, self._dirty_dirs) for d in dirs)):
                if path in synced:
                    dirty.discard(path)
                else:
                    dirty.add(path)
                self.synced.discard(path)
        self.synced.update(synced)

    def _chunk_paths(self, index: int) -> tuple[str, list[str]]:
        """The file of chunk ``index`` and its folders up to the array's ``c`` folder."""
        file = os.path.join(self.folder, L.chunk_key(index, 1 + len(self.row_shape)))
        dirs, d = [], os.path.dirname(file)
        while d != self.folder:
            dirs.append(d)
            d = os.path.dirname(d)
        return file, dirs

    def flush(self, sync: bool = True) -> None:
        """Write everything buffered (the partial tail chunk too, kept in the buffer); with ``sync``
        also fsync the chunk files and folders written since the last sync."""
        self.end_flush(self.start_flush())
        if sync:
            _sync_columns([self])

    def start_flush(self) -> Future | None:
        """Wait for the batch in flight, then hand every buffered row to a writer thread; pass the
        result to :meth:`end_flush` (several columns flush in parallel so)."""
        self.wait()
        if not self._nbuf:
            return None
        return _writers().submit(self._store, self._buf[:self._nbuf], self.base)

    def end_flush(self, job: Future | None) -> None:
        """Wait for :meth:`start_flush`'s write; keep only the partial tail chunk's rows in the buffer."""
        if job is None:
            return
        self._record(job.result(), set())
        whole = (self._nbuf // self.rows) * self.rows
        if whole:
            rest = self._nbuf - whole
            self._buf[:rest] = self._buf[whole:self._nbuf]
            self.base += whole
            self._nbuf = rest

    def settle(self) -> None:
        """Wait for the batch in flight and the fsyncs the batches started: every path in
        :attr:`synced` is then on disk."""
        self.wait()
        fsyncs, self._fsyncs = self._fsyncs, []
        for f in fsyncs:
            f.result()

    def dirty_paths(self) -> tuple[set[str], set[str]]:
        """The chunk files not yet fsynced and the chunk folders changed since the last sync (after
        waiting for the fsyncs the batches started)."""
        self.settle()
        return set(self._dirty_files), set(self._dirty_dirs)

    def mark_synced(self, files: set[str], dirs: set[str]) -> None:
        """Record ``files`` and ``dirs`` (from :meth:`dirty_paths`) as fsynced."""
        self.synced.update(files | dirs)
        self._dirty_files.clear()
        self._dirty_dirs.clear()


def _sync_columns(columns: Iterable[_Column]) -> None:
    """fsync the chunk files and folders the columns wrote since their last sync, as one concurrent
    batch (call after their :meth:`_Column.flush` with ``sync=False``)."""
    paths = [(c, *c.dirty_paths()) for c in columns if c is not None]
    files = set().union(*(f for _, f, _ in paths)) if paths else set()
    dirs = set().union(*(d for _, _, d in paths)) if paths else set()
    if files or dirs:
        _fsync_all(sorted(files), sorted(dirs))
    for c, f, d in paths:
        c.mark_synced(f, d)


def _flush_columns(columns: Iterable[_Column | None], sync: bool = True) -> None:
    """Write every buffered row of the columns and, with ``sync``, make it durable (one fsync batch
    for all)."""
    columns = [c for c in columns if c is not None]
    jobs = [c.start_flush() for c in columns]
    for c, job in zip(columns, jobs):
        c.end_flush(job)
    if sync:
        _sync_columns(columns)


def _open_column(root: Any, folder: Path, key: str, length: int) -> _Column:
    """Reopen the array ``key`` of the store at ``folder`` for appending, cut to ``length`` committed rows."""
    arr = root[key].with_config(L.array_config())
    if arr.shape[0] > length:
        arr.resize((length, *arr.shape[1:]))
    return _Column(arr, Path(folder) / key, length)


def _as(x: Any, dtype: str, name: str, shape: tuple[int | None, ...]) -> np.ndarray:
    """``x`` as a C-contiguous array of ``dtype`` with ``shape`` (None = any); DatasetError otherwise."""
    try:
        a = np.ascontiguousarray(np.asarray(x), dtype=dtype)
    except (TypeError, ValueError) as exc:
        raise DatasetError(f"append_episode: {name}: cannot convert to {dtype} ({exc})") from None
    if a.ndim != len(shape) or any(s is not None and s != d for s, d in zip(shape, a.shape)):
        want = "(" + ", ".join("?" if s is None else str(s) for s in shape) + ")"
        raise DatasetError(f"append_episode: {name}: shape {a.shape}, expected {want}")
    return a


def _finish_store(tmp: Path, final: Path, *, overwrite: bool, what: str,
                  columns: Iterable[_Column | None] = ()) -> None:
    """Check the structure of a written partial store, consolidate, fsync and rename it into place.

    Every file and folder of the store is fsynced before the rename, so the published name never
    points at data still only in the page cache; the chunk files and folders the ``columns``' last
    flush or their batches already fsynced (and that nothing wrote since) are not flushed to the
    device twice. A store that fails the check is made durable as it is and kept for a resume.
    """
    from .validate import validate

    columns = [c for c in columns if c is not None]
    for col in columns:
        col.settle()
    problems = validate(tmp, deep=False, finished=False)
    if problems:
        _sync_columns(columns)
        raise DatasetError(f"{problems[0]} (the partial {what} is kept at {tmp})")
    L.consolidate(tmp)
    _fsync_tree(tmp, skip=set().union(*(c.synced for c in columns)))
    publish(tmp, final, overwrite=overwrite)


def _discard_store(tmp: Path, columns: Iterable[_Column | None]) -> None:
    """Wait for the columns' batches in flight, then delete the partial store."""
    for col in columns:
        if col is None:
            continue
        try:
            col.wait()
        except Exception:  # noqa: BLE001 - the store is being thrown away: its write errors do not matter
            pass
    shutil.rmtree(tmp, ignore_errors=True)


def _step_spec(obs_dim: int, action_dim: int, state_dim: int) -> dict[str, tuple[tuple[int, ...], str]]:
    """key -> (row shape, dtype) of every array of a store without frames."""
    return {
        "data/obs": ((obs_dim,), "float32"),
        "data/action": ((action_dim,), "float32"),
        "data/reward": ((), "float32"),
        "data/terminated": ((), "bool"),
        "data/physics_state": ((state_dim,), "float64"),
        "meta/episode_ends": ((), "int64"),
        "meta/seed": ((), "int64"),
        "meta/length": ((), "int64"),
        "meta/return": ((), "float64"),
        "meta/success": ((), "bool"),
        "meta/final_obs": ((obs_dim,), "float32"),
        "meta/final_physics_state": ((state_dim,), "float64"),
    }


def _check_finite(arrays: Mapping[str, np.ndarray]) -> None:
    """Refuse NaN/inf in any of ``arrays`` and actions outside [-1, 1] (DatasetError).

    Cheap on the valid path: one reduction per array, whose result is finite whenever every value is
    (NaN and inf propagate into a sum; a finite sum that overflows only costs the exact check);
    the action's min and max, which a NaN fails too, bound its range.
    """
    with np.errstate(over="ignore", invalid="ignore"):
        sums_finite = [bool(np.isfinite(a.sum())) for a in arrays.values()]
    for (name, a), fast in zip(arrays.items(), sums_finite):
        if not fast and not np.isfinite(a).all():
            bad = np.argwhere(~np.isfinite(a))[0]
            raise DatasetError(f"append_episode: {name}: NaN/inf at index {tuple(int(i) for i in bad)}; "
                               "refusing to store a non-finite episode")
    action, limit = arrays["action"], 1.0 + L.ACTION_TOL
    if action.size and not (action.min() >= -limit and action.max() <= limit):
        raise DatasetError(f"append_episode: action: values outside [-1, 1] (max |a| = "
                           f"{float(np.abs(action).max()):.4g}); store the executed, clipped action")


def _episode_frames(rgb: Mapping[str, Any] | None, final_rgb: Mapping[str, Any] | None,
                    t: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """camera -> (T frames, the final frame with a leading axis of 1), checked against each other."""
    rgb, final_rgb = dict(rgb or {}), dict(final_rgb or {})
    if set(rgb) != set(final_rgb):
        raise DatasetError("append_episode: final_rgb: give the frame of final_obs for every camera in rgb "
                           f"(rgb has {sorted(rgb)}, final_rgb has {sorted(final_rgb)})")
    frames: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for cam in sorted(rgb):
        f = _as(rgb[cam], L.RGB_DTYPE, f"rgb[{cam}]", (t, None, None, 3))
        frames[cam] = (f, _as(final_rgb[cam], L.RGB_DTYPE, f"final_rgb[{cam}]", f.shape[1:])[None])
    return frames


class EpisodeWriter:
    """Append whole episodes to a zarr episode store (docs/design.md §6); see the module docstring.

    Example::

        with EpisodeWriter("demos.zarr", attrs) as w:        # created as .demos.zarr.partial
            w.append_episode(obs, action, reward, terminated, physics_state,
                             final_obs, final_physics_state, seed=3, success=True)
        # leaving the block closes: consolidates and renames to demos.zarr

    ``attrs`` needs ``env.task``, ``env.obs_dim`` and ``env.action_dim`` (plain Python types only);
    ``sim``, ``source`` and ``scores`` sections are added empty when missing, and
    ``cdred_dataset_version`` is set. With ``check=True`` (default) an episode with NaN/inf values or
    actions outside [-1, 1] is refused with a DatasetError before anything is written. A second writer
    of the same path fails with one line at once, or with ``wait`` waits for the first to finish (and
    then finds its store: replaced only with ``overwrite``).
    """

    def __init__(self, path: str | os.PathLike, attrs: Mapping[str, Any], *, overwrite: bool = False,
                 chunk_bytes: int = L.DEFAULT_CHUNK_BYTES, compression: str = L.DEFAULT_COMPRESSION,
                 clevel: int | None = None, check: bool = True, wait: bool = False) -> None:
        self._setup(Path(path), attrs, resume=False, overwrite=overwrite, chunk_bytes=chunk_bytes,
                    compression=compression, clevel=clevel, check=check, wait=wait)

    @classmethod
    def resume(cls, path: str | os.PathLike, attrs: Mapping[str, Any] | None = None, *,
               chunk_bytes: int = L.DEFAULT_CHUNK_BYTES, compression: str = L.DEFAULT_COMPRESSION,
               clevel: int | None = None, check: bool = True) -> "EpisodeWriter":
        """Reopen the partial store of an interrupted run (or a finished store, to append more).

        Starts a new store when neither exists (``attrs`` then required). When ``attrs`` is given for
        an existing store, its ``env`` task and dims must match. ``num_episodes`` of the returned
        writer is the number of episodes already stored: skip that many.
        """
        self = cls.__new__(cls)
        self._setup(Path(path), attrs, resume=True, overwrite=False, chunk_bytes=chunk_bytes,
                    compression=compression, clevel=clevel, check=check)
        return self

    # ------------------------------------------------------------------------------- setup
    def _setup(self, path: Path, attrs: Mapping[str, Any] | None, *, resume: bool, overwrite: bool,
               chunk_bytes: int, compression: str, clevel: int | None, check: bool, wait: bool = False) -> None:
        self.path = path
        self.tmp = L.partial_path(path)
        if compression not in L.COMPRESSIONS:
            raise DatasetError(f"{path}: compression {compression!r}: use one of {', '.join(L.COMPRESSIONS)}")
        self.chunk_bytes, self.check = int(chunk_bytes), bool(check)
        self.compression, self.clevel = compression, clevel
        self.overwrite = overwrite
        self._columns: dict[str, _Column] = {}
        self.cameras: tuple[str, ...] | None = None
        self.num_episodes = 0
        self.num_steps = 0
        self._closed = False
        self._lock = _Lock(path, wait=wait)
        try:
            if resume and (self.tmp.is_dir() or path.is_dir()):
                if not self.tmp.is_dir():
                    os.replace(path, self.tmp)  # appending to a finished store: it is partial again
                self._reopen(attrs)
            else:
                self._start(attrs, overwrite)
        except BaseException:
            self._lock.release()
            raise

    def _start(self, attrs: Mapping[str, Any] | None, overwrite: bool) -> None:
        """Create a new partial store with ``attrs`` (a stale partial store is deleted)."""
        if attrs is None:
            raise DatasetError(f"{self.path}: no partial store to resume and no attrs to start a new one")
        if self.path.exists() and not overwrite:
            raise DatasetError(f"{self.path}: already exists; pass overwrite=True (--force) to replace it, "
                               "or EpisodeWriter.resume() to append")
        try:
            self.attrs = L.normalise_attrs(attrs)
        except ValueError as exc:
            raise DatasetError(f"{self.path}: bad attrs: {exc}") from None
        if self.tmp.exists():
            shutil.rmtree(self.tmp)  # a stale partial store of a run we are not resuming
        self.group = L.open_group(self.tmp, mode="w")
        self.group.attrs.update(self.attrs)
        self.group.require_group("data")
        self.group.require_group("meta")

    def _reopen(self, attrs: Mapping[str, Any] | None) -> None:
        """Reopen the partial store: check its version and task, cut it to its committed episodes."""
        g = L.open_group(self.tmp, mode="r+")
        self.group = g
        self.attrs = dict(g.attrs.asdict())
        self._check_resumable(attrs)
        keys = [f"data/{k}" for k in L.DATA_KEYS] + [f"meta/{k}" for k in L.META_KEYS]
        present = [k for k in keys if k in g]
        if not present:
            return  # created but no episode flushed yet
        if sorted(present) != sorted(keys):
            missing = sorted(set(keys) - set(present))
            raise DatasetError(f"{self.tmp}: {missing[0]}: missing in the partial store; delete it and recollect")
        cams = sorted(g["data/rgb"].array_keys()) if "data/rgb" in g else []
        e, n = self._committed(keys, cams)
        try:
            for k in keys:
                self._columns[k] = _open_column(g, self.tmp, k, e if k.startswith("meta/") else n)
            for c in cams:
                self._columns[f"{L.RGB_GROUP}/{c}"] = _open_column(g, self.tmp, f"{L.RGB_GROUP}/{c}", n)
                self._columns[f"{L.FINAL_RGB_GROUP}/{c}"] = _open_column(g, self.tmp, f"{L.FINAL_RGB_GROUP}/{c}", e)
        except (ValueError, KeyError, OSError, RuntimeError) as exc:
            raise DatasetError(f"{self.tmp}: the partial store is damaged ({exc}); delete it and recollect") from None
        self.cameras = tuple(cams)
        self.num_episodes, self.num_steps = e, n

    def _check_resumable(self, attrs: Mapping[str, Any] | None) -> None:
        """The stored layout version is this writer's, and ``attrs``' task and dims match the store's."""
        version = self.attrs.get("cdred_dataset_version")
        if version != L.LAYOUT_VERSION:
            raise DatasetError(f"{self.tmp}: attrs.cdred_dataset_version={version!r}; this writer appends "
                               f"only to layout version {L.LAYOUT_VERSION}")
        if attrs is None:
            return
        want = L.plain(dict(attrs)).get("env", {})
        have = self.attrs.get("env", {})
        for k in ("task", "obs_dim", "action_dim", "physics_state_dim"):
            if k in want and k in have and want[k] != have[k]:
                raise DatasetError(f"{self.tmp}: attrs.env.{k}: stored {have[k]!r}, resuming with {want[k]!r}; "
                                   "this partial store belongs to another task: delete it or use another path")

    def _committed(self, keys: list[str], cams: list[str]) -> tuple[int, int]:
        """(episodes, steps) committed: every per-episode and every per-step array covers them."""
        g = self.group
        ends = np.asarray(g["meta/episode_ends"][:], dtype=np.int64)
        n_meta = min([int(g[k].shape[0]) for k in keys if k.startswith("meta/")]
                     + [int(g[f"{L.FINAL_RGB_GROUP}/{c}"].shape[0]) for c in cams if f"{L.FINAL_RGB_GROUP}/{c}" in g])
        n_data = min([int(g[k].shape[0]) for k in keys if k.startswith("data/")]
                     + [int(g[f"{L.RGB_GROUP}/{c}"].shape[0]) for c in cams])
        e = 0
        for i in range(min(len(ends), n_meta)):
            # a kill between growing episode_ends and writing it leaves a fill value (0) there: episodes
            # have at least one step, so only a strictly increasing prefix is committed
            if ends[i] > n_data or ends[i] <= (ends[i - 1] if i else 0):
                break
            e = i + 1
        return e, int(ends[e - 1]) if e else 0

    # ---------------------------------------------------------------------------- appending
    def _create_columns(self, obs_dim: int, action_dim: int, state_dim: int,
                        rgb_shapes: Mapping[str, tuple[int, ...]]) -> None:
        spec = _step_spec(obs_dim, action_dim, state_dim)
        for cam, shape in rgb_shapes.items():
            spec[f"{L.RGB_GROUP}/{cam}"] = (tuple(shape), L.RGB_DTYPE)
            spec[f"{L.FINAL_RGB_GROUP}/{cam}"] = (tuple(shape), L.RGB_DTYPE)
        for key, (row, dt) in spec.items():
            self._columns[key] = _Column.create(self.group, self.tmp, key, row, dt, self.chunk_bytes,
                                                self.compression, self.clevel)
        self.cameras = tuple(sorted(rgb_shapes))
        env = dict(self.attrs["env"])
        env.setdefault("physics_state_dim", int(state_dim))
        self.attrs["env"] = env
        self.group.attrs.update({"env": env})

    def _episode_arrays(self, obs: Any, action: Any, reward: Any, terminated: Any, physics_state: Any,
                        final_obs: Any, final_physics_state: Any) -> dict[str, np.ndarray]:
        """The per-step and final arrays of one episode, converted to the store's dtypes and checked
        against each other and the store's dims."""
        env = self.attrs["env"]
        obs = _as(obs, "float32", "obs", (None, env["obs_dim"]))
        t = len(obs)
        if t < 1:
            raise DatasetError("append_episode: obs: an episode needs at least one step")
        action = _as(action, "float32", "action", (t, env["action_dim"]))
        reward = _as(np.reshape(np.asarray(reward), (-1,)), "float32", "reward", (t,))
        terminated = _as(np.reshape(np.asarray(terminated), (-1,)), "bool", "terminated", (t,))
        if physics_state is None:
            physics_state = np.zeros((t, 0))
            final_physics_state = np.zeros((0,)) if final_physics_state is None else final_physics_state
        physics_state = _as(physics_state, "float64", "physics_state", (t, env.get("physics_state_dim")))
        final_obs = _as(final_obs, "float32", "final_obs", (env["obs_dim"],))
        final_physics_state = _as(final_physics_state, "float64", "final_physics_state", (physics_state.shape[1],))
        return {"obs": obs, "action": action, "reward": reward, "terminated": terminated,
                "physics_state": physics_state, "final_obs": final_obs, "final_physics_state": final_physics_state}

    def _ensure_columns(self, s_dim: int, frames: Mapping[str, tuple[np.ndarray, np.ndarray]]) -> None:
        """Create the arrays on the first episode; check later episodes' widths and frame shapes against them."""
        if not self._columns:
            env = self.attrs["env"]
            self._create_columns(env["obs_dim"], env["action_dim"], s_dim,
                                 {cam: f.shape[1:] for cam, (f, _) in frames.items()})
        elif self._columns["data/physics_state"].row_shape != (s_dim,):
            raise DatasetError(f"append_episode: physics_state: width {s_dim}, the store has "
                               f"{self._columns['data/physics_state'].row_shape[0]}")
        for cam, (f, _) in frames.items():
            have = self._columns[f"{L.RGB_GROUP}/{cam}"].row_shape
            if f.shape[1:] != have:
                raise DatasetError(f"append_episode: rgb[{cam}]: frame shape {f.shape[1:]}, the store has {have}")

    def append_episode(self, obs: Any, action: Any, reward: Any, terminated: Any, physics_state: Any,
                       final_obs: Any, final_physics_state: Any, seed: int, success: bool,
                       rgb: Mapping[str, Any] | None = None, final_rgb: Mapping[str, Any] | None = None) -> int:
        """Append one episode of T steps; returns its index.

        obs (T, D) float32, action (T, A) float32 in [-1, 1], reward (T,) float32, terminated (T,)
        bool, physics_state (T, S) float64 (None for an import without simulator states: S = 0),
        final_obs (D,), final_physics_state (S,), rgb {camera: (T, H, W, 3) uint8} with final_rgb
        {camera: (H, W, 3) uint8} (the frame of final_obs, needed to stack pixel observations).
        """
        self._ensure_open()
        a = self._episode_arrays(obs, action, reward, terminated, physics_state, final_obs, final_physics_state)
        t = len(a["obs"])
        frames = _episode_frames(rgb, final_rgb, t)
        if self.cameras is not None and set(frames) != set(self.cameras):
            raise DatasetError(f"append_episode: rgb: cameras {sorted(frames)} differ from the store's "
                               f"{list(self.cameras)}")
        if self.check:
            _check_finite({k: v for k, v in a.items() if k != "terminated"})
        self._ensure_columns(a["physics_state"].shape[1], frames)
        c = self._columns
        for k in L.DATA_KEYS:
            c[f"data/{k}"].append(a[k])
        for cam, (f, final) in frames.items():
            c[f"{L.RGB_GROUP}/{cam}"].append(f)
            c[f"{L.FINAL_RGB_GROUP}/{cam}"].append(final)
        c["meta/seed"].append(np.array([int(seed)], dtype=np.int64))
        c["meta/length"].append(np.array([t], dtype=np.int64))
        c["meta/return"].append(np.array([a["reward"].astype(np.float64).sum()], dtype=np.float64))
        c["meta/success"].append(np.array([bool(success)]))
        c["meta/final_obs"].append(a["final_obs"][None])
        c["meta/final_physics_state"].append(a["final_physics_state"][None])
        self.num_steps += t
        c["meta/episode_ends"].append(np.array([self.num_steps], dtype=np.int64))
        self.num_episodes += 1
        return self.num_episodes - 1

    def append_block(self, data: Mapping[str, np.ndarray], meta: Mapping[str, np.ndarray]) -> None:
        """Append many episodes at once (merge, import): arrays keyed like the store, already checked.

        ``meta`` holds per-episode arrays including ``meta/length``; ``meta/episode_ends`` is derived.
        """
        self._ensure_open()
        lengths = np.asarray(meta["meta/length"], dtype=np.int64)
        if not self._columns:
            rgb_shapes = {k.split("/")[-1]: v.shape[1:] for k, v in data.items() if k.startswith(L.RGB_GROUP + "/")}
            self._create_columns(self.attrs["env"]["obs_dim"], self.attrs["env"]["action_dim"],
                                 data["data/physics_state"].shape[1], rgb_shapes)
        expected = set(self._columns)
        given = set(data) | set(meta) | {"meta/episode_ends"}
        if given != expected:
            raise DatasetError(f"{self.path}: arrays {sorted(given ^ expected)} do not match the store's layout")
        for k, v in {**data, **meta}.items():
            self._columns[k].append(np.ascontiguousarray(v, dtype=self._columns[k].dtype))
        ends = self.num_steps + np.cumsum(lengths)
        self._columns["meta/episode_ends"].append(ends.astype(np.int64))
        self.num_steps = int(ends[-1]) if len(ends) else self.num_steps
        self.num_episodes += len(lengths)

    def set_array_attrs(self, key: str, attrs: Mapping[str, Any]) -> None:
        """Add ``attrs`` to the array ``key`` (after its first episode is appended); unknown keys are ignored."""
        if key in self._columns:
            col = self._columns[key]
            col.wait()  # the batch in flight rewrites the array's metadata when it resizes it
            col.array.attrs.update(L.plain(dict(attrs)))

    # ------------------------------------------------------------------------------ finishing
    def flush(self) -> None:
        """Write every buffered row (partial tail chunks included): everything appended so far is
        durable and survives a kill; ``meta/episode_ends`` is written last and commits the episodes."""
        self._ensure_open()
        self._flush(sync_commit=True)

    def _flush(self, sync_commit: bool) -> None:
        """Write and fsync every step and per-episode array, then write ``meta/episode_ends`` (and
        fsync it with ``sync_commit``; close fsyncs it with the rest of the store instead)."""
        _flush_columns(col for k, col in self._columns.items() if k != "meta/episode_ends")
        if "meta/episode_ends" in self._columns:  # only once every row it commits is on disk
            self._columns["meta/episode_ends"].flush(sync=sync_commit)

    def close(self) -> Path:
        """Flush, check the structure, consolidate and rename the store to its final path; returns it."""
        if self._closed:
            return self.path
        self._ensure_open()
        try:
            if not self._columns:
                env = self.attrs["env"]
                self._create_columns(env["obs_dim"], env["action_dim"], int(env.get("physics_state_dim", 0)), {})
            self._flush(sync_commit=False)
            _finish_store(self.tmp, self.path, overwrite=True, what="store", columns=self._columns.values())
            self._closed = True
        finally:
            self._lock.release()
        return self.path

    def abort(self, discard: bool = False) -> None:
        """Stop without finishing: flush what is buffered (kept for :meth:`resume`) or ``discard`` it."""
        if self._closed:
            return
        try:
            if discard:
                _discard_store(self.tmp, self._columns.values())
            else:
                self.flush()
        finally:
            self._closed = True
            self._lock.release()

    def _ensure_open(self) -> None:
        if self._closed:
            raise DatasetError(f"{self.path}: the writer is closed")

    def __enter__(self) -> "EpisodeWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


# ------------------------------------------------------------------------------------ copying
def _copy_tree(src: Path, dst: Path, exclude: Iterable[str]) -> None:
    """Copy the store ``src`` to ``dst`` without the keys in ``exclude`` and without partial files."""
    excl = {str(e).strip("/") for e in exclude}

    def ignore(folder: str, names: list[str]) -> list[str]:
        rel = Path(folder).relative_to(src).as_posix()
        rel = "" if rel == "." else rel + "/"
        return [n for n in names if (rel + n) in excl or n.endswith(".partial")]

    shutil.copytree(src, dst, ignore=ignore)


def copy_dataset(src: str | os.PathLike, dst: str | os.PathLike, *, exclude: Iterable[str] = (),
                 overwrite: bool = False) -> Path:
    """Copy a finished store to ``dst`` (chunk files copied as is), leaving out the keys in ``exclude``
    (e.g. ``"data/rgb/corner"``); written under a temporary name, consolidated, renamed. Returns dst."""
    from .reader import open_dataset

    src, dst = Path(src), Path(dst)
    open_dataset(src)  # refuses a damaged or foreign source
    if dst.exists() and not overwrite:
        raise DatasetError(f"{dst}: already exists; pass overwrite=True (--force) to replace it")
    lock = _Lock(dst)
    try:
        tmp = L.partial_path(dst)
        shutil.rmtree(tmp, ignore_errors=True)
        _copy_tree(src, tmp, exclude)
        L.consolidate(tmp)
        _fsync_tree(tmp)
        publish(tmp, dst, overwrite)
    finally:
        lock.release()
    return dst


def write_array(store: str | os.PathLike, key: str, data: np.ndarray | Iterable[np.ndarray], *,
                dtype: str | None = None, attrs: Mapping[str, Any] | None = None, overwrite: bool = False,
                chunk_bytes: int = L.DEFAULT_CHUNK_BYTES, compression: str = L.DEFAULT_COMPRESSION,
                clevel: int | None = None) -> None:
    """Add one array (chunked along time, Blosc zstd) to an existing store, from an array or an
    iterable of row blocks, then reconsolidate; the array's files and the root metadata are fsynced.
    Not atomic for the store: use it on a copy (see :func:`copy_dataset`) and validate afterwards."""
    store = Path(store)
    if not (store / "zarr.json").is_file():
        raise DatasetError(f"{store}: not a zarr store")
    lock = _Lock(store)
    try:
        g = L.open_group(store, mode="r+")
        if key in g:
            if not overwrite:
                raise DatasetError(f"{store}: {key}: already exists; pass overwrite=True")
            del g[key]
        blocks = [data] if isinstance(data, np.ndarray) else data
        col: _Column | None = None
        for block in blocks:
            block = np.asarray(block, dtype=dtype)
            if col is None:
                col = _Column.create(g, store, key, tuple(block.shape[1:]), str(block.dtype), chunk_bytes,
                                     compression, clevel)
            col.append(block)
        if col is None:
            raise DatasetError(f"{store}: {key}: no data given")
        col.flush(sync=False)  # made durable below, with the metadata, in one fsync batch
        if attrs:
            col.array.attrs.update(L.plain(dict(attrs)))
        L.consolidate(store)
        col.settle()
        _fsync_tree(store / key, skip=col.synced, files=[str(store / "zarr.json")], dirs=[str(store)])
    finally:
        lock.release()


# ------------------------------------------------------------------------------------ RgbWriter
#: attr of a partial frame array: the episodes whose frames a flush made durable (gone once published)
_RGB_FLUSHED = "cdred_flushed_episodes"


class RgbWriter:
    """Write a copy of a state dataset with rendered frames of one camera added (render-visual).

    ``RgbWriter(src, dst, camera)`` copies ``src`` (without ``data/rgb/<camera>``) to ``dst``'s
    temporary name, or reopens that copy after a kill; :attr:`num_episodes` then says how many
    episodes already have their frames. Append each episode's T+1 frames in order (frame t shows
    obs t, the last one shows final_obs); :meth:`close` checks that every step has a frame, records
    ``attrs`` (image size, render profile, ...) on the array, consolidates and renames to ``dst``.
    """

    def __init__(self, src: str | os.PathLike, dst: str | os.PathLike, camera: str, *,
                 attrs: Mapping[str, Any] | None = None, root_attrs: Mapping[str, Any] | None = None,
                 overwrite: bool = False, chunk_bytes: int = L.DEFAULT_CHUNK_BYTES,
                 compression: str = L.DEFAULT_COMPRESSION, clevel: int | None = None) -> None:
        self.src, self.path, self.camera = Path(src), Path(dst), str(camera)
        if not self.camera or "/" in self.camera:
            raise DatasetError(f"RgbWriter: camera name {camera!r} must be non-empty and contain no '/'")
        self.tmp = L.partial_path(self.path)
        self.chunk_bytes, self.compression, self.clevel = int(chunk_bytes), compression, clevel
        self.array_attrs = L.plain(dict(attrs or {}))
        self.root_attrs = L.plain(dict(root_attrs or {}))
        self.overwrite = overwrite
        self._closed = False
        if self.path.exists() and not overwrite:
            raise DatasetError(f"{self.path}: already exists; pass overwrite=True (--force) to replace it")
        self._lock = _Lock(self.path)
        try:
            self._open_copy()
        except BaseException:
            self._lock.release()
            raise

    def _open_copy(self) -> None:
        """Copy the source to the temporary name, or reopen the copy of a killed run and count the
        episodes whose frames are already stored."""
        from .reader import open_dataset

        src_ds = open_dataset(self.src)
        self.lengths = src_ds.lengths.copy()
        self.ends = src_ds.episode_ends.copy()
        key, fkey = f"{L.RGB_GROUP}/{self.camera}", f"{L.FINAL_RGB_GROUP}/{self.camera}"
        if self.tmp.is_dir() and (self.tmp / "zarr.json").is_file():
            g = L.open_group(self.tmp, mode="r+")
            if g.attrs.get("cdred_dataset_version") != L.LAYOUT_VERSION or "meta/episode_ends" not in g \
                    or not np.array_equal(g["meta/episode_ends"][:], self.ends):
                shutil.rmtree(self.tmp)  # not a copy of this source: start over
        if not self.tmp.is_dir():
            _copy_tree(self.src, self.tmp, exclude=[key, fkey])
        self.group = L.open_group(self.tmp, mode="r+")
        self.num_episodes = 0
        self._data: _Column | None = None
        self._final: _Column | None = None
        if (key in self.group) != (fkey in self.group):  # killed between creating the two arrays
            for k in (key, fkey):
                if k in self.group:
                    del self.group[k]
        if key in self.group and fkey in self.group:
            n_rgb, n_fin = self.group[key].shape[0], self.group[fkey].shape[0]
            # the arrays grow before their rows are written: only flushed episodes count (see flush)
            done = int(self.group[key].attrs.get(_RGB_FLUSHED, 0))
            e = 0
            while e < min(len(self.ends), done) and self.ends[e] <= n_rgb and e < n_fin:
                e += 1
            self._data = _open_column(self.group, self.tmp, key, int(self.ends[e - 1]) if e else 0)
            self._final = _open_column(self.group, self.tmp, fkey, e)
            self.num_episodes = e

    @property
    def num_frames(self) -> int:
        return int(self.ends[self.num_episodes - 1]) if self.num_episodes else 0

    def append_episode(self, frames: Any, final_frame: Any | None = None) -> int:
        """Append the frames of the next episode: (T+1, H, W, 3) uint8, or (T, H, W, 3) plus final_frame."""
        if self._closed:
            raise DatasetError(f"{self.path}: the writer is closed")
        i = self.num_episodes
        if i >= len(self.lengths):
            raise DatasetError(f"{self.path}: all {len(self.lengths)} episodes already have frames")
        t = int(self.lengths[i])
        frames = np.asarray(frames)
        if final_frame is not None:
            frames = np.concatenate([frames, np.asarray(final_frame)[None]])
        frames = _as(frames, L.RGB_DTYPE, f"rgb[{self.camera}] episode {i}", (t + 1, None, None, 3))
        if self._data is None:
            shape = frames.shape[1:]
            kw = {"compression": self.compression, "clevel": self.clevel}
            self._data = _Column.create(self.group, self.tmp, f"{L.RGB_GROUP}/{self.camera}", shape, L.RGB_DTYPE,
                                        self.chunk_bytes, **kw)
            self._final = _Column.create(self.group, self.tmp, f"{L.FINAL_RGB_GROUP}/{self.camera}", shape,
                                         L.RGB_DTYPE, self.chunk_bytes, **kw)
        elif frames.shape[1:] != self._data.row_shape:
            raise DatasetError(f"{self.path}: rgb[{self.camera}]: frame shape {frames.shape[1:]}, "
                               f"earlier episodes have {self._data.row_shape}")
        self._data.append(frames[:t])
        self._final.append(frames[t:])
        self.num_episodes += 1
        return i

    def flush(self) -> None:
        """Make the frames appended so far durable, then record how many episodes that covers in the
        frame array's attrs (a killed run resumes after them; an array's length alone is not proof,
        since it grows before its rows are written)."""
        if self._data is not None:
            _flush_columns((self._data, self._final))
            self._data.array.attrs[_RGB_FLUSHED] = self.num_episodes
            _fsync_file(os.path.join(self._data.folder, "zarr.json"))

    def close(self) -> Path:
        """Check every episode has frames, record attrs, consolidate and rename to ``dst``."""
        if self._closed:
            return self.path
        try:
            if self.num_episodes != len(self.lengths):
                raise DatasetError(f"{self.path}: rgb[{self.camera}]: frames for {self.num_episodes} of "
                                   f"{len(self.lengths)} episodes; append the rest before close() "
                                   f"(the partial copy is kept at {self.tmp})")
            if self._data is None:  # a dataset with no episodes
                raise DatasetError(f"{self.src}: has no episodes to render")
            self.flush()
            del self._data.array.attrs[_RGB_FLUSHED]
            h, w = self._data.row_shape[:2]
            self._data.array.attrs.update({"camera": self.camera, "height": h, "width": w, **self.array_attrs})
            if self.root_attrs:
                self.group.attrs.update(L.normalise_attrs(_merge_sections(self.group.attrs.asdict(), self.root_attrs)))
            _finish_store(self.tmp, self.path, overwrite=self.overwrite, what="copy",
                          columns=(self._data, self._final))
            self._closed = True
        finally:
            self._lock.release()
        return self.path

    def abort(self, discard: bool = False) -> None:
        """Stop without finishing: keep the flushed frames for a rerun, or ``discard`` the copy."""
        if self._closed:
            return
        try:
            if discard:
                _discard_store(self.tmp, (self._data, self._final))
            else:
                self.flush()
        finally:
            self._closed = True
            self._lock.release()

    def __enter__(self) -> "RgbWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def _merge_sections(attrs: Mapping[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    """``attrs`` updated with ``extra``, where a dict section in both is merged key by key."""
    merged = dict(attrs)
    for k, v in extra.items():
        merged[k] = {**merged[k], **v} if isinstance(v, dict) and isinstance(merged.get(k), dict) else v
    return merged
