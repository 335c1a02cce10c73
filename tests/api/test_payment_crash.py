"""Killing the API mid-payment (issue 17 item 3): a payment whose answer the client never saw is either
found by its Idempotency-Key or reversed through the switch, and the ledger stays balanced.

One system of its own for both (it kills the API): the host is frozen (SIGSTOP) so that the request
hangs after the API has written it ahead and sent it, the API is killed (SIGKILL), the host thawed,
the API started again.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from pos.system import WITH_API, System
from tests.api.conftest import db, new_client, unique

MERCHANT = "898330160120001"
SETTINGS = {
    "switch.request_timeout_ms": "3000",  # the switch answers 91 (and reverses by SAF) after 3 s
    "api.request_timeout_ms": "4000",  # so a started idempotency record is stale after 8 s
    "api.reverse_after_s": "30",
}


@pytest.fixture(scope="module")
def system() -> Iterator[System]:
    s = System(settings=SETTINGS).start(WITH_API, seed=("--load-terminals", "0", "--load-cards", "1"))
    try:
        wait_ready(s)
        yield s
    finally:
        s.stop()


def wait_ready(s: System, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(s.api_url + "/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise AssertionError("the API did not get ready (link to the switch signed on)")


def new_card(s: System) -> int:
    out = json.loads(s.cli("--json", "card", "issue", "--product", "CAMPUS", "--activate").stdout)
    cid = int(out["cards"][0]["card_id"])
    s.cli("card", "load", str(cid), "--amount", "100.00", "--reference", unique("l"))
    return cid


def available(s: System, cid: int) -> int:
    async def work(conn: Any) -> int:
        return int(await conn.fetchval(
            "SELECT a.credits_posted - a.debits_posted - a.debits_pending FROM cards c"
            " JOIN accounts a ON a.id = c.account_id WHERE c.id = $1", cid))
    return int(db(s, work))


def payment_rows(s: System, client_name: str) -> list[dict[str, Any]]:
    async def work(conn: Any) -> list[dict[str, Any]]:
        rows = await conn.fetch("SELECT p.* FROM api_payments p JOIN api_clients c ON c.id = p.client_id"
                                " WHERE c.name = $1 ORDER BY p.created_at", client_name)
        return [dict(r) for r in rows]
    rows: list[dict[str, Any]] = db(s, work)
    return rows


def crash_mid_payment(s: System, client: httpx.Client, body: dict[str, Any], key: str,
                      hold_host_s: float) -> None:
    """Send the payment with the host frozen, kill the API once the request is written ahead and sent,
    thaw the host after ``hold_host_s`` and start the API again."""
    host_pid = s.services["host"].proc.pid
    name = client.headers["x-test-client"]
    os.kill(host_pid, signal.SIGSTOP)
    try:
        def call() -> None:
            with contextlib.suppress(httpx.HTTPError):  # the API dies under it: no answer is seen
                client.post("/v1/payments", json=body, headers={"Idempotency-Key": key}, timeout=30)

        t = threading.Thread(target=call, daemon=True)
        t.start()
        deadline = time.monotonic() + 10
        while not payment_rows(s, name) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert payment_rows(s, name), "the payment was not written ahead"
        time.sleep(0.3)  # written ahead, then sent
        s.kill_service("api")
        t.join(10)
        time.sleep(hold_host_s)
    finally:
        os.kill(host_pid, signal.SIGCONT)
    s.start_service("api")
    wait_ready(s)


def test_retry_with_the_key_finds_the_first_answer(system: System) -> None:
    client = new_client(system, ["payments:write"])
    cid = new_card(system)
    code = json.loads(system.cli("--json", "card", "code", str(cid)).stdout)["code"]
    body = {"payment_code": code, "amount": {"amount": 2500, "currency": "CNY"}, "merchant_id": MERCHANT}
    key = uuid.uuid4().hex
    crash_mid_payment(system, client, body, key, hold_host_s=0.0)
    deadline = time.monotonic() + 40
    while True:
        r = client.post("/v1/payments", json=body, headers={"Idempotency-Key": key})
        if r.status_code != 409 or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert r.status_code == 201, r.text
    rows = payment_rows(system, client.headers["x-test-client"])
    assert len(rows) == 1
    assert r.json()["id"] == rows[0]["id"] and r.json()["status"] == "approved"
    assert available(system, cid) == 10000 - 2500  # paid once
    # the same key once more: the stored answer, not a third request
    again = client.post("/v1/payments", json=body, headers={"Idempotency-Key": key})
    assert again.status_code == 201 and again.json()["id"] == rows[0]["id"]
    assert available(system, cid) == 10000 - 2500
    system.cli("ledger", "check")


def test_never_retried_is_reversed(system: System) -> None:
    client = new_client(system, ["payments:write"])
    cid = new_card(system)
    code = json.loads(system.cli("--json", "card", "code", str(cid)).stdout)["code"]
    body = {"payment_code": code, "amount": {"amount": 4000, "currency": "CNY"}, "merchant_id": MERCHANT}
    # the host stays frozen past the switch's timeout: the switch answers 91 to nobody and carries its
    # reversal upstream by SAF; the API's sweeper reverses it too (the switch undoes it once)
    crash_mid_payment(system, client, body, uuid.uuid4().hex, hold_host_s=4.0)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        rows = payment_rows(system, client.headers["x-test-client"])
        if rows and rows[0]["state"] == "reversed" and available(system, cid) == 10000:
            break
        time.sleep(1)
    rows = payment_rows(system, client.headers["x-test-client"])
    assert [r["state"] for r in rows] == ["reversed"]
    assert available(system, cid) == 10000
    system.cli("ledger", "check")


def test_link_down_is_503_and_the_link_comes_back(system: System) -> None:
    """The switch gone: nothing is sent, 503 switch-unavailable, no payment kept; the link reconnects
    (with backoff) once the switch is back, and the same key then pays."""
    client = new_client(system, ["payments:write"])
    cid = new_card(system)
    code = json.loads(system.cli("--json", "card", "code", str(cid)).stdout)["code"]
    body = {"payment_code": code, "amount": {"amount": 700, "currency": "CNY"}, "merchant_id": MERCHANT}
    key = uuid.uuid4().hex
    system.kill_service("switch")
    try:
        deadline = time.monotonic() + 30
        while httpx.get(system.api_url + "/readyz", timeout=5).status_code == 200:
            assert time.monotonic() < deadline, "the API did not notice the switch is gone"
            time.sleep(0.2)
        r = client.post("/v1/payments", json=body, headers={"Idempotency-Key": key})
        assert r.status_code == 503, r.text
        assert r.json()["type"].endswith("/switch-unavailable") and code not in r.text
        assert payment_rows(system, client.headers["x-test-client"]) == []
    finally:
        system.start_service("switch")
    wait_ready(system)
    r = client.post("/v1/payments", json=body, headers={"Idempotency-Key": key})
    assert r.status_code == 201 and r.json()["status"] == "approved", r.text
    assert available(system, cid) == 10000 - 700
