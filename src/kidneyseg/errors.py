"""The project's error types. Each carries the process exit code the CLI uses for it.

Bad user input raises one of these with a message that names the file and the problem;
``assert`` is kept for internal invariants. Exit codes (documented in the README):

====  ==========================================================
 0    success
 1    unexpected internal error (a bug: please report it)
 2    usage error (bad option values, missing arguments)
 3    invalid input data (image or label file, dataset folder)
 4    bad or untrusted model file (checkpoint, model directory)
 5    resource or I/O failure (disk full, permission, out of memory)
 6    training stopped because the loss became NaN or infinite
 7    a folder run finished but some cases failed
====  ==========================================================
"""

from __future__ import annotations

from pathlib import Path


class KidneysegError(Exception):
    """Base class: an error the user can act on, printed as one line by the CLI."""

    exit_code = 1

    def __init__(self, message: str, path: str | Path | None = None):
        self.path = Path(path) if path is not None else None
        self.problem = message
        super().__init__(f"{path}: {message}" if path is not None else message)


class UsageError(KidneysegError):
    exit_code = 2


class InvalidInputError(KidneysegError):
    exit_code = 3


class ModelFileError(KidneysegError):
    exit_code = 4


class ResourceError(KidneysegError):
    exit_code = 5


class TrainingDivergedError(KidneysegError):
    exit_code = 6


class PartialFailureError(KidneysegError):
    exit_code = 7


class Terminated(BaseException):
    """SIGTERM turned into an exception (like KeyboardInterrupt for SIGINT), so that cleanup runs:
    the temp file of a write in progress is removed and no partial output is left."""

    exit_code = 143  # 128 + SIGTERM, as a shell reports a process ended by it
