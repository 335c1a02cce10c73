"""The journal writer: coalesces journal rows from every request into multi-row commits.

``await writer.write(row)`` returns once the row is committed, so a response leaves the switch only
after its journal row is durable (a retransmission after a restart finds it). ``writer.submit(row)``
queues the row without waiting and returns the event that is set once it is committed, so a request
can do other work (the response MAC) while its row is being written, and wait only at the end. While
one batch is being written the next accumulates, so under load each commit carries many rows and the
cost per request is a fraction of a round trip; all rows of a batch share one event (no event per
row). A failing database is retried with backoff; rows are never dropped.

The same writer carries the write-ahead records (``submit_ahead``): the request half of a row that is
about to go upstream, which must be durable BEFORE its bytes leave (see ``switch_write_ahead`` and
switch/README.md). They ride in the same batches as the journal rows (one pool call, one COPY per
table), so a request that goes upstream costs one more wait for a shared batch, not a commit of its own.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

import trio

from ops.logs import get_logger

log = get_logger(__name__)


async def durably(write: Callable[[], Awaitable[Any]], what: str, **fields: Any) -> None:
    """Run ``write`` until it commits: the switch's records (journal rows, write-ahead records,
    reversal advices) are what its answers wait for, so a database outage delays them and never
    drops one or raises into a request (a reversal advice lost that way left an approval unreversed
    in the running switch: tests/faults.py)."""
    backoff = 0.05
    while True:
        try:
            await write()
            return
        except Exception as exc:  # database trouble: keep it and retry
            log.error(f"{what} failed; retrying", error=str(exc), **fields)
            await trio.sleep(backoff)
            backoff = min(backoff * 2, 2.0)

Row = tuple[Any, ...]


class Insert(Protocol):
    """Commit journal rows and (when there are any) write-ahead rows; return once both are durable."""

    def __call__(self, rows: Sequence[Row], ahead: Sequence[Row] = (), /) -> Awaitable[Any]: ...


MAX_BATCH = 2000


class JournalWriter:
    def __init__(self, insert: Insert) -> None:
        self._insert = insert
        self._rows: list[Row] = []
        self._ahead: list[Row] = []
        self._done = trio.Event()  # set once every row now in _rows is committed
        self._wake = trio.Event()
        self._idle = trio.Event()
        self._idle.set()
        self.rows_written = 0
        self.ahead_written = 0
        self.commits = 0
        # keys of write-ahead rows the database refused: another switch node holds the key (a
        # retransmission it handled first; switch/README.md "Several switch nodes")
        self.refused: set[str] = set()

    def ahead_refused(self, key: str) -> bool:
        """After its event: whether the write-ahead record of ``key`` was refused (then its request must
        not go upstream)."""
        if key in self.refused:
            self.refused.discard(key)
            return True
        return False

    def submit(self, row: Row) -> trio.Event:
        """Queue ``row``; the returned event is set once it is committed."""
        return self._queue(self._rows, row)

    def submit_ahead(self, row: Row) -> trio.Event:
        """Queue a write-ahead record; the returned event is set once it is committed."""
        return self._queue(self._ahead, row)

    def _queue(self, into: list[Row], row: Row) -> trio.Event:
        into.append(row)
        if self._idle.is_set():
            self._idle = trio.Event()
        self._wake.set()
        return self._done

    async def write(self, row: Row) -> None:
        """Queue ``row`` and wait until it is committed."""
        await self.submit(row).wait()

    async def flush(self) -> None:
        """Wait until everything queued so far is committed."""
        while self._rows or self._ahead or not self._idle.is_set():
            await self._idle.wait()
            await trio.sleep(0)

    async def run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            while self._rows or self._ahead:
                rows, ahead, done = self._rows, self._ahead, self._done
                self._rows, self._ahead, self._done = [], [], trio.Event()
                for start in range(0, max(len(rows), len(ahead)), MAX_BATCH):
                    batch = rows[start : start + MAX_BATCH]
                    ahead_batch = ahead[start : start + MAX_BATCH]
                    await self._commit(batch, ahead_batch)
                    self.rows_written += len(batch)
                    self.ahead_written += len(ahead_batch)
                    self.commits += 1
                done.set()
            self._idle.set()

    async def _commit(self, rows: list[Row], ahead: list[Row]) -> None:
        async def insert() -> None:
            refused = await (self._insert(rows, ahead) if ahead else self._insert(rows))
            if refused:
                self.refused.update(refused)

        await durably(insert, "journal write", rows=len(rows), ahead=len(ahead))
