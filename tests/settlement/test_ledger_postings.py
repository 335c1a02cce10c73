"""Settlement postings in the host ledger: a run moves merchant payable -> settled (and the fee to its
earners) as settlement transfers, `ledger check` accepts them, a re-run posts nothing twice, and a
hand-corrupted settlement transfer is named by the check that guards it."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st

from host.check import CHECKS, run_checks
from host.clearing import emit
from ops.cli import cli
from settlement.cycles import Cycle
from settlement.fees import FeeSchedule
from settlement.importer import import_file
from settlement.postings import Payable, merchant_payable, pair_legs, post_payout
from settlement.postings import check_postings as settlement_check
from settlement.run import run_settlement
from settlement.schedules import add_fee_schedule
from specs.clearing import business_date_of, write_file
from tests.settlement.db import db
from tests.settlement.factories import detail, header
from tests.settlement.ledger_seed import seed_payables

TZ, CUTOVER = "Asia/Shanghai", "23:00"


async def failing(conn: Any) -> dict[str, list[str]]:
    """The ledger checks that fail, seen from inside the caller's (uncommitted) transaction."""
    out = {}
    for name, sql in CHECKS.items():
        offenders = [str(r[0]) for r in await conn.fetch(sql)]
        if offenders:
            out[name] = offenders
    return out


async def settlement_legs(conn: Any, reference: str) -> list[Any]:
    return list(await conn.fetch(
        "SELECT t.key, t.amount, t.card_id, d.kind AS dk, d.part AS dpart, c.kind AS ck, c.party "
        "FROM transfers t JOIN accounts d ON d.id = t.debit_account_id "
        "JOIN accounts c ON c.id = t.credit_account_id "
        "WHERE t.code = 'settlement' AND t.original_key = $1 ORDER BY t.id", reference))


def test_pair_legs_and_take() -> None:
    legs = pair_legs([(1, 70), (2, 30)], [(10, 90), (11, 10)])
    assert [(g.debit, g.credit, g.amount) for g in legs] == [(1, 10, 70), (2, 10, 20), (2, 11, 10)]
    with pytest.raises(AssertionError):
        pair_legs([(1, 5)], [(2, 6)])
    p = Payable(1, "156", [(100, 50), (101, -20), (102, 80)])
    assert p.total == 110 and p.take(100) == [(100, 50), (102, 50)]


@given(st.lists(st.integers(1, 10**9), min_size=1, max_size=6),
       st.lists(st.integers(1, 10**9), min_size=1, max_size=6))
