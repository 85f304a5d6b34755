"""Small picklable work units for tests/test_executor.py (a plain module, so spawned workers import it).

The test puts this folder on sys.path (spawned processes inherit it) and registers the module with
Ray's cloudpickle by value (Ray workers do not see tests/).
"""

from __future__ import annotations

import os
import time

from cdred_pipeline.errors import UsageError


def square(x: int) -> int:
    """x * x after a short, x-dependent sleep (units finish out of order)."""
    time.sleep(0.02 * ((7 * x) % 3))
    return x * x


def fail_once(arg: tuple[str, int]) -> int:
    """Raise on the first attempt (a marker file records it), return the value on the next."""
    marker, value = arg
    with open(marker, "a") as fh:
        fh.write("attempt\n")
    with open(marker) as fh:
        if len(fh.read().splitlines()) == 1:
            raise RuntimeError(f"unit {value}: first attempt fails on purpose")
    return value


def die_once(arg: tuple[str, int]) -> int:
    """Kill the worker process on the first attempt (a lost worker), return the value on the next."""
    marker, value = arg
    if not os.path.exists(marker):
        open(marker, "w").close()
        os._exit(9)
    return value


def _count(marker: str) -> None:
    with open(marker, "a") as fh:
        fh.write("attempt\n")


def always_fails(arg: tuple[str, int]) -> int:
    """Unit 1 fails on every attempt (counted in its marker file); the others succeed."""
    marker, value = arg
    _count(marker)
    if value == 1:
        raise RuntimeError("unit 1 is broken")
    return value


def bad_input(arg: tuple[str, int]) -> int:
    """A CdredError (bad input): deterministic, so never retried."""
    marker, value = arg
    _count(marker)
    raise UsageError(f"unit {value}: bad input (not retried)")


def attempts(marker: str) -> int:
    with open(marker) as fh:
        return len(fh.read().splitlines())


def always_dies(x: int) -> int:
    """Unit 1 kills its worker process on every attempt; the others take a moment and succeed."""
    if x == 1:
        os._exit(9)
    time.sleep(0.05)
    return x


def gpu_slot(seconds: float) -> tuple[str | None, float, float]:
    """The GPUs this unit is shown (CUDA_VISIBLE_DEVICES) and when it held them (start, end)."""
    start = time.time()
    time.sleep(seconds)
    return os.environ.get("CUDA_VISIBLE_DEVICES"), start, time.time()
