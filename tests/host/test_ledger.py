"""The posting engine against a real PostgreSQL: every transaction type, duplicates, reversals, limits."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import pytest

from host.check import run_checks
from host.ledger import _BATCH_BEGIN, _READ_SQL, _WRITE_SQL, Ledger
from host.model import Decision, Pin, Request, Txn
from tests.host.helpers import fake_hash, programme, req, reversal_of


def run(db_url: str, body: Callable[[Any], Awaitable[None]]) -> None:
    async def main() -> None:
        conn = await asyncpg.connect(db_url)
        try:
            await body(conn)
            failed = [r for r in await run_checks(conn) if not r.ok]
            assert not failed, failed
        finally:
            await conn.close()

    asyncio.run(main())


async def post(conn: Any, ledger: Ledger, *reqs: Request) -> list[Decision]:
    return await ledger.post_batch(conn, list(reqs))


async def balance(conn: Any, pan: str) -> tuple[int, int]:
    row = await conn.fetchrow(
        "SELECT a.credits_posted - a.debits_posted AS b,"
        " a.credits_posted - a.debits_posted - a.debits_pending"
        " AS av FROM cards c JOIN accounts a ON a.id = c.account_id WHERE c.pan_hash = $1",
        fake_hash(pan),
    )
    return row["b"], row["av"]


def codes(ds: list[Decision]) -> list[str]:
    return [d.code for d in ds]


def test_topup_purchase_balance_and_duplicates(db_url: str) -> None:
    async def body(conn: Any) -> None:
        pan, other, _ = await programme(conn, code="RELOAD", max_balance=100_000)
        ledger = Ledger()
        load = req(Txn.TOPUP, pan, 50_000)
        assert codes(await post(conn, ledger, load)) == ["00"]
        too_much = req(Txn.TOPUP, pan, 60_000)
        assert codes(await post(conn, ledger, too_much)) == ["61"]
        buy = req(Txn.PURCHASE, pan, 12_345)
        first = await post(conn, ledger, buy, buy)  # the same key twice in one batch
        assert codes(first) == ["00", "00"] and first[1].duplicate and first[0].auth_id == first[1].auth_id
        again = await post(conn, ledger, buy)
        assert again[0].duplicate and again[0].auth_id == first[0].auth_id
        assert await balance(conn, pan) == (50_000 - 12_345, 50_000 - 12_345)
        inquiry = (await post(conn, ledger, req(Txn.BALANCE, pan)))[0]
        assert inquiry.code == "00"
        assert inquiry.balance_field == "1001156C000000037655" + "1002156C000000037655"
        assert codes(await post(conn, ledger, req(Txn.PURCHASE, other, 1))) == ["51"]
        assert codes(await post(conn, ledger, req(Txn.PURCHASE, "6200000000000000000", 1))) == ["14"]
        assert codes(await post(conn, ledger, req(Txn.PURCHASE, pan, 0))) == ["13"]
        bad_merchant = req(Txn.PURCHASE, pan, 1, merchant_id="NOPE")
        assert codes(await post(conn, ledger, bad_merchant)) == ["03"]

    run(db_url, body)


def test_reversals(db_url: str) -> None:
    async def body(conn: Any) -> None:
        pan, *_ = await programme(conn, code="REV")
        ledger = Ledger()
        await post(conn, ledger, req(Txn.TOPUP, pan, 10_000))
        buy = req(Txn.PURCHASE, pan, 3_000)
        await post(conn, ledger, buy)
        rev = reversal_of(buy)
        assert codes(await post(conn, ledger, rev)) == ["00"]
        assert await balance(conn, pan) == (10_000, 10_000)
        assert (await post(conn, ledger, rev))[0].duplicate  # retransmitted reversal
        rev2 = reversal_of(buy, mti="0420")  # a second reversal
        assert codes(await post(conn, ledger, rev2)) == ["00"]
        assert await balance(conn, pan) == (10_000, 10_000)
        # reversal of an original never seen, then the late original: declined, nothing posted
        late = req(Txn.PURCHASE, pan, 2_000)
        assert codes(await post(conn, ledger, reversal_of(late))) == ["00"]
        assert codes(await post(conn, ledger, late)) == ["05"]
        assert await balance(conn, pan) == (10_000, 10_000)
        # original and its reversal in one batch; partial reversal
        buy2 = req(Txn.PURCHASE, pan, 4_000)
        part = reversal_of(buy2, actual_amount=1_000)
        assert codes(await post(conn, ledger, buy2, part)) == ["00", "00"]
        assert await balance(conn, pan) == (9_000, 9_000)
        # reversal of a top-up already spent: refused, nothing undone
        load = req(Txn.TOPUP, pan, 500)
        spend = req(Txn.PURCHASE, pan, 9_500)
        assert codes(await post(conn, ledger, load, spend, reversal_of(load))) == ["00", "00", "51"]

    run(db_url, body)


def test_void_refund(db_url: str) -> None:
    async def body(conn: Any) -> None:
        pan, *_ = await programme(conn, code="VR")
        ledger = Ledger()
        await post(conn, ledger, req(Txn.TOPUP, pan, 10_000))
        buy = req(Txn.PURCHASE, pan, 3_000)
        await post(conn, ledger, buy)
        assert codes(await post(conn, ledger, req(Txn.VOID, pan, 2_999, original_rrn=buy.rrn))) == ["64"]
        assert codes(await post(conn, ledger, req(Txn.VOID, pan, 3_000, original_rrn="NOPE"))) == ["25"]
        assert codes(await post(conn, ledger, req(Txn.VOID, pan, 3_000, original_rrn=buy.rrn))) == ["00"]
        assert codes(await post(conn, ledger, req(Txn.VOID, pan, 3_000, original_rrn=buy.rrn))) == ["12"]
        assert codes(await post(conn, ledger, reversal_of(buy))) == ["00"]  # already undone: nothing more
        assert await balance(conn, pan) == (10_000, 10_000)
        buy2 = req(Txn.PURCHASE, pan, 5_000)
        await post(conn, ledger, buy2)
        r1 = req(Txn.REFUND, pan, 3_000, original_rrn=buy2.rrn)
        r2 = req(Txn.REFUND, pan, 2_001, original_rrn=buy2.rrn)
        r3 = req(Txn.REFUND, pan, 2_000, original_rrn=buy2.rrn)
        assert codes(await post(conn, ledger, r1, r2, r3)) == ["00", "13", "00"]
        assert await balance(conn, pan) == (10_000, 10_000)
        assert codes(await post(conn, ledger, req(Txn.VOID, pan, 5_000, original_rrn=buy2.rrn))) == ["12"]

    run(db_url, body)


def test_preauth_family(db_url: str) -> None:
    async def body(conn: Any) -> None:
        pan, *_ = await programme(conn, code="PRE")
        ledger = Ledger(completion_tolerance_pct=10)
        await post(conn, ledger, req(Txn.TOPUP, pan, 10_000))
        pre = req(Txn.PREAUTH, pan, 6_000)
        assert codes(await post(conn, ledger, pre)) == ["00"]
        assert await balance(conn, pan) == (10_000, 4_000)
        assert codes(await post(conn, ledger, req(Txn.PURCHASE, pan, 4_001))) == ["51"]
        assert codes(await post(conn, ledger, req(Txn.COMPLETION, pan, 6_601, original_rrn=pre.rrn))) == [
            "13"
        ]
        done = req(Txn.COMPLETION, pan, 5_000, original_rrn=pre.rrn)
        assert codes(await post(conn, ledger, done)) == ["00"]
        assert await balance(conn, pan) == (5_000, 5_000)
        assert codes(await post(conn, ledger, req(Txn.COMPLETION, pan, 1, original_rrn=pre.rrn))) == ["12"]
        # pre-auth void and its reversal (the hold comes back), then a reversal of the pre-auth
        pre2 = req(Txn.PREAUTH, pan, 2_000)
        pvoid = req(Txn.PREAUTH_VOID, pan, 2_000, original_rrn=pre2.rrn)
        assert codes(await post(conn, ledger, pre2, pvoid)) == ["00", "00"]
        assert await balance(conn, pan) == (5_000, 5_000)
        assert codes(await post(conn, ledger, reversal_of(pvoid))) == ["00"]
        assert await balance(conn, pan) == (5_000, 3_000)
        assert codes(await post(conn, ledger, reversal_of(pre2))) == ["00"]
        assert await balance(conn, pan) == (5_000, 5_000)
        # expiry sweep releases a hold; a completion afterwards is refused
        pre3 = req(Txn.PREAUTH, pan, 1_000)
        await post(conn, ledger, pre3)
        card_id = await conn.fetchval("SELECT id FROM cards WHERE pan_hash = $1", fake_hash(pan))
        exp = Request(
            key="expire:" + pre3.key, mti="0000", txn=Txn.EXPIRY, card_id=card_id, hold_key=pre3.key
        )
        assert codes(await post(conn, ledger, exp)) == ["00"]
        assert await balance(conn, pan) == (5_000, 5_000)
        assert codes(await post(conn, ledger, req(Txn.COMPLETION, pan, 1_000, original_rrn=pre3.rrn))) == [
            "12"
        ]
        states = dict(await conn.fetch("SELECT preauth_key, state FROM holds WHERE hold_key = preauth_key"))
        assert states == {pre.key: "posted", pre2.key: "voided", pre3.key: "expired"}

    run(db_url, body)


def test_limits_states_pin(db_url: str) -> None:
    async def body(conn: Any) -> None:
        pan, p2, p3 = await programme(
            conn,
            code="LIM",
            per_txn_limit=1_000,
            daily_amount_limit=1_500,
            daily_count_limit=3,
            kind="usage_limited",
            uses=2,
        )
        ledger = Ledger(pin_tries=2)
        for p in (pan, p2, p3):
            await post(conn, ledger, req(Txn.TOPUP, p, 5_000))
        assert codes(await post(conn, ledger, req(Txn.PURCHASE, pan, 1_001))) == ["61"]
        assert codes(
            await post(
                conn,
                ledger,
                req(Txn.PURCHASE, pan, 1_000),
                req(Txn.PURCHASE, pan, 501),
                req(Txn.PURCHASE, pan, 500),
            )
        ) == ["00", "61", "00"]
        assert codes(await post(conn, ledger, req(Txn.PURCHASE, pan, 1))) == ["61"]  # daily amount
        assert codes(
            await post(
                conn, ledger, req(Txn.PURCHASE, p2, 1), req(Txn.PURCHASE, p2, 1), req(Txn.PURCHASE, p2, 1)
            )
        ) == ["00", "00", "65"]  # 2 uses
        bad = [req(Txn.PURCHASE, p3, 10, pin=Pin.BAD) for _ in range(3)]
        assert codes(await post(conn, ledger, *bad)) == ["55", "75", "75"]
        assert codes(await post(conn, ledger, req(Txn.PURCHASE, p3, 10, pin=Pin.OK))) == ["75"]
        cid = await conn.fetchval("SELECT id FROM cards WHERE pan_hash = $1", fake_hash(p2))
        await conn.execute("UPDATE cards SET state = 'lost' WHERE id = $1", cid)
        assert codes(await post(conn, ledger, req(Txn.BALANCE, p2))) == ["41"]
        tomorrow = dt.datetime.now(dt.UTC) + dt.timedelta(days=1)
        assert codes(await ledger.post_batch(conn, [req(Txn.PURCHASE, pan, 10)], tomorrow)) == ["65"]  # uses

    run(db_url, body)


def test_ledger_is_append_only(db_url: str) -> None:
    async def body(conn: Any) -> None:
        pan, *_ = await programme(conn, code="APP")
        await post(conn, Ledger(), req(Txn.TOPUP, pan, 100))
        for sql in (
            "UPDATE transfers SET amount = 1",
            "DELETE FROM transfers",
            "TRUNCATE transfers",
            "UPDATE auth_requests SET response_code = '05'",
        ):
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.execute(sql)
        await conn.execute("SET ROLE payswitch_app")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute("UPDATE transfers SET amount = 1")
        await conn.execute("RESET ROLE")

    run(db_url, body)


def test_undone_use_gives_back_the_days_limits(db_url: str) -> None:
    """A void, a reversal or a pre-auth void returns the day's amount and count (and the use); a partial
    reversal returns only the amount undone."""

    async def body(conn: Any) -> None:
        pan, *_ = await programme(
            conn, code="DAY", daily_amount_limit=1_000, daily_count_limit=2, kind="usage_limited", uses=2
        )
        ledger = Ledger()
        await post(conn, ledger, req(Txn.TOPUP, pan, 5_000))
        first, second = req(Txn.PURCHASE, pan, 600), req(Txn.PURCHASE, pan, 400)
        assert codes(await post(conn, ledger, first, second)) == ["00", "00"]
        assert codes(await post(conn, ledger, req(Txn.PURCHASE, pan, 1))) == ["61"]  # the day is spent
        assert codes(await post(conn, ledger, req(Txn.VOID, pan, 600, original_rrn=first.rrn))) == ["00"]
        assert codes(await post(conn, ledger, reversal_of(second))) == ["00"]
        # both undone: the whole day and both uses are back
        pre = req(Txn.PREAUTH, pan, 1_000)
        assert codes(await post(conn, ledger, pre)) == ["00"]
        pvoid = req(Txn.PREAUTH_VOID, pan, 1_000, original_rrn=pre.rrn)
        assert codes(await post(conn, ledger, pvoid)) == ["00"]
        third = req(Txn.PURCHASE, pan, 1_000)
        assert codes(await post(conn, ledger, third)) == ["00"]
        assert codes(await post(conn, ledger, reversal_of(third, actual_amount=700))) == ["00"]  # 300 back
        assert codes(await post(conn, ledger, req(Txn.PURCHASE, pan, 301))) == ["61"]
        assert codes(await post(conn, ledger, req(Txn.PURCHASE, pan, 300))) == ["00"]
        day = await conn.fetchrow(
            "SELECT a.day_amount, a.day_count, c.uses_left"
            " FROM cards c JOIN accounts a ON a.id = c.account_id WHERE c.pan_hash = $1",
            fake_hash(pan),
        )
        assert tuple(day) == (1_000, 2, 0)  # the partial reversal left its use and count spent

    run(db_url, body)


def test_original_and_reversal_racing_on_two_writers(db_url: str) -> None:
    """A reversal decided on one connection while its original commits on another: the reversal's read
    missed the original, its write hits the original's key; it is decided again, not answered 96."""

    async def body(conn: Any) -> None:
        pan, *_ = await programme(conn, code="RACE")
        ledger = Ledger()
        await post(conn, ledger, req(Txn.TOPUP, pan, 10_000))
        buy = req(Txn.PURCHASE, pan, 2_500)
        a, b = await asyncpg.connect(db_url), await asyncpg.connect(db_url)
        try:
            async with conn.transaction():  # hold the card's account row: both writers queue behind it
                await conn.execute(
                    "SELECT 1 FROM accounts a JOIN cards c ON c.account_id = a.id"
                    " WHERE c.pan_hash = $1 FOR UPDATE OF a",
                    fake_hash(pan),
                )
                original = asyncio.create_task(Ledger().post_batch(a, [buy]))
                await _waiting_for_locks(conn, 1)  # the original queues first, the reversal behind it
                reversal = asyncio.create_task(Ledger().post_batch(b, [reversal_of(buy, pan=pan)]))
                await _waiting_for_locks(conn, 2)
            assert codes(await original) == ["00"]
            assert codes(await reversal) == ["00"]
        finally:
            await a.close()
            await b.close()
        assert await balance(conn, pan) == (10_000, 10_000)

    run(db_url, body)


