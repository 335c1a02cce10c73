"""Four eyes through the console: an operator requests a load above console.four_eyes_minor, the
requester and a second operator may not approve it, a supervisor does; the balance moves once and the
request's page and the queue show both names, money in yuan and local times."""

from __future__ import annotations

import html
import json
import re
from typing import Any

from pos.system import System
from tests.api.conftest import db, unique

PRODUCT = "FOUREYES"  # anonymous cards up to 5,000.00 (tests/host/test_approvals.py makes it the same way)


def new_card(live: System) -> int:
    live.cli("product", "add", PRODUCT, "--kind", "reloadable", "--bin", "621277", "--name", "Four eyes",
             "--max-balance", "5000.00", "--max-balance-anonymous", "5000.00", check=False)
    out = json.loads(live.cli("--json", "card", "issue", "--product", PRODUCT, "--activate").stdout)
    return int(out["cards"][0]["card_id"])


def balance(live: System, card_id: int) -> int:
    return int(db(live, lambda c: c.fetchval(
        "SELECT a.credits_posted - a.debits_posted FROM cards c JOIN accounts a ON a.id = c.account_id"
        " WHERE c.id = $1", card_id)))


def approval_id(location: str) -> int:
    m = re.fullmatch(r"/console/approvals/(\d+)", location)
    assert m, location
    return int(m.group(1))


def test_an_operator_requests_a_load_and_a_supervisor_approves_it(live: System, console_as: Any) -> None:
    cid = new_card(live)
    op, other, sup = console_as("operator"), console_as("operator"), console_as("supervisor")
    assert balance(live, cid) == 0

    form = op.get(f"/console/approvals/new?kind=load&target=card:{cid}")
    assert form.status_code == 200 and 'name="csrf"' in form.text and "1,000.00 CNY" in form.text
    r = op.post_form("/console/approvals/request", {"kind": "load", "target": f"card:{cid}",
                                                    "amount": "1500.00", "reason": "paid at the desk"})
    assert r.status_code == 303, r.text
    aid = approval_id(r.headers["location"])
    page = op.get(f"/console/approvals/{aid}")
    assert page.status_code == 200 and "requested" in page.text and "1,500.00 CNY" in page.text
    assert op.operator.name in page.text and "Approve" not in page.text  # not for the requester
    assert balance(live, cid) == 0

    # an operator may not approve (403, recorded); without the CSRF token nobody may
    assert other.post_form(f"/console/approvals/{aid}/approve").status_code == 403
    assert sup.post(f"/console/approvals/{aid}/approve", data={}).status_code == 403
    assert balance(live, cid) == 0

    page = sup.get(f"/console/approvals/{aid}")
    assert "Approve" in page.text and "Reject" in page.text
    r = sup.post_form(f"/console/approvals/{aid}/approve", {"reason": "receipt seen"})
    assert r.status_code == 303 and r.headers["location"] == f"/console/approvals/{aid}"
    assert balance(live, cid) == 150_000
    assert sup.post_form(f"/console/approvals/{aid}/approve").status_code == 303  # again: nothing twice
    assert balance(live, cid) == 150_000

    page = html.unescape(sup.get(f"/console/approvals/{aid}").text)
    assert "approved" in page and op.operator.name in page and sup.operator.name in page
    assert "balance 1,500.00 CNY" in page and "+08:00" in page
    queue = html.unescape(sup.get(f"/console/approvals?state=approved&target=card:{cid}").text)
    assert f"load 1,500.00 CNY onto card {cid}" in queue
    assert op.operator.name in queue and sup.operator.name in queue
    waiting = sup.get(f"/console/approvals?state=requested&target=card:{cid}").text
    assert f"onto card {cid}" not in html.unescape(waiting)

    rows = db(live, lambda c: c.fetch(
        "SELECT actor, outcome FROM audit_log WHERE target = $1 AND action LIKE 'approval.%' ORDER BY id",
        f"card:{cid}"))
    outcomes = [(r["actor"], r["outcome"]) for r in rows]
    assert outcomes[0] == (op.operator.name, "requested")
    assert (sup.operator.name, "approved") in outcomes
    assert live.cli("ledger", "check").returncode == 0


def test_the_requester_may_not_approve_and_a_reject_changes_nothing(live: System, console_as: Any) -> None:
    cid = new_card(live)
    for _ in range(2):  # 2,000.00 in two loads at the four-eyes amount (one above it takes approval)
        live.cli("card", "load", str(cid), "--amount", "1000.00", "--reference", unique("l"))
    sup_a, sup_b = console_as("supervisor"), console_as("supervisor")
    r = sup_a.post_form("/console/approvals/request", {
        "kind": "unload", "target": f"card:{cid}", "amount": "1200.00", "to": "desk", "reason": "leaving"})
    assert r.status_code == 303
    aid = approval_id(r.headers["location"])
    refused = sup_a.post_form(f"/console/approvals/{aid}/approve")
    assert refused.status_code == 403 and "other than the requester" in html.unescape(refused.text)
    r = sup_b.post_form(f"/console/approvals/{aid}/reject", {"reason": "no ID shown"})
    assert r.status_code == 303
    page = html.unescape(sup_b.get(f"/console/approvals/{aid}").text)
    assert "rejected" in page and "no ID shown" in page and sup_a.operator.name in page
    assert sup_b.operator.name in page
    assert balance(live, cid) == 200_000


def test_a_bad_request_is_shown_again_with_its_error(live: System, console_as: Any) -> None:
    op = console_as("operator")
    r = op.post_form("/console/approvals/request", {"kind": "load", "target": "card:999999999",
                                                    "amount": "1500.00", "reason": "x"})
    assert r.status_code == 400 and "no card 999999999" in r.text and 'value="card:999999999"' in r.text
    r = op.post_form("/console/approvals/request", {"kind": "load", "target": "card:1", "amount": "lots",
                                                    "reason": "x"})
    assert r.status_code == 400 and "amount" in r.text
    assert console_as("viewer").post_form("/console/approvals/request", {"kind": "load"}).status_code == 403
