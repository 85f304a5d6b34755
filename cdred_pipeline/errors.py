"""User-facing errors: one line that says what is wrong and what to do; the CLI prints it and exits."""

from __future__ import annotations


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


class DatasetError(CdredError):
    """A dataset is missing, corrupt, of another layout version, or does not fit the task."""

    exit_code = 4


class TrainingDivergedError(CdredError):
    """NaN/inf in a loss or reward: training stopped, the last good checkpoint is kept."""

    exit_code = 5
