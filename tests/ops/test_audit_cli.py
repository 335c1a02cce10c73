"""`payswitch audit verify | list` and the CLI's own audit rows (ops/cli_audit.py): a state-changing
command run against the live system writes one row (actor cli:<user>, role cli, the command path, its
first argument with a PAN masked, no secret), a read-only one writes none, a failed one is ``failed``;
`audit verify` names the row edited by the database owner in a database of its own."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from typing import Any

import asyncpg

from ops import audit
from ops.actor import cli_actor
from pos.system import System
from tests.api.conftest import db, unique


def _rows(live: System, **filters: Any) -> list[audit.Row]:
    async def work(conn: Any) -> list[audit.Row]:
        return (await audit.list_rows(conn, limit=100, **filters)).rows

    rows: list[audit.Row] = db(live, work)
    return rows


def _issue(live: System) -> dict[str, Any]:
    out = json.loads(live.cli("--json", "card", "issue", "--product", "CAMPUS", "--activate",
                              "--pin", "135790").stdout)
    card = out["cards"][0]
    return {"id": int(card["card_id"]), "pan": str(card["pan"])}


def test_a_state_changing_command_writes_one_row(live: System) -> None:
    card = _issue(live)
    live.cli("card", "freeze", str(card["id"]))
    rows = _rows(live, action="card.freeze", target=str(card["id"]))
    assert len(rows) == 1
    row = rows[0]
    assert (row.actor, row.role, row.source, row.outcome) == (cli_actor(), "cli", "", "done")
    assert row.target == str(card["id"])
    # by PAN: the target is the masked PAN, never the PAN
    live.cli("card", "unfreeze", card["pan"])
    masked = card["pan"][:6] + "*" * (len(card["pan"]) - 10) + card["pan"][-4:]
    rows = _rows(live, action="card.unfreeze", target=masked)
    assert len(rows) == 1
    # the issue's row names its options, the PIN hidden
    issued = [r for r in _rows(live, action="card.issue", actor=cli_actor()) if r.after
              and r.after.get("pin") == "***"]
    assert issued and all("135790" not in json.dumps(r.after) for r in issued)
    assert all(card["pan"] not in json.dumps([r.target, r.after, r.reason]) for r in _rows(live))


def test_a_read_only_command_writes_nothing(live: System) -> None:
    card = _issue(live)
    live.cli("card", "show", str(card["id"]))
    live.cli("card", "history", str(card["id"]))
    live.cli("card", "list", "--last4", card["pan"][-4:])
    live.cli("card", "limits", str(card["id"]))  # show or set: shown
    live.cli("audit", "verify")
    assert _rows(live, target=str(card["id"])) == []
    assert _rows(live, action="card.show") == [] and _rows(live, action="audit.", actor=cli_actor()) == []


def test_a_failed_command_is_recorded_failed(live: System) -> None:
    proc = live.cli("card", "freeze", "999999998", check=False)
    assert proc.returncode == 1
    rows = _rows(live, action="card.freeze", target="999999998")
    assert len(rows) == 1 and rows[0].outcome == "failed" and rows[0].reason


def test_an_api_client_added_by_the_cli_keeps_no_key(live: System) -> None:
    name = unique("auditcli")
    out = live.cli("--json", "api", "client", "add", name, "--scopes", "cards:read").stdout
    assert "psk_" in out
    rows = _rows(live, action="api.client.add", target=name)
    assert len(rows) == 1 and "psk_" not in json.dumps([rows[0].after, rows[0].reason])


def test_audit_list_and_verify(live: System) -> None:
    card = _issue(live)
    for verb in ("freeze", "unfreeze", "freeze"):
        live.cli("card", verb, str(card["id"]))
    out = live.cli("audit", "list", "--target", str(card["id"]), "--actor", cli_actor()).stdout
    lines = out.strip().splitlines()
    assert len(lines) == 3 and "card.freeze" in lines[0] and "card.unfreeze" in lines[1]
    assert "+08:00" in lines[0] and "done" in lines[0]
    page = json.loads(live.cli("--json", "audit", "list", "--target", str(card["id"]), "--limit", "2").stdout)
    assert len(page["rows"]) == 2 and page["next_cursor"]
    rest = json.loads(live.cli("--json", "audit", "list", "--target", str(card["id"]), "--limit", "2",
                               "--cursor", page["next_cursor"]).stdout)
    assert [r["action"] for r in rest["rows"]] == ["card.freeze"] and rest["next_cursor"] is None
    assert rest["rows"][0]["at"].endswith("+08:00")
    none = live.cli("audit", "list", "--since", "2999-01-01").stdout
    assert "no audit rows match" in none
    bad = live.cli("audit", "list", "--cursor", "x", check=False)
    assert bad.returncode == 1 and "cursor" in bad.stderr
    ok = live.cli("audit", "verify").stdout.strip()
    assert ok.startswith("audit chain OK: ") and " rows, head " in ok


def test_verify_names_the_row_edited_by_the_owner(db_url: str, live: System) -> None:
    async def setup() -> list[int]:
        conn = await asyncpg.connect(db_url)
        try:
            ids = [await audit.record(conn, actor="alice", action="card.freeze", target=f"card:{i}")
                   for i in range(4)]
            async with conn.transaction():
                await conn.execute("ALTER TABLE audit_log DISABLE TRIGGER audit_log_append_only")
                await conn.execute("UPDATE audit_log SET reason = 'nothing happened' WHERE id = $1", ids[2])
                await conn.execute("ALTER TABLE audit_log ENABLE TRIGGER audit_log_append_only")
            return ids
        finally:
            await conn.close()

    ids = asyncio.run(setup())
    env = {**live.env(), "PAYSWITCH_DATABASE_URL": db_url}
    proc = subprocess.run([sys.executable, "-m", "ops", "audit", "verify"], env=env, cwd=live.root,
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 1, proc.stderr
    assert f"row {ids[2]}" in proc.stdout and "edited" in proc.stdout
    proc = subprocess.run([sys.executable, "-m", "ops", "--json", "audit", "verify"], env=env, cwd=live.root,
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 1 and json.loads(proc.stdout)["broken_id"] == ids[2]
    assert os.environ.get("PAYSWITCH_DATABASE_URL") != db_url
