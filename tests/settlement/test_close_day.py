"""Settlement on day one (issue 15 item 4, fees of item 8, settlement runs of item 1): `clearing close-day`
closes the current business date early, after which `clearing emit` and `settle` run at once and the
date is paid out on the daily cycle the same day; no file before the programme; `settlement run
list|show`; the one fee rule shown by `settlement fees`. Real commands (click, in process) against the
real database; postings made by the host's engine."""

from __future__ import annotations

import asyncio
import getpass
import json
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from click.testing import CliRunner, Result

from host.clearing import CloseDayError, close_day
from ops.cli import cli
from settlement.cycles import Cycle, closed_early_on, settlement_date
from specs.clearing import business_date_of, business_window, read_file
from tests.settlement.db import db
from tests.settlement.ledger_seed import seed_payables

TZ, CUTOVER = "Asia/Shanghai", "23:00"
MERCHANT = "M0CLOSE"
ISSUER = "48880000"  # host.institution_id's default


def _env(tmp_path: Path, db_url: str) -> dict[str, str]:
    (tmp_path / "empty.toml").write_text("")
    return {"PAYSWITCH_CONFIG": str(tmp_path / "empty.toml"), "PAYSWITCH_DATABASE_URL": db_url,
            "PAYSWITCH_CLEARING_DIRECTORY": str(tmp_path / "clearing"),
            "PAYSWITCH_SETTLEMENT_OUTPUT_DIR": str(tmp_path / "settlement"),
            "PAYSWITCH_CLEARING_CUTOVER": CUTOVER, "PAYSWITCH_CLEARING_TIMEZONE": TZ}


def run(env: dict[str, str], *args: str) -> Result:
    return CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)


def ok(env: dict[str, str], *args: str) -> Any:
    r = run(env, "--json", *args)
    assert r.exit_code == 0, r.output
    return json.loads(r.output)


def refused(env: dict[str, str], *args: str) -> str:
    r = run(env, *args)
    assert r.exit_code == 1 and "Traceback" not in r.output, r.output
    line = r.output.strip()
    assert "\n" not in line, line
    return line


# -- the business date with early closes (pure) --------------------------------------------------------
def test_window_moves_with_an_early_close() -> None:
    d = date(2026, 12, 2)
    c1 = datetime(2026, 12, 2, 3, 0, tzinfo=UTC)  # 11:00 Shanghai on D: D closed early
    c2 = datetime(2026, 12, 2, 5, 0, tzinfo=UTC)  # 13:00: D+1 closed early as well (a test system)
    s0, e0 = business_window(d, CUTOVER, TZ)
    assert business_window(d, CUTOVER, TZ, {d: c1}) == (s0, c1)
    assert business_window(d + timedelta(days=1), CUTOVER, TZ, {d: c1}) == (
        c1, business_window(d + timedelta(days=1), CUTOVER, TZ)[1])
    closes = {d: c1, d + timedelta(days=1): c2}
    assert business_window(d + timedelta(days=1), CUTOVER, TZ, closes) == (c1, c2)
    assert business_window(d + timedelta(days=2), CUTOVER, TZ, closes)[0] == c2
    for instant, expected in [
        (s0, d), (c1 - timedelta(microseconds=1), d), (c1, d + timedelta(days=1)),
        (c2 - timedelta(seconds=1), d + timedelta(days=1)), (c2, d + timedelta(days=2)),
        (e0, d + timedelta(days=2)), (e0 + timedelta(days=1), d + timedelta(days=2)),
        (e0 + timedelta(days=1, hours=1), d + timedelta(days=2)),  # D+2 runs to its own cut-over
        (e0 + timedelta(days=2), d + timedelta(days=3)),
    ]:
        assert business_date_of(instant, CUTOVER, TZ, closes) == expected, instant
        start, end = business_window(expected, CUTOVER, TZ, closes)
        assert start <= instant < end
    assert business_date_of(c1, CUTOVER, TZ) == d  # without the closes: the cut-over alone


def test_closed_early_is_due_the_day_it_closed() -> None:
    d = date(2026, 12, 2)
    daily = Cycle()
    cut = business_window(d, CUTOVER, TZ)[1]
    assert closed_early_on(d, cut, CUTOVER, TZ) is None  # closed by the cut-over: not early
    assert closed_early_on(d, None, CUTOVER, TZ) is None
    early = closed_early_on(d, datetime(2026, 12, 2, 3, tzinfo=UTC), CUTOVER, TZ)
    assert early == d
    assert settlement_date(d, daily) == d + timedelta(days=1)
    assert settlement_date(d, daily, early) == d  # due the same day
    # the next date closed on the same calendar day (the demo twice in a day): due that day too
    d1 = d + timedelta(days=1)
    early1 = closed_early_on(d1, datetime(2026, 12, 2, 5, tzinfo=UTC), CUTOVER, TZ)
    assert settlement_date(d1, daily, early1) == d
    weekly = Cycle("weekly", 1)
    assert settlement_date(d, weekly, early) == settlement_date(d, weekly)  # weekly keeps its day


