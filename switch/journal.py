"""The journal writer: coalesces journal rows from every request into multi-row commits.

``await writer.write(row)`` returns once the row is committed, so a response leaves the switch only
after its journal row is durable (a retransmission after a restart finds it). While one batch is being
written the next accumulates, so under load each commit carries many rows and the cost per request is
a fraction of a round trip. A failing database is retried with backoff; rows are never dropped.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import trio

from ops.logs import get_logger

log = get_logger(__name__)

Row = tuple[Any, ...]
Insert = Callable[[Sequence[Row]], Awaitable[None]]

MAX_BATCH = 2000


class JournalWriter:
    def __init__(self, insert: Insert) -> None:
        self._insert = insert
        self._pending: list[tuple[Row, trio.Event]] = []
        self._wake = trio.Event()
        self._idle = trio.Event()
        self._idle.set()
        self.rows_written = 0
        self.commits = 0

    async def write(self, row: Row) -> None:
        """Queue ``row`` and wait until it is committed."""
        done = trio.Event()
        self._pending.append((row, done))
        self._idle = trio.Event() if self._idle.is_set() else self._idle
        self._wake.set()
        await done.wait()

    async def flush(self) -> None:
        """Wait until everything queued so far is committed."""
        while self._pending or not self._idle.is_set():
            await self._idle.wait()
            await trio.sleep(0)

    async def run(self) -> None:
        backoff = 0.05
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            while self._pending:
                batch, self._pending = self._pending[:MAX_BATCH], self._pending[MAX_BATCH:]
                while True:
                    try:
                        await self._insert([row for row, _ in batch])
                        break
                    except Exception as exc:  # database trouble: keep the rows and retry
                        log.error("journal write failed; retrying", error=str(exc), rows=len(batch))
                        await trio.sleep(backoff)
                        backoff = min(backoff * 2, 2.0)
                backoff = 0.05
                self.rows_written += len(batch)
                self.commits += 1
                for _, done in batch:
                    done.set()
            self._idle.set()