def test_legs_move_exactly_each_side(debits: list[int], weights: list[int]) -> None:
    total = sum(debits)
    credits = [w * total // sum(weights) for w in weights]
    credits[0] += total - sum(credits)
    credits = [c for c in credits if c > 0]
    legs = pair_legs([(i, a) for i, a in enumerate(debits)], [(100 + j, a) for j, a in enumerate(credits)])
    assert all(g.amount > 0 for g in legs) and len(legs) <= len(debits) + len(credits) - 1
    assert [sum(g.amount for g in legs if g.debit == i) for i in range(len(debits))] == debits
    assert [sum(g.amount for g in legs if g.credit == 100 + j) for j in range(len(credits))] == credits


@given(st.lists(st.integers(-10**6, 10**6), min_size=1, max_size=16), st.data())
def test_take_never_leaves_a_sub_account_below_zero(balances: list[int], data: st.DataObject) -> None:
    payable = Payable(1, "156", list(enumerate(balances)))
    if payable.total <= 0:
        return
    gross = data.draw(st.integers(1, payable.total))
    taken = payable.take(gross)
    assert sum(a for _, a in taken) == gross
    assert all(0 < a <= balances[i] for i, a in taken)


def test_run_posts_payable_to_settled_in_the_ledger(db_url: str, tmp_path: Path) -> None:
    """Real postings (host.ledger.Ledger) -> clearing file from the ledger -> settle: the payout is in the
    ledger, the payable is emptied sub-account by sub-account, every check passes; a re-run adds nothing."""

    async def work(conn: Any) -> None:
        await seed_payables(conn, {"LPA": 100_000}, parts=(0, 5))
        await seed_payables(conn, {"LPB": 20_000}, parts=(3,))
        await add_fee_schedule(conn, FeeSchedule("LPA", "v1", date(2026, 1, 1), rate_bp=100,
                                                 issuer_share_bp=2000, acquirer_share_bp=3000,
                                                 platform_share_bp=5000))
        first, last = await conn.fetchrow("SELECT min(created_at), max(created_at) FROM transfers")
        day = business_date_of(first, CUTOVER, TZ)
        if business_date_of(last, CUTOVER, TZ) != day:
            pytest.skip("the postings straddle a cut-over (run at 23:00 Shanghai); try again")
        emitted = await emit(conn, day, issuer_id="48880000", directory=tmp_path, cutover=CUTOVER,
                             timezone=TZ, now=datetime.now(UTC) + timedelta(days=2))
        assert (await import_file(conn, emitted.path)).imported
        transfers_before = await conn.fetchval("SELECT count(*) FROM transfers")

        run = await run_settlement(conn, day + timedelta(days=1), Cycle())
        paid = {p.merchant_id: p for p in run.payouts}
        assert set(paid) == {"LPA", "LPB"}
        a, b = paid["LPA"], paid["LPB"]
        assert (a.gross, a.fee, a.net) == (100_000, 1000, 99_000)  # 1 % of two purchases of 50,000
        assert (b.gross, b.fee, b.net) == (20_000, 0, 20_000)  # no rate card, host fee rate 0

        legs = await settlement_legs(conn, a.reference)
        assert all(g["card_id"] is None and g["key"].startswith(f"settle:{a.reference}:") for g in legs)
        assert sum(g["amount"] for g in legs if g["dk"] == "merchant") == 100_000
        assert {g["dpart"] for g in legs if g["dk"] == "merchant"} == {0, 5}  # both sub-accounts
        assert sum(g["amount"] for g in legs if g["ck"] == "settled") == 99_000
        assert {g["party"]: g["amount"] for g in legs if g["ck"] == "fee_income"} == {
            "issuer": 200, "acquirer:48881111": 300, "platform": 500}
        settled = await conn.fetchrow(
            "SELECT a.credits_posted, a.debits_posted FROM accounts a "
            "JOIN merchants m ON m.id = a.merchant_id "
            "WHERE m.merchant_id = 'LPA' AND a.kind = 'settled'")
        assert tuple(settled) == (99_000, 0)
        payable = await conn.fetch(
            "SELECT credits_posted - debits_posted AS b FROM accounts a "
            "JOIN merchants m ON m.id = a.merchant_id "
            "WHERE m.merchant_id IN ('LPA', 'LPB') AND a.kind = 'merchant'")
        assert {r["b"] for r in payable} == {0}  # exactly what the file held was paid out
        assert [r.name for r in await run_checks(conn) if not r.ok] == []
        assert await settlement_check(conn) == []

        # a re-run (same file again, run again) posts nothing twice
        transfers_after = await conn.fetchval("SELECT count(*) FROM transfers")
        assert transfers_after > transfers_before
        assert not (await import_file(conn, emitted.path)).imported
        again = await run_settlement(conn, day + timedelta(days=5), Cycle())
        assert not [p for p in again.payouts if p.merchant_id in ("LPA", "LPB")]
        assert await conn.fetchval("SELECT count(*) FROM transfers") == transfers_after
        assert await conn.fetchval("SELECT count(*) FROM ledger_settlements WHERE reference = $1",
                                   a.reference) == 1

    db(db_url, work)
    res = CliRunner().invoke(cli, ["ledger", "check"], env={"PAYSWITCH_DATABASE_URL": db_url})
    assert res.exit_code == 0, res.output
    assert "OK     settlement_backed_by_run" in res.output
    assert "OK     settlement_within_payable" in res.output


def test_what_the_ledger_cannot_pay_is_carried(db_url: str, tmp_path: Path) -> None:
    async def work(conn: Any) -> None:
        await seed_payables(conn, {"LPC": 1_000})
        day = date(2026, 11, 24)
        path, _ = write_file(tmp_path, header(day, "77770000"), [
            detail(1, merchant_id="LPC", amount=5_000), detail(2, merchant_id="LPX", amount=700)])
        assert (await import_file(conn, path)).imported
        before = await conn.fetchval("SELECT count(*) FROM transfers")
        run = await run_settlement(conn, day + timedelta(days=1), Cycle())
        assert not [p for p in run.payouts if p.merchant_id in ("LPC", "LPX")]
        reasons = {c.merchant_id: c.reason for c in run.carried}
        assert "posted payable in the host ledger 1000 is below the gross 5000" in reasons["LPC"]
        assert "not in the host ledger" in reasons["LPX"]
        assert await conn.fetchval("SELECT count(*) FROM transfers") == before
        assert [r.name for r in await run_checks(conn) if not r.ok] == []

    db(db_url, work)


def test_corrupted_settlement_transfers_are_named(db_url: str, tmp_path: Path) -> None:
    async def work(conn: Any) -> None:
        await seed_payables(conn, {"LPD": 10_000})
        day = date(2026, 11, 20)
        path, _ = write_file(tmp_path, header(day, "88880000"), [detail(1, merchant_id="LPD", amount=10_000)])
        assert (await import_file(conn, path)).imported
        run = await run_settlement(conn, day + timedelta(days=1), Cycle())
        (payout,) = [p for p in run.payouts if p.merchant_id == "LPD"]
        assert await failing(conn) == {}
        ref = payout.reference
        payable, settled = await conn.fetchrow(
            "SELECT max(a.id) FILTER (WHERE a.kind = 'merchant' AND a.part = 0), "
            "max(a.id) FILTER (WHERE a.kind = 'settled') "
            "FROM accounts a JOIN merchants m ON m.id = a.merchant_id "
            "WHERE m.merchant_id = 'LPD'")

        async def forged(key: str, original: str, amount: int) -> None:
            """A settlement transfer written by hand, with the account sums kept consistent."""
            await conn.execute(
                "INSERT INTO transfers (key, debit_account_id, credit_account_id, amount, currency, phase, "
                "code, original_key) VALUES ($1, $2, $3, $4, '156', 'single', 'settlement', $5)",
                key, payable, settled, amount, original)
            await conn.execute("UPDATE accounts SET debits_posted = debits_posted + $2 WHERE id = $1",
                               payable, amount)
            await conn.execute("UPDATE accounts SET credits_posted = credits_posted + $2 WHERE id = $1",
                               settled, amount)

        class Undo(Exception):
            pass

        async def corrupted(damage: Callable[[], Awaitable[None]]) -> tuple[dict[str, list[str]], list[str]]:
            seen: dict[str, list[str]] = {}
            problems: list[str] = []
            try:
                async with conn.transaction():
                    await damage()
                    seen.update(await failing(conn))
                    problems.extend(await settlement_check(conn))
                    raise Undo
            except Undo:
                pass
            return seen, problems

        # 1. a settlement transfer no run stands behind
        seen, _ = await corrupted(lambda: forged("settle:BOGUS:001", "BOGUS", 1))
        assert seen["settlement_backed_by_run"] == ["settle:BOGUS:001"]
        assert seen["settlement_within_payable"] == ["settle:BOGUS:001"]  # the payable was already empty

        # 2. a backed settlement that takes more than the merchant's payable held
        async def overdraw() -> None:
            merchant_ref = await conn.fetchval("SELECT id FROM merchants WHERE merchant_id = 'LPD'")
            await conn.execute("INSERT INTO ledger_settlements (reference, run_id, merchant_id, currency, "
                               "gross, fee, net) VALUES ('OVER', 0, $1, '156', 5, 0, 5)", merchant_ref)
            await forged("settle:OVER:001", "OVER", 5)

        seen, problems = await corrupted(overdraw)
        assert seen == {"settlement_within_payable": ["settle:OVER:001"]}
        assert problems == ["ledger settlement OVER has no payout"]

        # 3. a real settlement transfer's amount changed behind the append-only trigger
        async def tamper() -> None:
            await conn.execute("ALTER TABLE transfers DISABLE TRIGGER transfers_append_only")
            await conn.execute("UPDATE transfers SET amount = amount + 1 WHERE original_key = $1 "
                               "AND key = (SELECT min(key) FROM transfers WHERE original_key = $1)", ref)

        seen, problems = await corrupted(tamper)
        assert seen["settlement_backed_by_run"] == [f"payout:{ref}"]
        assert "accounts_match_entries" in seen
        assert any(ref in p for p in problems)

        # 4. a card posting into a settled account
        async def misroute() -> None:
            card = await conn.fetchval("SELECT min(id) FROM cards")
            await conn.execute(
                "INSERT INTO transfers (key, debit_account_id, credit_account_id, amount, currency, phase, "
                "code, card_id) VALUES ('misrouted', $1, $2, 1, '156', 'single', 'purchase', $3)",
                payable, settled, card)

        seen, _ = await corrupted(misroute)
        assert "misrouted" in seen["settlement_backed_by_run"]
        assert await failing(conn) == {}  # all undone

    db(db_url, work)


def test_a_run_waits_for_postings_in_flight(db_url: str, tmp_path: Path) -> None:
    """A refund debiting the payable, its transfer inserted but not committed when the run starts: the run
    waits for it (LOCK transfers IN SHARE MODE) and sees the payable after it, so it carries the merchant
    instead of settling money the refund took (which settlement_within_payable would name)."""

    async def work() -> None:
        setup = await asyncpg.connect(db_url)
        host = await asyncpg.connect(db_url)
        try:
            await seed_payables(setup, {"LPE": 10_000})
            day = date(2026, 11, 18)
            path, _ = write_file(tmp_path, header(day, "99990000"),
                                 [detail(1, merchant_id="LPE", amount=10_000)])
            assert (await import_file(setup, path)).imported
            card, card_acct, payable = await setup.fetchrow(
                "SELECT c.id, c.account_id, a.id FROM cards c, accounts a "
                "JOIN merchants m ON m.id = a.merchant_id "
                "WHERE m.merchant_id = 'LPE' AND a.kind = 'merchant' AND a.part = c.part "
                "AND c.pan_masked LIKE '%0000' ORDER BY c.id DESC LIMIT 1")
            refund = host.transaction()
            await refund.start()
            key = "48881111:1118000000:000001:TSEED:0200"
            await host.execute(
                "INSERT INTO auth_requests (key, mti, txn, card_id, acquirer_id, stan, transmitted, amount, "
                "currency, response_code, posted) VALUES ($1, '0200', 'refund', $2, '48881111', '000001', "
                "'1118000000', 4000, '156', '00', true)", key, card)
            await host.execute(
                "INSERT INTO transfers (key, debit_account_id, credit_account_id, amount, currency, phase, "
                "code, card_id) VALUES ($1, $2, $3, 4000, '156', 'single', 'refund', $4)",
                key, payable, card_acct, card)
            # the engine's statement has its transfer id but has not reached the payable row yet
            running = asyncio.create_task(run_settlement(setup, day + timedelta(days=1), Cycle()))
            await asyncio.sleep(0.5)
            assert not running.done()  # held by the refund's transaction
            await host.execute("UPDATE accounts SET debits_posted = debits_posted + 4000 WHERE id = $1",
                               payable)
            await host.execute("UPDATE accounts SET credits_posted = credits_posted + 4000 WHERE id = $1",
                               card_acct)
            await refund.commit()
            run = await asyncio.wait_for(running, 10)
            assert not [p for p in run.payouts if p.merchant_id == "LPE"]
            (carried,) = [c for c in run.carried if c.merchant_id == "LPE"]
            assert "posted payable in the host ledger 6000 is below the gross 10000" in carried.reason
            assert [r.name for r in await run_checks(setup) if not r.ok] == []
        finally:
            await setup.close()
            await host.close()

    asyncio.run(work())


def test_returned_fees_flow_from_the_earners_to_settled(db_url: str) -> None:
    """A payout whose fee is negative (fees returned exceed fees charged): fee income is debited."""

    async def work(conn: Any) -> None:
        await seed_payables(conn, {"LPF": 3_000}, parts=(1, 2))
        tr = conn.transaction()
        await tr.start()
        try:
            payable = await merchant_payable(conn, "LPF")
            assert payable is not None and payable.total == 3_000
            n = await post_payout(conn, 0, "STLTEST-LPF", payable, 2_500, 2_510, -4, {"ACQ9": -1}, -5)
            assert n >= 4
            legs = await settlement_legs(conn, "STLTEST-LPF")
            assert sum(g["amount"] for g in legs if g["dk"] == "merchant") == 2_500
            assert sum(g["amount"] for g in legs if g["ck"] == "settled") == 2_510
            assert await failing(conn) == {}
        finally:
            await tr.rollback()

    db(db_url, work)
