"""Payments, refunds, reversals and loads through the live API, the real switch, host, HSM and database
(api/payments.py): every one an ISO 8583 request on the API's own acquirer link."""

from __future__ import annotations

import json
import uuid
from typing import Any

import httpx
import pytest

from pos.system import System
from tests.api.conftest import unique

MERCHANT = "898330160120001"
PRODUCT = "CAMPUS"


def post(client: httpx.Client, path: str, body: dict[str, Any] | None = None,
         key: str | None = None) -> httpx.Response:
    return client.post(path, json=body if body is not None else {},
                       headers={"Idempotency-Key": key or uuid.uuid4().hex})


def issue_card(live: System, load_yuan: str | None = "100.00") -> dict[str, Any]:
    """A new active demo card of our own (PAN, expiry, id), loaded with ``load_yuan`` by `card load`."""
    out = json.loads(live.cli("--json", "card", "issue", "--product", PRODUCT, "--activate",
                              "--pin", "123456").stdout)
    card = out["cards"][0]
    if load_yuan:
        live.cli("card", "load", str(card["card_id"]), "--amount", load_yuan, "--reference", unique("l"))
    return {"id": int(card["card_id"]), "pan": str(card["pan"]), "expiry": str(card["expiry"])}


def code_for(live: System, card_id: int) -> str:
    out = json.loads(live.cli("--json", "card", "code", str(card_id)).stdout)
    return str(out["code"])


def balance(live: System, card_id: int) -> int:
    out = json.loads(live.cli("--json", "card", "show", str(card_id)).stdout)
    for key in ("available_minor", "balance_minor"):
        if key in out:
            return int(out[key])
    return int(out["available"]["amount"]) if isinstance(out.get("available"), dict) else int(out["balance"])


def pay_by_code(client: httpx.Client, code: str, amount: int, **kw: Any) -> httpx.Response:
    return post(client, "/v1/payments", {"payment_code": code, "amount": cny(amount), "merchant_id": MERCHANT,
                                         **kw})


def cny(amount: int) -> dict[str, Any]:
    return {"amount": amount, "currency": "CNY"}


def test_a_payment_sent_again_with_its_key_gets_the_first_answer(live: System, make_client: Any) -> None:
    """The route commits the idempotency record's answer with the switch's (api.payments.Keep): the same
    key and body get that answer again, replayed, and the card is charged once."""
    client = make_client(["payments:write"])
    card = issue_card(live)
    body = {"payment_code": code_for(live, card["id"]), "amount": cny(250), "merchant_id": MERCHANT}
    first = post(client, "/v1/payments", body, key="pay-once-" + unique("k"))
    assert first.status_code == 201 and first.json()["status"] == "approved", first.text
    again = post(client, "/v1/payments", body, key=first.request.headers["Idempotency-Key"])
    assert again.status_code == 201 and again.headers.get("Idempotent-Replayed") == "true"
    assert again.json() == first.json()
    assert balance(live, card["id"]) == 10000 - 250


def test_purchase_by_code_approved_and_code_used_05(live: System, make_client: Any) -> None:
    client = make_client(["payments:write"])
    card = issue_card(live)
    code = code_for(live, card["id"])
    r = pay_by_code(client, code, 1234, reference="order-1")
    assert r.status_code == 201, r.text
    p = r.json()
    assert p["status"] == "approved" and p["id"].startswith("pay_")
    assert p["amount"] == {"amount": 1234, "currency": "CNY"}
    assert p["card"]["id"] == f"card_{card['id']}" and p["card"]["number"].startswith("621234")
    assert card["pan"] not in r.text and code not in json.dumps(p["card"])
    # no terminal_id given: the merchant's first active terminal (lowest DE41; the demo's load pool has
    # L... terminals at the same merchant)
    assert len(p["terminal_id"]) == 8 and len(p["rrn"]) == 12 and p["auth_code"]
    assert p["created_at"].endswith("+08:00")
    assert p["balance"] in (None, {"amount": 10000 - 1234, "currency": "CNY"})
    assert balance(live, card["id"]) == 10000 - 1234
    again = pay_by_code(client, code, 100)
    assert again.status_code == 201
    assert again.json()["status"] == "declined"
    assert again.json()["decline"]["code"] == "05"
    assert "used" in again.json()["decline"]["reason"]
    got = client.get(f"/v1/payments/{p['id']}")
    assert got.status_code == 200 and got.json()["status"] == "approved"
    listed = client.get("/v1/payments", params={"limit": 1})
    assert listed.status_code == 200
    assert listed.json()["data"][0]["id"] == again.json()["id"] and listed.json()["next_cursor"]
    nxt = client.get("/v1/payments", params={"limit": 1, "cursor": listed.json()["next_cursor"]})
    assert [x["id"] for x in nxt.json()["data"]] == [p["id"]]


