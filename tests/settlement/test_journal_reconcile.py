"""Three-way reconciliation end to end: real terminals -> real switch -> real host -> ledger, the day's
clearing file from the host, and `payswitch settlement reconcile` reading the switch's journal table.

The system (hsm_sim, host and switch processes, set up through the operator CLIs) is the one of
tests/switch/test_host_e2e.py.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg

from host.clearing import emit
from ops.config import load
from settlement.journal_source import journal_available, journal_records, normalise
from settlement.reconcile import APPROVED, TIMED_OUT, UNKNOWN
from specs.clearing import ClearingReader, business_date_of, business_window, write_file
from tests.fixtures.services import run_cli
from tests.switch import test_host_e2e
from tests.switch.terminal import Terminal
from tests.switch.test_host_e2e import MERCHANT, System

system = test_host_e2e.system  # the whole system as a module fixture, shared with the switch's e2e tests


def _reconcile(system: System, path: Path, out: Path, *extra: str) -> dict[str, Any]:
    result = run_cli(["--json", "settlement", "reconcile", str(path), "--output-dir", str(out), *extra],
                     system.env)
    assert result.returncode == 0, result.stderr
    data: dict[str, Any] = json.loads(result.stdout)
    return data


def _exceptions(data: dict[str, Any]) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(Path(data["report"]).read_text())))


def _void(t: Terminal, system: System, sale_msg: dict[str, Any], sale: Any) -> dict[str, Any]:
    void = system.buy(t, 2, int(sale_msg["4"]))
    void.update({"3": "200000", "22": "012", "37": sale.msg["37"], "38": sale.msg["38"],
                 "60": f"23{t.batch:06d}000", "61": f"{t.batch:06d}{sale.msg['11']}"})
    return void


def _refund(t: Terminal, system: System, sale: Any, amount: int) -> dict[str, Any]:
    refund = system.buy(t, 2, amount)
    refund.update({"t": "0220", "3": "200000", "22": "012", "37": sale.msg["37"],
                   "60": f"25{t.batch:06d}000",
                   "61": f"{t.batch:06d}{sale.msg['11']}{time.strftime('%m%d')}"})
    return refund


def test_switch_journal_host_ledger_and_clearing_file_reconcile(system: System, tmp_path: Path) -> None:
    t = system.terminal("3des")
    codes = []
    # purchase; purchase + void; purchase + refund; purchase + terminal reversal; a decline
    for _ in range(2):
        r = t.exchange(system.buy(t, 2, 1111, pin="123456"))
        codes.append(r.code)
    sale_msg = system.buy(t, 2, 2000, pin="123456")
    sale = t.exchange(sale_msg)
    codes += [sale.code, t.exchange(_void(t, system, sale_msg, sale)).code]
    sale = t.exchange(system.buy(t, 2, 3000, pin="123456"))
    codes += [sale.code, t.exchange(_refund(t, system, sale, 1200)).code]
    reversed_msg = system.buy(t, 2, 700, pin="123456")
    codes += [t.exchange(reversed_msg).code, t.exchange(t.reversal_msg(reversed_msg)).code]
    assert codes == ["00"] * 8
    assert t.exchange(system.buy(t, 1, 100, pin="000000")).code == "55"  # wrong PIN: declined
    t.close()

    cfg = load(env={**os.environ, **system.env})
    cutover, zone = cfg.clearing.cutover, cfg.clearing.timezone
    day: date = business_date_of(datetime.now(UTC), cutover, zone)
    start, end = business_window(day, cutover, zone)
    clearing_dir, out = tmp_path / "clearing", tmp_path / "out"

    async def emit_and_count() -> tuple[Path, int]:
        conn = await asyncpg.connect(system.db_url)
        try:
            result = await emit(conn, day, issuer_id=cfg.host.institution_id, directory=clearing_dir,
                                cutover=cutover, timezone=zone, now=end + timedelta(seconds=1))
            journal = [r async for r in journal_records(conn, start, end)]
            return result.path, len(journal)
        finally:
            await conn.close()

    path, journal_count = asyncio.run(emit_and_count())
    clean = _reconcile(system, path, out)
    assert clean["journal"] == {"source": "table", "table": "switch_journal"} and clean["journal_compared"]
    assert clean["exceptions"] == {}, _exceptions(clean)
    assert clean["counts"]["journal"] == journal_count >= 10  # setup purchases, the 8 above, the decline
    assert clean["matched"] == clean["counts"]["ledger"] == clean["counts"]["file"]
    with ClearingReader(path) as reader:
        header, details = reader.header, list(reader.details())
    types = {d.txn_type for d in details}
    assert {"PURCHASE", "VOID", "REFUND", "REVERSAL", "TOPUP"} <= types

    # A hand-made journal row: approved at the switch, never reached the ledger. And a clearing file
    # without the void's line (a consistent trailer: the emitter lost it, nobody tampered).
    async def add_orphan() -> None:
        conn = await asyncpg.connect(system.db_url)
        try:
            await conn.execute(
                "INSERT INTO switch_journal (dedup_key, channel, mti, txn_type, proc_code, terminal_id, "
                "merchant_id, batch_no, stan, amount, currency, rrn, auth_id, response_code, link, link_mti, "
                "link_stan) VALUES ('test|orphan', 'pos-3des', '0200', 'purchase', '000000', 'T3DES001', $1, "
                "1, '004242', 4242, '156', '699999424242', 'A1B2C3', '00', 'issuer', '0200', '424242')",
                MERCHANT,
            )
        finally:
            await conn.close()

    asyncio.run(add_orphan())
    void = next(d for d in details if d.txn_type == "VOID")
    short, _ = write_file(tmp_path / "short", header, [d for d in details if d is not void])
    found = _reconcile(system, short, out)
    assert found["exceptions"] == {"approved_not_posted": 1, "in_ledger_not_in_file": 1}, _exceptions(found)
    rows = {r["category"]: r for r in _exceptions(found)}
    orphan, missing = rows["approved_not_posted"], rows["in_ledger_not_in_file"]
    assert (orphan["rrn"], orphan["terminal_id"]) == ("699999424242", "T3DES001")
    assert orphan["journal_amount"] == "4242" and orphan["ledger_amount"] == orphan["file_amount"] == ""
    assert "switch_journal:" in orphan["references"] and "post or reverse it by hand" in orphan["action"]
    assert (missing["posting_id"], missing["txn_type"]) == (str(void.posting_id), "VOID")
    assert found["matched"] == clean["matched"] - 1

    # --journal FILE overrides the table: an empty export leaves every terminal posting unexplained
    export = tmp_path / "journal.csv"
    export.write_text("terminal_id,rrn,stan,txn_type,amount,status\n")
    override = _reconcile(system, path, out, "--journal", str(export))
    assert override["journal"] == {"source": "csv", "path": str(export)}
    assert set(override["exceptions"]) == {"posted_not_in_journal"}


def _row(**kw: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "id": 7, "created_at": datetime(2026, 11, 10, 12, tzinfo=UTC), "channel": "pos-3des", "mti": "0200",
        "txn_type": "purchase", "proc_code": "000000", "terminal_id": "T1", "merchant_id": "M1",
        "batch_no": 3, "stan": "000011", "amount": 500, "rrn": "631401000042", "response_code": "00",
        "link": "issuer", "link_stan": "000042", "original": None,
    }
    return {**row, **kw}


def test_normalise_journal_rows() -> None:
    start, end = datetime(2026, 11, 9, 15, tzinfo=UTC), datetime(2026, 11, 10, 15, tzinfo=UTC)

    def status(**kw: Any) -> str | None:
        r = normalise(_row(**kw), start, end)
        return None if r is None else r.status

    r = normalise(_row(), start, end)
    assert r is not None and (r.txn_type, r.terminal_id, r.rrn, r.stan, r.amount, r.edge) == (
        "PURCHASE", "T1", "631401000042", "000042", 500, False)  # the link STAN: what the host saw
    assert "switch_journal:7" in r.ref and "terminal STAN 000011 batch 3" in r.ref
    assert status(txn_type="top-up") == APPROVED
    assert status(response_code="51") == "declined 51"
    assert status(response_code="98") == TIMED_OUT
    assert status(response_code="91", link=None, link_stan=None) == "declined 91"
    assert status(txn_type="reversal", link=None, link_stan=None) == "not forwarded"  # answered locally
    assert status(txn_type="reversal", channel="h2h:acq1", link=None, link_stan=None) == UNKNOWN
    assert status(txn_type="reversal", original="0100/000011") is None  # a pre-auth's hold
    assert status(txn_type="pre-auth") is None and status(txn_type="balance") is None
    edge = normalise(_row(created_at=end + timedelta(seconds=1)), start, end)
    assert edge is not None and edge.edge


def test_journal_table_detected(db_url: str) -> None:
    async def go() -> tuple[bool, bool]:
        conn = await asyncpg.connect(db_url)
        try:
            here = await journal_available(conn)
            await conn.execute("CREATE SCHEMA IF NOT EXISTS no_switch; SET search_path = no_switch")
            return here, await journal_available(conn)
        finally:
            await conn.close()

    assert asyncio.run(go()) == (True, False)
