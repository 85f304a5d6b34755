"""Shared helpers for tests that run the real ``cdred`` console script in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

# The console script pip installed beside this interpreter (never a PATH lookup, never a machine path):
# ``make test`` runs ``.venv/bin/python -m pytest``, so this is ``.venv/bin/cdred``. Not resolved, so
# a venv whose python is a symlink to the system interpreter still finds its own script.
CDRED = Path(sys.executable).parent / "cdred"


def cdred_command() -> list[str]:
    """``[path of cdred]``, or a clear failure when the project is not installed in this environment."""
    if not CDRED.is_file():
        raise FileNotFoundError(f"no cdred console script at {CDRED}: install the project into the environment "
                                "running the tests (make test, or pip install -e '.[test]')")
    return [str(CDRED)]


def cli_env() -> dict[str, str]:
    """The environment of a CLI subprocess: headless MuJoCo, one BLAS thread (the machine is shared)."""
    return {**os.environ, "MUJOCO_GL": "egl", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def run_cli(workdir: Path, *args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    """``cdred --workdir WORKDIR -q ARGS...``, output captured."""
    return subprocess.run([*cdred_command(), "--workdir", str(workdir), "-q", *args], env=cli_env(),
                          capture_output=True, text=True, timeout=timeout)


def one_line_error(res: subprocess.CompletedProcess) -> str:
    """The stderr of a failed CLI call: exactly one line starting with 'error:' and no traceback."""
    lines = [ln for ln in res.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("error: ") and "Traceback" not in res.stderr, res.stderr
    return lines[0]


def kill_cli_when(workdir: Path, args: tuple[str, ...], ready, *, timeout: float, what: str,
                  extra_env: dict[str, str] | None = None) -> int:
    """Start ``cdred --workdir WORKDIR -q ARGS``, SIGKILL it as soon as ``ready()`` is true (polled),
    and return its exit status; fails if it exits first or ``ready`` stays false for ``timeout`` s."""
    import signal
    import time

    proc = subprocess.Popen([*cdred_command(), "--workdir", str(workdir), "-q", *args],
                            env={**cli_env(), **(extra_env or {})},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + timeout
        while not ready():
            assert proc.poll() is None, proc.communicate()
            assert time.time() < deadline, f"{what} within {timeout:.0f} s"
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode
