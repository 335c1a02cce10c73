"""One `payswitch run` at a time per working folder: a lock file (``var/run.lock``) held with flock.

The kernel releases an flock when its holder dies, however it dies, so a lock left by a ``kill -9`` never
blocks the next run; the file's content (pid and start time) is only read to say who holds it.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from pathlib import Path
from typing import IO

DEFAULT_PATH = Path("var") / "run.lock"


class AlreadyRunning(Exception):
    """Another process holds the lock: ``pid`` and ``started`` (epoch seconds) say which, when known."""

    def __init__(self, pid: int | None, started: float | None) -> None:
        super().__init__(f"held by pid {pid}")
        self.pid = pid
        self.started = started


class RunLock:
    """Held from ``acquire`` until ``release`` (or the process ends)."""

    def __init__(self, path: Path, handle: IO[str]) -> None:
        self.path = path
        self._handle = handle

    def release(self) -> None:
        if not self._handle.closed:
            self._handle.close()  # closing the descriptor releases the flock


def acquire(path: Path = DEFAULT_PATH) -> RunLock:
    """Take the lock or raise ``AlreadyRunning``. Never blocks."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # Opened without truncating: the holder's pid must stay readable to a loser of the race.
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    handle = os.fdopen(fd, "r+")
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _read(handle)
        handle.close()
        raise AlreadyRunning(*holder) from None
    handle.seek(0)
    handle.truncate()
    handle.write(json.dumps({"pid": os.getpid(), "started": time.time()}))
    handle.flush()
    return RunLock(path, handle)


def _read(handle: IO[str]) -> tuple[int | None, float | None]:
    try:
        handle.seek(0)
        data = json.loads(handle.read() or "{}")
        return int(data["pid"]), float(data["started"])
    except (ValueError, KeyError, TypeError, OSError):
        return None, None  # the holder has not written it yet
