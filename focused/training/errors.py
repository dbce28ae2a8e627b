"""Errors of the training, export and eval tools, and how a library failure is told in one line.

The command lines print `error: <message>` for these and exit with status 2 (`TrainingInterrupted` carries its
own status: 130 for SIGINT, 143 for SIGTERM). Every message is one line that says what is wrong and what to do.
"""

from __future__ import annotations

import errno
import os
import re

# tensorstore reports the OS error of a failed read or write as `[os_error_code='28']` inside its message
_OS_ERROR_CODE = re.compile(r"os_error_code='?(\d+)'?")
# ...and appends the whole JSON spec of the array after the useful part
_NOISE = re.compile(r"\s*\[(tensorstore_spec|source locations)=.*$", re.DOTALL)
MAX_REASON = 240


class TrainingError(RuntimeError):
    """The run cannot go on; the message says why, which checkpoint is kept, and how to proceed."""


class CheckpointError(ValueError):
    """A checkpoint on disk cannot be read (missing or corrupt files)."""


class TrainingInterrupted(Exception):
    """SIGINT / SIGTERM stopped training after a checkpoint was saved; `exit_code` is 128 + the signal number."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


def root_cause(error: BaseException) -> BaseException:
    """The innermost exception of the `__cause__` / `__context__` chain (where the real reason usually is)."""
    seen = {id(error)}
    while True:
        inner = error.__cause__ or error.__context__
        if inner is None or id(inner) in seen:
            return error
        seen.add(id(inner))
        error = inner


def error_number(error: BaseException) -> int | None:
    """The OS error number behind `error` (an `OSError` anywhere in the chain, or tensorstore's os_error_code)."""
    node: BaseException | None = error
    seen: set[int] = set()
    while node is not None and id(node) not in seen:
        seen.add(id(node))
        if isinstance(node, OSError) and node.errno:
            return node.errno
        match = _OS_ERROR_CODE.search(str(node))
        if match:
            return int(match.group(1))
        node = node.__cause__ or node.__context__
    return None


def describe(error: BaseException, limit: int = MAX_REASON) -> str:
    """One short line for a library exception: the root cause's first line, without tensorstore's spec dump."""
    cause = root_cause(error)
    if isinstance(cause, OSError) and cause.strerror:
        text = f"{cause.strerror}: {cause.filename}" if cause.filename else cause.strerror
    else:
        lines = str(cause).strip().splitlines()
        text = _NOISE.sub("", lines[0] if lines else "") or type(cause).__name__
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def disk_problem(error: BaseException) -> str | None:
    """`'No space left on device'`-style text when `error` comes from a full disk or a read-only / forbidden path."""
    number = error_number(error)
    if number in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM):
        return os.strerror(number)
    return None
