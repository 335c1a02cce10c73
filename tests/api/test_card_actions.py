"""Card actions through the live API: freeze/unfreeze, report lost, replace (the new PAN once), unload,
close; spend controls read and set; the issuer's SM2 key, a PIN set from an app's SM2 block (gmssl is
the app) and a PIN reset with a new mailer. Real processes throughout (tests/api/conftest.py)."""

from __future__ import annotations

import importlib.util
import uuid
from pathlib import Path
from typing import Any

from pos.system import System
from tests.api.conftest import db
from tests.api.test_cards import CARDS_RW, card_ref, issue_virtual, post
from tests.host.test_pins import app_block


def test_lifecycle_freeze_report_replace_unload_close(live: System, make_client: Any) -> None:
    c = make_client(CARDS_RW)
    card = issue_virtual(live, c)
    cid = card["id"]
    live.cli("card", "load", card_ref(card), "--amount", "30.00")

    r = post(c, f"/v1/cards/{cid}/freeze")
    assert r.status_code == 200, r.text
    assert r.json()["change"] == {"action": "freeze", "from_state": "active", "to_state": "frozen"}
    assert r.json()["card"]["state"] == "frozen"
    again = post(c, f"/v1/cards/{cid}/freeze")
    assert again.status_code == 409 and again.json()["type"].endswith("/conflict")
    assert "frozen" in again.json()["detail"]
    r = post(c, f"/v1/cards/{cid}/unfreeze")
    assert r.status_code == 200 and r.json()["card"]["state"] == "active"

    assert post(c, f"/v1/cards/{cid}/report", {"reason": "misplaced"}).status_code == 422
    r = post(c, f"/v1/cards/{cid}/report", {"reason": "lost"})
    assert r.status_code == 200 and r.json()["change"]["to_state"] == "lost"
    assert post(c, f"/v1/cards/{cid}/unfreeze").status_code == 409

    key = uuid.uuid4().hex
    r = post(c, f"/v1/cards/{cid}/replace", {"reason": "lost"}, key)
    assert r.status_code == 200, r.text
    rep = r.json()
    new, pan = rep["card"], rep["pan"]
    assert pan and pan.endswith(new["last4"]) and rep["shown_once"] is False and rep["duplicate"] is False
    assert rep["moved"] == {"amount": 3000, "currency": "CNY"} and new["balance"]["amount"] == 3000
    assert (new["state"], new["form"], new["cardholder_id"]) == ("active", "virtual", card["cardholder_id"])
    assert rep["old_card"]["state"] == "lost" and rep["change"]["to_state"] == "lost"
    if importlib.util.find_spec("api.envelope") is not None:
        replay = post(c, f"/v1/cards/{cid}/replace", {"reason": "lost"}, key)
        assert replay.json()["pan"] is None and replay.json()["card"]["id"] == new["id"]
    stored = db(live, lambda conn: conn.fetch("SELECT response::text AS r FROM api_requests"))
    assert not any(pan in (row["r"] or "") for row in stored)
    assert pan not in (live.root / "api.log").read_text(errors="replace")

    too_much = post(c, f"/v1/cards/{new['id']}/unload",
                    {"amount": {"amount": 999_999, "currency": "CNY"}, "reference": uuid.uuid4().hex})
    assert too_much.status_code == 409 and "available" in too_much.json()["detail"]
    unknown = post(c, f"/v1/cards/{new['id']}/unload",  # a well-formed code of no known currency
                   {"amount": {"amount": 157, "currency": "RRP"}, "reference": uuid.uuid4().hex})
    assert unknown.status_code == 422 and "CNY" in unknown.json()["detail"], unknown.text
    ref = f"api-test-{uuid.uuid4().hex[:12]}"
    r = post(c, f"/v1/cards/{new['id']}/unload",
             {"amount": {"amount": 1000, "currency": "CNY"}, "destination": "desk", "reference": ref})
    assert r.status_code == 200, r.text
    u = r.json()
    assert u["unloaded"] == {"amount": 1000, "currency": "CNY"} and u["duplicate"] is False
    assert u["destination"]["payee"] == "desk" and u["card"]["balance"]["amount"] == 2000
    same = post(c, f"/v1/cards/{new['id']}/unload",
                {"amount": {"amount": 1000, "currency": "CNY"}, "destination": "desk", "reference": ref})
    assert same.json()["duplicate"] is True and same.json()["card"]["balance"]["amount"] == 2000

    r = post(c, f"/v1/cards/{new['id']}/close")
    assert r.status_code == 409 and "unload" in r.json()["detail"]
    r = post(c, f"/v1/cards/{new['id']}/close", {"forfeit": True})
    assert r.status_code == 200, r.text
    assert r.json()["forfeited"] == {"amount": 2000, "currency": "CNY"}
    assert r.json()["card"]["state"] == "closed" and r.json()["change"]["from_state"] == "active"

    actors = db(live, lambda conn: conn.fetch(
        "SELECT action, actor FROM card_events WHERE card_id = ANY($1::bigint[]) ORDER BY id",
        [int(card_ref(card)), int(card_ref(new))]))
    me = "api:" + c.headers["x-test-client"]
    mine = {a["action"] for a in actors if a["actor"] == me}
    assert {"issue", "freeze", "unfreeze", "lost", "replace", "forfeit"} <= mine, actors


