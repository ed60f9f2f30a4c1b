"""Other programs' output in one log file per process: Ray's, Spark's JVM's and TensorFlow's.

Ray's daemons, Spark's JVM and TensorFlow write to the file descriptors the
process has when they start, not to Python's logging; their lines mean
nothing to a user of rayscore. ``rayscore run`` points fds 1 and 2 at the log
for its whole life (:func:`divert_for_good`); the Python API does so only
while it starts Ray and Spark (:func:`others_to_log`), so the daemons and the
JVM it starts keep the log as their output and the script's own prints stay
on the terminal. The log is ``$TMPDIR/rayscore-logs/run-<time>-<pid>.log``,
named in errors.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

__all__ = ["log_path", "divert_for_good", "others_to_log", "diverted"]

_path: Path | None = None
_for_good = False


def log_path() -> Path:
    """This process's log file (made on first use)."""
    global _path
    if _path is None:
        folder = Path(tempfile.gettempdir()) / "rayscore-logs"
        folder.mkdir(parents=True, exist_ok=True)
        _path = folder / f"run-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    return _path


def diverted() -> Path | None:
    """The log file, if any of this process's output has gone to it."""
    return _path


def _point_at_log() -> tuple[int, int]:
    """fds 1 and 2 onto the log; the old ones, duplicated, to put back."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    log = os.open(log_path(), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(log)
    return saved


def divert_for_good() -> tuple[TextIO, TextIO, Path]:
    """Send fds 1 and 2 to the log for the rest of the process; writers on the old stdout/stderr, and the log."""
    global _for_good
    saved = _point_at_log()
    _for_good = True
    return os.fdopen(saved[0], "w", buffering=1), os.fdopen(saved[1], "w", buffering=1), log_path()


@contextlib.contextmanager
def others_to_log(verbose: bool = False) -> Iterator[None]:
    """Within the block, fds 1 and 2 go to the log (what starts meanwhile keeps it); unless ``verbose``."""
    if verbose or _for_good:
        yield
        return
    saved = _point_at_log()
    try:
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        for fd, old in zip((1, 2), saved):
            os.dup2(old, fd)
            os.close(old)
