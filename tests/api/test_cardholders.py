"""Cardholders through the live API: register, get, search, update, KYC, close; scopes; and no clear
personal data in any answer or in the API's log."""

from __future__ import annotations

import random
import uuid
from typing import Any

import httpx

from pos.system import System
from tests.api.conftest import unique

WRITE = ["cards:read", "cardholders:write"]


def post(client: httpx.Client, path: str, body: Any = None) -> httpx.Response:
    return client.post(path, json=body, headers={"Idempotency-Key": str(uuid.uuid4())})


def person() -> dict[str, str]:
    """Personal data no other test uses."""
    n = random.randrange(10**8)
    return {
        "name": f"Wang Fang {unique('t')} {uuid.uuid4().hex[:10]}",
        "phone": f"139{n:08d}",
        "id_number": f"1101011990{n:08d}",
        "email": f"wf{n}@example.com",
    }


def clear_values(p: dict[str, str]) -> list[str]:
    return [p["phone"], p["id_number"], p["email"], p["email"].upper()]


def assert_no_clear(text: str, p: dict[str, str]) -> None:
    for v in clear_values(p):
        assert v not in text, "a clear personal value was shown"


def test_cardholder_lifecycle(live: System, make_client: Any) -> None:
    c = make_client(WRITE)
    p = person()
    seen: list[str] = []

    r = post(
        c,
        "/v1/cardholders",
        {
            "name": p["name"],
            "id_type": "resident_id",
            "id_number": p["id_number"],
            "phone": p["phone"],
            "email": p["email"],
            "birth_date": "1990-03-07",
            "address": "1 Zhongguancun St",
        },
    )
    assert r.status_code == 201, r.text
    seen.append(r.text)
    ch = r.json()
    cid = ch["id"]
    assert cid.startswith("ch_")
    assert ch["kyc_level"] == "named" and ch["state"] == "active" and ch["aml_status"] == "clear"
    assert ch["phone_masked"] == p["phone"][:3] + "****" + p["phone"][-4:]
    assert ch["id_number_masked"].endswith(p["id_number"][-4:]) and ch["id_number_masked"].startswith("*")
    assert ch["email_masked"].startswith("w***@")
    assert ch["created_at"].endswith("+08:00")

    r = c.get(f"/v1/cardholders/{cid}")
    assert r.status_code == 200, r.text
    seen.append(r.text)
    assert r.json()["name"] == p["name"] and r.json()["cards"] == []

    # search: phone (another formatting), ID number, e-mail (any case), part of the name (any case)
    for params in (
        {"phone": f"+86 {p['phone'][:3]}-{p['phone'][3:7]}-{p['phone'][7:]}"},
        {"id_number": p["id_number"]},
        {"email": p["email"].upper()},
        {"name": p["name"].split(" ", 2)[2].upper()},
        {"name": p["name"], "kyc_level": "named", "aml_status": "clear", "state": "active"},
    ):
        r = c.get("/v1/cardholders", params=params)
        assert r.status_code == 200, r.text
        seen.append(r.text)
        assert [h["id"] for h in r.json()["data"]] == [cid], params
    r = c.get("/v1/cardholders", params={"name": p["name"], "kyc_level": "verified"})
    assert r.json()["data"] == []

    r = c.patch(f"/v1/cardholders/{cid}", json={"address": "2 Chang'an Ave", "phone": "13900000001"})
    assert r.status_code == 200, r.text
    assert r.json()["address"] == "2 Chang'an Ave" and r.json()["phone_masked"] == "139****0001"

    r = post(
        c,
        f"/v1/cardholders/{cid}/kyc",
        {"level": "verified", "document_check": "passed", "reason": "ID card checked at the counter"},
    )
    assert r.status_code == 200, r.text
    d = r.json()
    assert (d["decision"], d["from_level"], d["kyc_level"]) == ("approved", "named", "verified")
    assert d["actor"].startswith("api:")
    r = c.get(f"/v1/cardholders/{cid}/kyc")
    assert r.status_code == 200, r.text
    assert [e["decision"] for e in r.json()["data"]] == ["registered", "approved"]
    assert c.get(f"/v1/cardholders/{cid}").json()["tier"] == "verified"

    r = post(c, f"/v1/cardholders/{cid}/close", {"reason": "moved away"})
    assert r.status_code == 200, r.text
    assert r.json()["state"] == "closed"
    r = post(c, f"/v1/cardholders/{cid}/close")
    assert r.status_code == 409, r.text
    assert r.json()["type"].endswith("/conflict")
    r = c.patch(f"/v1/cardholders/{cid}", json={"address": "x"})
    assert r.status_code == 409, r.text
    r = post(c, f"/v1/cardholders/{cid}/kyc", {"level": "anonymous", "reason": "test"})
    assert r.status_code == 409, r.text

    for text in seen:
        assert_no_clear(text, p)
    assert_no_clear((live.root / "api.log").read_text(), p)


