"""Inventory (issue 16 item 9) through the real commands, the real HSM and PostgreSQL: `inventory report`
counts by product, batch and state; `inventory activate` of a batch and of a PAN range (found through
the HSM: PANs are stored only encrypted), gift cards getting their face value once; and the audit:
card_events written by issuance, every state command, the expiry sweep, close, forfeit and
replacement, listed by `card events`."""

from __future__ import annotations

import asyncio
import secrets
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import trio

from host import catalog
from host.cli import open_crypto
from host.issue import luhn_digit
from ops.logs import mask_pan
from ops.pgpool import PgPool
from tests.host.helpers import MERCHANT, cli_env, ok, run


@pytest.fixture(scope="module")
def env(db_url: str, hsm_server: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    e = cli_env(tmp_path_factory.mktemp("inventory"), db_url, hsm_server.env)
    ok(e, "product", "add", "STOCK", "--kind", "reloadable", "--bin", "621270", "--no-pin")
    ok(e, "product", "add", "GIFTS", "--kind", "fixed_amount", "--face-value", "50.00", "--bin", "621271",
       "--no-pin", "--max-balance", "50.00")
    ok(e, "merchant", "add", MERCHANT, "--name", "Canteen", "--mcc", "5812")
    return e


def _sql(db_url: str, sql: str, *args: Any) -> list[Any]:
    async def go() -> list[Any]:
        conn = await asyncpg.connect(db_url)
        try:
            return list(await conn.fetch(sql, *args))
        finally:
            await conn.close()

    return asyncio.run(go())


def _batch(env: dict[str, str], product: str, count: int) -> tuple[str, list[dict[str, Any]]]:
    out = ok(env, "card", "issue", "--product", product, "--count", str(count))
    [row] = _sql(env["PAYSWITCH_DATABASE_URL"], "SELECT issue_batch FROM cards WHERE id = $1",
                 out["cards"][0]["card_id"])
    return row["issue_batch"], out["cards"]


def test_report_and_batch_activation(env: dict[str, str], db_url: str) -> None:
    batch, cards = _batch(env, "STOCK", 4)
    report = ok(env, "inventory", "report", "--batch", batch)
    assert report["rows"] == [{"product": "STOCK", "batch": batch, "state": "inventory", "cards": 4}]
    assert report["totals"] == {"inventory": 4, "all": 4}
    ok(env, "card", "activate", str(cards[0]["card_id"]))
    dry = ok(env, "inventory", "activate", "--batch", batch, "--dry-run")
    assert dry["dry_run"] and dry["selected"] == 4 and len(dry["activated"]) == 3
    assert dry["refused"] == [{"card_id": cards[0]["card_id"], "why": "active, not in inventory"}]
    assert ok(env, "inventory", "report", "--batch", batch)["totals"]["inventory"] == 3  # nothing changed
    done = ok(env, "inventory", "activate", "--batch", batch)
    assert sorted(done["activated"]) == sorted(c["card_id"] for c in cards[1:])
    assert ok(env, "inventory", "report", "--batch", batch)["totals"] == {"active": 4, "all": 4}
    text = run(env, "inventory", "report", "--product", "STOCK").output
    assert "STOCK" in text and "total" in text
    human = run(env, "inventory", "activate", "--batch", batch)
    assert human.exit_code == 0 and "4 cards selected; 0 activated; 4 not" in human.output
    for bad in (("--batch", "nope"), ()):
        r = run(env, "inventory", "activate", *bad)
        assert r.exit_code in (1, 2) and "Traceback" not in r.output
    assert run(env, "inventory", "report", "--product", "NOPE").exit_code == 1
    assert ok(env, "ledger", "check")["ok"] is True


def _close_pans(db_url: str, hsm_server: Any, product: str, count: int) -> list[dict[str, Any]]:
    """Inventory cards with consecutive account numbers (drawn PANs are too far apart for a --range):
    encrypted and hashed by the real HSM as issuance does."""

    async def go() -> list[dict[str, Any]]:
        with PgPool(db_url, min_size=1, max_size=2) as pool:
            async with hsm_server.client() as hsm:
                crypto = await open_crypto(pool, hsm)
                parts = await pool.run(catalog.partitions)
                start = secrets.randbelow(10**11) * 10
                pans = [f"621271{start + i:012d}" for i in range(count)]
                pans = [p + luhn_digit(p) for p in pans]
                rows = []
                for pan in pans:
                    h = await crypto.pan_hash(pan)
                    enc = await crypto.encrypt_pan(pan)
                    rows.append(catalog.NewCard(h, enc, mask_pan(pan), "1234", int(h, 16) % parts))
                ids = await pool.run(catalog.insert_cards, product, rows, "close-pans")
                return [{"card_id": i, "pan": p} for i, p in zip(ids, pans, strict=True)]

    return trio.run(go)


def test_range_activation_and_gift_face_value(env: dict[str, str], db_url: str, hsm_server: Any) -> None:
    cards = _close_pans(db_url, hsm_server, "GIFTS", 6)
    pans = sorted(c["pan"] for c in cards)
    first, last = pans[1], pans[4]
    dry = ok(env, "inventory", "activate", "--range", f"{first}-{last}", "--dry-run")
    inside = {c["card_id"] for c in cards if first <= c["pan"] <= last}
    assert set(dry["activated"]) == inside and dry["selected"] == 4
    done = ok(env, "inventory", "activate", "--range", f"{first}-{last}")
    assert set(done["activated"]) == inside
    balances = {c["card_id"]: ok(env, "card", "show", str(c["card_id"])) for c in cards}
    for cid, shown in balances.items():
        assert shown["state"] == ("active" if cid in inside else "inventory")
        assert shown["balance_minor"] == (5_000 if cid in inside else 0)  # face value once
    again = ok(env, "inventory", "activate", "--range", f"{first}-{last}")
    assert again["activated"] == [] and len(again["refused"]) == 4
    assert all(ok(env, "card", "show", str(c))["balance_minor"] == 5_000 for c in inside)
    wide = run(env, "inventory", "activate", "--range", f"{first[:-6]}000000-{first[:-6]}999999")
    assert wide.exit_code == 1 and "more than 10,000 cards" in wide.output
    for bad in (f"{last}-{first}", "12-34", f"{first}-6299990000000000000", "x"):
        r = run(env, "inventory", "activate", "--range", bad)
        assert r.exit_code == 1 and "--range" in r.output and "Traceback" not in r.output, r.output
    assert ok(env, "ledger", "check")["ok"] is True


def test_every_state_change_is_an_event(env: dict[str, str], db_url: str, tmp_path: Path) -> None:
    _, cards = _batch(env, "STOCK", 4)
    a, b, c, d = (str(x["card_id"]) for x in cards)
    ok(env, "card", "activate", a)
    ok(env, "card", "freeze", a)
    ok(env, "card", "unfreeze", a)
    ok(env, "card", "load", a, "--amount", "20.00")
    ok(env, "card", "activate", b)
    ok(env, "card", "load", b, "--amount", "5.00")
    ok(env, "card", "close", b, "--forfeit")
    ok(env, "card", "close", c)
    # a named card can be reported lost and replaced (the cardholder by SQL: placeholder data)
    _sql(
        db_url,
        """WITH h AS (INSERT INTO cardholders (name, name_key, id_type, id_number_enc, id_number_hash,
                                              kyc_level)
                      VALUES ('Inv Holder', 'inv holder', 'other', 'enc', 'inv-hash', 'named') RETURNING id)
           UPDATE cards SET cardholder_id = (SELECT id FROM h) WHERE id = $1""",
        int(a),
    )
    ok(env, "card", "activate", d)
    anon = run(env, "card", "lost", d)
    assert anon.exit_code == 1 and "unnamed card cannot be reported lost" in anon.output
    ok(env, "card", "lost", a)
    rep = ok(env, "card", "replace", a, "--reason", "lost", "--mailer-dir", str(tmp_path))
    assert rep["old_card_id"] == int(a) and rep["moved_minor"] == 2_000 and rep["state"] == "inventory"
    assert rep["mailer"] and Path(rep["mailer"]).exists()
    new = str(rep["card_id"])
    assert ok(env, "card", "show", a)["replaced_by"] == int(new)
    assert ok(env, "card", "show", new)["replaces"] == int(a)
    assert ok(env, "card", "replace", a, "--reason", "lost")["duplicate"] is True
    history = ok(env, "card", "history", new)
    assert any(h["txn"] == "replacement" and h["amount_minor"] == 2_000 for h in history)
    _sql(db_url, "UPDATE cards SET expiry = '2001' WHERE id = $1", int(d))
    ok(env, "card", "expire")

    def actions(card: str) -> list[tuple[str | None, str, str]]:
        rows = reversed(ok(env, "card", "events", card))
        return [(e["from_state"], e["to_state"], e["action"]) for e in rows]

    assert actions(a) == [
        (None, "inventory", "issue"),
        ("inventory", "active", "activate"),
        ("active", "frozen", "freeze"),
        ("frozen", "active", "unfreeze"),
        ("active", "lost", "lost"),
        ("lost", "lost", "replace"),
    ]
    assert actions(b)[-1] == ("active", "closed", "forfeit")
    assert actions(c)[-1] == ("inventory", "closed", "close")
    assert actions(d)[-1] == ("active", "expired", "expire")
    assert actions(new) == [(None, "inventory", "issue"), ("inventory", "inventory", "replace")]
    events = ok(env, "card", "events", a)
    assert all(e["actor"].startswith("cli:") for e in events) and "+08:00" in events[0]["at"]
    assert events[0]["reason"] == f"lost; by card {new}"
    text = run(env, "card", "events", a).output
    assert "active -> lost" in text and "(new) -> inventory" in text
    assert ok(env, "ledger", "check")["ok"] is True
