"""The ledger chain's writers (host.chain, host.ledger): two posting processes on one chain never fork it
(the second's stale head fails its batch, which is decided again against the head it then reads), the
shared chain's concurrent posters (CLI loads) wait on its lock, every kind of row verifies (holds with
their expiry, completions, reversals, declines), and the chain turned off seals nothing."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg

from host import chain
from host.check import run_checks
from host.ledger import Ledger
from host.model import Decision, Request, Txn
from tests.host.helpers import programme, req, reversal_of


def run(db_url: str, body: Callable[[Any], Awaitable[None]]) -> None:
    async def main() -> None:
        conn = await asyncpg.connect(db_url)
        try:
            await body(conn)
            failed = [r for r in await run_checks(conn) if not r.ok]
            assert not failed, failed
            checked, heads, broken = await chain.verify(conn)
            assert broken is None, broken
            assert checked == sum(h.seq for h in heads) > 0
        finally:
            await conn.close()

    asyncio.run(main())


def codes(ds: list[Decision]) -> list[str]:
    return [d.code for d in ds]


def test_two_processes_on_one_chain_never_fork_it(db_url: str) -> None:
    async def body(conn: Any) -> None:
        pans = await programme(conn, code="FORK", cards=4, max_balance=10_000_000)
        other = await asyncpg.connect(db_url)
        try:
            a, b = Ledger(), Ledger()  # two host processes, both posting as writer 7
            for i in range(3):
                one = [req(Txn.TOPUP, pans[0], 1_000 + i)]
                assert codes(await a.post_batch(conn, one, writer=7)) == ["00"]
                # b's head is stale from the second round: its batch fails, is decided again, approved
                two = [req(Txn.TOPUP, pans[1], 2_000 + i), req(Txn.TOPUP, pans[2], 3_000 + i)]
                assert codes(await b.post_batch(other, two, writer=7)) == ["00", "00"]
        finally:
            await other.close()
        (head,) = [h for h in await chain.heads(conn) if h.chain == 7]
        assert head.seq >= 6

    run(db_url, body)


def test_every_kind_of_row_verifies(db_url: str) -> None:
    async def body(conn: Any) -> None:
        pans = await programme(conn, code="KINDS", cards=3, max_balance=10_000_000)
        ledger = Ledger()
        load = [req(Txn.TOPUP, p, 100_000) for p in pans]
        assert codes(await ledger.post_batch(conn, load, writer=0)) == ["00"] * 3
        hold = req(Txn.PREAUTH, pans[0], 5_000)
        buy = req(Txn.PURCHASE, pans[1], 1_234)
        too_much = req(Txn.PURCHASE, pans[2], 50_000_000)
        got = await ledger.post_batch(conn, [hold, buy, too_much, buy], writer=0)
        assert codes(got)[:2] == ["00", "00"] and got[2].code != "00" and got[3].duplicate
        done = req(Txn.COMPLETION, pans[0], 4_000, original_rrn=hold.rrn)
        undo: Request = reversal_of(buy)
        assert codes(await ledger.post_batch(conn, [done, undo], writer=1)) == ["00", "00"]
        assert await conn.fetchval("SELECT count(*) FROM transfers WHERE batch_id IS NULL") == 0
        assert await conn.fetchval("SELECT count(*) FROM transfers WHERE expires_at IS NOT NULL") >= 1

    run(db_url, body)


def test_the_shared_chain_serializes_concurrent_posters(db_url: str) -> None:
    async def body(conn: Any) -> None:
        pans = await programme(conn, code="SHARED", cards=8, max_balance=10_000_000)
        conns = [await asyncpg.connect(db_url) for _ in pans]
        try:
            results = await asyncio.gather(*[
                Ledger().post_batch(c, [req(Txn.TOPUP, p, 700)]) for c, p in zip(conns, pans, strict=True)
            ])
        finally:
            for c in conns:
                await c.close()
        assert [codes(r) for r in results] == [["00"]] * len(pans)

    run(db_url, body)


def test_the_chain_turned_off_seals_nothing(db_url: str) -> None:
    async def body(conn: Any) -> None:
        pans = await programme(conn, code="OFF", cards=1, max_balance=10_000_000)
        before = await conn.fetchval("SELECT count(*) FROM ledger_batches")
        assert codes(await Ledger(chained=False).post_batch(conn, [req(Txn.TOPUP, pans[0], 900)])) == ["00"]
        assert await conn.fetchval("SELECT count(*) FROM ledger_batches") == before
        await Ledger().post_batch(conn, [req(Txn.TOPUP, pans[0], 900)])  # verify still needs a batch

    run(db_url, body)
