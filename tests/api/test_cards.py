"""Cards through the live API: issue (the PAN once), get, list with filters and cursor pages, balances,
the card's history with cursor pages and filters (a decline with its reason), payment codes made by the
API and paid at the demo POS terminal. Real processes throughout (tests/api/conftest.py)."""

from __future__ import annotations

import base64
import importlib.util
import json
import uuid
from typing import Any

import httpx

from host.issue import luhn_ok
from pos.system import System
from tests.api.conftest import db, unique

CARDS_RW = ["cards:read", "cards:write"]


def post(client: httpx.Client, path: str, body: dict[str, Any] | None = None,
         key: str | None = None) -> httpx.Response:
    """A POST with its Idempotency-Key (a new one unless given)."""
    return client.post(path, json=body or {}, headers={"Idempotency-Key": key or uuid.uuid4().hex})


def cli_json(live: System, *args: str) -> Any:
    return json.loads(live.cli("--json", *args).stdout)


def new_cardholder(live: System) -> str:
    """A named cardholder (an ID is given) of this test's own; its API id."""
    made = cli_json(live, "cardholder", "add", "--name", "Api Test", "--id-type", "passport",
                    "--id-number", "E" + uuid.uuid4().hex[:8].upper())
    return f"ch_{made['cardholder_id']}"


def issue_virtual(live: System, client: httpx.Client, **extra: Any) -> dict[str, Any]:
    r = post(client, "/v1/cards", {"product": "CAMPUS", "form": "virtual",
                                   "cardholder_id": new_cardholder(live), **extra})
    assert r.status_code == 201, r.text
    card: dict[str, Any] = r.json()
    return card


def card_ref(card: dict[str, Any]) -> str:
    """The host's id of an API card, for `payswitch card ...`."""
    return str(card["id"]).removeprefix("card_")


def test_issue_virtual_then_get_and_list(live: System, make_client: Any) -> None:
    c = make_client(CARDS_RW)
    label = unique("v").replace("-", ".")[-32:]
    key = uuid.uuid4().hex
    owner = new_cardholder(live)
    body = {"product": "CAMPUS", "form": "virtual", "cardholder_id": owner, "label": label}
    r = post(c, "/v1/cards", body, key)
    assert r.status_code == 201, r.text
    card = r.json()
    pan = card["pan"]
    assert luhn_ok(pan) and pan.startswith("621234") and card["shown_once"] is False
    assert card["number_masked"] == pan[:6] + "*" * (len(pan) - 10) + pan[-4:]
    assert (card["form"], card["state"], card["cardholder_id"], card["label"]) == ("virtual", "active",
                                                                                     owner, label)
    assert card["balance"] == {"amount": 0, "currency": "CNY"} and card["kyc_tier"] == "named"
    assert card["pin_mailer"] is None and card["last4"] == pan[-4:] and len(card["expiry"]) == 4
    assert "+08:00" in card["created_at"] or card["created_at"][-6] in "+-"

    got = c.get(f"/v1/cards/{card['id']}")
    assert got.status_code == 200
    assert "pan" not in got.json() and got.json()["number_masked"] == card["number_masked"]

    found = c.get("/v1/cards", params={"cardholder_id": owner, "form": "virtual", "last4": pan[-4:]}).json()
    assert [x["id"] for x in found["data"]] == [card["id"]] and found["next_cursor"] is None
    assert c.get("/v1/cards", params={"cardholder_id": owner, "state": "frozen"}).json()["data"] == []

    # the same key again answers the first answer without the PAN; no database row and no log holds it
    if importlib.util.find_spec("api.envelope") is not None:
        again = post(c, "/v1/cards", body, key)
        assert again.status_code == 201 and again.headers.get("Idempotent-Replayed") == "true"
        assert again.json()["pan"] is None and again.json()["shown_once"] is True
        assert again.json()["id"] == card["id"]
    stored = db(live, lambda conn: conn.fetch("SELECT response::text AS r FROM api_requests"))
    assert not any(pan in (row["r"] or "") for row in stored)
    assert pan not in (live.root / "api.log").read_text(errors="replace")


