"""Concurrent ledger batches posted outside the engine (writer=None), as a bulk load does them: several
``Ledger.post_batch`` calls at once on different connections, one shared ``Ledger``. Whatever they
race on (the funding accounts a first load creates, the issuer's cash-out account), each batch either
commits whole or leaves nothing, and ``ledger check`` stays clean: no money created or lost.

Each round runs on a fresh database (a copy of the migrated template), so the batches race on
creating the accounts a first load needs, as the first batches of a set-up do.
"""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import asyncpg

from host.check import run_checks
from host.ledger import SERVER_SETTINGS, Ledger
from host.model import Request, Txn
from ops.db import ensure_database
from ops.pgembed import Status
from tests.fixtures.pg import TEMPLATE
from tests.host.helpers import programme

ROUNDS = 10
BATCHES = 4  # concurrent post_batch calls, one connection each
CARDS = 400
PER_BATCH = 100
AMOUNT = 10_000
_round = itertools.count(1)


def _load(card_id: int, batch: int, amount: int = AMOUNT) -> Request:
    return Request(
        key=f"admin:concurrent:{batch}:{card_id}",
        mti="0000",
        txn=Txn.ADMIN_LOAD,
        acquirer_id="admin",
        card_id=card_id,
        amount=amount,
    )


def _unload(card_id: int, batch: int) -> Request:
    return Request(
        key=f"admin:unload:{batch}:{card_id}",
        mti="0000",
        txn=Txn.ADMIN_UNLOAD,
        acquirer_id="admin",
        card_id=card_id,
        amount=1,
    )


async def _round_on(url: str) -> list[str]:
    """Cards on a fresh database, then BATCHES load batches (each ending in an unload, so that the
    issuer's cash-out account is raced on too) at once with one shared Ledger; the failed checks."""
    setup = await asyncpg.connect(url)
    try:
        await programme(setup, cards=CARDS, code="CONC")
        ids = [r["id"] for r in await setup.fetch("SELECT id FROM cards ORDER BY id")]
    finally:
        await setup.close()
    conns = [await asyncpg.connect(url, server_settings=SERVER_SETTINGS) for _ in range(BATCHES)]
    try:
        ledger = Ledger(chained=False)  # as bench.host's set-up posts its loads
        step = 100
        batches = [
            [_load(cid, i) for cid in ids[i * step : i * step + PER_BATCH]] + [_unload(ids[i * step], i)]
            for i in range(BATCHES)
        ]
        results = await asyncio.gather(
            *(ledger.post_batch(c, reqs) for c, reqs in zip(conns, batches, strict=True))
        )
        # every load fits the card (no limits on the product): each batch's requests all approved,
        # whether the batch committed at once or was retried one request per transaction
        for reqs, ds in zip(batches, results, strict=True):
            assert [d.code for d in ds] == ["00"] * len(reqs), {d.code for d in ds}
        check = conns[0]
        loaded = await check.fetchval(
            "SELECT sum(a.credits_posted - a.debits_posted)"
            " FROM cards c JOIN accounts a ON a.id = c.account_id"
        )
        assert loaded == BATCHES * (PER_BATCH * AMOUNT - 1)
        return [f"{r.name}: {r.offenders[:5]}" for r in await run_checks(check) if not r.ok]
    finally:
        for c in conns:
            await c.close()


def test_concurrent_outside_engine_batches_keep_the_ledger_balanced(pg_cluster: Status) -> None:
    async def main() -> None:
        failures: list[list[str]] = []
        for _ in range(ROUNDS):
            name = f"t_ledger_concurrent_{next(_round)}"
            await ensure_database(pg_cluster.url("postgres"), name, template=TEMPLATE)
            failures.append(await _round_on(pg_cluster.url(name)))
        assert not any(failures), [f for f in failures if f]

    asyncio.run(main())


async def _wait_for_lock_or_end(conn: Any, pid: int, task: asyncio.Task[Any]) -> None:
    """Until backend ``pid`` waits for a lock, or ``task`` (the batch it runs) has ended."""
    for _ in range(500):
        if task.done():
            return
        if await conn.fetchval("SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = $1", pid):
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"backend {pid} neither waited for a lock nor ended")


def test_an_uncommitted_funding_account_is_not_lent_to_another_batch(pg_cluster: Status) -> None:
    """Deterministic: batch A creates the funding account of its card's partition, then waits (a third
    connection holds A's request key, uncommitted); batch B loads another card of that partition
    meanwhile. B must not use A's uncommitted account id (its sums UPDATE could not see the row: the
    transfer would move money out of an account that never counts it): B waits for A instead."""

    async def main() -> None:
        name = f"t_ledger_concurrent_{next(_round)}"
        await ensure_database(pg_cluster.url("postgres"), name, template=TEMPLATE)
        url = pg_cluster.url(name)
        setup = await asyncpg.connect(url)
        try:
            await programme(setup, cards=40, code="LEND")
            rows = await setup.fetch("SELECT id, part FROM cards ORDER BY id")
        finally:
            await setup.close()
        by_part: dict[int, list[int]] = {}
        for r in rows:
            by_part.setdefault(r["part"], []).append(r["id"])
        first, second = next(ids for ids in by_part.values() if len(ids) >= 2)[:2]
        a, b, holder, watch = [await asyncpg.connect(url, server_settings=SERVER_SETTINGS) for _ in range(4)]
        try:
            ledger = Ledger(chained=False)
            load_a, load_b = _load(first, 0), _load(second, 1)
            tx = holder.transaction()
            await tx.start()
            await holder.execute(
                """INSERT INTO auth_requests (key, mti, txn, acquirer_id, stan, transmitted,
                       response_code, posted)
                   VALUES ($1, '0000', 'admin_load', 'admin', '000000', '0000000000', '96', false)""",
                load_a.key,
            )
            batch_a = asyncio.ensure_future(ledger.post_batch(a, [load_a]))
            await _wait_for_lock_or_end(watch, a.get_server_pid(), batch_a)
            assert not batch_a.done()  # A waits at its write, its funding account created, uncommitted
            batch_b = asyncio.ensure_future(ledger.post_batch(b, [load_b]))
            await _wait_for_lock_or_end(watch, b.get_server_pid(), batch_b)
            await tx.rollback()  # A's key is free again: A commits, then B
            assert [d.code for d in await batch_a] == ["00"]
            assert [d.code for d in await batch_b] == ["00"]
            failed = [f"{r.name}: {r.offenders[:5]}" for r in await run_checks(watch) if not r.ok]
            assert not failed, failed
        finally:
            for c in (a, b, holder, watch):
                await c.close()

    asyncio.run(main())
