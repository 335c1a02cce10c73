"""The host's own posting engine -> clearing file -> settlement and reconciliation, end to end.

Postings are made by host.ledger.Ledger exactly as for network requests, so this proves the file built
from real postings passes the strict reader and agrees with the ledger."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
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
from host.check import run_checks
from host.clearing import emit
from host.ledger import Ledger
from host.model import Rc, Request, Txn, request_key
from settlement.importer import import_file
from settlement.reconcile import file_records, ledger_records, reconcile
from specs.clearing import business_date_of, read_file

TZ, CUTOVER = "Asia/Shanghai", "23:00"


def test_engine_postings_make_a_valid_clearing_file(db_url: str, tmp_path: Path) -> None:
    async def work(conn: Any) -> None:
        await add_product(conn, ProductSpec("GIFTX", "reloadable", pin_required=False), "623457", 16)
        await add_merchant(conn, "M200", "Shop", "5411", acquirer_id="48881111", fee_rate_bps=50)
        await add_store(conn, "M200", "S07")
        await add_terminal(conn, "T0000200", "M200", "3des", "U" + "1" * 32, "111111", store="S07")
        (card,) = await insert_cards(
            conn, "GIFTX", [NewCard("hx", "ex", "623457******9876", "1234", 0)], state="active"
        )
        ledger = Ledger()
        n = 0

        def req(txn: Txn, amount: int, mti: str = "0200", **kw: Any) -> Request:
            nonlocal n
            n += 1
            stan, transmitted = f"{n:06d}", f"1110{n:06d}"
            return Request(
                request_key("48881111", transmitted, stan, "T0000200", mti),
                mti,
                txn,
                acquirer_id="48881111",
                stan=stan,
                transmitted=transmitted,
                terminal_id="T0000200",
                merchant_id="M200",
                rrn=f"{n:012d}",
                local_time=f"1110{n:06d}",
                amount=amount,
                currency="156",
                card_id=card,
                **kw,
            )

        load = Request(f"admin:{card}:1", "0200", Txn.ADMIN_LOAD, amount=100000, currency="156", card_id=card)
        p1, p2, p3 = req(Txn.PURCHASE, 12345), req(Txn.PURCHASE, 5000), req(Txn.PURCHASE, 7000)
        steps = [
            [load],
            [p1],
            [p2],
            [p3],
            [req(Txn.REFUND, 2000, original_rrn=p1.rrn)],
            [req(Txn.VOID, 5000, original_rrn=p2.rrn)],
            [req(Txn.REVERSAL, 7000, mti="0400", original_key=p3.key, original_mti="0200")],
            [req(Txn.TOPUP, 3000)],
        ]
        for batch in steps:
            decisions = await ledger.post_batch(conn, batch)
            assert [d.code for d in decisions] == [Rc.APPROVED], (batch[0].txn, decisions)
        assert all(r.ok for r in await run_checks(conn))

        now = datetime.now(UTC)
        first, last = await conn.fetchrow("SELECT min(created_at), max(created_at) FROM transfers")
        day = business_date_of(first, CUTOVER, TZ)
        if business_date_of(last, CUTOVER, TZ) != day:
            pytest.skip("the postings straddle a cut-over (run at 23:00 Shanghai); try again")
        result = await emit(
            conn,
            day,
            issuer_id="48880000",
            directory=tmp_path,
            cutover=CUTOVER,
            timezone=TZ,
            now=now + timedelta(days=2),
        )
        _, details, trailer = read_file(result.path)  # the strict reader accepts it
        assert [d.txn_type for d in details] == [
            "TOPUP",
            "PURCHASE",
            "PURCHASE",
            "PURCHASE",
            "REFUND",
            "VOID",
            "REVERSAL",
            "TOPUP",
        ]
        assert [d.sign for d in details] == ["C", "D", "D", "D", "C", "C", "C", "C"]
        assert details[4].original_posting_id == details[1].posting_id
        assert details[6].original_posting_id == details[3].posting_id
        assert details[1].fee == 62 and details[1].store_id == "S07"  # 0.5 % of 123.45, half up
        assert trailer.total_debit == 12345 + 5000 + 7000

        imported = await import_file(conn, result.path)
        # no rate card: the host's fee; the void and the reversal return their originals' fees exactly
        assert imported.merchant_fee == 62 + 25 + 35 - 10 - 25 - 35
        start, end = result.window
        report = reconcile(None, await ledger_records(conn, start, end), file_records(result.path))
        assert report.exceptions == [] and report.matched == 8

    async def go() -> None:
        conn = await asyncpg.connect(db_url)
        try:
            await work(conn)
        finally:
            await conn.close()

    asyncio.run(go())