# -- commands ------------------------------------------------------------------------------------------
def test_no_programme_no_file(db_url: str, tmp_path: Path) -> None:
    """Before any product or posting, and before the programme's first business date: nothing written."""
    env = _env(tmp_path, db_url)
    out = ok(env, "clearing", "emit", "--date", "2026-11-20")
    assert out["written"] is False and out["path"] is None
    r = run(env, "clearing", "emit", "--date", "2026-11-20")
    assert r.exit_code == 0 and r.output.strip() == (
        "2026-11-20: no product and no posting yet, the programme has no business date: no file")
    assert not (tmp_path / "clearing").exists() or not list((tmp_path / "clearing").iterdir())


def test_close_day_emit_settle_the_same_day(db_url: str, tmp_path: Path) -> None:
    env = _env(tmp_path, db_url)
    db(db_url, lambda c: seed_payables(c, {MERCHANT: 12_345}))  # a purchase of 123.45 now, at MERCHANT
    today = business_date_of(datetime.now(UTC), CUTOVER, TZ)
    before = today - timedelta(days=3)

    # before the programme's first business date (its product, made just now): no file, one line
    r = run(env, "clearing", "emit", "--date", str(before))
    assert r.exit_code == 0 and r.output.strip() == (
        f"{before} is before the programme's first business date {today}: no file")
    assert not list((tmp_path / "clearing").glob("CLR_*"))

    line = refused(env, "clearing", "emit", "--date", str(today))
    assert "still open until" in line and "clearing close-day" in line
    line = refused(env, "clearing", "close-day", "--date", str(today + timedelta(days=1)))
    assert line == (f"Error: business date {today + timedelta(days=1)} has not begun: the current business "
                    f"date is {today} (only the current date can be closed early)")
    line = refused(env, "clearing", "close-day", "--date", str(today - timedelta(days=1)))
    assert f"business date {today - timedelta(days=1)} is already closed: by the cut-over at" in line

    closed = ok(env, "clearing", "close-day")
    assert closed["business_date"] == str(today) and closed["next_business_date"] == str(
        today + timedelta(days=1))
    assert closed["closed_by"] == f"cli:{getpass.getuser()}" and closed["closed_at"].endswith("+08:00")
    line = refused(env, "clearing", "close-day", "--date", str(today))
    assert line.startswith(f"Error: business date {today} is already closed: closed early at ")
    assert line.endswith(f"+08:00 by cli:{getpass.getuser()}")
    recorded = db(db_url, lambda c: c.fetchrow("SELECT closed_by, closed_at FROM closed_business_dates"))
    assert recorded["closed_by"] == f"cli:{getpass.getuser()}"

    # a posting after the close belongs to the next business date: the file of today is final
    db(db_url, lambda c: seed_payables(c, {MERCHANT: 1_000}))
    emitted = ok(env, "clearing", "emit", "--date", str(today))
    assert emitted["details"] == 1 + 1 and emitted["total_debit_minor"] == 12_345  # the load + the purchase
    assert emitted["currency"] == "CNY"
    header, details, _ = read_file(Path(emitted["path"]))
    assert header.created_at == recorded["closed_at"].replace(microsecond=0)
    assert [d.amount for d in details if d.txn_type == "PURCHASE"] == [12_345]
    human = run(env, "clearing", "emit").output  # the default date: the last closed one, today
    assert "(already there, identical)" in human and "debits 123.45 CNY" in human, human
    assert "still open" in refused(env, "clearing", "emit", "--date", str(today + timedelta(days=1)))

    # reconciliation draws the same window: the posting after the close is not "in ledger, not in file"
    rec = ok(env, "settlement", "reconcile", emitted["path"], "--output-dir", str(tmp_path / "rec"))
    assert rec["exceptions"].get("in_ledger_not_in_file", 0) == 0 and rec["counts"]["file"] == 2, rec

    # settle without --as-of: today's date, closed early, is due on the daily cycle now
    settled = ok(env, "settle", emitted["path"])
    payouts = settled["run"]["payouts"]
    assert [(p["merchant_id"], p["net_minor"]) for p in payouts] == [(MERCHANT, 12_345)], settled
    assert settled["run"]["payout_total_minor"] == 12_345 and settled["run"]["currency"] == "CNY"
    run_id = settled["run"]["run_id"]

    page = ok(env, "settlement", "run", "list")
    rows = [(r["run_id"], r["payout_count"], r["payout_total_minor"], r["currency"]) for r in page["runs"]]
    assert rows == [(run_id, 1, 12_345, "CNY")] and page["next"] is None
    assert ok(env, "settlement", "runs")["runs"] == page["runs"]
    listed = run(env, "settlement", "run", "list").output
    assert f"{run_id:>6}" in listed and "123.45 CNY" in listed
    shown = ok(env, "settlement", "run", "show", str(run_id))
    assert Path(shown["payout_file"]).is_file() and shown["missing"] == []
    assert Path(shown["payouts"][0]["report"]).is_file()
    assert shown["payouts"][0]["first_business_date"] == str(today)
    text = run(env, "settlement", "run", "show", str(run_id)).output
    assert f"payout file: {shown['payout_file']}" in text and "net 123.45 CNY" in text
    assert "no settlement run 999" in refused(env, "settlement", "run", "show", "999")
    assert ok(env, "settlement", "run", "list", "--after", str(run_id))["runs"] == []
    assert ok(env, "settlement", "check") == {"ok": True}


