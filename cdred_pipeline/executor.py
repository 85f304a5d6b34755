"""One executor interface for independent work units (docs/design.md §7).

Work that splits into independent units (tasks x seeds for collect-experts, (p, seed) episode blocks
for evaluate, episode ranges for render-visual) runs through :func:`make_executor`:

* ``"local"``: in this process, one unit after the other (the default);
* ``"process"``: a pool of ``workers`` spawned processes on this machine;
* ``"ray"``: tasks on a Ray cluster (optional extra ``pip install 'cdred[ray]'``). ``ray_address``
  ``"local"`` starts a private Ray instance on this machine with ``workers`` CPUs; ``"auto"`` joins
  the cluster this machine belongs to (``ray start`` was run); any other value is a cluster address
  (``HOST:PORT`` or ``ray://HOST:10001``). When Ray is already initialised (a test, a notebook), that
  instance is used and left running. ``gpus_per_unit`` F (0 < F <= 1) makes each unit ask Ray for F of
  one GPU: Ray places it on a node with that much GPU free and shows it only its GPU
  (``CUDA_VISIBLE_DEVICES``), so 1/F units share each GPU and the cluster's GPUs fill evenly.

``Executor.map(fn, units)`` calls ``fn(unit)`` for every unit and returns the results in unit order.
``fn`` must be a module-level function and the units picklable (they travel to other processes).
A unit that raises is retried ``retries`` times (a lost worker process counts as a failure of the
units it held), except for the errors of :data:`NOT_RETRIED`: a
:class:`~cdred_pipeline.errors.CdredError` (bad input) or an error that the same arguments raise
again (a ValueError, TypeError, ...: a unit is a pure function of its arguments), which fail at once. Each finished unit's result is handed to ``on_result(index, result)`` on the driver as soon
as it arrives, so a driver that records finished units there loses none of them when another unit
or a worker fails later. If a unit still fails after its retries, ``map`` waits for the other units,
then raises :class:`ExecutorError` (a CdredError naming the unit) or re-raises the unit's CdredError.

Determinism: the executor never changes what a unit computes, only where; stages make every unit a
pure function of its arguments (own seeds, own environment), so results do not depend on the kind,
the number of workers or the order of completion (tested in tests/test_executor.py).

Shared storage: units that write into the work dir (collect-experts) need every Ray node to see the
same ``--workdir`` path (a shared filesystem); evaluate units write nothing (they return rows and
video bytes) but read the agent checkpoint by its absolute path, which every node must see too.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from cdred_pipeline.errors import CdredError, MissingDependencyError, UsageError
from cdred_pipeline.os_errors import os_error_in

KINDS = ("local", "process", "ray")
RAY_INSTALL = "pip install 'cdred[ray]'"
#: Environment passed to every worker (set before the unit runs): GL backend for MuJoCo rendering.
WORKER_ENV_KEYS = ("MUJOCO_GL", "PYOPENGL_PLATFORM", "CDRED_WORKDIR")

#: Torch threads of a run process (the CLI's and each worker's) when neither ``--threads`` nor OMP_NUM_THREADS
#: sets them: one thread per run, so runs sharing a machine slow down by their share of the cores (threads
#: of several runs spinning against each other on the same cores slow every run down many times more).
DEFAULT_THREADS = 1
#: The thread settings a worker process inherits (read by torch and its BLAS when they first load).
THREAD_ENV_KEYS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")

OnResult = Callable[[int, Any], None]

NOT_RETRIED: tuple[type[BaseException], ...] = (CdredError, ValueError, TypeError, LookupError, AttributeError,
                                                ArithmeticError, AssertionError, NotImplementedError)
"""Errors a retry cannot cure: bad input (CdredError) and errors of the unit's arguments or code. The others
(a lost worker, OSError, MemoryError, RuntimeError such as an out-of-memory device) may pass on a retry."""


def retryable(exc: BaseException) -> bool:
    """Whether a unit that raised ``exc`` may succeed when run again (see :data:`NOT_RETRIED`); a full disk
    or an unwritable path (:func:`~cdred_pipeline.os_errors.os_error_in`) stays so on a retry."""
    return not isinstance(exc, NOT_RETRIED) and os_error_in(exc) is None


class ExecutorError(CdredError):
    """A work unit failed after all its retries (the message names the unit and the last error)."""


class Executor(Protocol):
    """What every executor offers (see the module docstring)."""

    kind: str
    workers: int

    def map(self, fn: Callable[[Any], Any], units: Sequence[Any], *, retries: int = 2, desc: str = "units",
            progress: bool = True, on_result: OnResult | None = None) -> list[Any]:
        """``[fn(u) for u in units]``, possibly in parallel; results in unit order."""
        ...

    def close(self) -> None:
        """Release workers (idempotent)."""
        ...


# ------------------------------------------------------------------------------------ helpers
def _bar(total: int, desc: str, progress: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="unit", disable=not progress)


def _worker_env() -> dict[str, str]:
    return {k: os.environ[k] for k in WORKER_ENV_KEYS if k in os.environ}


def resolve_threads(threads: int | None = None) -> int:
    """The torch threads of a run process: ``threads`` when > 0, else OMP_NUM_THREADS when it is set to a
    positive integer, else :data:`DEFAULT_THREADS`."""
    if threads:
        return int(threads)
    from_env = os.environ.get("OMP_NUM_THREADS", "").strip()
    return int(from_env) if from_env.isdigit() and int(from_env) > 0 else DEFAULT_THREADS


def apply_threads(threads: int | None = None) -> int:
    """Give this process :func:`resolve_threads` torch threads, and the worker processes it starts the same
    (through :data:`THREAD_ENV_KEYS`, read when torch loads there); returns the count. The one place a
    thread count is applied: the CLI calls it once for its process, :func:`_call_unit` in every worker."""
    n = resolve_threads(threads)
    for key in THREAD_ENV_KEYS:
        os.environ[key] = str(n)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(n)
    return n


def _call_unit(fn: Callable[[Any], Any], unit: Any, env: dict[str, str], threads: int | None) -> Any:
    """Run one unit in a worker: the driver's GL settings first, then the driver's thread count."""
    for k, v in env.items():
        os.environ.setdefault(k, v)
    apply_threads(threads)
    return fn(unit)


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:300] if text else ''}"


class _Tracker:
    """Results, attempts and failures of one ``map`` call (shared by all executors)."""

    def __init__(self, n: int, retries: int, desc: str, progress: bool, on_result: OnResult | None) -> None:
        if retries < 0:
            raise UsageError(f"retries must be >= 0, got {retries}")
        self.results: list[Any] = [None] * n
        self.done = [False] * n
        self.attempts = [0] * n
        self.retries = retries
        self.errors: dict[int, BaseException] = {}
        self.on_result = on_result
        self.bar = _bar(n, desc, progress)

    def success(self, i: int, result: Any) -> None:
        self.results[i], self.done[i] = result, True
        if self.on_result is not None:
            self.on_result(i, result)
        self.bar.update(1)

    def failure(self, i: int, exc: BaseException) -> bool:
        """Record a failed attempt; True when the unit should run again."""
        self.attempts[i] += 1
        if not retryable(exc) or self.attempts[i] > self.retries:
            self.errors[i] = exc
            return False
        return True

    def finish(self) -> list[Any]:
        self.bar.close()
        if self.errors:
            i = min(self.errors)
            exc = self.errors[i]
            if isinstance(exc, CdredError):
                raise exc
            more = f" ({len(self.errors) - 1} more units failed too)" if len(self.errors) > 1 else ""
            if not retryable(exc):
                raise ExecutorError(f"work unit {i} failed: {_describe(exc)}{more}; not retried: the same inputs fail "
                                    "the same way (a bad input or a bug; --debug shows the traceback)") from exc
            raise ExecutorError(f"work unit {i} failed after {self.attempts[i]} attempts: {_describe(exc)}{more}; "
                                f"finished units are kept, rerun the same command to resume") from exc
        return self.results


class _ContextMixin:
    """``with make_executor(...) as ex:`` closes the executor at the end."""

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()  # type: ignore[attr-defined]


# ------------------------------------------------------------------------------------- local
class LocalExecutor(_ContextMixin):
    """Units one after the other in this process (no pickling, no start-up cost)."""

    kind = "local"

    def __init__(self) -> None:
        self.workers = 1

    def map(self, fn: Callable[[Any], Any], units: Sequence[Any], *, retries: int = 2, desc: str = "units",
            progress: bool = True, on_result: OnResult | None = None) -> list[Any]:
        track = _Tracker(len(units), retries, desc, progress, on_result)
        for i, unit in enumerate(units):
            while True:
                try:
                    result = fn(unit)
                except Exception as exc:  # noqa: BLE001 - retried or reported by the tracker
                    if track.failure(i, exc):
                        continue
                    break
                track.success(i, result)
                break
        return track.finish()

    def close(self) -> None:
        return None


# ----------------------------------------------------------------------------------- process
class ProcessExecutor(_ContextMixin):
    """A pool of ``workers`` spawned processes on this machine (fork is unsafe with GL and torch).

    At most ``workers`` units are in flight. A worker that dies (killed, out of memory) breaks the
    pool and takes every unit in flight with it; a new pool starts, finished units are kept, and the
    units that were in flight rerun one at a time, so a failed attempt is charged only to the unit
    whose worker died while it ran alone (never to a bystander).
    """

    kind = "process"

    def __init__(self, workers: int | None = None, *, threads: int | None = None) -> None:
        cpus = os.cpu_count() or 1
        self.workers = int(workers or cpus)
        if self.workers < 1:
            raise UsageError(f"--workers must be >= 1, got {workers}")
        self.threads = resolve_threads(threads)
        self._pool: Any = None

    def _new_pool(self) -> Any:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        self.close()
        self._pool = ProcessPoolExecutor(max_workers=self.workers, mp_context=mp.get_context("spawn"))
        return self._pool

    def map(self, fn: Callable[[Any], Any], units: Sequence[Any], *, retries: int = 2, desc: str = "units",
            progress: bool = True, on_result: OnResult | None = None) -> list[Any]:
        track = _Tracker(len(units), retries, desc, progress, on_result)
        _PoolRun(self, fn, units, track).run()
        return track.finish()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


class _PoolRun:
    """One :meth:`ProcessExecutor.map` call: the queue of units, the units in flight, and the suspects
    (units in flight when the pool broke, rerun alone to find the one whose worker died)."""

    def __init__(self, ex: ProcessExecutor, fn: Callable[[Any], Any], units: Sequence[Any], track: _Tracker) -> None:
        self.ex, self.fn, self.units, self.track = ex, fn, units, track
        self.env = _worker_env()
        self.queue = list(range(len(units)))  # at most `workers` units in flight
        self.suspects: set[int] = set()
        self.futures: dict[Any, int] = {}
        self.pool = ex._pool or ex._new_pool()

    def run(self) -> None:
        """Submit, wait, collect until every unit finished or failed for good."""
        from concurrent.futures import FIRST_COMPLETED, wait

        while self.queue or self.futures:
            broken = self._submit()
            finished = wait(self.futures, return_when=FIRST_COMPLETED)[0] if self.futures and not broken else set()
            lost: list[int] = []
            broken = self._collect(finished, lost) or broken
            if broken:
                self._after_break(lost)
            self.queue.sort()

    def _submit(self) -> bool:
        """Fill the free worker slots (a suspect runs alone); True when the pool was found broken."""
        from concurrent.futures.process import BrokenProcessPool

        while self.queue and len(self.futures) < (1 if self.suspects else self.ex.workers):
            if self.suspects and self.futures:
                break  # a suspect runs alone
            i = next((u for u in self.queue if u in self.suspects), self.queue[0])
            try:
                self.futures[self.pool.submit(_call_unit, self.fn, self.units[i], self.env, self.ex.threads)] = i
                self.queue.remove(i)
            except BrokenProcessPool:  # a worker died since the last wait: not this unit's fault
                return True
        return False

    def _collect(self, finished: set[Any], lost: list[int]) -> bool:
        """Record the finished futures; units lost with a broken pool go to ``lost``. True if broken."""
        from concurrent.futures.process import BrokenProcessPool

        broken = False
        for fut in finished:
            i = self.futures.pop(fut)
            try:
                result = fut.result()
            except BrokenProcessPool:
                broken = True
                lost.append(i)
                continue
            except Exception as exc:  # noqa: BLE001 - retried or reported by the tracker
                if self.track.failure(i, exc):
                    self.queue.append(i)
                continue
            self.suspects.discard(i)
            self.track.success(i, result)
        return broken

    def _after_break(self, lost: list[int]) -> None:
        """Every unit still in flight died with the pool: charge the one that ran alone, else rerun
        each alone; then start a new pool."""
        from concurrent.futures.process import BrokenProcessPool

        for fut, i in list(self.futures.items()):
            if fut.done() and fut.exception() is None:  # finished just before the break
                self.suspects.discard(i)
                self.track.success(i, fut.result())
            else:
                lost.append(i)
        self.futures.clear()
        if len(lost) == 1:  # it ran alone: it broke the pool
            self.suspects.discard(lost[0])
            if self.track.failure(lost[0], BrokenProcessPool("its worker process died")):
                self.queue.append(lost[0])
        else:  # several ran: none is charged yet, each reruns alone
            self.suspects.update(lost)
            self.queue.extend(lost)
        self.pool = self.ex._new_pool()


# --------------------------------------------------------------------------------------- ray
def import_ray() -> Any:
    """``import ray``, or a one-line MissingDependencyError saying how to install it."""
    try:
        import ray
    except ImportError:
        raise MissingDependencyError(f"--ray-address needs Ray, which is not installed: {RAY_INSTALL}") from None
    return ray


def check_gpus(gpus_per_unit: float, cluster_gpus: float | None = None, address: str = "") -> None:
    """A one-line UsageError when ``gpus_per_unit`` is not a fraction of one GPU, or when the cluster
    (``cluster_gpus`` GPUs, once joined) has less than that: Ray would hold the tasks forever, waiting
    for a GPU that never comes."""
    if not 0 < gpus_per_unit <= 1:
        raise UsageError(f"--gpus-per-run takes a fraction of one GPU in (0, 1], got {gpus_per_unit:g}")
    if cluster_gpus is not None and cluster_gpus < gpus_per_unit:
        raise UsageError(f"--gpus-per-run {gpus_per_unit:g}: the Ray cluster at {address!r} has {cluster_gpus:g} GPUs; "
                         "start its nodes with GPUs (ray start --num-gpus N) or drop --gpus-per-run")


class RayExecutor(_ContextMixin):
    """Units as Ray tasks (one CPU each, and ``gpus_per_unit`` of a GPU when given).

    ``address="local"`` starts a private instance with ``workers`` CPUs (shut down on :meth:`close`);
    ``"auto"`` or an address joins a running cluster. An already initialised Ray is used as it is.
    Retries are the driver's (Ray's own are off), for a unit that raised and for one whose worker
    process died, so the count of attempts means the same as with the other executors.
    """

    kind = "ray"

    def __init__(self, address: str = "local", workers: int | None = None, gpus_per_unit: float = 0.0) -> None:
        if gpus_per_unit:
            check_gpus(gpus_per_unit)  # the range now, the cluster's GPUs once it is joined
        self.ray = import_ray()  # a missing Ray is a one-line error at once; the cluster is joined on first use
        self.address = address
        self.gpus_per_unit = float(gpus_per_unit)
        self.workers = int(workers or os.cpu_count() or 1)
        self._requested = workers
        self._started = False
        self._ready = False

    def _ensure(self) -> None:
        if self._ready:
            return
        if not self.ray.is_initialized():
            kw: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
            if self.address == "local":
                kw["num_cpus"] = self.workers
            else:
                kw["address"] = self.address
            try:
                self.ray.init(**kw)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                raise CdredError(f"cannot reach the Ray cluster at {self.address!r} ({_describe(exc)}); start it "
                                 "with `ray start --head` or pass --ray-address local", exit_code=3) from None
            self._started = True
        resources = self.ray.cluster_resources()
        if not self._requested:
            self.workers = int(resources.get("CPU", 1))
        if self.gpus_per_unit:
            check_gpus(self.gpus_per_unit, float(resources.get("GPU", 0)), self.address)
        self._ready = True

    def map(self, fn: Callable[[Any], Any], units: Sequence[Any], *, retries: int = 2, desc: str = "units",
            progress: bool = True, on_result: OnResult | None = None) -> list[Any]:
        self._ensure()
        ray = self.ray
        from ray.exceptions import RayTaskError

        track = _Tracker(len(units), retries, desc, progress, on_result)
        remote = ray.remote(num_cpus=1, num_gpus=self.gpus_per_unit, max_retries=0, retry_exceptions=False)(_call_unit)
        env, threads = _worker_env(), resolve_threads()
        fn_ref = ray.put(fn)
        refs = {remote.remote(fn_ref, units[i], env, threads): i for i in range(len(units))}
        while refs:
            ready, _ = ray.wait(list(refs), num_returns=1)
            for ref in ready:
                i = refs.pop(ref)
                try:
                    result = ray.get(ref)
                except RayTaskError as exc:
                    cause = exc.cause if isinstance(exc.cause, BaseException) else exc
                    if track.failure(i, cause):
                        refs[remote.remote(fn_ref, units[i], env, threads)] = i
                    continue
                except Exception as exc:  # noqa: BLE001 - worker lost beyond Ray's own retries
                    if track.failure(i, exc):
                        refs[remote.remote(fn_ref, units[i], env, threads)] = i
                    continue
                track.success(i, result)
        return track.finish()

    def close(self) -> None:
        if self._started and self.ray.is_initialized():
            self.ray.shutdown()
        self._started = self._ready = False


# ------------------------------------------------------------------------------------ factory
def make_executor(kind: str = "local", *, workers: int | None = None, ray_address: str | None = None,
                  gpus_per_unit: float | None = None) -> Executor:
    """The executor for ``kind`` (``local`` | ``process`` | ``ray``); see the module docstring."""
    if kind not in KINDS:
        raise UsageError(f"executor kind {kind!r}: choose one of {', '.join(KINDS)}")
    if gpus_per_unit and kind != "ray":
        raise UsageError("--gpus-per-run places runs on GPUs through Ray: add --ray-address (local for this machine); "
                         "with --workers N the N processes share the GPUs this machine shows")
    if workers is not None and (isinstance(workers, bool) or int(workers) < 1):
        raise UsageError(f"--workers must be >= 1, got {workers}")
    if kind == "local":
        return LocalExecutor()
    if kind == "process":
        return ProcessExecutor(workers)
    return RayExecutor(ray_address or "local", workers, gpus_per_unit or 0.0)


def executor_for(workers: int | None, ray_address: str | None, gpus_per_run: float | None = None) -> Executor:
    """The CLI's choice: ``--ray-address`` -> Ray (``--gpus-per-run`` of a GPU per unit); ``--workers N``
    (N > 1) -> process pool; else local."""
    if ray_address:
        return make_executor("ray", workers=workers, ray_address=ray_address, gpus_per_unit=gpus_per_run)
    if workers is not None and workers > 1:
        return make_executor("process", workers=workers, gpus_per_unit=gpus_per_run)
    if workers is not None and workers < 1:
        raise UsageError(f"--workers must be >= 1, got {workers}")
    return make_executor("local", gpus_per_unit=gpus_per_run)