def test_controls_get_and_set(live: System, make_client: Any) -> None:
    c = make_client(CARDS_RW)
    card = issue_virtual(live, c)
    cid = card["id"]
    got = c.get(f"/v1/cards/{cid}/controls")
    assert got.status_code == 200, got.text
    view = got.json()
    assert view["card_id"] == cid and view["product"] == "CAMPUS"
    assert {x["limit"] for x in view["limits"]} >= {"per_txn", "day_amount", "day_count"}
    assert all(x["source"] == "product" for x in view["limits"])

    body = {"limits": {"day_amount": {"amount": 2000, "currency": "CNY"}, "week_count": 5},
            "hours": ["06:30-09:00", "mon-fri@11:00-13:30"]}
    r = post(c, f"/v1/cards/{cid}/controls", body)
    assert r.status_code == 200, r.text
    view = r.json()
    day = next(x for x in view["limits"] if x["limit"] == "day_amount")
    assert day["source"] == "card" and day["amount"] == {"amount": 2000, "currency": "CNY"}
    assert day["used_amount"]["amount"] == 0 and day["remaining_amount"]["amount"] == 2000
    week = next(x for x in view["limits"] if x["limit"] == "week_count")
    assert (week["count"], week["remaining_count"], week["amount"]) == (5, 5, None)
    assert view["hours"]["card"] == ["06:30-09:00", "mon-fri@11:00-13:30"]
    assert view["overrides"]["limits"]["day_amount"] == {"amount": 2000, "currency": "CNY"}
    assert c.get(f"/v1/cards/{cid}/controls").json() == view

    above = post(c, f"/v1/cards/{cid}/controls",
                 {"limits": {"per_txn": {"amount": 999_999_999, "currency": "CNY"}}})
    assert above.status_code == 409 and "product" in above.json()["detail"]
    bad = post(c, f"/v1/cards/{cid}/controls", {"hours": ["25:00-26:00"]})
    assert bad.status_code == 422 and bad.json()["type"].endswith("/validation-error")
    cleared = post(c, f"/v1/cards/{cid}/controls", {"clear": True}).json()
    assert cleared["hours"]["card"] == [] and all(x["source"] == "product" for x in cleared["limits"])


def test_pin_key_set_and_reset(live: System, make_client: Any) -> None:
    c = make_client(CARDS_RW)
    card = issue_virtual(live, c)
    cid, pan = card["id"], card["pan"]
    key = c.get("/v1/pin-key")
    assert key.status_code == 200
    k = key.json()
    assert k["curve"] == "sm2p256v1" and k["pem"].startswith("-----BEGIN PUBLIC KEY-----")
    assert len(k["public_key"]) == 130 and k["ciphertext"] == "C1C3C2"

    block = app_block(k["public_key"], pan, "2468").hex().upper()
    r = post(c, f"/v1/cards/{cid}/pin", {"sm2_block": block})
    assert r.status_code == 200, r.text
    assert r.json() == {"card_id": cid, "action": "pin_set", "state": "active", "pin_tries": 0,
                        "pin_mailer": None}
    replayed = post(c, f"/v1/cards/{cid}/pin", {"sm2_block": block})
    assert replayed.status_code == 422 and "newer" in replayed.json()["detail"]
    assert post(c, f"/v1/cards/{cid}/pin", {"sm2_block": "00" * 113}).status_code == 422
    assert post(c, f"/v1/cards/{cid}/pin", {"sm2_block": "abc"}).status_code == 422

    r = post(c, f"/v1/cards/{cid}/pin/reset")
    assert r.status_code == 200, r.text
    done = r.json()
    assert done["action"] == "pin_reset" and done["pin_tries"] == 0 and done["pin_mailer"]
    mailer = Path(done["pin_mailer"])
    mailer = mailer if mailer.is_absolute() else live.root / mailer
    text = mailer.read_text()
    assert card_ref(card) in text and pan not in text and "2468" not in r.text
    events = db(live, lambda conn: conn.fetch(
        "SELECT action, actor FROM card_events WHERE card_id = $1", int(card_ref(card))))
    me = "api:" + c.headers["x-test-client"]
    assert {("pin_set", me), ("pin_reset", me)} <= {(e["action"], e["actor"]) for e in events}

    post(c, f"/v1/cards/{cid}/report", {"reason": "stolen"})
    refused = post(c, f"/v1/cards/{cid}/pin/reset")
    assert refused.status_code == 409 and "stolen" in refused.json()["detail"]
