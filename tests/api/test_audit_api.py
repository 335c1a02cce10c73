"""The API's audit record (api/envelope.py): every state-changing request under /v1/ is one row (actor
api:<client>, role api, the client address, the route template as the action, the path as the target,
the status in after, done / refused / failed), written with the idempotency record's finish; a replayed
answer writes no second row; a read writes none; the chain still verifies."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx

from ops import audit
from pos.system import System
from tests.api.conftest import db, unique

MakeClient = Callable[..., httpx.Client]


def _rows(live: System, **filters: Any) -> list[audit.Row]:
    async def work(conn: Any) -> list[audit.Row]:
        return (await audit.list_rows(conn, limit=100, **filters)).rows

    rows: list[audit.Row] = db(live, work)
    return rows


def _card(live: System) -> int:
    out = json.loads(live.cli("--json", "card", "issue", "--product", "CAMPUS", "--activate").stdout)
    return int(out["cards"][0]["card_id"])


def test_a_post_is_one_row_and_its_replay_none(live: System, make_client: MakeClient) -> None:
    name = unique("audapi")
    client = make_client(["cards:write", "cards:read"], name=name)
    card_id = _card(live)
    key = unique("k")
    first = client.post(f"/v1/cards/{card_id}/freeze", headers={"Idempotency-Key": key})
    assert first.status_code == 200, first.text
    again = client.post(f"/v1/cards/{card_id}/freeze", headers={"Idempotency-Key": key})
    assert again.headers.get("idempotent-replayed") == "true"
    assert client.get(f"/v1/cards/{card_id}").status_code == 200  # a read: no row
    rows = _rows(live, actor=f"api:{name}")
    assert len(rows) == 1
    row = rows[0]
    assert (row.role, row.action, row.target, row.after, row.outcome) == (
        "api", "api.POST /v1/cards/{card_id}/freeze", f"/v1/cards/{card_id}/freeze", {"status": 200}, "done")
    assert row.source == "127.0.0.1"
    # the idempotency record was closed in the same statement: a replay after it gets the kept answer
    assert again.json() == first.json()


def test_a_refusal_and_a_conflict_are_recorded(live: System, make_client: MakeClient) -> None:
    name = unique("audro")
    reader = make_client(["cards:read"], name=name)
    card_id = _card(live)
    r = reader.post(f"/v1/cards/{card_id}/freeze", headers={"Idempotency-Key": unique("k")})
    assert r.status_code == 403
    rows = _rows(live, actor=f"api:{name}")
    assert [(x.outcome, x.after) for x in rows] == [("refused", {"status": 403})]
    writer_name = unique("audw")
    writer = make_client(["cards:write"], name=writer_name)
    first = writer.post(f"/v1/cards/{card_id}/freeze", headers={"Idempotency-Key": unique("k")})
    assert first.status_code == 200
    second = writer.post(f"/v1/cards/{card_id}/freeze", headers={"Idempotency-Key": unique("k")})
    assert second.status_code == 409
    rows = _rows(live, actor=f"api:{writer_name}")
    assert [x.after["status"] for x in rows] == [409, 200] and rows[0].outcome == "refused"


def test_a_delete_is_recorded(live: System, make_client: MakeClient) -> None:
    name = unique("auddel")
    client = make_client(["webhooks:write"], name=name)
    body = {"url": "http://127.0.0.1:9/hook", "event_types": ["card.state_changed"]}
    made = client.post("/v1/webhooks", json=body, headers={"Idempotency-Key": unique("w")})
    assert made.status_code in (200, 201), made.text
    hook = made.json()["id"]
    assert client.delete(f"/v1/webhooks/{hook}").status_code == 200
    rows = _rows(live, actor=f"api:{name}")
    assert [x.action for x in rows] == ["api.DELETE /v1/webhooks/{webhook_id}", "api.POST /v1/webhooks"]
    assert rows[0].target == f"/v1/webhooks/{hook}"
    # no secret of the subscription in the record
    assert all("secret" not in json.dumps(x.after) for x in rows)

    async def verify(conn: Any) -> tuple[int, audit.Broken | None]:
        return await audit.verify(conn)

    checked, broken = db(live, verify)
    assert broken is None and checked >= 2


def test_a_payment_and_a_payment_code_are_recorded_by_their_own_records(live: System,
                                                                       make_client: MakeClient) -> None:
    """No audit row for money or a payment code (api.envelope.RECORDED_ELSEWHERE): the payment's own
    row names the client; a management request of the same client is audited."""
    name = unique("audpay")
    client = make_client(["cards:write", "cards:read", "payments:write"], name=name)
    card_id = _card(live)
    live.cli("card", "load", str(card_id), "--amount", "50.00", "--reference", unique("l"))
    code = client.post(f"/v1/cards/card_{card_id}/payment-codes", json={},
                       headers={"Idempotency-Key": unique("c")})
    assert code.status_code == 201, code.text
    paid = client.post("/v1/payments", headers={"Idempotency-Key": unique("p")},
                       json={"payment_code": code.json()["code"], "merchant_id": "898330160120001",
                             "amount": {"amount": 100, "currency": "CNY"}})
    assert paid.status_code == 201 and paid.json()["status"] == "approved", paid.text
    assert _rows(live, actor=f"api:{name}") == []
    got = client.get(f"/v1/payments/{paid.json()['id']}")
    assert got.status_code == 200 and got.json()["id"] == paid.json()["id"]  # the client's own record
    assert client.post(f"/v1/cards/card_{card_id}/freeze", headers={"Idempotency-Key": unique("f")}
                       ).status_code == 200
    assert [r.action for r in _rows(live, actor=f"api:{name}")] == ["api.POST /v1/cards/{card_id}/freeze"]
