"""Writing episode stores: :class:`EpisodeWriter` (collection), :class:`RgbWriter` (render-visual),
:func:`copy_dataset` and :func:`write_array`.

Design (ARCHITECTURE §6):

* Every array is chunked along time only (about 2 MB per chunk, Blosc zstd). Appends are buffered in
  memory per array and written in whole chunks, so appending N episodes costs O(N): a resize only
  rewrites a small ``zarr.json`` and no chunk is ever read back or written twice, except the one
  partial tail chunk per array that :meth:`EpisodeWriter.flush` writes (and a later flush rewrites).
* A store is written under a temporary name (``.<name>.partial`` next to the final path) and renamed
  to its final name by :meth:`EpisodeWriter.close` after it is consolidated and structurally valid;
  a directory with the final name is therefore always complete.
* One writer per store: an exclusive ``flock`` on ``.<name>.lock``; a second writer gets a
  :class:`~cdred_pipeline.errors.DatasetError` at once.
* Resume: :meth:`EpisodeWriter.resume` reopens the partial store of a killed run; ``num_episodes``
  says how many episodes are durably stored (everything up to the last :meth:`flush`), and a stage
  skips those. Episodes are committed by ``meta/episode_ends``, written last in every flush; rows
  beyond the last committed episode are discarded on resume.
* Durability: writer threads compress and write chunk files (tmp file + rename) and start their
  writeback (``sync_file_range``) without waiting for it. :meth:`EpisodeWriter.flush` then fsyncs
  every chunk file and chunk folder written since the last flush (concurrently, one batch for all
  step arrays) before it writes ``meta/episode_ends``, and fsyncs that too; ``close`` fsyncs every
  file and folder of the store (those the last flush synced excepted) before the atomic rename that
  publishes it, and then the parent folder. So every byte of a published store, and of every
  committed episode of a partial one, was fsynced; each chunk write is fsynced once.
"""

from __future__ import annotations

import fcntl
import math
import os
import shutil
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from cdred_pipeline.errors import DatasetError

from . import layout as L

__all__ = ["EpisodeWriter", "RgbWriter", "copy_dataset", "write_array"]


