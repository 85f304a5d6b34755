"""TensorBoard and Weights & Biases views of a run's ``metrics.jsonl`` (``cdred ... --log tensorboard|wandb``).

``metrics.jsonl`` is the source of truth; a sink is a second view of the same rows. Every numeric field of a
row (booleans as 0/1) becomes one scalar tagged ``<kind>/<field>`` (``train/episode_return``,
``eval/eval_return_mean``) at step ``env_step`` (``agent_step`` where a row has no ``env_step``).

A sink opens with the rows ``metrics.jsonl`` already holds and replays them, then takes each new row as the
trainer appends it. The TensorBoard sink empties its event folder (``<run>/tb``) first, so after a resume
(which rolls ``metrics.jsonl`` back to the checkpoint's step) the events hold exactly the file's rows, once
each and in order, whatever the killed process had written past the checkpoint. W&B logs offline (unless
``WANDB_MODE`` says otherwise); the stages put its files in the work dir's ``.wandb`` folder, outside every
artifact. Each process that trains opens a new W&B run with the run's name, replaying the rows before the
resume point, so the newest W&B run of a name is the whole run. docs/logging.md says how to use both.

```python
targets = LogTargets(("tensorboard",), run_name="imitate/0123abcd")
sinks = targets.open(run_dir, read_jsonl(run_dir / "metrics.jsonl"))
for sink in sinks:
    sink.write(row)
```
"""

from __future__ import annotations

import importlib.util
import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Optional, Protocol, Sequence

from cdred_pipeline.artifacts import Artifact
from cdred_pipeline.errors import MissingDependencyError, UsageError

#: ``--log`` choices, with the package each needs and how to install it.
LOG_PACKAGES = {"tensorboard": ("tensorboard", "pip install tensorboard"), "wandb": ("wandb", "pip install wandb")}
TB_DIR = "tb"
WANDB_PROJECT = "cdred"
WANDB_FOLDER = ".wandb"  # in the work dir, beside the stage folders (a dot: not a stage, not an artifact)


class MetricSink(Protocol):
    """Where metrics rows go besides ``metrics.jsonl``."""

    def write(self, row: dict[str, Any]) -> None:
        """Log one metrics row."""

    def close(self) -> None:
        """Flush and close (the run ends or stops)."""


def row_scalars(row: dict[str, Any]) -> tuple[int, dict[str, float]]:
    """(step, {``<kind>/<field>``: value}) of a metrics row: its numeric fields at ``env_step`` (else
    ``agent_step``); lists, strings and None are left out."""
    kind = str(row.get("kind", "row"))
    step = int(row.get("env_step", row.get("agent_step", 0)))
    values = {f"{kind}/{k}": float(v) for k, v in row.items()
              if isinstance(v, (int, float)) and k != "kind"}
    return step, values


def check_log_names(names: Sequence[str]) -> tuple[str, ...]:
    """``names`` as a tuple once each is a known ``--log`` choice whose package is installed: a one-line
    UsageError for an unknown one, MissingDependencyError (with the pip command) for a missing package."""
    for name in names:
        if name not in LOG_PACKAGES:
            raise UsageError(f"--log {name!r}: choose one of {', '.join(LOG_PACKAGES)}")
        package, install = LOG_PACKAGES[name]
        if importlib.util.find_spec(package) is None:
            raise MissingDependencyError(f"--log {name} needs the {package} package: {install} "
                                         "(or pip install 'cdred[logging]')")
    return tuple(dict.fromkeys(names))


class TensorBoardSink:
    """Scalars in TensorBoard event files under ``log_dir`` (``torch.utils.tensorboard.SummaryWriter``); the
    folder is emptied and refilled with ``rows`` when the sink opens."""

    def __init__(self, log_dir: "str | Path", rows: Iterable[dict[str, Any]] = ()) -> None:
        check_log_names(["tensorboard"])
        from torch.utils.tensorboard import SummaryWriter

        self.log_dir = Path(log_dir)
        shutil.rmtree(self.log_dir, ignore_errors=True)
        self.writer = SummaryWriter(log_dir=str(self.log_dir))
        for row in rows:
            self._add(row)
        self.writer.flush()

    def _add(self, row: dict[str, Any]) -> None:
        """Add a row's scalars without flushing."""
        step, values = row_scalars(row)
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, global_step=step)

    def write(self, row: dict[str, Any]) -> None:
        """Add a row's scalars and flush, so a running TensorBoard shows them now."""
        self._add(row)
        self.writer.flush()

    def close(self) -> None:
        """Flush and close the event file."""
        self.writer.close()