def test_close_waits_for_transactions_begun_before_it(db_url: str, tmp_path: Path) -> None:
    """A posting carries its transaction's start time: one begun before the close is the closed date's
    however late it commits, so the close waits for it (and gives up, closing nothing, if it lingers)."""

    async def work(conn: Any) -> None:
        other = await asyncpg.connect(db_url)
        try:
            tx = other.transaction()
            await tx.start()
            await other.execute("SELECT 1")
            with pytest.raises(CloseDayError, match="begun before the close are still open"):
                await close_day(conn, cutover="00:00", timezone="UTC", closed_by="test", wait_seconds=0.3)
            mine = "SELECT count(*) FROM closed_business_dates WHERE closed_by = 'test'"
            assert await conn.fetchval(mine) == 0

            async def finish() -> None:
                await asyncio.sleep(0.3)
                await tx.commit()

            done = asyncio.ensure_future(finish())
            closed = await close_day(conn, cutover="00:00", timezone="UTC", closed_by="test", wait_seconds=10)
            await done
            assert closed.closed_by == "test"
        finally:
            await other.close()

    db(db_url, work)


def test_one_fee_rule(db_url: str, tmp_path: Path) -> None:
    env = _env(tmp_path, db_url)
    line = refused(env, "settlement", "fee-add", "NOSUCH", "v1", "--from", "2026-01-01", "--rate-bp", "10")
    assert line == ("Error: merchant NOSUCH does not exist in the host (`payswitch merchant list` shows "
                    "them; add it first, or use '*' for the default rate card)")
    ok(env, "merchant", "add", "M0FEES", "--mcc", "5812", "--fee-bps", "50")
    today = business_date_of(datetime.now(UTC), CUTOVER, TZ)
    fees = ok(env, "settlement", "fees", "M0FEES")
    assert fees["applies"]["source"] == "flat" and fees["applies"]["merchant_fee_bps"] == 50
    assert run(env, "settlement", "fees", "M0FEES").output.strip() == (
        f"applies: no rate card in force on {today}: the host's merchant fee-bps 50 applies (carried in "
        "the clearing file)")
    ok(env, "settlement", "fee-add", "*", "std", "--from", "2026-01-01", "--rate-bp", "60")
    assert run(env, "settlement", "fees", "M0FEES").output.strip().endswith(
        f"applies: default rate card * std from 2026-01-01 applies on {today} (M0FEES has none of its own in "
        "force); merchant fee-bps 50 is overridden")
    added = run(env, "settlement", "fee-add", "M0FEES", "v1", "--from", "2026-01-02", "--rate-bp", "38",
                "--fixed", "0.50", "--min", "1", "--max", "1,000.00")
    assert added.exit_code == 0 and "38 bp + 0.50 CNY, min 1.00 CNY max 1,000.00 CNY" in added.output
    later = today + timedelta(days=30)
    ok(env, "settlement", "fee-add", "M0FEES", "v2", "--from", str(later), "--rate-bp", "40")
    fees = ok(env, "settlement", "fees", "M0FEES")
    assert fees["applies"]["source"] == "merchant" and fees["applies"]["version"] == "v1"
    v1 = next(s for s in fees["schedules"] if s["version"] == "v1")
    assert (v1["fixed_fee_minor"], v1["min_fee_minor"], v1["max_fee_minor"], v1["currency"]) == (
        50, 100, 100_000, "CNY")
    assert fees["applies"]["reason"] == (
        f"rate card v1 from 2026-01-02 applies on {today}; merchant fee-bps 50 is overridden; rate card v2 "
        f"takes over from {later}")
    r = run(env, "settlement", "fee-add", "M0FEES", "v3", "--from", "2026-03-01", "--rate-bp", "1",
            "--fixed", "1.234")
    assert r.exit_code == 2 and "decimals" in r.output
    line = refused(env, "settlement", "fee-add", "M0FEES", "v3", "--from", "2026-03-01", "--rate-bp", "1",
                   "--min", "2", "--max", "1")
    assert line.endswith("max fee 1.00 CNY (--max) is below min fee 2.00 CNY (--min)"), line