def test_list_pages_with_a_cursor(live: System, make_client: Any) -> None:
    c = make_client(CARDS_RW)
    owner = new_cardholder(live)
    made = []
    for _ in range(3):
        r = post(c, "/v1/cards", {"product": "CAMPUS", "form": "virtual", "cardholder_id": owner})
        assert r.status_code == 201, r.text
        made.append(r.json()["id"])
    first = c.get("/v1/cards", params={"cardholder_id": owner, "limit": 2}).json()
    assert [x["id"] for x in first["data"]] == made[:2] and first["next_cursor"]
    rest = c.get("/v1/cards", params={"cardholder_id": owner, "limit": 2,
                                      "cursor": first["next_cursor"]}).json()
    assert [x["id"] for x in rest["data"]] == made[2:] and rest["next_cursor"] is None


def test_physical_card_goes_to_inventory_with_its_mailer(live: System, make_client: Any) -> None:
    c = make_client(CARDS_RW)
    r = post(c, "/v1/cards", {"product": "CAMPUS", "form": "physical"})
    assert r.status_code == 201, r.text
    card = r.json()
    assert (card["state"], card["form"], card["cardholder_id"], card["kyc_tier"]) == (
        "inventory", "physical", None, "anonymous")
    mailer = card["pin_mailer"]
    assert mailer and mailer.endswith(".jsonl")
    path = live.root / mailer if not mailer.startswith("/") else type(live.root)(mailer)
    text = path.read_text()
    assert card_ref(card) in text and card["pan"] not in text  # the mailer holds no clear PAN


def test_balance_history_pages_and_a_decline(live: System, make_client: Any) -> None:
    c = make_client(CARDS_RW)
    card = issue_virtual(live, c)
    ref = card_ref(card)
    live.cli("card", "load", ref, "--amount", "50.00")
    live.cli("card", "load", ref, "--amount", "20.00")
    bal = c.get(f"/v1/cards/{card['id']}/balance").json()
    assert bal == {"card_id": card["id"], "ledger": {"amount": 7000, "currency": "CNY"},
                   "available": {"amount": 7000, "currency": "CNY"}, "held": {"amount": 0, "currency": "CNY"}}

    code = post(c, f"/v1/cards/{card['id']}/payment-codes").json()["code"]
    paid = live.cli("pos", "purchase", "100.00", "--code", code, check=False)  # more than the balance
    assert paid.returncode != 0 or "51" in paid.stdout

    page1 = c.get(f"/v1/cards/{card['id']}/transactions", params={"limit": 2}).json()
    assert len(page1["data"]) == 2 and page1["next_cursor"]
    newest = page1["data"][0]
    assert newest["type"] == "purchase" and newest["approved"] is False and newest["response_code"] == "51"
    assert newest["decline"] == {"reason": "insufficient_funds", "text": newest["decline"]["text"]}
    assert "insufficient" in newest["decline"]["text"] and newest["terminal_id"] == "T0000001"
    assert newest["amount"] == {"amount": 10000, "currency": "CNY"}
    page2 = c.get(f"/v1/cards/{card['id']}/transactions",
                  params={"limit": 2, "cursor": page1["next_cursor"]}).json()
    everything = page1["data"] + page2["data"]
    assert [t["type"] for t in everything] == ["purchase", "admin_load", "admin_load"]
    assert page2["next_cursor"] is None
    assert [t["amount"]["amount"] for t in everything[1:]] == [2000, 5000]

    loads = c.get(f"/v1/cards/{card['id']}/transactions", params={"type": "admin_load"}).json()["data"]
    assert [t["type"] for t in loads] == ["admin_load", "admin_load"] and all(t["approved"] for t in loads)
    since = everything[1]["at"]
    recent = c.get(f"/v1/cards/{card['id']}/transactions", params={"since": since}).json()["data"]
    assert [t["type"] for t in recent][:2] == ["purchase", "admin_load"]
    future = c.get(f"/v1/cards/{card['id']}/transactions", params={"since": "2999-01-01T00:00:00+08:00"})
    assert future.json()["data"] == []
    bad = c.get(f"/v1/cards/{card['id']}/transactions", params={"cursor": "not-a-cursor"})
    assert bad.status_code == 422 and bad.headers["content-type"].startswith("application/problem+json")
    assert c.get(f"/v1/cards/{card['id']}/transactions", params={"type": "nonsense"}).status_code == 422
    forged = base64.urlsafe_b64encode(b'["2026-01-01T00:00:00+00:00", 99999999999, "k"]').decode()
    naive = "2026-01-01T00:00:00"  # no offset
    for params in ({"cursor": forged}, {"since": "0001-01-01T00:00:00+14:00"}, {"until": naive}):
        assert c.get(f"/v1/cards/{card['id']}/transactions", params=params).status_code == 422, params


