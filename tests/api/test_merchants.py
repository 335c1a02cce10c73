"""Merchants, stores and terminals through the live API: a programme key sees them all; a merchant-bound
key sees its own merchant only (another's is a 404, as an unknown one)."""

from __future__ import annotations

import random
from typing import Any

from pos.demo import MERCHANT_ID, MERCHANT_NAME, STORE_CODE
from pos.system import System


def other_merchant(live: System) -> str:
    """A second merchant with a store, made for this test."""
    mid = f"9{random.randrange(10**13, 10**14)}"
    live.cli("merchant", "add", mid, "--name", "Other Shop", "--mcc", "5411", "--fee-bps", "60")
    live.cli("store", "add", mid, "X1", "--name", "Other store")
    return mid


def test_programme_key_reads_merchants_stores_terminals(live: System, make_client: Any) -> None:
    c = make_client(["cards:read"])
    other = other_merchant(live)

    r = c.get(f"/v1/merchants/{MERCHANT_ID}")
    assert r.status_code == 200, r.text
    m = r.json()
    assert (m["merchant_id"], m["name"], m["currency"]) == (MERCHANT_ID, MERCHANT_NAME, "CNY")
    assert m["state"] == "active"
    assert m["payable"]["currency"] == "CNY" and isinstance(m["payable"]["amount"], int)
    assert STORE_CODE in m["store_codes"] and m["terminal_count"] >= 2
    assert m["created_at"].endswith("+08:00")

    r = c.get(f"/v1/merchants/{other}")
    assert r.status_code == 200 and r.json()["fee_rate_bps"] == 60 and r.json()["store_codes"] == ["X1"]

    # the whole list, one merchant a page
    ids: list[str] = []
    cursor = None
    while True:
        r = c.get("/v1/merchants", params={"limit": 1, **({"cursor": cursor} if cursor else {})})
        assert r.status_code == 200, r.text
        assert len(r.json()["data"]) <= 1
        ids += [x["merchant_id"] for x in r.json()["data"]]
        cursor = r.json()["next_cursor"]
        if cursor is None:
            break
    assert {MERCHANT_ID, other} <= set(ids) and len(ids) == len(set(ids))
    r = c.get("/v1/merchants", params={"mcc": "5411", "name": "other sh"})
    assert other in [x["merchant_id"] for x in r.json()["data"]]
    assert MERCHANT_ID not in [x["merchant_id"] for x in r.json()["data"]]

    r = c.get(f"/v1/merchants/{MERCHANT_ID}/stores")
    assert r.status_code == 200, r.text
    assert [s["code"] for s in r.json()["data"]] == [STORE_CODE]

    r = c.get(f"/v1/merchants/{MERCHANT_ID}/terminals", params={"limit": 100})
    assert r.status_code == 200, r.text
    terms = {t["terminal_id"]: t for t in r.json()["data"]}
    assert terms["T0000001"]["scheme"] == "3des" and terms["T0000002"]["scheme"] == "sm4"
    assert "tmk" not in r.text and "tmk_check" not in r.text
    r = c.get(f"/v1/merchants/{MERCHANT_ID}/terminals", params={"store": "no-such-store"})
    assert r.json()["data"] == []

    assert c.get("/v1/merchants/000000000000000").status_code == 404
    assert c.get("/v1/merchants/000000000000000/terminals").status_code == 404
    assert c.get("/v1/merchants", params={"name": "a\x00"}).status_code == 422  # a NUL is no 500
    assert c.get("/v1/merchants/%00%01").status_code == 404
    assert c.get("/v1/merchants/" + "9" * 40).status_code == 404
    assert c.get("/v1/merchants", params={"cursor": "x"}).status_code == 422
    assert c.get("/v1/merchants", params={"limit": 101}).status_code == 422


def test_merchant_bound_key_sees_only_its_own(live: System, make_client: Any) -> None:
    other = other_merchant(live)
    shop = make_client(["cards:read", "payments:write"], merchant_id=MERCHANT_ID)

    r = shop.get("/v1/merchants")
    assert r.status_code == 200, r.text
    assert [x["merchant_id"] for x in r.json()["data"]] == [MERCHANT_ID] and r.json()["next_cursor"] is None
    assert shop.get(f"/v1/merchants/{MERCHANT_ID}").status_code == 200
    assert shop.get(f"/v1/merchants/{MERCHANT_ID}/stores").status_code == 200
    assert shop.get(f"/v1/merchants/{MERCHANT_ID}/terminals").status_code == 200
    for path in (
        f"/v1/merchants/{other}",
        f"/v1/merchants/{other}/stores",
        f"/v1/merchants/{other}/terminals",
    ):
        r = shop.get(path)
        assert r.status_code == 404, (path, r.text)
        assert r.json()["type"].endswith("/not-found") and other not in r.json().get("detail", "")
    # an unknown merchant reads exactly as another's: nothing to probe
    unknown = shop.get("/v1/merchants/000000000000000").json()
    known = shop.get(f"/v1/merchants/{other}").json()
    assert {k: v for k, v in unknown.items() if k != "instance"} == {
        k: v for k, v in known.items() if k != "instance"
    }

    other_key = make_client(["cards:read"], merchant_id=other)
    assert [x["merchant_id"] for x in other_key.get("/v1/merchants").json()["data"]] == [other]
    assert other_key.get(f"/v1/merchants/{MERCHANT_ID}").status_code == 404

    nope = make_client(["payments:write"])
    assert nope.get("/v1/merchants").status_code == 403
