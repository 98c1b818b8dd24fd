"""The project's error types and exit codes: one place maps every failure to a code."""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """Documented exit codes (README, "Exit codes")."""

    OK = 0
    ERROR = 1  # anything else that went wrong
    USAGE = 2  # bad option or argument
    INPUT = 3  # an input file (image, batch, data folder) is unusable
    MODEL = 4  # the model package is missing, corrupt or does not match
    BUSY = 5  # another update holds the model's lock and --no-wait was given
    REJECTED = 6  # the update guard refused to swap in the new model
    IO = 7  # the disk refused a write (full, read-only, permission, I/O error)
    PARTIAL = 8  # some images could not be read; the rest were handled
    LEARNED_NOTHING = 9  # saved but did not learn the batch, or the batch held nothing new (reason given)
    INTERRUPTED = 130  # Ctrl-C or SIGTERM; nothing was changed


class MLPersonalizeError(Exception):
    """Base of every error the tool raises on purpose; its message is shown as `Error: …`."""

    exit_code: ExitCode = ExitCode.ERROR


class UsageError(MLPersonalizeError):
    exit_code = ExitCode.USAGE


class InputError(MLPersonalizeError):
    """An image, batch file or data folder cannot be used."""

    exit_code = ExitCode.INPUT


class ImageError(InputError):
    """One image cannot be decoded or is refused (too large, corrupt, wrong format)."""


class BatchError(InputError):
    """A batch file is malformed or does not fit the model."""


class ModelError(MLPersonalizeError):
    """A model package is missing, corrupt or inconsistent."""

    exit_code = ExitCode.MODEL


class BusyError(MLPersonalizeError):
    exit_code = ExitCode.BUSY


class RejectedError(MLPersonalizeError):
    """The guard refused an update; the old model stays."""

    exit_code = ExitCode.REJECTED


class ConflictError(RejectedError):
    """The batch's labels contradict what the model is sure of; refused unless --force."""

    def __init__(self, message: str, conflicts: list[dict[str, object]]) -> None:
        super().__init__(message)
        self.conflicts = conflicts


class LearnedNothing(MLPersonalizeError):
    """An update was saved, but held-out accuracy on its batch did not rise (the reason says why)."""

    exit_code = ExitCode.LEARNED_NOTHING


class NothingNew(LearnedNothing):
    """Every example of the update is a drawing the model already learned; nothing was saved."""


class StorageError(MLPersonalizeError):
    """The filesystem refused a write; nothing live was changed."""

    exit_code = ExitCode.IO


class Interrupted(MLPersonalizeError):
    exit_code = ExitCode.INTERRUPTED


class PartialError(MLPersonalizeError):
    """Some images could not be read (reported in the output); the rest were handled."""

    exit_code = ExitCode.PARTIAL

    def __init__(self, failed: int, total: int) -> None:
        super().__init__(f"{failed} of {total} images could not be read (see the output)")
        self.failed, self.total = failed, total
        if failed == total:
            self.exit_code = ExitCode.INPUT
