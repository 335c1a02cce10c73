"""host.clearing: clearing files emitted from the ledger, settled and reconciled end to end.

Reference data goes in through host.catalog; postings are written as ledger rows with chosen times so
the cut-over can be tested to the second (the engine stamps now())."""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from host.catalog import (
    NewCard,
    ProductSpec,
    add_merchant,
    add_product,
    add_store,
    add_terminal,
    insert_cards,
)
from host.clearing import BeforeProgramme, ClearingEmitError, emit, emit_closed, terminal_local_time
from settlement.importer import import_file
from settlement.reconcile import Category, file_records, ledger_records, reconcile
from specs.clearing import read_file
from tests.settlement.db import db

TZ = "Asia/Shanghai"
CUTOVER = "23:00"
D1, D2 = date(2026, 11, 10), date(2026, 11, 11)  # closed days (the real date matters)


def utc(*a: int) -> datetime:
    return datetime(*a, tzinfo=UTC)


class Host:
    """A merchant with one store and terminal, and one card, plus helpers to post with chosen times."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.n = 0
        self.ids: dict[str, int] = {}

    async def setup(self) -> None:
        c = self.conn
        await add_product(c, ProductSpec("CAMPUS", "reloadable", pin_required=False), "623456", 16)
        await add_merchant(c, "M100", "Canteen", "5812", acquirer_id="48881111", fee_rate_bps=38)
        await add_store(c, "M100", "S01")
        await add_terminal(c, "T0000001", "M100", "3des", "U" + "0" * 32, "000000", store="S01")
        (self.card,) = await insert_cards(
            c, "CAMPUS", [NewCard("h1", "e1", "623456******1234", "1234", 0)], state="active"
        )
        self.card_acct = await c.fetchval("SELECT account_id FROM cards WHERE id = $1", self.card)
        self.merchant_acct = await c.fetchval(
            "SELECT a.id FROM accounts a JOIN merchants m ON m.id = a.merchant_id "
            "WHERE m.merchant_id = 'M100' AND a.part = 0"
        )
        self.funding_acct = await c.fetchval(
            "INSERT INTO accounts (kind, currency, part, no_overdraft) VALUES ('funding', '156', 0, false) "
            "RETURNING id"
        )

    async def post(
        self,
        name: str,
        code: str,
        amount: int,
        at: datetime,
        original: str | None = None,
        local: str = "1110100000",
    ) -> int:
        self.n += 1
        key = f"48881111:{self.n:010d}:{self.n:06d}:T0000001:0200"
        to_card = code in ("refund", "void", "reversal", "admin_load")
        if code == "admin_load":
            debit, credit = self.funding_acct, self.card_acct
        elif to_card:
            debit, credit = self.merchant_acct, self.card_acct
        else:
            debit, credit = self.card_acct, self.merchant_acct
        original_key = (
            None
            if original is None
            else await self.conn.fetchval("SELECT key FROM transfers WHERE id = $1", self.ids[original])
        )
        if code != "admin_load":
            await self.conn.execute(
                "INSERT INTO auth_requests (key, mti, txn, card_id, acquirer_id, terminal_id, merchant_id, "
                "stan, transmitted, rrn, local_time, amount, currency, response_code, auth_id, posted, "
                "received_at) "
                "VALUES ($1, '0200', $2, $3, '48881111', 'T0000001', 'M100', $4, '1110100000', $5, $6, $7, "
                "'156', '00', 'AB1234', true, $8)",
                key,
                code,
                self.card,
                f"{self.n:06d}",
                f"{self.n:012d}",
                local,
                amount,
                at,
            )
        else:
            key = f"admin:{self.n}"
        tid: int = await self.conn.fetchval(
            "INSERT INTO transfers (key, debit_account_id, credit_account_id, amount, currency, phase, code, "
            "card_id, original_key, created_at) VALUES ($1, $2, $3, $4, '156', 'single', $5, $6, $7, $8) "
            "RETURNING id",
            key,
            debit,
            credit,
            amount,
            code,
            self.card,
            original_key,
            at,
        )
        self.ids[name] = tid
        return tid


def test_local_time_year() -> None:
    zone = ZoneInfo(TZ)
    assert terminal_local_time("1231235959", utc(2026, 12, 31, 16, 0, 1), zone) == datetime(
        2026, 12, 31, 23, 59, 59
    )
    assert terminal_local_time("1231235959", utc(2027, 1, 1, 1, 0), zone) == datetime(
        2026, 12, 31, 23, 59, 59
    )
    assert terminal_local_time("0101000001", utc(2026, 12, 31, 15, 59), zone) == datetime(2027, 1, 1, 0, 0, 1)
    assert terminal_local_time("0230120000", utc(2026, 2, 1), zone) is None
    assert terminal_local_time("", utc(2026, 2, 1), zone) is None


def test_emit_settle_reconcile(db_url: str, tmp_path: Path) -> None:
    out = tmp_path / "clearing"

    async def work(conn: Any) -> None:
        h = Host(conn)
        await h.setup()
        # window of D1 with cut-over 23:00 Shanghai: [2026-11-09 15:00Z, 2026-11-10 15:00Z)
        await h.post("before", "purchase", 700, utc(2026, 11, 9, 14, 59, 59))  # D0
        await h.post("load", "admin_load", 100000, utc(2026, 11, 9, 15, 0, 0))  # D1, first second
        await h.post("p1", "purchase", 10000, utc(2026, 11, 10, 2, 0, 0), local="1110100000")
        await h.post("r1", "refund", 2500, utc(2026, 11, 10, 14, 59, 59), original="p1")  # D1, last second
        await h.post("p2", "purchase", 4000, utc(2026, 11, 10, 15, 0, 0))  # D2: across the cut-over
        await h.post("rev1", "reversal", 10000, utc(2026, 11, 10, 15, 30), original="p1")  # D2
        await h.post("v2", "void", 4000, utc(2026, 11, 11, 3, 0), original="p2")  # D2

        e1 = await emit(conn, D1, issuer_id="48880000", directory=out, cutover=CUTOVER, timezone=TZ)
        header, details, trailer = read_file(e1.path)
        assert e1.path.name == "CLR_48880000_20261110_01.txt"
        assert header.created_at == utc(2026, 11, 10, 15) and header.currency == "156"
        assert [(d.posting_id, d.txn_type, d.sign) for d in details] == [
            (h.ids["load"], "TOPUP", "C"),
            (h.ids["p1"], "PURCHASE", "D"),
            (h.ids["r1"], "REFUND", "C"),
        ]
        p1 = details[1]
        assert (p1.merchant_id, p1.store_id, p1.terminal_id, p1.acquirer_id) == (
            "M100",
            "S01",
            "T0000001",
            "48881111",
        )
        assert (p1.fee, p1.fee_rate_version) == (38, "1")  # 0.38 % of 100.00
        assert p1.masked_pan == "623456******1234" and p1.local_time == datetime(2026, 11, 10, 10, 0)
        assert details[2].original_posting_id == h.ids["p1"] and details[2].fee == 10  # 9.5 rounds up
        assert (details[0].merchant_id, details[0].fee, details[0].terminal_id) == ("", 0, "")
        assert (trailer.count, trailer.total_debit, trailer.total_credit) == (3, 10000, 102500)

        first = e1.path.read_bytes()
        again = await emit(conn, D1, issuer_id="48880000", directory=out, cutover=CUTOVER, timezone=TZ)
        assert again.unchanged and e1.path.read_bytes() == first
        assert sorted(p.name for p in out.iterdir()) == [e1.path.name]  # no temporary left behind

        e2 = await emit(conn, D2, issuer_id="48880000", directory=out, cutover=CUTOVER, timezone=TZ)
        _, details2, _ = read_file(e2.path)
        assert [d.txn_type for d in details2] == ["PURCHASE", "REVERSAL", "VOID"]
        assert details2[1].original_posting_id == h.ids["p1"] and details2[1].sign == "C"

        # the settlement job takes the host's files: no rate card, so the host's fee in the file is used
        r1 = await import_file(conn, e1.path)
        r2 = await import_file(conn, e2.path)
        assert r1.merchant_fee == 38 - 10 and r2.merchant_fee == 15 - 38 - 15
        assert await conn.fetchval("SELECT sum(fee) FROM settlement_items WHERE merchant_id = 'M100'") == -10

        # three-way (no journal yet): everything matches; then a posting sneaks into the closed day
        start, end = e1.window
        report = reconcile(None, await ledger_records(conn, start, end), file_records(e1.path))
        assert report.exceptions == [] and report.matched == 3
        late = await h.post("late", "purchase", 999, utc(2026, 11, 10, 12, 0))
        report = reconcile(None, await ledger_records(conn, start, end), file_records(e1.path))
        assert [(e.category, e.any().posting_id) for e in report.exceptions] == [
            (Category.IN_LEDGER_NOT_IN_FILE, late)
        ]
        with pytest.raises(ClearingEmitError, match="exists with different content"):
            await emit(conn, D1, issuer_id="48880000", directory=out, cutover=CUTOVER, timezone=TZ)
        assert e1.path.read_bytes() == first

        with pytest.raises(ClearingEmitError, match="still open"):
            await emit(
                conn, date(2099, 1, 1), issuer_id="48880000", directory=out, cutover=CUTOVER, timezone=TZ
            )
        # before the programme's first business date (its first posting, D0): no file, said in one line
        with pytest.raises(BeforeProgramme, match=r"^2026-01-01 is before the programme's first business "
                           r"date 2026-11-09: no file$"):
            await emit(conn, date(2026, 1, 1), issuer_id="48880000", directory=out, cutover=CUTOVER,
                       timezone=TZ)
        assert not list(out.glob("CLR_*_20260101_*"))
        empty = await emit(  # a day of the programme without postings still gets its file
            conn, date(2026, 11, 12), issuer_id="48880000", directory=out, cutover=CUTOVER, timezone=TZ
        )
        assert empty.trailer.count == 0 and read_file(empty.path)[1] == []

    db(db_url, work)

    # the CLI: the late posting shows up; a journal approval that was never posted too
    from click.testing import CliRunner

    from ops.cli import cli

    journal = tmp_path / "journal.csv"
    journal.write_text(
        "terminal_id,rrn,stan,txn_type,amount,status\nT0000001,000000000077,000077,PURCHASE,500,approved\n"
    )
    res = CliRunner().invoke(
        cli,
        [
            "--json",
            "settlement",
            "reconcile",
            str(out / "CLR_48880000_20261110_01.txt"),
            "--journal",
            str(journal),
            "--output-dir",
            str(tmp_path / "rec"),
        ],
        env={"PAYSWITCH_DATABASE_URL": db_url},
        catch_exceptions=False,
    )
    assert res.exit_code == 0, res.output
    import json

    summary = json.loads(res.output)
    assert summary["exceptions"]["in_ledger_not_in_file"] == 1
    assert summary["exceptions"]["approved_not_posted"] == 1
    assert summary["matched"] == 1  # p1 and r1 have no journal record: posted_not_in_journal
    assert summary["exceptions"]["posted_not_in_journal"] == 3
    rows = (tmp_path / "rec" / "reconcile_CLR_48880000_20261110_01.csv").read_text().splitlines()
    assert len(rows) == 1 + 5


def test_emit_closed_catches_up(db_url: str, tmp_path: Path) -> None:
    async def work(conn: Any) -> None:
        now = utc(2026, 11, 12, 15, 30)  # 23:30 in Shanghai: 2026-11-12 has just closed
        kw: dict[str, Any] = {
            "issuer_id": "48880000",
            "directory": tmp_path,
            "cutover": CUTOVER,
            "timezone": TZ,
        }
        # the programme exists from 2026-11-01 (before it: no file, see tests/settlement/test_close_day)
        await add_product(conn, ProductSpec("CATCHUP", "reloadable", pin_required=False), "623499", 16)
        await conn.execute("UPDATE products SET created_at = $1 WHERE code = 'CATCHUP'", utc(2026, 11, 1))
        first = await emit_closed(conn, now, lookback_days=3, **kw)
        assert [r.business_date for r in first] == [
            date(2026, 11, 10),
            date(2026, 11, 11),
            date(2026, 11, 12),
        ]
        assert await emit_closed(conn, now, lookback_days=3, **kw) == []
        later = await emit_closed(conn, utc(2026, 11, 13, 15, 0), lookback_days=3, **kw)
        assert [r.business_date for r in later] == [date(2026, 11, 13)]

    db(db_url, work)