def test_payment_code_made_and_paid_at_the_pos(live: System, make_client: Any) -> None:
    c = make_client(CARDS_RW)
    card = issue_virtual(live, c)
    live.cli("card", "load", card_ref(card), "--amount", "50.00")
    key = uuid.uuid4().hex
    r = post(c, f"/v1/cards/{card['id']}/payment-codes", {"max_amount": {"amount": 2000, "currency": "CNY"}},
             key)
    assert r.status_code == 201, r.text
    made = r.json()
    code = made["code"]
    assert len(code) == 18 and made["shown_once"] is False and made["max_amount"]["amount"] == 2000
    assert made["code_masked"] == code[:6] + "*" * 8 + code[-4:] and made["card_id"] == card["id"]
    live.cli("pos", "purchase", "12.00", "--code", code)
    bal = c.get(f"/v1/cards/{card['id']}/balance").json()
    assert bal["ledger"]["amount"] == 3800
    assert live.cli("pos", "purchase", "1.00", "--code", code, check=False).returncode != 0  # once only
    stored = db(live, lambda conn: conn.fetch("SELECT response::text AS r FROM api_requests"))
    assert not any(code in (row["r"] or "") for row in stored)
    if importlib.util.find_spec("api.envelope") is not None:
        again = post(c, f"/v1/cards/{card['id']}/payment-codes",
                     {"max_amount": {"amount": 2000, "currency": "CNY"}}, key)
        assert again.json()["code"] is None and again.json()["shown_once"] is True
    usd = {"max_amount": {"amount": 100, "currency": "USD"}}
    wrong = post(c, f"/v1/cards/{card['id']}/payment-codes", usd)
    assert wrong.status_code == 422


def test_refusals_are_problems(live: System, make_client: Any) -> None:
    reader = make_client(["cards:read"])
    writer = make_client(CARDS_RW)
    for path in ("/v1/cards/card_999999999", "/v1/cards/garbage", "/v1/cards/card_999999999/balance"):
        r = reader.get(path)
        assert r.status_code == 404 and r.json()["type"].endswith("/not-found")
    r = post(reader, "/v1/cards", {"product": "CAMPUS"})
    assert r.status_code == 403 and r.json()["type"].endswith("/scope-missing")
    r = post(writer, "/v1/cards", {"product": "CAMPUS", "form": "virtual"})
    assert r.status_code == 422 and "cardholder" in r.json()["detail"]
    r = post(writer, "/v1/cards", {"product": "NOSUCH"})
    assert r.status_code == 404
    r = post(writer, "/v1/cards", {"product": "CAMPUS", "colour": "red"})
    assert r.status_code == 422
    # a code for a card that is not active: the host's reason in words
    inventory = post(writer, "/v1/cards", {"product": "CAMPUS"}).json()
    r = post(writer, f"/v1/cards/{inventory['id']}/payment-codes")
    assert r.status_code == 409 and "inventory" in r.json()["detail"]
