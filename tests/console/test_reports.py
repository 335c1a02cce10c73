"""The operators' reports: host.reports' queries on the live database, and the console's pages and CSV
downloads (columns, money as yuan with two decimals beside a currency column, local times)."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
from typing import Any

import pytest

from host import reports
from host.business_day import business_today
from ops import config as config_mod
from pos.system import System
from tests.api.conftest import db, unique

TMK = "0123456789ABCDEFFEDCBA9876543210"


@pytest.fixture
def clearing(live: System) -> Any:
    return config_mod.load(live.config_path)


def _cli(live: System, *args: str) -> Any:
    return json.loads(live.cli("--json", *args).stdout)


def _card(live: System) -> dict[str, Any]:
    card: dict[str, Any] = _cli(
        live, "card", "issue", "--product", "CAMPUS", "--activate", "--pin", "135790"
    )["cards"][0]
    return card


def _merchant_with_requests(live: System) -> str:
    """A merchant of its own whose terminal makes two sales, a refund and a decline through the real
    switch and host (rows written straight into auth_requests would be approvals without transfers,
    which the shared system's `ledger check` rightly refuses)."""
    mid = unique("R")[-15:]
    live.cli("merchant", "add", mid, "--name", "Report Shop", "--mcc", "5411")
    live.cli("store", "add", mid, "S9", "--name", "Corner")
    live.cli(
        "terminal", "add", "TR000001", "--merchant", mid, "--store", "S9", "--scheme", "3des", "--tmk", TMK
    )
    state = str(live.root / f"pos-{mid}.json")
    live.cli("pos", "init", "-t", "TR000001", "--merchant", mid, "--scheme", "3des", "--tmk", TMK,
             "--state", state)  # fmt: skip
    card = _card(live)
    live.cli("card", "load", str(card["card_id"]), "--amount", "900.00", "--reference", unique("l"))
    by_card = ("--card", card["pan"], "--expiry", card["expiry"], "--pin", "135790", "--state", state)

    def pos(*args: str) -> dict[str, Any]:
        receipt: dict[str, Any] = json.loads(live.cli("--json", "pos", *args, check=False).stdout)
        return receipt

    sale = pos("purchase", "800.00", *by_card)
    assert sale["approved"], sale
    assert pos("purchase", "0.50", *by_card)["approved"]
    refund = pos("refund", "--stan", sale["stan"], "--amount", "100.00", "--pin", "135790", "--state", state)
    assert refund["approved"], refund
    assert not pos("purchase", "999.00", *by_card)["approved"]  # 199.50 left: declined 51
    return mid


def test_daily_report_host_and_csv(live: System, console_as: Any, clearing: Any) -> None:
    mid = _merchant_with_requests(live)
    today = business_today(clearing)
    c = clearing.clearing
    w, rows = db(
        live, lambda conn: reports.daily_transactions(conn, today, c.cutover, c.timezone, merchant=mid)
    )
    assert w.start < dt.datetime.now(dt.UTC) < w.end
    assert len(rows) == 1
    r = rows[0]
    assert (
        r["merchant_id"],
        r["store"],
        r["sales"],
        r["sales_amount"],
        r["refunds_amount"],
        r["declines"],
        r["requests"],
        r["net_amount"],
    ) == (mid, "S9", 2, 80050, 10000, 1, 4, 70050)

    client = console_as("viewer")
    page = client.get("/console/reports/daily", params={"merchant": mid})
    assert page.status_code == 200 and "800.50 CNY" in page.text and "+" in page.text
    got = client.get("/console/reports/daily", params={"merchant": mid, "format": "csv"})
    assert got.status_code == 200 and got.headers["content-type"].startswith("text/csv")
    assert got.headers["content-disposition"].startswith("attachment")
    table = list(csv.reader(io.StringIO(got.text)))
    assert table[0] == [
        "business_date",
        "merchant_id",
        "merchant_name",
        "store",
        "store_name",
        "currency",
        "sales",
        "sales_amount",
        "refunds",
        "refunds_amount",
        "net_amount",
        "voids_reversals",
        "declines",
        "requests",
        "first_at",
        "last_at",
    ]
    row = dict(zip(table[0], table[1], strict=True))
    assert row["currency"] == "CNY" and row["sales_amount"] == "800.50" and row["net_amount"] == "700.50"
    assert row["refunds_amount"] == "100.00" and row["store"] == "S9"
    assert row["last_at"][-6] in "+-" and row["last_at"][-3] == ":"  # local time with its offset
    assert client.get("/console/reports/daily", params={"date": "yesterday"}).status_code == 400


def test_float_movement(live: System, console_as: Any, clearing: Any) -> None:
    c = clearing.clearing
    today = business_today(clearing)

    def snapshot() -> dict[str, Any]:
        _, rows = db(
            live,
            lambda conn: reports.float_by_product(
                conn, today, today, c.cutover, c.timezone, product="CAMPUS"
            ),
        )
        assert len(rows) == 1
        out: dict[str, Any] = rows[0]
        return out

    before = snapshot()
    card = _card(live)
    live.cli("card", "load", str(card["card_id"]), "--amount", "77.70", "--reference", unique("fl"))
    after = snapshot()
    assert after["credits"] - before["credits"] >= 7770
    assert after["opening"] + after["credits"] - after["debits"] == after["closing"]
    assert after["closing"] == after["balance_now"]  # nothing after today's end

    client = console_as("viewer")
    got = client.get("/console/reports/float", params={"product": "CAMPUS", "format": "csv"})
    table = list(csv.reader(io.StringIO(got.text)))
    assert table[0][:6] == ["product", "name", "currency", "from", "to", "opening"]
    row = dict(zip(table[0], table[1], strict=True))
    assert row["product"] == "CAMPUS" and row["currency"] == "CNY"
    assert all("." in row[k] and len(row[k].split(".")[1]) == 2 for k in ("opening", "credits", "closing"))
    assert client.get("/console/reports/float").status_code == 200


def test_dormant_and_expiring_cards(live: System, console_as: Any, clearing: Any) -> None:
    sleepy, fresh = _card(live), _card(live)
    ids = sorted(int(x["card_id"]) for x in (sleepy, fresh))
    today = business_today(clearing)

    async def age(conn: Any) -> None:
        await conn.execute(
            "UPDATE cards SET issued_at = now() - interval '100 days' WHERE id = $1", int(sleepy["card_id"])
        )
        await conn.execute(
            "UPDATE cards SET expiry = $2 WHERE id = $1", int(fresh["card_id"]), today.strftime("%y%m")
        )

    db(live, age)
    after = str(ids[0] - 1)
    page = db(live, lambda conn: reports.dormant_cards(conn, 90, product="CAMPUS", after=after, limit=1000))
    found = {r["id"] for r in page.rows}
    assert int(sleepy["card_id"]) in found and int(fresh["card_id"]) not in found
    page = db(
        live, lambda conn: reports.expiring_cards(conn, 31, today, product="CAMPUS", after=after, limit=1000)
    )
    hit = [r for r in page.rows if r["id"] == int(fresh["card_id"])]
    assert hit and hit[0]["expires_on"].month == today.month and hit[0]["expires_on"] >= today

    client = console_as("viewer")
    got = client.get("/console/reports/dormant", params={"days": "90", "product": "CAMPUS", "format": "csv"})
    table = list(csv.reader(io.StringIO(got.text)))
    assert table[0] == [
        "card_id",
        "pan_masked",
        "label",
        "product",
        "state",
        "currency",
        "balance",
        "last_used",
        "issued_at",
    ]
    mine = [r for r in table[1:] if r[0] == str(sleepy["card_id"])]
    assert mine and mine[0][5] == "CNY" and mine[0][6].endswith(".00") and sleepy["pan"] not in got.text
    html = client.get("/console/reports/expiring", params={"days": "31", "product": "CAMPUS"})
    assert html.status_code == 200
    got = client.get("/console/reports/expiring", params={"days": "31", "format": "csv"})
    assert str(fresh["card_id"]) in [r[0] for r in csv.reader(io.StringIO(got.text))]
    assert fresh["pan"] not in got.text
    assert client.get("/console/reports/dormant", params={"days": "x"}).status_code == 400
