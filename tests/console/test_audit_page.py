"""The audit trail page (console/views/audit.py): filters, cursor pages, local time, and "Verify chain"
(OK with the head, a refusal without the CSRF token recorded); read without JavaScript."""

from __future__ import annotations

from typing import Any

from ops import audit
from pos.system import System
from tests.api.conftest import db, unique


def test_the_trail_filters_pages_and_shows_local_time(live: System, console_as: Any) -> None:
    actor = unique("auditpage")

    async def seed(conn: Any) -> None:
        for i in range(52):
            await audit.record(conn, actor=actor, role="operator", source="10.0.0.9", action="card.freeze",
                               target=f"card:{i}", after={"state": "frozen"},
                               outcome="refused" if i == 51 else "done")

    db(live, seed)
    c = console_as("viewer")
    r = c.get("/console/audit", params={"actor": actor})
    assert r.status_code == 200 and "Audit trail" in r.text
    assert r.text.count("<tr class=\"outcome-") == 50 and "+08:00" in r.text
    assert "card:51" in r.text and "card:1<" not in r.text and "Next page" in r.text
    nxt = r.text.split('href="?', 1)[1].split('"', 1)[0].replace("&amp;", "&")
    r2 = c.get("/console/audit?" + nxt)
    assert r2.status_code == 200 and r2.text.count("<tr class=\"outcome-") == 2 and "card:0<" in r2.text
    assert "Next page" not in r2.text
    r3 = c.get("/console/audit", params={"actor": actor, "outcome": "refused"})
    assert r3.text.count("<tr class=\"outcome-") == 1
    r4 = c.get("/console/audit", params={"actor": actor, "since": "2999-01-01T00:00"})
    assert "No audit rows match" in r4.text
    assert c.get("/console/audit", params={"outcome": "maybe"}).status_code == 400
    assert c.get("/console/audit", params={"cursor": "x"}).status_code == 400
    assert '"Audit"' in r.text or ">Audit<" in r.text  # in the navigation


def test_verify_chain_and_its_refusal(live: System, console_as: Any) -> None:
    c = console_as("viewer")
    r = c.post_form("/console/audit/verify")
    assert r.status_code == 200 and "Audit chain OK:" in r.text
    partial = c.post_form("/console/audit/verify", headers={"HX-Request": "true"})
    assert partial.status_code == 200 and "Audit chain OK:" in partial.text and "<html" not in partial.text
    refused = c.post("/console/audit/verify", data={})
    assert refused.status_code == 403
    rows = c.get("/console/audit", params={"actor": c.operator.name}).text
    assert rows.count("audit.verify") >= 3 and "refused" in rows and "done" in rows