def test_insufficient_funds_51(live: System, make_client: Any) -> None:
    client = make_client(["payments:write"])
    card = issue_card(live, "10.00")
    r = pay_by_code(client, code_for(live, card["id"]), 5000)
    assert r.status_code == 201, r.text
    assert r.json()["status"] == "declined"
    assert r.json()["decline"] == {"code": "51", "reason": "insufficient funds"}
    assert balance(live, card["id"]) == 1000


def test_card_not_present_refund_partial_and_reversal(live: System, make_client: Any) -> None:
    client = make_client(["payments:write"], merchant_id=MERCHANT)
    card = issue_card(live)
    body = {"card": {"number": card["pan"], "expiry": card["expiry"]},
            "amount": {"amount": 3000, "currency": "CNY"}, "merchant_id": MERCHANT}
    r = post(client, "/v1/payments", body)
    assert r.status_code == 201, r.text
    pay = r.json()
    assert pay["status"] == "approved", pay
    assert card["pan"] not in r.text
    assert balance(live, card["id"]) == 7000
    part = post(client, f"/v1/payments/{pay['id']}/refund", {"amount": {"amount": 1000, "currency": "CNY"}})
    assert part.status_code == 201, part.text
    assert part.json()["status"] == "approved" and part.json()["type"] == "refund"
    assert part.json()["original_id"] == pay["id"]
    assert balance(live, card["id"]) == 8000
    too_much = post(client, f"/v1/payments/{pay['id']}/refund", {"amount": cny(2500)})
    assert too_much.status_code == 409, too_much.text
    rest = post(client, f"/v1/payments/{pay['id']}/refund")
    assert rest.status_code == 201 and rest.json()["amount"]["amount"] == 2000
    assert balance(live, card["id"]) == 10000
    # a second purchase, reversed
    r2 = post(client, "/v1/payments", body)
    assert r2.json()["status"] == "approved"
    assert balance(live, card["id"]) == 7000
    rev = post(client, f"/v1/payments/{r2.json()['id']}/reversal")
    assert rev.status_code == 201, rev.text
    assert rev.json()["status"] == "reversed"
    assert balance(live, card["id"]) == 10000
    # wrong expiry: not our card as presented
    bad = post(client, "/v1/payments", {**body, "card": {"number": card["pan"], "expiry": "2001"}})
    assert bad.status_code == 201 and bad.json()["status"] == "declined"
    assert card["pan"] not in bad.text
    live.cli("ledger", "check")


def test_merchant_bound_key_refused_elsewhere(live: System, make_client: Any) -> None:
    other = "898330160129999"
    live.cli("merchant", "add", other, "--name", "Other shop", "--mcc", "5814", check=False)  # may exist
    client = make_client(["payments:write"], merchant_id=other)
    r = pay_by_code(client, "621234000000123456", 100)
    assert r.status_code == 403, r.text
    assert r.json()["type"].endswith("/merchant-mismatch")
    no_scope = make_client(["cards:read"])
    assert pay_by_code(no_scope, "621234000000123456", 100).status_code == 403


def test_load_with_funding_reference(live: System, make_client: Any) -> None:
    client = make_client(["loads:write"])
    card = issue_card(live, None)
    ref = unique("wire").replace("-", "_")[:28]
    r = post(client, "/v1/loads", {"card_id": f"card_{card['id']}", "amount": cny(25000),
                                   "funding_reference": ref})
    assert r.status_code == 201, r.text
    load = r.json()
    assert load["status"] == "approved" and load["id"].startswith("load_") and load["type"] == "load"
    assert load["reference"] == ref
    assert balance(live, card["id"]) == 25000
    hist = json.loads(live.cli("--json", "card", "history", str(card["id"])).stdout)
    rows = hist if isinstance(hist, list) else hist.get("rows", hist.get("data", []))
    assert any(row.get("reference") == ref and row.get("txn") == "admin_load" for row in rows), rows
    got = client.get(f"/v1/loads/{load['id']}")
    assert got.status_code == 200 and got.json()["reference"] == ref
    over = post(client, "/v1/loads", {"card_id": f"card_{card['id']}",
                                      "amount": cny(900_000), "funding_reference": ref})
    assert over.status_code == 201 and over.json()["status"] == "declined"
    live.cli("ledger", "check")


@pytest.mark.parametrize("body", [
    {"amount": {"amount": 100, "currency": "CNY"}, "merchant_id": MERCHANT},  # neither code nor card
    {"payment_code": "621234000000123457", "amount": {"amount": 100, "currency": "CNY"},
     "merchant_id": MERCHANT},  # the check digit is wrong
    {"payment_code": "621234000000123456", "amount": {"amount": 1.5, "currency": "CNY"},
     "merchant_id": MERCHANT},  # money is never a float
])
def test_bad_requests_are_422(live: System, make_client: Any, body: dict[str, Any]) -> None:
    client = make_client(["payments:write"])
    r = post(client, "/v1/payments", body)
    assert r.status_code == 422, r.text
    assert "621234000000123" not in r.text
