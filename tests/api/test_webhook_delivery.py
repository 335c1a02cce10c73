"""Webhook retries, timeouts, parking, resend and the order per card, against a system of its own with a
fast retry schedule (api.webhook_backoff_s = 1 doubling up to 4 s, a 1 s timeout, a 1 h window) and a
real local receiver that fails, hangs and recovers (tests/api/test_webhooks.py's Receiver).

The retry window is an hour: "after the window" is made true by moving the delivery's window start two
hours back in the database (the one thing a test cannot wait for).
"""

from __future__ import annotations

import itertools
import json
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from ops.outbox import Event
from pos.system import WITH_API, System
from tests.api.conftest import db, new_client, unique
from tests.api.test_webhooks import Receiver, card_number, emit, subscribe, wait_for

SETTINGS = {"api.webhook_backoff_s": "1", "api.webhook_backoff_max_s": "4", "api.webhook_timeout_s": "1",
            "api.webhook_retry_hours": "1"}


@pytest.fixture(scope="module")
def fast() -> Iterator[System]:
    system = System(settings=dict(SETTINGS)).start(WITH_API, seed=())
    try:
        yield system
    finally:
        system.stop()


@pytest.fixture
def client(fast: System) -> Iterator[httpx.Client]:
    c = new_client(fast, ["webhooks:write"])
    yield c
    c.close()


def delivery(system: System, event_id: int) -> dict[str, Any] | None:
    row = db(system, lambda conn: conn.fetchrow(
        "SELECT state, attempts, last_status, last_error FROM api_deliveries WHERE event_id = $1", event_id))
    return None if row is None else dict(row)


def failing_first(marker: str, times: int, how: str = "fail") -> Callable[[dict[str, Any]], str]:
    """A rule: the events with ``marker`` fail ``times`` times each, then succeed."""
    seen: dict[str, int] = {}

    def rule(doc: dict[str, Any]) -> str:
        if doc["data"].get("marker") != marker:
            return "ok"
        n = seen[doc["id"]] = seen.get(doc["id"], 0) + 1
        return how if n <= times else "ok"

    return rule


def test_a_failing_receiver_is_retried_with_growing_waits_then_delivered(fast: System,
                                                                        client: httpx.Client) -> None:
    marker = unique("m")
    receiver = Receiver(rule=failing_first(marker, 3)).start()
    try:
        subscribe(client, receiver.url, ["authorization.declined"])
        (event_id,) = emit(fast, Event("authorization.declined", {"marker": marker}, card_id=card_number()))
        failing = wait_for(lambda: (d := delivery(fast, event_id)) and d["attempts"] >= 1 and d, what="a try")
        assert failing["state"] == "pending" and failing["last_status"] == 500
        assert failing["last_error"] == "HTTP 500"
        wait_for(lambda: (d := delivery(fast, event_id)) and d["state"] == "delivered", timeout=30,
                 what="the delivery after the receiver recovered")
        tries = receiver.of(lambda d: d["data"].get("marker") == marker)
        assert len(tries) == 4
        waits = [b.at - a.at for a, b in itertools.pairwise(tries)]
        assert waits[0] >= 0.7 and waits[0] < waits[1] < waits[2] <= 5.0, waits  # ~1, ~2, ~4 s
        assert {t.body for t in tries} == {tries[0].body}  # the same event, byte for byte
        assert {t.headers["Payswitch-Event-Id"] for t in tries} == {f"evt_{event_id}"}
        assert delivery(fast, event_id) == {"state": "delivered", "attempts": 4, "last_status": 204,
                                            "last_error": None}
    finally:
        receiver.stop()


def test_a_timeout_and_a_refused_connection_are_failures(fast: System, client: httpx.Client) -> None:
    marker = unique("m")
    receiver = Receiver(rule=failing_first(marker, 1, "hang"), hang_s=3.0).start()
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    try:
        subscribe(client, receiver.url, ["card.balance_low"])
        subscribe(client, f"http://127.0.0.1:{closed}/hook", ["card.balance_low"])
        (event_id,) = emit(fast, Event("card.balance_low", {"marker": marker}, card_id=card_number()))

        def rows() -> list[dict[str, Any]]:
            return [dict(r) for r in db(fast, lambda conn: conn.fetch(
                "SELECT webhook_id, state, attempts, last_status, last_error FROM api_deliveries"
                " WHERE event_id = $1 ORDER BY webhook_id", event_id))]

        errors: set[str] = set()

        def settled() -> bool:
            got = rows()
            errors.update(r["last_error"] for r in got if r["last_error"])
            return len(got) == 2 and got[0]["state"] == "delivered" and got[1]["attempts"] >= 2

        wait_for(settled, timeout=30, what="the hanging receiver's second try and the refused ones")
        hung, refused = rows()
        assert "timeout" in errors  # the first try hung past api.webhook_timeout_s
        assert hung["attempts"] == 2 and hung["last_status"] == 204
        assert refused["state"] == "pending" and refused["last_status"] is None
        assert refused["last_error"].startswith("ConnectError"), refused
        assert len(receiver.of(lambda d: d["data"].get("marker") == marker)) == 2
    finally:
        receiver.stop()


