"""Links, routes and the SAF queue in the console: what `payswitch switch link|route|saf list` shows,
with key check values only (never a key), the queue's depth and oldest advice per link, and advices
shown with a card number masked."""

from __future__ import annotations

import json
from typing import Any

from ops.logs import mask_pan
from pos.system import System
from tests.api.conftest import db, unique


def _data(out: str) -> Any:
    parsed = json.loads(out)
    return parsed.get("data", parsed) if isinstance(parsed, dict) else parsed


def test_links_and_routes(live: System, console_as: Any) -> None:
    c = console_as("viewer")
    links = _data(live.cli("--json", "switch", "link", "list").stdout)
    page = c.get("/console/links")
    assert page.status_code == 200 and "Links" in page.text
    for link in links:
        assert link["name"] in page.text
    keys = db(live, lambda conn: conn.fetch("SELECT zpk, zak, zmk FROM switch_links"))
    for link in links[:3]:
        shown = c.get(f"/console/links/{link['name']}")
        assert shown.status_code == 200 and "Key check values" in shown.text
        detail = _data(live.cli("--json", "switch", "link", "show", link["name"]).stdout)
        for kind, cv in (detail.get("check_values") or {}).items():
            assert f"{kind.upper()} {cv[:6]}" in shown.text
    for row in keys:
        for key in row.values():
            if key:
                assert key not in page.text
    routes = c.get("/console/routes")
    assert routes.status_code == 200 and "Routes" in routes.text
    assert c.get("/console/routes", params={"bin": "62"}).status_code == 200
    assert c.get("/console/links/no-such-link").status_code == 400
    assert c.get("/console/links", params={"direction": "sideways"}).status_code == 400


def test_saf_queue_depth_and_masked_entries(live: System, console_as: Any) -> None:
    ghost = unique("ghost")  # a link no running switch has: the advice stays waiting
    pan = "6212345678901234567"

    async def add(conn: Any) -> None:
        for stan in ("000001", "000002"):
            await conn.execute(
                "INSERT INTO switch_saf (link, message, reason, created_at) VALUES ($1, $2::jsonb, 'timeout',"
                " now() - interval '1 hour')",
                ghost,
                json.dumps({"0": "0420", "2": pan, "11": stan, "90": "0200" + stan}),
            )

    db(live, add)
    c = console_as("viewer")
    page = c.get("/console/saf")
    assert page.status_code == 200
    assert ghost in page.text and pan not in page.text
    one = c.get("/console/saf", params={"link": ghost})
    assert one.status_code == 200
    assert (
        mask_pan(pan) in one.text
        and mask_pan(pan).endswith("4567")
        and "000002" in one.text
        and pan not in one.text
    )
    # the summary row of that link: depth 2
    row = page.text.split(f">{ghost}</a>", 1)[1].split("</tr>", 1)[0]
    assert '<td class="num">2</td>' in row
    db(live, lambda conn: conn.execute("DELETE FROM switch_saf WHERE link = $1", ghost))
