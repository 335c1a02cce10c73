"""Cards in the console on the live system: the search finds a card by its last 4, the card page shows
its balance, limits and history, and its actions are the host's own (a freeze makes the POS decline the
card, recorded in the audit trail); roles and the four-eyes threshold hold."""

from __future__ import annotations

import json
import re
from typing import Any

from pos.system import System
from tests.api.conftest import db, unique

PRODUCT = "CAMPUS"


def issue(live: System, load: str | None = "50.00") -> dict[str, Any]:
    out = json.loads(live.cli("--json", "card", "issue", "--product", PRODUCT, "--activate",
                              "--pin", "123456").stdout)
    card = out["cards"][0]
    if load:
        live.cli("card", "load", str(card["card_id"]), "--amount", load, "--reference", unique("l"))
    return {"id": int(card["card_id"]), "pan": str(card["pan"]), "expiry": str(card["expiry"])}


def audit_rows(live: System, action: str, target: str) -> list[dict[str, Any]]:
    async def q(conn: Any) -> list[dict[str, Any]]:
        rows = await conn.fetch("SELECT actor, role, action, target, before, after, reason, outcome"
                                " FROM audit_log WHERE action = $1 AND target = $2 ORDER BY id",
                                action, target)
        return [dict(r) for r in rows]

    result: list[dict[str, Any]] = db(live, q)
    return result


def test_search_freeze_and_the_pos_declines(live: System, console_as: Any) -> None:
    card = issue(live)
    cid, last4 = card["id"], card["pan"][-4:]
    op = console_as("operator")

    found = op.get("/console/cards", params={"last4": last4})
    assert found.status_code == 200 and f'href="/console/cards/{cid}"' in found.text
    assert card["pan"] not in found.text  # masked only
    by_prefix = op.get("/console/cards", params={"pan": card["pan"][:6], "last4": last4, "state": "active"})
    assert f'href="/console/cards/{cid}"' in by_prefix.text
    whole = op.get("/console/cards", params={"pan": card["pan"]})
    assert whole.status_code == 200 and "not the whole card number" in whole.text

    page = op.get(f"/console/cards/{cid}")
    assert page.status_code == 200
    assert "50.00 CNY" in page.text and 'id="card-limits"' in page.text and "daily limit" in page.text
    assert card["pan"] not in page.text

    r = op.post_form(f"/console/cards/{cid}/freeze", {"reason": "customer called"})
    assert r.status_code == 303 and r.headers["location"] == f"/console/cards/{cid}?done=freeze"
    after = op.get(r.headers["location"])
    assert "The card is frozen." in after.text and "frozen" in after.text

    sale = live.cli("--json", "pos", "purchase", "1.00", "--card", card["pan"], "--expiry", card["expiry"],
                    "--pin", "123456", check=False)
    receipt = json.loads(sale.stdout)
    assert not receipt["approved"], sale.stdout

    [row] = audit_rows(live, "card.freeze", f"card:{cid}")
    assert row["actor"] == op.operator.name and row["role"] == "operator" and row["outcome"] == "done"
    assert json.loads(row["before"]) == {"state": "active"}
    assert json.loads(row["after"]) == {"state": "frozen"}
    assert row["reason"] == "customer called"

    history = op.get(f"/console/cards/{cid}")
    assert re.search(r"purchase.*?\b05\b", history.text, re.S), "the decline is in the history"
    assert "console:" + op.operator.name in history.text  # the card event names the operator

    r = op.post_form(f"/console/cards/{cid}/unfreeze", {"reason": "found it"})
    assert r.status_code == 303
    ok = live.cli("--json", "pos", "purchase", "1.00", "--card", card["pan"], "--expiry", card["expiry"],
                  "--pin", "123456", check=False)
    assert json.loads(ok.stdout)["approved"], ok.stdout


def test_roles_csrf_and_refusals(live: System, console_as: Any) -> None:
    card = issue(live)
    cid = card["id"]
    viewer = console_as("viewer")
    r = viewer.post_form(f"/console/cards/{cid}/freeze", {"reason": "x"})
    assert r.status_code == 403
    assert audit_rows(live, "card.freeze", f"/console/cards/{cid}/freeze")[-1]["outcome"] == "refused"
    op = console_as("operator")
    assert op.post(f"/console/cards/{cid}/freeze", data={"reason": "no token"}).status_code == 403
    # closing is for supervisors; a supervisor is refused while money is on the card
    assert op.post_form(f"/console/cards/{cid}/close", {"reason": "x"}).status_code == 403
    sup = console_as("supervisor")
    r = sup.post_form(f"/console/cards/{cid}/close", {"reason": "done with it"})
    assert r.status_code == 409
    # an anonymous card cannot be reported lost: the host's refusal in words
    r = op.post_form(f"/console/cards/{cid}/block", {"kind": "lost", "reason": "x"})
    assert r.status_code == 409
    assert op.get("/console/cards/99999999999").status_code == 404


def test_load_unload_and_the_four_eyes_threshold(live: System, console_as: Any) -> None:
    card = issue(live, load=None)
    cid = card["id"]
    op = console_as("operator")
    r = op.post_form(f"/console/cards/{cid}/load", {"amount": "20.00", "reason": "refund desk"})
    assert r.status_code == 303, r.text
    r = op.post_form(f"/console/cards/{cid}/unload", {"amount": "5.00", "reason": "cash back"})
    assert r.status_code == 303, r.text
    page = op.get(f"/console/cards/{cid}")
    assert "15.00 CNY" in page.text
    [load] = audit_rows(live, "card.load", f"card:{cid}")
    assert json.loads(load["after"])["amount"] == 2000
    # above console.four_eyes_minor (1,000.00 by default): a form asking for approval, nothing loaded
    r = op.post_form(f"/console/cards/{cid}/load", {"amount": "1500.00", "reason": "big one"})
    assert r.status_code == 409 and 'action="/console/approvals/request"' in r.text
    assert 'name="target" value="card:' + str(cid) + '"' in r.text
    fields = dict(re.findall(r'<input type="hidden" name="(\w+)" value="([^"]*)"', r.text))
    assert fields["kind"] == "load" and fields["reason"] == "big one"
    asked = op.post("/console/approvals/request", data=fields)  # the form's own button
    assert asked.status_code == 303, asked.text
    assert asked.headers["location"].startswith("/console/approvals/")
    assert "15.00 CNY" in op.get(f"/console/cards/{cid}").text
    assert op.post_form(f"/console/cards/{cid}/load", {"amount": "abc", "reason": "x"}).status_code == 422
    assert op.post_form(f"/console/cards/{cid}/load", {"amount": "1.00"}).status_code == 422  # no reason


def test_pin_reset_and_search_by_state(live: System, console_as: Any) -> None:
    card = issue(live, load=None)
    cid = card["id"]
    op = console_as("operator")
    r = op.post_form(f"/console/cards/{cid}/pin-reset", {"reason": "forgot it"})
    assert r.status_code == 303
    [row] = audit_rows(live, "card.pin_reset", f"card:{cid}")
    assert json.loads(row["after"])["pin"] == "reset"
    listed = op.get("/console/cards",
                    params={"state": "active", "product": PRODUCT, "last4": card["pan"][-4:]})
    assert f'href="/console/cards/{cid}"' in listed.text
    assert op.get("/console/cards", params={"state": "nonsense"}).status_code == 200