# --------------------------------------------------------------------------------------- locking
class _Lock:
    """An exclusive, non-blocking ``flock`` on the lock file of a store path."""

    def __init__(self, path: Path) -> None:
        self.file = L.lock_path(path)
        self.file.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(self.file, "a+")
        try:
            fcntl.flock(self._fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._fh.close()
            self._fh = None
            raise DatasetError(f"{path}: another process is writing this dataset (lock {self.file.name}); "
                               "wait for it to finish") from None

    def release(self) -> None:
        if self._fh is not None:
            fcntl.flock(self._fh, fcntl.LOCK_UN)
            self._fh.close()
            self._fh = None


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


def _load_sync_file_range() -> Any:
    try:
        import ctypes

        fn = ctypes.CDLL(None, use_errno=True).sync_file_range
        fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
        fn.restype = ctypes.c_int
        return fn
    except (OSError, AttributeError):  # not Linux
        return None


_SYNC_FILE_RANGE = _load_sync_file_range()
_SYNC_FILE_RANGE_WRITE = 2


def _start_writeback(fd: int) -> None:
    """Ask the kernel to start writing ``fd``'s dirty pages now, without waiting (Linux
    ``sync_file_range(SYNC_FILE_RANGE_WRITE)``; a no-op elsewhere or where it fails).

    Only a head start, never a durability guarantee (that is the fsync in :meth:`_Column.flush`
    and :func:`_fsync_tree`): the disk writes a chunk while the threads compress the next ones, so
    the fsyncs at the end find little left to write. Measured on the dev VM (1M x 39 float32,
    9 interleaved runs): zarr/numpy write ratio 35-39% without, 49-55% with.
    """
    if _SYNC_FILE_RANGE is not None:
        _SYNC_FILE_RANGE(fd, 0, 0, _SYNC_FILE_RANGE_WRITE)


def _fsync_all(files: Iterable[str], dirs: Iterable[str] = ()) -> None:
    """fsync ``files`` and ``dirs`` concurrently on the writer threads.

    Each fsync costs a device cache flush (0.4-4 ms measured on the dev VM's ext4, even for a file
    with no dirty pages); issued from several threads the flushes overlap and the kernel batches
    them, so a store's ~150 files and folders take ~4x less time than one by one.
    """
    jobs = [_pool().submit(_fsync_file, f) for f in files] + [_pool().submit(_fsync_dir, d) for d in dirs]
    for j in jobs:
        j.result()


def _fsync_tree(path: Path, skip: Iterable[str] = ()) -> None:
    """fsync every file and folder under ``path`` (concurrently): the data is on disk before the
    atomic rename. ``skip`` names paths already fsynced and not written since (chunk files and
    their folders that a column's durable flush synced), which need no second device flush."""
    skip = set(skip)
    files: list[str] = []
    dirs: list[str] = []
    for root, _dirs, names in os.walk(os.path.abspath(path)):
        files.extend(f for f in (os.path.join(root, n) for n in names) if f not in skip)
        if root not in skip:
            dirs.append(root)
    _fsync_all(files, dirs)


def _publish(tmp: Path, final: Path, overwrite: bool) -> None:
    """Atomically move a finished store (or file) from its temporary name to ``final``."""
    if final.exists():
        if not overwrite:
            raise DatasetError(f"{final}: already exists; pass overwrite=True (--force) to replace it")
        trash = final.with_name(f".{final.name}.old{os.getpid()}")
        os.replace(final, trash)
        os.replace(tmp, final)
        if trash.is_dir():
            shutil.rmtree(trash, ignore_errors=True)
        else:
            trash.unlink(missing_ok=True)
    else:
        os.replace(tmp, final)
    _fsync_dir(final.parent)


# --------------------------------------------------------------------------------------- columns
class _Column:
    """One zarr array appended along axis 0 in whole chunks.

    ``base`` is the chunk-aligned row where the in-memory buffer starts; the rows before it are on
    disk in whole chunks. Each chunk goes to the writer threads as soon as its rows are complete.
    :meth:`flush` also writes the buffered partial chunk but keeps it in memory, so the next write
    rewrites that chunk without reading it back.

    Durability: the writer threads only compress and write; :meth:`flush` waits for them and then
    fsyncs every chunk file and chunk folder written since the last flush (concurrently, see
    :func:`_fsync_all`). Those paths are then listed in :attr:`synced` until written again, so the
    finish path's :func:`_fsync_tree` does not flush them to the device a second time.
    """

    def __init__(self, array: Any, length: int | None = None) -> None:
        self.array = array
        self.rows = int(array.chunks[0])
        self.row_shape = tuple(array.shape[1:])
        self.dtype = np.dtype(array.dtype)
        n = int(array.shape[0]) if length is None else int(length)
        self.base = (n // self.rows) * self.rows
        # zarr's own write path for rows of width 0 (no chunk files) and arrays the threads cannot write
        self._direct = _DirectChunks.for_array(array) if math.prod(self.row_shape) > 0 else None
        self._pending: list[Future] = []
        self._dirty_files: set[str] = set()
        self._dirty_dirs: set[str] = set()
        #: chunk files and folders fsynced by :meth:`flush` and not written since
        self.synced: set[str] = set()
        # buffer several chunks so they are compressed in parallel (at most 8 chunks / ~16 MB)
        self.batch_rows = self.rows * max(1, min(8, (16 << 20) // max(1, self.rows * self._row_bytes())))
        self._buf = np.empty((0, *self.row_shape), dtype=self.dtype)
        self._nbuf = 0
        # batch buffers handed to the writer threads, with their chunk writes: reused once those are
        # done, since touching fresh pages costs more than the copy into them (page faults)
        self._inflight: list[tuple[np.ndarray, list[Future]]] = []
        self._buf_futures: list[Future] = []  # the chunk writes from the current buffer
        self._sent = 0  # rows of the current buffer already handed to the writer threads, in whole chunks
        if n > self.base:
            self.append(np.asarray(array[self.base:n]))

    def _row_bytes(self) -> int:
        return int(self.dtype.itemsize * max(1, int(np.prod(self.row_shape))))

    @classmethod
    def create(cls, group: Any, name: str, row_shape: tuple[int, ...], dtype: str, chunk_bytes: int,
               compression: str = L.DEFAULT_COMPRESSION, clevel: int | None = None) -> "_Column":
        rows = L.chunk_rows(row_shape, dtype, chunk_bytes)
        arr = group.create_array(
            name, shape=(0, *row_shape), dtype=dtype, chunks=(rows, *(max(1, d) for d in row_shape)),
            compressors=L.compressors(dtype, compression, clevel), fill_value=np.zeros((), dtype=dtype).item(),
            config=L.array_config(),
        )
        return cls(arr, 0)

    @property
    def length(self) -> int:
        return self.base + self._nbuf

    def append(self, rows: np.ndarray) -> None:
        """Copy ``rows`` into the buffer (the caller may reuse its arrays); each chunk goes to the
        writer threads as soon as its rows are complete."""
        rows = np.asarray(rows)
        while len(rows):
            if self._nbuf == len(self._buf):
                self._grow(len(rows))
            k = min(len(rows), len(self._buf) - self._nbuf)
            self._buf[self._nbuf:self._nbuf + k] = rows[:k]
            self._nbuf += k
            rows = rows[k:]
            if self._direct is not None:
                self._send_full_chunks()
            if self._nbuf >= self.batch_rows:
                self._write(partial=False)

    def _grow(self, want: int) -> None:
        cap = min(self.batch_rows, max(4 * len(self._buf), self._nbuf + want, 256))
        buf = np.empty((cap, *self.row_shape), dtype=self.dtype)
        buf[:self._nbuf] = self._buf[:self._nbuf]
        self._buf = buf

    def flush(self, sync: bool = True) -> None:
        """Write everything buffered (the partial tail chunk too) and wait for the writer threads;
        with ``sync`` also fsync the chunk files and folders written since the last sync."""
        self._write(partial=True)
        self.wait()
        if self.array.shape[0] < self.length:
            self.array.resize((self.length, *self.row_shape))
        if sync:
            _sync_columns([self])

    def _mark_synced(self) -> None:
        # only paths inside the chunk folders, which nothing but this column writes; the array's own
        # folder also changes when zarr rewrites its zarr.json (tmp file + rename), so the finish
        # path always fsyncs it again
        if self._direct is not None:
            inner = os.path.join(self._direct.folder, "")
            self.synced.update(p for p in self._dirty_files | self._dirty_dirs if p.startswith(inner))
        self._dirty_files.clear()
        self._dirty_dirs.clear()

    def wait(self) -> None:
        """Wait for every chunk handed to the writer threads (re-raising their errors)."""
        pending, self._pending = self._pending, []
        for f in pending:
            self._written(f)
        del self._inflight[:-2]  # every write is done: keep at most two buffers for reuse

    def _written(self, f: Future) -> None:
        """Wait for one chunk write and record the paths it changed as not yet fsynced."""
        file, dirs = f.result()
        self._dirty_files.add(file)
        self._dirty_dirs.update(dirs)
        self.synced.discard(file)
        self.synced.difference_update(dirs)

    def _submit(self, start: int, stop: int) -> None:
        """Hand buffer rows ``start:stop`` (one chunk, or the partial tail chunk) to the writer threads.

        The array's shape (zarr.json) is raised by :meth:`flush`, once, not per chunk: chunk files
        beyond the recorded shape are ignored by readers and by resume until then.
        """
        f = _pool().submit(self._direct.write, (self.base + start) // self.rows, self._buf[start:stop], self.rows)
        self._pending.append(f)
        self._buf_futures.append(f)
        while len(self._pending) > 4 * _POOL_WORKERS:
            self._written(self._pending.pop(0))

    def _send_full_chunks(self) -> None:
        # a sent chunk's rows are never modified: appends only fill rows after them
        while self._nbuf - self._sent >= self.rows:
            self._submit(self._sent, self._sent + self.rows)
            self._sent += self.rows

    def _write(self, partial: bool) -> None:
        """Write the complete chunks (and with ``partial`` the tail chunk) of the buffer; once the
        buffer is full, continue in another one."""
        if self._nbuf == 0:
            return
        if self._direct is not None:
            self._send_full_chunks()
            if partial and self._nbuf > self._sent:
                self.wait()  # the tail chunk is rewritten later: never two writes of one file in flight
                self._submit(self._sent, self._nbuf)
            if self._nbuf == self.batch_rows:  # every chunk of this buffer is sent
                self._inflight.append((self._buf, self._buf_futures))
                self.base += self._nbuf
                self._buf, self._buf_futures, self._nbuf, self._sent = self._spare_buffer(), [], 0, 0
            return
        data = self._buf[:self._nbuf]
        full = (len(data) // self.rows) * self.rows
        n = len(data) if partial else full
        if n == 0:
            return
        end = self.base + n
        if self.array.shape[0] < end:
            self.array.resize((end, *self.row_shape))
        if data.size:  # rows of width 0 (no physics state) have no chunk files
            self.array[self.base:end] = data[:n]
        rest = data[full:]
        self.base += full
        if full:
            buf = np.empty((self.batch_rows, *self.row_shape), dtype=self.dtype)
            buf[:len(rest)] = rest
            self._buf = buf
        self._nbuf = len(rest)

    def _spare_buffer(self) -> np.ndarray:
        """A full-size batch buffer: the oldest handed-over one whose chunk writes are all done, else
        a new one."""
        for i, (buf, futures) in enumerate(self._inflight):
            if len(buf) == self.batch_rows and all(f.done() for f in futures):
                del self._inflight[i]
                return buf
        if len(self._inflight) > 3:
            del self._inflight[0]  # bounded memory: let the oldest go when its writes lag
        return np.empty((self.batch_rows, *self.row_shape), dtype=self.dtype)


# ------------------------------------------------------------------------------ direct chunk writes
_POOL_WORKERS = max(2, min(8, 2 * (os.cpu_count() or 1)))  # fsync waits overlap: more threads than cores
_POOL_OBJ: ThreadPoolExecutor | None = None
_POOL_PID = -1


def _pool() -> ThreadPoolExecutor:
    """The process's chunk writer threads (made again in a forked child, whose copy has no threads)."""
    global _POOL_OBJ, _POOL_PID
    if _POOL_OBJ is None or _POOL_PID != os.getpid():
        _POOL_OBJ = ThreadPoolExecutor(max_workers=_POOL_WORKERS, thread_name_prefix="cdred-chunks")
        _POOL_PID = os.getpid()
    return _POOL_OBJ


_BLOSC_MAX_OVERHEAD = 16
_CTX_FN: Any = None  # c-blosc's blosc_compress_ctx via ctypes; False once found unusable
_CTX_LOCK = threading.Lock()
_LOCAL = threading.local()


def _load_blosc_ctx() -> Any:
    """c-blosc's ``blosc_compress_ctx`` from the library numcodecs bundles, or None.

    Checked once against ``numcodecs.Blosc.encode`` on a probe buffer (both codecs the layout
    uses): the writer only takes this path where it gives the very same bytes.
    """
    try:
        import ctypes

        import numcodecs.blosc as nb
        from numcodecs import Blosc

        fn = ctypes.CDLL(nb.__file__).blosc_compress_ctx
        fn.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_size_t, ctypes.c_size_t, ctypes.c_void_p,
                       ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_int]
        fn.restype = ctypes.c_int
        probe = np.cumsum(np.random.default_rng(0).standard_normal(8192), dtype=np.float32).view(np.uint8)
        out = np.empty(probe.nbytes + _BLOSC_MAX_OVERHEAD, dtype=np.uint8)
        for cname, clevel in (("lz4", 5), ("zstd", 3)):
            want = Blosc(cname=cname, clevel=clevel, shuffle=1, typesize=4).encode(probe)
            n = fn(clevel, 1, 4, probe.nbytes, probe.ctypes.data, out.ctypes.data, out.nbytes, cname.encode(), 0, 1)
            if n <= 0 or out[:n].tobytes() != bytes(want):
                return None
        return fn
    except (ImportError, OSError, AttributeError, TypeError, ValueError):
        return None


def _blosc_ctx() -> Any:
    global _CTX_FN
    if _CTX_FN is None:
        with _CTX_LOCK:
            if _CTX_FN is None:
                _CTX_FN = _load_blosc_ctx() or False
    return _CTX_FN or None


def _thread_buffer(name: str, nbytes: int) -> np.ndarray:
    """``nbytes`` of a uint8 buffer owned by the calling thread and reused by its next call."""
    buf = getattr(_LOCAL, name, None)
    if buf is None or buf.nbytes < nbytes:
        buf = np.empty(max(nbytes, 1 << 16), dtype=np.uint8)
        setattr(_LOCAL, name, buf)
    return buf[:nbytes]


class _DirectChunks:
    """Encode and write whole chunks of one array as zarr v3 chunk files, without zarr's async layer.

    Used only for arrays this module creates in a local directory store with the codec chain
    ``[bytes (little endian), blosc]`` and chunking along axis 0: a chunk file is exactly what zarr
    writes (the chunk's little-endian bytes, padded with the fill value 0 to the full chunk shape,
    Blosc-compressed with the array's own settings), written to a temporary name and renamed. Blosc
    releases the GIL, so the writer threads compress chunks in parallel. Reading goes through zarr.

    Each writer thread compresses into (and pads edge chunks in) buffers it reuses: numcodecs'
    ``Blosc.encode`` returns a new ``bytes`` per chunk, and on the dev VM the page faults of those
    fresh pages cost as much CPU as the compression itself (75 chunks of 2 MB compressed and
    written on 4 threads: 150-290 ms of CPU with ``Blosc.encode``, 85-97 ms into reused buffers).
    The compressor is c-blosc's ``blosc_compress_ctx``, called through ctypes with the arguments
    numcodecs passes (see :func:`_load_blosc_ctx`); ``Blosc.encode`` where it is unavailable.
    """

    def __init__(self, folder: Path, chunk_key: Any, dtype: np.dtype, cname: str, clevel: int, shuffle: int,
                 typesize: int, blocksize: int) -> None:
        from numcodecs import Blosc

        self.folder = os.path.abspath(folder)
        self.chunk_key = chunk_key
        self.dtype = dtype.newbyteorder("<") if dtype.itemsize > 1 else dtype
        self.cname, self.clevel, self.shuffle = cname.encode(), int(clevel), int(shuffle)
        self.typesize, self.blocksize = int(typesize), int(blocksize)
        self.codec = Blosc(cname=cname, clevel=self.clevel, shuffle=self.shuffle, blocksize=self.blocksize,
                           typesize=self.typesize)

    def encode(self, raw: np.ndarray) -> Any:
        """Blosc-compress the contiguous uint8 ``raw``: a view of this thread's buffer (valid until its
        next call) or ``bytes``. The destination size is exactly ``nbytes + 16``, as numcodecs passes
        it: c-blosc's output depends on it (whether an incompressible chunk is stored as a copy)."""
        fn = _blosc_ctx()
        if fn is None:
            return self.codec.encode(raw)
        out = _thread_buffer("out", raw.nbytes + _BLOSC_MAX_OVERHEAD)
        n = fn(self.clevel, self.shuffle, self.typesize, raw.nbytes, raw.ctypes.data, out.ctypes.data,
               out.nbytes, self.cname, self.blocksize, 1)
        if n <= 0:
            raise RuntimeError(f"blosc_compress_ctx failed ({n}) on a chunk of {raw.nbytes} bytes")
        return memoryview(out)[:n]

    @classmethod
    def for_array(cls, array: Any) -> "_DirectChunks | None":
        try:
            from zarr.codecs import BloscCodec, BytesCodec
            from zarr.storage import LocalStore

            codecs = array.metadata.codecs
            store = array.store_path.store
            if not isinstance(store, LocalStore) or len(codecs) != 2 or not isinstance(codecs[0], BytesCodec) \
                    or not isinstance(codecs[1], BloscCodec):
                return None
            endian = getattr(codecs[0], "endian", None)
            if endian is not None and getattr(endian, "value", endian) != "little":
                return None
            if any(c != max(1, s) for c, s in zip(array.chunks[1:], array.shape[1:])) or array.metadata.fill_value not in (0, False):
                return None
            b = codecs[1]
            shuffle = {"noshuffle": 0, "shuffle": 1, "bitshuffle": 2}[b.shuffle.value]
            nd = len(array.shape)
            return cls(Path(store.root) / array.path, lambda i: array.metadata.encode_chunk_key((i,) + (0,) * (nd - 1)),
                       np.dtype(array.dtype), b.cname.value, b.clevel, shuffle,
                       b.typesize or np.dtype(array.dtype).itemsize, b.blocksize)
        except (ImportError, AttributeError, KeyError, TypeError):
            return None

    def write(self, index: int, block: np.ndarray, rows: int) -> tuple[str, tuple[str, ...]]:
        """Encode and write chunk ``index`` (tmp file + rename); return the chunk file and the folders
        whose entries changed (its own, and any created for it), which a durable flush fsyncs."""
        if len(block) < rows:  # the edge chunk: zarr stores the full chunk shape, padded with the fill value
            shape = (rows, *block.shape[1:])
            pad = _thread_buffer("pad", int(np.prod(shape)) * self.dtype.itemsize).view(self.dtype).reshape(shape)
            pad[:len(block)] = block
            pad[len(block):] = 0
            block = pad
        raw = np.ascontiguousarray(block, dtype=self.dtype).reshape(-1).view(np.uint8)
        data = self.encode(raw)
        path = os.path.join(self.folder, self.chunk_key(index))
        folder = os.path.dirname(path)
        dirs = [folder]
        try:  # each chunk has a folder of its own (c/<index>/): one mkdir, no stat, in the usual case
            os.mkdir(folder)
            dirs.append(os.path.dirname(folder))  # its parent got a new entry
        except FileExistsError:
            pass
        except FileNotFoundError:  # the first chunk: c/ is new too
            d = folder
            while not os.path.isdir(d):  # each created folder's parent gets a new entry
                d = os.path.dirname(d)
                dirs.append(d)
            os.makedirs(folder, exist_ok=True)
        tmp = f"{path}.{os.getpid()}.{threading.get_ident()}.partial"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            _start_writeback(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        return path, tuple(dirs)


def _sync_columns(columns: Iterable[_Column]) -> None:
    """fsync the chunk files and folders the columns wrote since their last sync, as one concurrent
    batch (call after their :meth:`_Column.flush` with ``sync=False``)."""
    columns = [c for c in columns if c is not None]
    files = sorted(set().union(*(c._dirty_files for c in columns))) if columns else []
    dirs = sorted(set().union(*(c._dirty_dirs for c in columns))) if columns else []
    if files or dirs:
        _fsync_all(files, dirs)
    for c in columns:
        c._mark_synced()


def _flush_columns(columns: Iterable[_Column | None]) -> None:
    """Write every buffered row of the columns and make it durable (one fsync batch for all)."""
    columns = [c for c in columns if c is not None]
    for c in columns:
        c.flush(sync=False)
    _sync_columns(columns)


def _open_column(group: Any, key: str, length: int) -> _Column:
    """Reopen an existing array for appending, cutting it to ``length`` committed rows."""
    arr = group[key].with_config(L.array_config())
    if arr.shape[0] > length:
        arr.resize((length, *arr.shape[1:]))
    return _Column(arr, length)


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


# --------------------------------------------------------------------------------- EpisodeWriter
def _finish_store(tmp: Path, final: Path, *, overwrite: bool, what: str,
                  columns: Iterable[_Column | None] = ()) -> None:
    """Check the structure of a flushed partial store, consolidate, fsync and rename it into place.

    Every file and folder of the store is fsynced before the rename, so the published name never
    points at data still only in the page cache; the chunk files and folders the ``columns``' last
    flush already fsynced (and that nothing wrote since) are not flushed to the device twice.
    """
    from .validate import validate

    problems = validate(tmp, deep=False, finished=False)
    if problems:
        raise DatasetError(f"{problems[0]} (the partial {what} is kept at {tmp})")
    L.consolidate(tmp)
    _fsync_tree(tmp, skip=set().union(*(c.synced for c in columns if c is not None)))
    _publish(tmp, final, overwrite=overwrite)


def _discard_store(tmp: Path, columns: Iterable[Any]) -> None:
    """Wait for the columns' pending chunk writes, then delete the partial store."""
    for col in columns:
        if col is None:
            continue
        try:
            col.wait()
        except Exception:  # noqa: BLE001 - the store is being thrown away: its write errors do not matter
            pass
    shutil.rmtree(tmp, ignore_errors=True)


class EpisodeWriter:
    """Append whole episodes to a zarr episode store (ARCHITECTURE §6); see the module docstring.

    Example::

        with EpisodeWriter("demos.zarr", attrs) as w:        # created as .demos.zarr.partial
            w.append_episode(obs, action, reward, terminated, physics_state,
                             final_obs, final_physics_state, seed=3, success=True)
        # leaving the block closes: consolidates and renames to demos.zarr

    ``attrs`` needs ``env.task``, ``env.obs_dim`` and ``env.action_dim`` (plain Python types only);
    ``sim``, ``source`` and ``scores`` sections are added empty when missing, and
    ``cdred_dataset_version`` is set. With ``check=True`` (default) an episode with NaN/inf values or
    actions outside [-1, 1] is refused with a DatasetError before anything is written.
    """

    def __init__(self, path: str | os.PathLike, attrs: Mapping[str, Any], *, overwrite: bool = False,
                 chunk_bytes: int = L.DEFAULT_CHUNK_BYTES, compression: str = L.DEFAULT_COMPRESSION,
                 clevel: int | None = None, check: bool = True) -> None:
        self._setup(Path(path), attrs, resume=False, overwrite=overwrite, chunk_bytes=chunk_bytes,
                    compression=compression, clevel=clevel, check=check)

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
               chunk_bytes: int, compression: str, clevel: int | None, check: bool) -> None:
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
        self._lock = _Lock(path)
        try:
            if resume and (self.tmp.is_dir() or path.is_dir()):
                if not self.tmp.is_dir():
                    os.replace(path, self.tmp)  # appending to a finished store: it is partial again
                self._reopen(attrs)
            else:
                if attrs is None:
                    raise DatasetError(f"{path}: no partial store to resume and no attrs to start a new one")
                if path.exists() and not overwrite:
                    raise DatasetError(f"{path}: already exists; pass overwrite=True (--force) to replace it, "
                                       "or EpisodeWriter.resume() to append")
                try:
                    self.attrs = L.normalise_attrs(attrs)
                except ValueError as exc:
                    raise DatasetError(f"{path}: bad attrs: {exc}") from None
                if self.tmp.exists():
                    shutil.rmtree(self.tmp)  # a stale partial store of a run we are not resuming
                self.group = L.open_group(self.tmp, mode="w")
                self.group.attrs.update(self.attrs)
                self.group.require_group("data")
                self.group.require_group("meta")
        except BaseException:
            self._lock.release()
            raise

    def _reopen(self, attrs: Mapping[str, Any] | None) -> None:
        g = L.open_group(self.tmp, mode="r+")
        self.group = g
        self.attrs = dict(g.attrs.asdict())
        version = self.attrs.get("cdred_dataset_version")
        if version != L.LAYOUT_VERSION:
            raise DatasetError(f"{self.tmp}: attrs.cdred_dataset_version={version!r}; this writer appends "
                               f"only to layout version {L.LAYOUT_VERSION}")
        if attrs is not None:
            want = L.plain(dict(attrs)).get("env", {})
            have = self.attrs.get("env", {})
            for k in ("task", "obs_dim", "action_dim", "physics_state_dim"):
                if k in want and k in have and want[k] != have[k]:
                    raise DatasetError(f"{self.tmp}: attrs.env.{k}: stored {have[k]!r}, resuming with {want[k]!r}; "
                                       "this partial store belongs to another task: delete it or use another path")
        keys = [f"data/{k}" for k in L.DATA_KEYS] + [f"meta/{k}" for k in L.META_KEYS]
        present = [k for k in keys if k in g]
        if not present:
            return  # created but no episode flushed yet
        if sorted(present) != sorted(keys):
            missing = sorted(set(keys) - set(present))
            raise DatasetError(f"{self.tmp}: {missing[0]}: missing in the partial store; delete it and recollect")
        cams = sorted(g["data/rgb"].array_keys()) if "data/rgb" in g else []
        # Committed episodes: every per-episode array and every per-step array must cover them.
        ends = np.asarray(g["meta/episode_ends"][:], dtype=np.int64)
        n_meta = min(int(g[k].shape[0]) for k in keys if k.startswith("meta/"))
        n_meta = min([n_meta] + [int(g[f"{L.FINAL_RGB_GROUP}/{c}"].shape[0]) for c in cams if f"{L.FINAL_RGB_GROUP}/{c}" in g])
        n_data = min([int(g[k].shape[0]) for k in keys if k.startswith("data/")]
                     + [int(g[f"{L.RGB_GROUP}/{c}"].shape[0]) for c in cams])
        e = 0
        for i in range(min(len(ends), n_meta)):
            if ends[i] > n_data:
                break
            e = i + 1
        n = int(ends[e - 1]) if e else 0
        try:
            for k in keys:
                self._columns[k] = _open_column(g, k, e if k.startswith("meta/") else n)
            for c in cams:
                self._columns[f"{L.RGB_GROUP}/{c}"] = _open_column(g, f"{L.RGB_GROUP}/{c}", n)
                self._columns[f"{L.FINAL_RGB_GROUP}/{c}"] = _open_column(g, f"{L.FINAL_RGB_GROUP}/{c}", e)
        except (ValueError, KeyError, OSError, RuntimeError) as exc:
            raise DatasetError(f"{self.tmp}: the partial store is damaged ({exc}); delete it and recollect") from None
        self.cameras = tuple(cams)
        self.num_episodes, self.num_steps = e, n

    # ---------------------------------------------------------------------------- appending
    def _create_columns(self, obs_dim: int, action_dim: int, state_dim: int,
                        rgb_shapes: Mapping[str, tuple[int, ...]]) -> None:
        g, cb = self.group, self.chunk_bytes
        data, meta = g.require_group("data"), g.require_group("meta")
        spec = {
            "data/obs": (data, "obs", (obs_dim,), "float32"),
            "data/action": (data, "action", (action_dim,), "float32"),
            "data/reward": (data, "reward", (), "float32"),
            "data/terminated": (data, "terminated", (), "bool"),
            "data/physics_state": (data, "physics_state", (state_dim,), "float64"),
            "meta/episode_ends": (meta, "episode_ends", (), "int64"),
            "meta/seed": (meta, "seed", (), "int64"),
            "meta/length": (meta, "length", (), "int64"),
            "meta/return": (meta, "return", (), "float64"),
            "meta/success": (meta, "success", (), "bool"),
            "meta/final_obs": (meta, "final_obs", (obs_dim,), "float32"),
            "meta/final_physics_state": (meta, "final_physics_state", (state_dim,), "float64"),
        }
        if rgb_shapes:
            rgb, frgb = g.require_group(L.RGB_GROUP), g.require_group(L.FINAL_RGB_GROUP)
            for cam, shape in rgb_shapes.items():
                spec[f"{L.RGB_GROUP}/{cam}"] = (rgb, cam, shape, L.RGB_DTYPE)
                spec[f"{L.FINAL_RGB_GROUP}/{cam}"] = (frgb, cam, shape, L.RGB_DTYPE)
        for key, (grp, name, row, dt) in spec.items():
            self._columns[key] = _Column.create(grp, name, row, dt, cb, self.compression, self.clevel)
        self.cameras = tuple(sorted(rgb_shapes))
        env = dict(self.attrs["env"])
        env.setdefault("physics_state_dim", int(state_dim))
        self.attrs["env"] = env
        self.group.attrs.update({"env": env})

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
        env = self.attrs["env"]
        obs = _as(obs, "float32", "obs", (None, env["obs_dim"]))
        t = len(obs)
        if t < 1:
            raise DatasetError("append_episode: obs: an episode needs at least one step")
        action = _as(action, "float32", "action", (t, env["action_dim"]))
        reward = _as(np.reshape(np.asarray(reward), (-1,)), "float32", "reward", (t,))
        terminated = _as(np.reshape(np.asarray(terminated), (-1,)), "bool", "terminated", (t,))
        s_dim = env.get("physics_state_dim")
        if physics_state is None:
            physics_state = np.zeros((t, 0))
            final_physics_state = np.zeros((0,)) if final_physics_state is None else final_physics_state
        physics_state = _as(physics_state, "float64", "physics_state", (t, s_dim))
        s_dim = physics_state.shape[1]
        final_obs = _as(final_obs, "float32", "final_obs", (env["obs_dim"],))
        final_physics_state = _as(final_physics_state, "float64", "final_physics_state", (s_dim,))
        rgb = dict(rgb or {})
        final_rgb = dict(final_rgb or {})
        if set(rgb) != set(final_rgb):
            raise DatasetError("append_episode: final_rgb: give the frame of final_obs for every camera in rgb "
                               f"(rgb has {sorted(rgb)}, final_rgb has {sorted(final_rgb)})")
        frames: dict[str, np.ndarray] = {}
        for cam in sorted(rgb):
            f = _as(rgb[cam], L.RGB_DTYPE, f"rgb[{cam}]", (t, None, None, 3))
            frames[cam] = f
            frames["\0" + cam] = _as(final_rgb[cam], L.RGB_DTYPE, f"final_rgb[{cam}]", f.shape[1:])[None]
        if self.cameras is not None and set(rgb) != set(self.cameras):
            raise DatasetError(f"append_episode: rgb: cameras {sorted(rgb)} differ from the store's {list(self.cameras)}")
        if self.check:
            for name, a in (("obs", obs), ("action", action), ("reward", reward), ("physics_state", physics_state),
                            ("final_obs", final_obs), ("final_physics_state", final_physics_state)):
                if not np.isfinite(a).all():
                    bad = np.argwhere(~np.isfinite(a))[0]
                    raise DatasetError(f"append_episode: {name}: NaN/inf at index {tuple(int(i) for i in bad)}; "
                                       "refusing to store a non-finite episode")
            if action.size and np.abs(action).max() > 1.0 + L.ACTION_TOL:
                raise DatasetError(f"append_episode: action: values outside [-1, 1] (max |a| = "
                                   f"{float(np.abs(action).max()):.4g}); store the executed, clipped action")
        if not self._columns:
            self._create_columns(env["obs_dim"], env["action_dim"], s_dim,
                                 {cam: frames[cam].shape[1:] for cam in rgb})
        elif self._columns["data/physics_state"].row_shape != (s_dim,):
            raise DatasetError(f"append_episode: physics_state: width {s_dim}, the store has "
                               f"{self._columns['data/physics_state'].row_shape[0]}")
        for cam in rgb:
            have = self._columns[f"{L.RGB_GROUP}/{cam}"].row_shape
            if frames[cam].shape[1:] != have:
                raise DatasetError(f"append_episode: rgb[{cam}]: frame shape {frames[cam].shape[1:]}, the store has {have}")
        c = self._columns
        c["data/obs"].append(obs)
        c["data/action"].append(action)
        c["data/reward"].append(reward)
        c["data/terminated"].append(terminated)
        c["data/physics_state"].append(physics_state)
        for cam in rgb:
            c[f"{L.RGB_GROUP}/{cam}"].append(frames[cam])
            c[f"{L.FINAL_RGB_GROUP}/{cam}"].append(frames["\0" + cam])
        c["meta/seed"].append(np.array([int(seed)], dtype=np.int64))
        c["meta/length"].append(np.array([t], dtype=np.int64))
        c["meta/return"].append(np.array([reward.astype(np.float64).sum()], dtype=np.float64))
        c["meta/success"].append(np.array([bool(success)]))
        c["meta/final_obs"].append(final_obs[None])
        c["meta/final_physics_state"].append(final_physics_state[None])
        self.num_steps += t
        c["meta/episode_ends"].append(np.array([self.num_steps], dtype=np.int64))
        self.num_episodes += 1
        return self.num_episodes - 1

    def _append_block(self, data: Mapping[str, np.ndarray], meta: Mapping[str, np.ndarray]) -> None:
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
        for k, v in data.items():
            self._columns[k].append(np.ascontiguousarray(v, dtype=self._columns[k].dtype))
        for k, v in meta.items():
            self._columns[k].append(np.ascontiguousarray(v, dtype=self._columns[k].dtype))
        ends = self.num_steps + np.cumsum(lengths)
        self._columns["meta/episode_ends"].append(ends.astype(np.int64))
        self.num_steps = int(ends[-1]) if len(ends) else self.num_steps
        self.num_episodes += len(lengths)

    # ------------------------------------------------------------------------------ finishing
    def flush(self) -> None:
        """Write every buffered row (partial tail chunks included): everything appended so far is
        durable and survives a kill; ``meta/episode_ends`` is written last and commits the episodes."""
        self._ensure_open()
        _flush_columns(col for k, col in self._columns.items() if k != "meta/episode_ends")
        if "meta/episode_ends" in self._columns:  # only once every row it commits is on disk
            self._columns["meta/episode_ends"].flush()

    def close(self) -> Path:
        """Flush, check the structure, consolidate and rename the store to its final path; returns it."""
        if self._closed:
            return self.path
        self._ensure_open()
        try:
            if not self._columns:
                env = self.attrs["env"]
                self._create_columns(env["obs_dim"], env["action_dim"], int(env.get("physics_state_dim", 0)), {})
            self.flush()
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
        _publish(tmp, dst, overwrite)
    finally:
        lock.release()
    return dst


def write_array(store: str | os.PathLike, key: str, data: np.ndarray | Iterable[np.ndarray], *,
                dtype: str | None = None, attrs: Mapping[str, Any] | None = None, overwrite: bool = False,
                chunk_bytes: int = L.DEFAULT_CHUNK_BYTES, compression: str = L.DEFAULT_COMPRESSION,
                clevel: int | None = None) -> None:
    """Add one array (chunked along time, Blosc zstd) to an existing store, from an array or an
    iterable of row blocks, then reconsolidate. Not atomic for the store: use it on a copy (see
    :func:`copy_dataset`) and validate afterwards."""
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
                parent, _, name = key.rpartition("/")
                grp = g.require_group(parent) if parent else g
                col = _Column.create(grp, name, tuple(block.shape[1:]), str(block.dtype), chunk_bytes,
                                     compression, clevel)
            col.append(block)
        if col is None:
            raise DatasetError(f"{store}: {key}: no data given")
        col.flush()
        if attrs:
            col.array.attrs.update(L.plain(dict(attrs)))
        L.consolidate(store)
    finally:
        lock.release()


# ------------------------------------------------------------------------------------ RgbWriter
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
        from .reader import open_dataset

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
                e = 0
                while e < len(self.ends) and self.ends[e] <= n_rgb and e < n_fin:
                    e += 1
                self._data = _open_column(self.group, key, int(self.ends[e - 1]) if e else 0)
                self._final = _open_column(self.group, fkey, e)
                self.num_episodes = e
        except BaseException:
            self._lock.release()
            raise

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
            rgb, frgb = self.group.require_group(L.RGB_GROUP), self.group.require_group(L.FINAL_RGB_GROUP)
            shape = frames.shape[1:]
            kw = {"compression": self.compression, "clevel": self.clevel}
            self._data = _Column.create(rgb, self.camera, shape, L.RGB_DTYPE, self.chunk_bytes, **kw)
            self._final = _Column.create(frgb, self.camera, shape, L.RGB_DTYPE, self.chunk_bytes, **kw)
        elif frames.shape[1:] != self._data.row_shape:
            raise DatasetError(f"{self.path}: rgb[{self.camera}]: frame shape {frames.shape[1:]}, "
                               f"earlier episodes have {self._data.row_shape}")
        self._data.append(frames[:t])
        self._final.append(frames[t:])
        self.num_episodes += 1
        return i

    def flush(self) -> None:
        """Make the frames appended so far durable (a killed run resumes after them)."""
        if self._data is not None:
            _flush_columns((self._data, self._final))

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
            h, w = self._data.row_shape[:2]
            self._data.array.attrs.update({"camera": self.camera, "height": h, "width": w, **self.array_attrs})
            if self.root_attrs:
                merged = dict(self.group.attrs.asdict())
                for k, v in self.root_attrs.items():
                    if isinstance(v, dict) and isinstance(merged.get(k), dict):
                        merged[k] = {**merged[k], **v}
                    else:
                        merged[k] = v
                self.group.attrs.update(L.normalise_attrs(merged))
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