async def _waiting_for_locks(conn: Any, n: int) -> None:
    """Until ``n`` backends wait for a lock (a writer blocked behind the test's row lock)."""
    for _ in range(500):
        if await conn.fetchval("SELECT count(DISTINCT pid) FROM pg_locks WHERE NOT granted") >= n:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{n} writers never queued for the row lock")


def test_batch_statements_run_on_generic_index_plans(db_url: str) -> None:
    """The batch's statements are planned once per connection, and never into a sequential scan.

    They are planned while the tables are still empty, where a scan looks cheapest; a cached plan that
    scanned auth_requests or transfers would then slow every batch down as the tables grow.
    """

    async def body(conn: Any) -> None:
        pan, *_ = await programme(conn)
        ledger = Ledger()
        for amount in (1_000, 2_000, 3_000):
            decisions = await post(conn, ledger, req(Txn.TOPUP, pan, amount), req(Txn.PURCHASE, pan, 10))
            assert codes(decisions) == ["00", "00"]
        plans = await conn.fetch(
            "SELECT statement, generic_plans, custom_plans FROM pg_prepared_statements"
            " WHERE statement = ANY($1::text[])",
            [_READ_SQL, _WRITE_SQL],
        )
        assert len(plans) == 2
        for p in plans:
            assert p["custom_plans"] == 0 and p["generic_plans"] >= 3, p

        await conn.execute(_BATCH_BEGIN)
        try:
            for name, sql, args in (
                ("r", _READ_SQL, "'{}', '{}'"),
                ("w", _WRITE_SQL, "'[]', '[]'" + ", '{}'" * 20 + ", '[]', '[]'" + ", NULL" * 8),  # no seal
            ):
                await conn.execute(f"PREPARE {name} AS {sql}")
                plan = "\n".join(r[0] for r in await conn.fetch(f"EXPLAIN EXECUTE {name}({args})"))
                assert "Seq Scan" not in plan, plan
        finally:
            await conn.execute("ROLLBACK")

    run(db_url, body)


