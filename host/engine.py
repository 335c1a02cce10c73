"""The trio side of the posting engine: one writer task per group of ledger partitions.

``submit(request, partition, callback)`` queues a request for the writer that owns its partition and
returns at once; the writer takes everything queued (up to ``batch_max``), posts it as one batch
through ops.pgpool (one cross-loop hop per batch, one transaction per batch), and calls each
request's callback with its decision after the commit. While a batch is in the database the next one
collects, so batches grow with the load and the commit cost is shared.

Partition = the card's partition (cards.part = PAN hash mod partitions); writer = partition mod writers.
A card's requests are therefore always posted by the same writer, in arrival order, and writers never
wait for each other's card rows. Several host processes on one database run the same writers: each
batch leases its writer group for its transaction (host.leases), so a group is posted by one host at a
time and its chain's head is read under the lease.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import Any

import trio
from prometheus_client import Counter, Histogram

from host.ledger import Ledger
from host.model import Decision, Rc, Request
from ops.logs import get_logger
from ops.metrics import labelled
from ops.pgpool import UNAVAILABLE, PgPool

log = get_logger(__name__)

BATCH_SIZE = Histogram(
    "payswitch_host_batch_size",
    "Requests per ledger transaction.",
    buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000),
)
BATCH_SECONDS = Histogram(
    "payswitch_host_batch_seconds",
    "Time to decide and commit one batch.",
    buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0),
)
DECISIONS = Counter(
    "payswitch_host_decisions_total", "Decisions by transaction and response code.", ["txn", "code"]
)

Callback = Callable[[Decision], None]


class Engine:
    def __init__(
        self, pool: PgPool, ledger: Ledger, *, partitions: int, writers: int = 4, batch_max: int = 500
    ) -> None:
        self.pool = pool
        self.ledger = ledger
        self.partitions = partitions
        self.writers = max(1, min(writers, partitions))
        self.batch_max = batch_max
        self._queues: list[list[tuple[Request, Callback]]] = [[] for _ in range(self.writers)]
        self._events = [trio.Event() for _ in range(self.writers)]

    def partition_of(self, pan_hash: str) -> int:
        return int(pan_hash, 16) % self.partitions

    def partition_for_key(self, key: str) -> int:
        """For a request with no card (a reversal without PAN): any stable choice is correct."""
        return sum(key.encode()) % self.partitions

    def submit(self, req: Request, partition: int, callback: Callback) -> None:
        w = partition % self.writers
        self._queues[w].append((req, callback))
        self._events[w].set()

    async def decide(self, req: Request, partition: int) -> Decision:
        done = trio.Event()
        box: list[Decision] = []

        def callback(d: Decision) -> None:
            box.append(d)
            done.set()

        self.submit(req, partition, callback)
        await done.wait()
        return box[0]

    async def run(self) -> None:
        """Run the writers until cancelled."""
        async with trio.open_nursery() as nursery:
            for w in range(self.writers):
                nursery.start_soon(self._writer, w)

    async def _writer(self, w: int) -> None:
        queue = self._queues[w]
        while True:
            if not queue:
                self._events[w] = trio.Event()
                await self._events[w].wait()
            batch = queue[: self.batch_max]
            del queue[: self.batch_max]
            started = time.perf_counter()
            decisions = await self._post(batch, w)
            BATCH_SECONDS.observe(time.perf_counter() - started)
            BATCH_SIZE.observe(len(batch))
            for (req, callback), d in zip(batch, decisions, strict=True):
                labelled(DECISIONS, str(req.txn), d.code).inc()
                try:
                    callback(d)
                except Exception as exc:  # a broken connection must not stop the writer
                    log.warning("answer callback failed", error=repr(exc))

    async def _post(
        self, batch: list[tuple[Request, Callable[[Decision], None]]], writer: int = 0
    ) -> list[Decision]:
        """The batch's decisions. While the database is unreachable the batch waits and is posted
        again: its outcome may be unknown (a COMMIT whose answer was lost), so a 96 ("nothing was
        posted") could be false, and a posted purchase would stay when the terminal, told 96, does not
        reverse it (tests/faults.py, two PostgreSQL crashes). Posted again, a key that did commit is
        answered as the duplicate it is; the peer that stopped waiting has reversed it meanwhile, and
        that reversal, or the late original after it (05), is decided as usual."""
        requests = [r for r, _ in batch]
        post = functools.partial(self.ledger.post_batch, writer=writer)  # the writer's chain (host.chain)
        backoff = 0.05
        while True:
            try:
                decisions: list[Decision] = await self.pool.run(post, requests)
                return decisions
            except UNAVAILABLE as exc:
                log.error("ledger unavailable; the batch waits", error=repr(exc), size=len(batch))
                await trio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
            except Exception as exc:  # a bug, not the database: 96, and nothing of the batch was posted
                log.error("ledger failed", error=repr(exc), size=len(batch))
                return [Decision(Rc.SYSTEM_ERROR)] * len(batch)

    def stats(self) -> dict[str, Any]:
        return {"queued": [len(q) for q in self._queues]}