def test_anonymous_then_named_by_kyc_and_downgrade(make_client: Any) -> None:
    c = make_client(WRITE)
    p = person()
    r = post(c, "/v1/cardholders", {"name": p["name"]})
    assert r.status_code == 201, r.text
    cid = r.json()["id"]
    assert r.json()["kyc_level"] == "anonymous" and r.json()["id_number_masked"] is None

    verify = {"level": "verified", "document_check": "passed", "reason": "x"}
    r = post(c, f"/v1/cardholders/{cid}/kyc", verify)
    assert r.status_code == 409, r.text  # verified needs an ID number
    r = post(c, f"/v1/cardholders/{cid}/kyc", {"level": "named", "reason": "no ID"})
    assert r.status_code == 409, r.text
    passport = "E1234" + p["id_number"][-8:]
    r = post(
        c,
        f"/v1/cardholders/{cid}/kyc",
        {"level": "named", "id_type": "passport", "id_number": passport, "reason": "passport"},
    )
    assert r.status_code == 200, r.text
    assert (r.json()["decision"], r.json()["kyc_level"]) == ("id_changed", "named")
    r = post(
        c,
        f"/v1/cardholders/{cid}/kyc",
        {"level": "verified", "document_check": "failed", "reason": "photo does not match"},
    )
    assert (r.json()["decision"], r.json()["kyc_level"]) == ("rejected", "named")
    r = post(c, f"/v1/cardholders/{cid}/kyc", {"level": "anonymous", "reason": "document withdrawn"})
    assert r.status_code == 200, r.text
    assert (r.json()["decision"], r.json()["kyc_level"]) == ("downgraded", "anonymous")
    r = post(c, f"/v1/cardholders/{cid}/kyc", {"level": "anonymous", "reason": "again"})
    assert r.status_code == 409, r.text


def test_bad_input_names_the_field_never_the_value(make_client: Any) -> None:
    c = make_client(WRITE)
    p = person()
    for field, bad in (
        ("phone", "12ab-secret-999"),
        ("id_number", "!!secret-id-77!!"),
        ("email", "secret.no.at.sign"),
        ("birth_date", "1850-01-01"),
    ):
        r = post(
            c,
            "/v1/cardholders",
            {"name": p["name"], field: bad, **({"id_type": "resident_id"} if field == "id_number" else {})},
        )
        assert r.status_code == 422, r.text
        assert r.headers["content-type"].startswith("application/problem+json")
        assert [e["field"] for e in r.json()["errors"]] == [field]
        assert bad not in r.text
    r = c.get("/v1/cardholders", params={"phone": "12ab-secret-999"})
    assert r.status_code == 422 and "12ab-secret-999" not in r.text
    assert r.json()["errors"][0]["field"] == "phone"
    r = post(c, "/v1/cardholders", {"name": p["name"], "id_number": p["id_number"]})  # no id_type
    assert r.status_code == 422 and p["id_number"] not in r.text
    r = post(c, "/v1/cardholders", {"name": p["name"], "nickname": "x"})  # unknown member
    assert r.status_code == 422
    r = c.patch("/v1/cardholders/ch_1", json={})
    assert r.status_code == 422
    assert post(c, "/v1/cardholders", {"name": "Wang\x00Fang"}).status_code == 422  # a NUL is no 500
    assert post(c, "/v1/cardholders", {"name": "Wang", "email": "a\x00@example.com"}).status_code == 422
    assert c.get("/v1/cardholders", params={"name": "a\x00"}).status_code == 422
    r = c.get("/v1/cardholders", params={"cursor": "abc"})
    assert r.status_code == 422


def test_duplicate_id_unknown_ids_and_pages(make_client: Any) -> None:
    c = make_client(WRITE)
    p = person()
    body = {"name": p["name"], "id_type": "resident_id", "id_number": p["id_number"]}
    first = post(c, "/v1/cardholders", body)
    assert first.status_code == 201
    r = post(c, "/v1/cardholders", {**body, "name": p["name"] + " Jr"})
    assert r.status_code == 409, r.text
    assert p["id_number"] not in r.text
    for path in (
        "/v1/cardholders/ch_999999999",
        "/v1/cardholders/nonsense",
        "/v1/cardholders/ch_99999999/kyc",
    ):
        r = c.get(path)
        assert r.status_code == 404, (path, r.text)
    assert post(c, "/v1/cardholders/ch_999999999/close").status_code == 404

    base = p["name"]
    made = [post(c, "/v1/cardholders", {"name": f"{base} page {i}"}).json()["id"] for i in range(3)]
    got: list[str] = []
    cursor = None
    while True:
        r = c.get(
            "/v1/cardholders",
            params={"name": f"{base} page", "limit": 2, **({"cursor": cursor} if cursor else {})},
        )
        assert r.status_code == 200, r.text
        got += [h["id"] for h in r.json()["data"]]
        cursor = r.json()["next_cursor"]
        if cursor is None:
            break
    assert got == made


def test_scopes(live: System, make_client: Any) -> None:
    p = person()
    none = make_client(["webhooks:write"])
    r = post(none, "/v1/cardholders", {"name": p["name"]})
    assert r.status_code == 403 and r.json()["type"].endswith("/scope-missing")
    assert none.get("/v1/cardholders").status_code == 403
    assert none.get("/v1/cardholders/ch_1").status_code == 403
    reader = make_client(["cards:read"])
    assert reader.get("/v1/cardholders", params={"limit": 1}).status_code == 200
    assert post(reader, "/v1/cardholders", {"name": p["name"]}).status_code == 403
    assert reader.patch("/v1/cardholders/ch_1", json={"address": "x"}).status_code == 403
    shop = make_client(["cards:read", "cardholders:write"], merchant_id="898330160120001")
    r = shop.get("/v1/cardholders")
    assert r.status_code == 403 and r.json()["type"].endswith("/forbidden")
    assert httpx.get(f"{live.api_url}/v1/cardholders").status_code == 401
