"""The API's H2H link to the switch (api/acquirer.py) on the live system: made by `demo seed`, signed on,
its keys shown only as check values, many requests pipelined and each answer matched to its request.
(Link down and reconnect: tests/api/test_payment_crash.py, which has a system of its own to kill.)"""

from __future__ import annotations

import concurrent.futures
import json
import uuid
from typing import Any

import httpx

from pos.system import System
from tests.api.test_payments import MERCHANT, cny, code_for, issue_card


def test_link_signed_on_and_shown_without_keys(live: System) -> None:
    ready = httpx.get(live.api_url + "/readyz", timeout=10)
    assert ready.status_code == 200, ready.text
    shown = json.loads(live.cli("--json", "api", "link", "show").stdout)
    assert shown["institution_id"] == "48889999" and shown["scheme"] in ("3des", "sm4")
    assert len(shown["zpk_check"]) >= 6 and shown["zak_check"]
    assert "zpk" not in shown and "zak" not in shown  # check values only, never a key
    text = live.cli("api", "link", "show").stdout
    assert "U" + "0" * 4 not in text and "check" in text
    links = json.loads(live.cli("--json", "switch", "link", "list").stdout)
    rows = links["links"] if isinstance(links, dict) else links
    assert any(r["name"] == "api" and r["direction"] == "in" for r in rows)


def test_link_set_refuses_a_clear_key(live: System) -> None:
    r = live.cli("api", "link", "set", "--scheme", "3des", "--zpk", "0123456789ABCDEFFEDCBA9876543210",
                 check=False)
    assert r.returncode != 0 and "under the LMK" in (r.stderr + r.stdout)
    assert "0123456789ABCDEF" not in r.stderr.replace("--zpk", "")


def test_pipelined_payments_each_get_their_own_answer(live: System, make_client: Any) -> None:
    """Twelve purchases at once, on different cards and amounts: each answer is its own request's."""
    client = make_client(["payments:write"])
    cards = [issue_card(live) for _ in range(3)]
    Item = tuple[dict[str, Any], str | None, int]
    codes: list[Item] = [(c, code_for(live, c["id"]), 100 + i) for i, c in enumerate(cards)]
    plain: list[Item] = [(c, None, 200 + i) for i, c in enumerate(cards * 3)]

    def pay(item: tuple[dict[str, Any], str | None, int]) -> tuple[int, dict[str, Any]]:
        card, code, amount = item
        body: dict[str, Any] = {"amount": cny(amount), "merchant_id": MERCHANT}
        if code:
            body["payment_code"] = code
        else:
            body["card"] = {"number": card["pan"], "expiry": card["expiry"]}
        r = client.post("/v1/payments", json=body, headers={"Idempotency-Key": uuid.uuid4().hex})
        assert r.status_code == 201, r.text
        return amount, r.json()

    with concurrent.futures.ThreadPoolExecutor(12) as pool:
        results = list(pool.map(pay, codes + plain))
    for (amount, doc), (card, _, _) in zip(results, codes + plain, strict=True):
        assert doc["status"] == "approved", doc
        assert doc["amount"]["amount"] == amount and doc["card"]["id"] == f"card_{card['id']}"
    assert len({d["rrn"] for _, d in results}) == len(results)
    spent = {c["id"]: 0 for c in cards}
    for amount, doc in results:
        spent[int(doc["card"]["id"].removeprefix("card_"))] += amount
    for c in cards:
        shown = json.loads(live.cli("--json", "card", "show", str(c["id"])).stdout)
        assert json.dumps(shown).count(str(10000 - spent[c["id"]])) >= 1
