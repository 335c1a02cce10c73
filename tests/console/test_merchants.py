"""Merchants, stores and terminals through the console's forms: onboard a merchant, a store and a
terminal (its TMK formed in the real HSM), disable the terminal and see it disabled by the CLI,
suspend and reactivate the merchant; every action leaves its audit row, and roles are enforced."""

from __future__ import annotations

import json
from typing import Any

from pos.system import System
from tests.api.conftest import db, unique

TMK1 = "0123456789ABCDEFFEDCBA9876543210"
TMK2 = "0" * 32


def _audit(live: System, actor: str) -> list[dict[str, Any]]:
    async def work(conn: Any) -> list[dict[str, Any]]:
        return [
            dict(r)
            for r in await conn.fetch(
                "SELECT action, target, before, after, outcome FROM audit_log WHERE actor = $1 ORDER BY id",
                actor,
            )
        ]

    rows: list[dict[str, Any]] = db(live, work)
    return rows


def test_onboard_and_disable_a_terminal(live: System, console_as: Any) -> None:
    c = console_as("operator")
    mid = unique("M")[-15:]
    r = c.post_form(
        "/console/merchants", {"merchant_id": mid, "name": "Tea House", "mcc": "5812", "fee_bps": "25"}
    )
    assert r.status_code == 303, r.text
    page = c.get(r.headers["location"])
    assert page.status_code == 200 and "Tea House" in page.text and "25 bps" in page.text
    assert "approvals/request?kind=merchant_fee" in page.text

    r = c.post_form(f"/console/merchants/{mid}/stores", {"code": "S1", "name": "Front", "address": "1 Rd"})
    assert r.status_code == 303, r.text
    r = c.post_form(
        f"/console/merchants/{mid}/terminals",
        {"terminal_id": "TC000001", "store": "S1", "scheme": "3des", "tmk1": TMK1, "tmk2": TMK2},
    )
    assert r.status_code == 303, r.text
    page = c.get(f"/console/merchants/{mid}")
    assert "TC000001" in page.text and "Front" in page.text and TMK1 not in page.text

    shown = json.loads(live.cli("--json", "terminal", "show", "TC000001", "--merchant", mid).stdout)
    data = shown.get("data", shown)
    assert data["state"] == "active" and data["store"] == "S1"

    r = c.post_form(f"/console/merchants/{mid}/terminals/TC000001/state", {"to": "disabled"})
    assert r.status_code == 303, r.text
    shown = json.loads(live.cli("--json", "terminal", "show", "TC000001", "--merchant", mid).stdout)
    assert shown.get("data", shown)["state"] == "disabled"
    assert "disabled" in c.get(f"/console/merchants/{mid}?terminal_state=disabled").text

    rows = _audit(live, c.operator.name)
    actions = [(x["action"], x["outcome"]) for x in rows]
    assert actions == [
        ("merchant.add", "done"),
        ("store.add", "done"),
        ("terminal.add", "done"),
        ("terminal.disable", "done"),
    ]
    last = rows[-1]
    assert last["target"] == f"terminal:{mid}/TC000001"
    assert (
        json.loads(last["before"])["state"] == "active" and json.loads(last["after"])["state"] == "disabled"
    )
    assert TMK1 not in json.dumps([str(x) for x in rows])

    # the list finds it by name and by state, one page at a time
    listed = c.get("/console/merchants", params={"name": "Tea House", "state": "active"})
    assert listed.status_code == 200 and mid in listed.text


def test_suspend_needs_a_supervisor(live: System, console_as: Any) -> None:
    op = console_as("operator")
    mid = unique("N")[-15:]
    assert op.post_form("/console/merchants", {"merchant_id": mid, "mcc": "5411"}).status_code == 303
    r = op.post_form(f"/console/merchants/{mid}/state", {"to": "suspended"})
    assert r.status_code == 403
    assert _audit(live, op.operator.name)[-1]["outcome"] == "refused"

    sup = console_as("supervisor")
    r = sup.post_form(f"/console/merchants/{mid}/state", {"to": "suspended", "reason": "fraud check"})
    assert r.status_code == 303, r.text
    assert "suspended" in sup.get(f"/console/merchants/{mid}").text
    assert "Reactivate" in sup.get(f"/console/merchants/{mid}").text
    assert sup.post_form(f"/console/merchants/{mid}/state", {"to": "active"}).status_code == 303
    rows = _audit(live, sup.operator.name)
    assert [json.loads(x["after"])["state"] for x in rows] == ["suspended", "active"]

    viewer = console_as("viewer")
    assert (
        viewer.post_form("/console/merchants", {"merchant_id": unique("V")[-15:], "mcc": "5411"}).status_code
        == 403
    )
    assert "New merchant" not in viewer.get("/console/merchants").text
    # no CSRF token: refused
    assert (
        op.post("/console/merchants", data={"merchant_id": unique("X")[-15:], "mcc": "5411"}).status_code
        == 403
    )