class WandbSink:
    """Scalars in a Weights & Biases run named ``run_name`` in ``project``, offline (``WANDB_MODE`` unset)
    under ``dir``; ``rows`` are logged first."""

    def __init__(self, project: str, dir: "str | Path", run_name: str = "",
                 rows: Iterable[dict[str, Any]] = ()) -> None:
        check_log_names(["wandb"])
        import wandb

        Path(dir).mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(project=project, dir=str(dir), name=run_name or None, group=run_name or None,
                              mode=os.environ.get("WANDB_MODE", "offline"))
        for row in rows:
            self.write(row)

    def write(self, row: dict[str, Any]) -> None:
        """Log a row's finite scalars at its step (rows come in step order, as W&B requires)."""
        step, values = row_scalars(row)
        self.run.log({k: v for k, v in values.items() if math.isfinite(v)}, step=step)

    def close(self) -> None:
        """Finish the W&B run (its offline files are then complete for ``wandb sync``)."""
        self.run.finish()


def make_sinks(names: Sequence[str], run_dir: "str | Path", run_name: str, *, rows: Iterable[dict[str, Any]] = (),
               wandb_dir: "str | Path | None" = None) -> list[MetricSink]:
    """One sink per ``--log`` name: TensorBoard in ``<run_dir>/tb``, W&B under ``$WANDB_DIR``, else
    ``wandb_dir``, else ``<run_dir>/wandb``; each starts with ``rows`` (metrics.jsonl so far)."""
    rows = list(rows)
    sinks: list[MetricSink] = []
    try:
        for name in check_log_names(names):
            if name == "tensorboard":
                sinks.append(TensorBoardSink(Path(run_dir) / TB_DIR, rows))
            else:
                where = os.environ.get("WANDB_DIR") or wandb_dir or Path(run_dir) / "wandb"
                sinks.append(WandbSink(os.environ.get("WANDB_PROJECT", WANDB_PROJECT), where, run_name, rows))
    except BaseException:
        close_sinks(sinks)
        raise
    return sinks


def close_sinks(sinks: Sequence[MetricSink]) -> None:
    """Close every sink (each one even when an earlier one fails to)."""
    errors = []
    for sink in sinks:
        try:
            sink.close()
        except Exception as exc:  # the others still close
            errors.append(exc)
    if errors:
        raise errors[0]


@dataclass(frozen=True)
class LogTargets:
    """The ``--log`` names of a run, its name (``<stage>/<key>``) and the W&B folder: what the trainer needs
    to open its sinks once it knows the rows it resumes with."""

    names: tuple[str, ...] = ()
    run_name: str = ""
    wandb_dir: Optional[Path] = None

    def open(self, run_dir: "str | Path", rows: Iterable[dict[str, Any]] = ()) -> list[MetricSink]:
        """:func:`make_sinks` for this run in ``run_dir``, starting from ``rows``."""
        return make_sinks(self.names, run_dir, self.run_name, rows=rows, wandb_dir=self.wandb_dir)


def stage_log(names: Sequence[str], art: Artifact) -> Optional[LogTargets]:
    """The log targets of a stage's training run in ``art``: named ``<stage>/<key>``, W&B files in the work
    dir's ``.wandb`` folder (outside every artifact: ``wandb sync`` marks synced runs there); None without
    names."""
    return LogTargets(tuple(names), f"{art.stage}/{art.key}", art.store.root / WANDB_FOLDER) if names else None


def log_cached(names: Sequence[str], art: Artifact) -> None:
    """``--log`` on an artifact taken from the cache: a TensorBoard view is exported from its
    ``metrics.jsonl`` into ``tb/`` when it has none (and listed in its manifest, so ``status --verify``
    accepts it); W&B gets nothing again, and a note says so."""
    metrics = Path(art.path) / "metrics.jsonl"
    if not names or not metrics.is_file():
        return
    if "tensorboard" in names:
        from cdred_pipeline.agent.trainer import read_jsonl

        made = export_tensorboard(read_jsonl(metrics), art.path, art.store.root)
        if made is not None:
            art.store.add_files(art, made)
            art.store.notify(f"note: {art.stage}/{art.key} comes from the cache; its TensorBoard events are "
                             f"exported from its metrics.jsonl to {made}")
    if "wandb" in names:
        art.store.notify(f"note: {art.stage}/{art.key} comes from the cache; its rows are not logged to W&B again "
                         "(they are in its metrics.jsonl; --force retrains and logs)")


def export_tensorboard(rows: Iterable[dict[str, Any]], folder: "str | Path", scratch: "str | Path") -> Optional[Path]:
    """Write ``rows`` as event files into ``<folder>/tb`` when it does not exist: built in a temporary folder
    under ``scratch`` (same file system) and renamed into place, so a reader sees all of it or none. Returns
    the new folder, or None when ``tb`` was there already (or another process put it there first)."""
    target = Path(folder) / TB_DIR
    if target.exists():
        return None
    tmp = Path(tempfile.mkdtemp(prefix=".tb-", dir=scratch))
    try:
        TensorBoardSink(tmp / TB_DIR, rows).close()
        os.rename(tmp / TB_DIR, target)
    except OSError:
        if target.exists():  # another process exported the same rows first
            return None
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


__all__ = ["LOG_PACKAGES", "TB_DIR", "LogTargets", "MetricSink", "TensorBoardSink", "WandbSink", "check_log_names",
           "close_sinks", "export_tensorboard", "log_cached", "make_sinks", "row_scalars", "stage_log"]
