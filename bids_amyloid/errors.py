"""Errors that end a run, each with the exit code the CLI returns.

Exit codes follow the BIDS-Apps / sysexits conventions listed in docs/protocol.md.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_SESSION_FAILED = 1
EXIT_INVALID_BIDS = 16
EXIT_NOTHING_SELECTED = 18
EXIT_USAGE = 64
EXIT_INPUT_MISSING = 66
EXIT_CANNOT_CREATE_OUTPUT = 73


class AppError(Exception):
    """An error that stops the whole run; ``exit_code`` is what the CLI returns."""

    exit_code = EXIT_USAGE


class UsageError(AppError):
    exit_code = EXIT_USAGE


class InvalidBIDSError(AppError):
    exit_code = EXIT_INVALID_BIDS


class NothingSelectedError(AppError):
    exit_code = EXIT_NOTHING_SELECTED


class InputMissingError(AppError):
    exit_code = EXIT_INPUT_MISSING


class OutputError(AppError):
    exit_code = EXIT_CANNOT_CREATE_OUTPUT


class InputDataError(ValueError):
    """One input file is unusable (names the file and what is wrong).

    Raised inside a session; the session fails, the run goes on.
    """
