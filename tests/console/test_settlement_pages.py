"""Settlement runs in the console: a real run (a card unloaded, then `payswitch settle` pays the
cash-out), its page with its files, a download of one of them, and no way out of the run's folder."""

from __future__ import annotations

import json
from typing import Any

from pos.system import System
from tests.api.conftest import unique


def _cli(live: System, *args: str) -> Any:
    return json.loads(live.cli("--json", *args).stdout)


def test_run_page_and_report_download(live: System, console_as: Any) -> None:
    card = _cli(live, "card", "issue", "--product", "CAMPUS", "--activate", "--pin", "135790")["cards"][0]
    cid = str(card["card_id"])
    live.cli("card", "load", cid, "--amount", "100.00", "--reference", unique("load"))
    live.cli("card", "unload", cid, "--amount", "12.34", "--reference", unique("unload"), "--to", "desk")
    out = _cli(live, "settle")
    data = out.get("data", out)
    run_id = int(data["run"]["run_id"])

    c = console_as("viewer")
    runs = c.get("/console/settlement")
    assert runs.status_code == 200
    last = runs
    while f'/console/settlement/runs/{run_id}"' not in last.text and "cursor=" in last.text:
        nxt = last.text.split('href="?', 1)[1].split('"', 1)[0].replace("&amp;", "&")
        last = c.get("/console/settlement?" + nxt)
    assert f'/console/settlement/runs/{run_id}"' in last.text

    page = c.get(f"/console/settlement/runs/{run_id}")
    assert page.status_code == 200 and "Cash-outs" in page.text and "12.34 CNY" in page.text
    assert card["pan"] not in page.text
    name = f"cashouts_{run_id}.csv"
    assert f"/files/{name}" in page.text
    got = c.get(f"/console/settlement/runs/{run_id}/files/{name}")
    assert got.status_code == 200, got.text
    assert "attachment" in got.headers["content-disposition"] and got.headers["content-type"].startswith(
        "text/csv"
    )
    assert card["pan"] not in got.text
    payouts = c.get(f"/console/settlement/runs/{run_id}/files/payouts_{run_id}.csv")
    assert payouts.status_code == 200

    # only the run's own files: anything else, ../ included, is 404
    for bad in (
        f"..%2F..%2Frun_{run_id}%2F{name}",
        "..%2F..%2F..%2Fetc%2Fpasswd",
        "%2E%2E/%2E%2E/config.toml",
        f"payouts_{run_id + 1}.csv",
        "../payouts.csv",
    ):
        r = c.get(f"/console/settlement/runs/{run_id}/files/{bad}")
        assert r.status_code == 404, (bad, r.status_code)
    assert c.get("/console/settlement/runs/999999999").status_code == 404
    assert c.get("/console/settlement", params={"since": "not-a-date"}).status_code == 400