def test_every_decline_keeps_its_reason(db_url: str) -> None:
    """Issue 15 item 7: auth_requests.reason names why (host.rules.REASONS); an approval has none."""

    async def body(conn: Any) -> None:
        pan, poor, _ = await programme(conn, code="WHY", daily_amount_limit=1_500)
        await conn.execute("UPDATE products SET pin_required = true WHERE code = 'WHY'")
        expiry = await conn.fetchval("SELECT expiry FROM cards WHERE pan_hash = $1", fake_hash(pan))
        wrong = f"{(int(expiry[:2]) + 1) % 100:02d}{expiry[2:]}"  # a year later: the card is valid
        ledger = Ledger()
        load = req(Txn.TOPUP, pan, 5_000)
        ok = req(Txn.PURCHASE, pan, 1_000, pin=Pin.OK)
        broke = req(Txn.PURCHASE, poor, 100, pin=Pin.OK)
        no_pin = req(Txn.PURCHASE, pan, 100)
        bad_pin = req(Txn.PURCHASE, pan, 100, pin=Pin.BAD)
        mismatch = req(Txn.PURCHASE, pan, 100, pin=Pin.OK, expiry=wrong)
        over = req(Txn.PURCHASE, pan, 600, pin=Pin.OK)
        unknown = req(Txn.PURCHASE, "6200000000000000000", 1)
        ds = await post(conn, ledger, load, ok, broke, no_pin, bad_pin, mismatch, over, unknown)
        assert codes(ds) == ["00", "00", "51", "55", "55", "14", "61", "14"]
        stored = dict(
            await conn.fetch(
                "SELECT key, reason FROM auth_requests WHERE key = ANY($1::text[])",
                [r.key for r in (load, ok, broke, no_pin, bad_pin, mismatch, over, unknown)],
            )
        )
        assert [stored[r.key] for r in (load, ok, broke, no_pin, bad_pin, mismatch, over, unknown)] == [
            None,
            None,
            "insufficient_funds",
            "pin_missing",
            "pin_wrong",
            "expiry_mismatch",
            "daily_amount_limit",
            "card_unknown",
        ]
        assert [d.reason for d in ds[2:4]] == ["insufficient_funds", "pin_missing"]

    run(db_url, body)