def test_parked_after_the_window_then_resent_by_the_cli(fast: System, client: httpx.Client) -> None:
    marker = unique("m")
    receiver = Receiver(rule=lambda d: "fail" if d["data"].get("marker") == marker else "ok").start()
    try:
        hook = subscribe(client, receiver.url, ["risk.alert"])
        (event_id,) = emit(fast, Event("risk.alert", {"marker": marker, "rule": "velocity"}))
        wait_for(lambda: (d := delivery(fast, event_id)) and d["attempts"] >= 1, what="a first try")
        db(fast, lambda conn: conn.execute(
            "UPDATE api_deliveries SET window_from = now() - interval '2 hours' WHERE event_id = $1",
            event_id))
        wait_for(lambda: (d := delivery(fast, event_id)) and d["state"] == "parked", timeout=15,
                 what="the delivery parked")
        tries = len(receiver.of(lambda d: d["data"].get("marker") == marker))
        time.sleep(2.5)  # parked: no more tries
        assert len(receiver.of(lambda d: d["data"].get("marker") == marker)) == tries

        parked = json.loads(fast.cli("--json", "api", "events", "list", "--state", "parked", "--webhook",
                                     hook["id"]).stdout)
        assert [e["id"] for e in parked] == [f"evt_{event_id}"]
        assert parked[0]["deliveries"][0]["state"] == "parked"
        assert parked[0]["deliveries"][0]["last_error"] == "HTTP 500"
        text = fast.cli("api", "events", "list", "--type", "risk.alert", "--webhook", hook["id"]).stdout
        assert f"evt_{event_id}" in text and "parked" in text

        receiver.rule = lambda d: "ok"
        out = fast.cli("api", "events", "resend", f"evt_{event_id}")
        assert hook["id"] in out.stdout
        wait_for(lambda: (d := delivery(fast, event_id)) and d["state"] == "delivered", what="the resend")
        got = receiver.of(lambda d: d["data"].get("marker") == marker)
        assert len(got) == tries + 1 and {g.doc["id"] for g in got} == {f"evt_{event_id}"}
        bad = fast.cli("api", "events", "resend", "evt_999999999999", check=False)
        assert bad.returncode != 0 and "no event" in bad.stderr
    finally:
        receiver.stop()


def test_in_order_per_card_even_when_an_earlier_event_failed(fast: System, client: httpx.Client) -> None:
    marker = unique("m")
    card, other = card_number(), card_number()
    first_id: list[str] = []

    def rule(doc: dict[str, Any]) -> str:
        if doc["data"].get("marker") != marker:
            return "ok"
        if doc["id"] == first_id[0]:
            rule.calls += 1  # type: ignore[attr-defined]
            return "fail" if rule.calls <= 2 else "ok"  # type: ignore[attr-defined]
        return "ok"

    rule.calls = 0  # type: ignore[attr-defined]
    receiver = Receiver(rule=rule).start()
    try:
        subscribe(client, receiver.url, ["card.state_changed", "authorization.approved"])
        ids = emit(fast,
                   Event("card.state_changed", {"marker": marker, "n": 1}, card_id=card),
                   Event("authorization.approved", {"marker": marker, "n": 2}, card_id=card),
                   Event("card.state_changed", {"marker": marker, "n": 3}, card_id=card),
                   Event("authorization.approved", {"marker": marker, "n": 4}, card_id=other))
        first_id.append(f"evt_{ids[0]}")
        wait_for(lambda: all((d := delivery(fast, i)) and d["state"] == "delivered" for i in ids), timeout=30,
                 what="every event delivered")
        got = receiver.of(lambda d: d["data"].get("marker") == marker)
        of_card = [g.doc["data"]["n"] for g in got if g.doc["data"]["n"] != 4]
        assert of_card == [1, 1, 1, 2, 3]  # 2 and 3 waited for 1's retries
        other_at = next(g.at for g in got if g.doc["data"]["n"] == 4)
        last_first = [g.at for g in got if g.doc["data"]["n"] == 1][-1]
        assert other_at < last_first  # the other card was not held back
    finally:
        receiver.stop()
