"""User-facing errors: one line that says what is wrong and what to do; the CLI prints it and exits.

Every command exits with one of :data:`EXIT_CODES` (the table in docs/cli.md): the code says what kind of
fault it was, whichever command met it.
"""

from __future__ import annotations

EXIT_CODES: dict[int, str] = {
    0: "success (the result may come from the cache)",
    1: "the work failed (a work unit after its retries, failed sweep runs, an unclassified error)",
    2: "bad option or argument value (wrong number, empty or repeated list item, unknown choice, bad --workdir)",
    3: "a dependency or system capability is missing (OpenGL backend, Ray, ManiSkill2)",
    4: "an input file is missing, unreadable or does not fit (dataset, checkpoint)",
    5: "training diverged (NaN/inf); the last good checkpoint is kept",
    6: "no space left on the disk, or a place that cannot be written; finished work is kept",
    130: "interrupted (Ctrl-C); finished work units are kept",
}
"""Exit code -> what it means: the one table every command uses."""


class CdredError(Exception):
    """An error caused by input or environment, not a bug: shown as one line, exit code ``exit_code``."""

    exit_code = 1

    def __init__(self, message: str, *, exit_code: int | None = None) -> None:
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class UsageError(CdredError):
    """Bad option or argument value (unknown task id, p outside [0, 1], ...): exit code 2."""

    exit_code = 2


class MissingDependencyError(CdredError):
    """An optional dependency or system capability is missing (ManiSkill2, Vulkan, GL backend)."""

    exit_code = 3


class InputFileError(CdredError):
    """An input file is missing, unreadable, or does not fit the task or the agent: exit code 4."""

    exit_code = 4


class DatasetError(InputFileError):
    """A dataset is missing, corrupt, of another layout version, or does not fit the task."""


class CheckpointError(InputFileError):
    """An agent checkpoint is missing, not a cdred torch file, or does not fit the task."""


class TrainingDivergedError(CdredError):
    """NaN/inf in a loss or reward: training stopped, the last good checkpoint is kept."""

    exit_code = 5


class StorageError(CdredError):
    """The disk is full (or over quota), or a path cannot be written: exit code 6; work is kept for a resume."""

    exit_code = 6


class NotMadeError(CdredError):
    """A read-only store (``cdred sweep --report-only``) was asked for an artifact that is not finished yet."""
