"""A settlement run writes ``settlement.report_ready`` to the outbox in its own transaction (ops.outbox):
its run, business dates, each merchant's payout as Money, the totals and the report files' names
(exactly those ``write_run_outputs`` writes), and no payout account or bank detail. A run that pays
nothing writes none."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path
from typing import Any

from settlement.cycles import Cycle
from settlement.importer import import_file
from settlement.reports import write_run_outputs
from settlement.run import run_settlement
from specs.clearing import write_file
from tests.settlement.db import db
from tests.settlement.factories import detail, header
from tests.settlement.test_settle import setup_rates

DAY1, DAY2 = date(2026, 11, 24), date(2026, 11, 25)


def ready_events(url: str, since: int) -> list[dict[str, Any]]:
    rows = db(url, lambda c: c.fetch(
        "SELECT payload, card_id, merchant_id FROM events WHERE type = 'settlement.report_ready' AND id > $1"
        " ORDER BY id", since))
    assert all(r["card_id"] is None and r["merchant_id"] is None for r in rows)
    return [json.loads(r["payload"]) for r in rows]


def test_a_run_writes_report_ready(db_url: str, tmp_path: Path) -> None:
    m, issuer = "EVT", "33330000"
    setup_rates(db_url, m)
    f1, _ = write_file(tmp_path, header(DAY1, issuer), [
        detail(1, "PURCHASE", 10000, merchant_id=f"{m}A", store_id="S01"),
        detail(2, "PURCHASE", 30000, merchant_id=f"{m}B", store_id="S01"),
    ])
    db(db_url, lambda c: import_file(c, f1))
    start = int(db(db_url, lambda c: c.fetchval("SELECT coalesce(max(id), 0) FROM events")))

    run = db(db_url, lambda c: run_settlement(c, DAY2, Cycle()))
    assert run.run_id is not None
    (ev,) = ready_events(db_url, start)
    assert ev["run_id"] == run.run_id and ev["as_of"] == DAY2.isoformat()
    assert ev["folder"] == f"run_{run.run_id}"
    assert DAY1.isoformat() in ev["business_dates"]
    mine = {x["merchant_id"]: x for x in ev["merchants"] if x["merchant_id"].startswith(m)}
    assert set(mine) == {f"{m}A", f"{m}B"}
    a = mine[f"{m}A"]
    paid = {p.merchant_id: p for p in run.payouts}[f"{m}A"]
    assert a["gross"] == {"amount": paid.gross, "currency": "CNY"}
    assert a["fee"] == {"amount": paid.fee, "currency": "CNY"} and a["net"]["amount"] == paid.net
    assert a["reference"] == paid.reference and a["business_dates"] == [DAY1.isoformat()]
    assert ev["payout_total"] == {"amount": run.payout_total, "currency": "CNY"}
    assert ev["cash_outs"]["count"] == len(run.cash_outs) and ev["occurred_at"].endswith("+00:00")
    # the names are the files the reports then write
    run_id: int = run.run_id
    written = db(db_url, lambda c: write_run_outputs(c, run_id, tmp_path / "out"))
    assert sorted(ev["files"]) == sorted(p.name for p in written)
    text = json.dumps(ev)
    assert "6222-A" not in text and "payout_account" not in text  # no bank details (setup_rates' account)

    # nothing due: no run, no event
    before = int(db(db_url, lambda c: c.fetchval("SELECT coalesce(max(id), 0) FROM events")))
    again = db(db_url, lambda c: run_settlement(c, DAY2, Cycle()))
    assert again.run_id is None or not [p for p in again.payouts if p.merchant_id.startswith(m)]
    if again.run_id is None:
        assert ready_events(db_url, before) == []
