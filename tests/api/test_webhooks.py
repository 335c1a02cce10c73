"""Webhook subscriptions over HTTP, and delivery to a real local receiver against the live system.

Events are written with ``ops.outbox.write_events`` on a plain connection (what host and settlement do
inside their own transactions), with card ids of this test's own (events.card_id has no foreign key), so
other tests' events never confuse these. The receiver is a threaded ``http.server`` on a free port
(:class:`Receiver`; test_webhook_delivery.py uses it too).
"""

from __future__ import annotations

import itertools
import json
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from ops.outbox import Event, write_events
from pos.system import System
from tests.api.conftest import db, unique

README = Path(__file__).resolve().parents[2] / "api" / "README.md"
_CARDS = itertools.count(1)


def card_number() -> int:
    """A card id no other test (or worker) uses for its events."""
    return 9_000_000_000 + os.getpid() * 10_000 + next(_CARDS)


@dataclass
class Received:
    at: float
    headers: dict[str, str]
    body: bytes

    @property
    def doc(self) -> dict[str, Any]:
        loaded: dict[str, Any] = json.loads(self.body)
        return loaded


@dataclass
class Receiver:
    """A webhook receiver: records every request; ``rule(doc)`` says how to answer it: ``"ok"`` (204),
    ``"fail"`` (500) or ``"hang"`` (answer 200 only after ``hang_s``)."""

    rule: Callable[[dict[str, Any]], str] = lambda doc: "ok"
    hang_s: float = 5.0
    received: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> Receiver:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with owner.lock:
                    owner.received.append(Received(time.monotonic(), dict(self.headers.items()), body))
                try:
                    action = owner.rule(json.loads(body))
                except ValueError:
                    action = "fail"
                if action == "hang":
                    time.sleep(owner.hang_s)
                code = 500 if action == "fail" else 204 if action == "ok" else 200
                self.send_response(code)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def of(self, pred: Callable[[dict[str, Any]], bool]) -> list[Received]:
        with self.lock:
            return [r for r in self.received if pred(r.doc)]


def wait_for(check: Callable[[], Any], timeout: float = 20.0, what: str = "it") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def emit(system: System, *events: Event) -> list[int]:
    """Write ``events`` to the outbox (one transaction); their ids."""

    async def work(conn: Any) -> list[int]:
        async with conn.transaction():
            before = await conn.fetchval("SELECT coalesce(max(id), 0) FROM events")
            await write_events(conn, events)
            rows = await conn.fetch("SELECT id FROM events WHERE id > $1 AND payload = ANY($2::jsonb[])"
                                    " ORDER BY id", before, [json.dumps(e.payload) for e in events])
            return [int(r["id"]) for r in rows]

    ids: list[int] = db(system, work)
    return ids


def readme_verify() -> Callable[..., bool]:
    """The verification snippet of api/README.md "Webhooks", run as a receiver would."""
    text = README.read_text()
    section = text.split("## Webhooks", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S)
    assert code is not None, "api/README.md Webhooks has no python block"
    scope: dict[str, Any] = {}
    exec(code.group(1), scope)
    verify: Callable[..., bool] = scope["verify"]
    return verify


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver().start()
    yield r
    r.stop()


def subscribe(client: httpx.Client, url: str, types: list[str]) -> dict[str, Any]:
    r = client.post("/v1/webhooks", json={"url": url, "event_types": types},
                    headers={"Idempotency-Key": unique("whk")})
    assert r.status_code == 201, r.text
    made: dict[str, Any] = r.json()
    return made


# -- subscriptions ------------------------------------------------------------------------------------------
def test_subscriptions_are_the_clients_own_and_the_secret_is_shown_once(
    live: System, make_client: Callable[..., httpx.Client], receiver: Receiver
) -> None:
    mine = make_client(["webhooks:write"])
    other = make_client(["webhooks:write"])
    key = unique("idem")
    body = {"url": receiver.url, "event_types": ["card.state_changed", "authorization.approved"]}
    first = mine.post("/v1/webhooks", json=body, headers={"Idempotency-Key": key})
    assert first.status_code == 201, first.text
    hook = first.json()
    assert hook["secret"].startswith("whsec_") and hook["state"] == "active"
    assert hook["event_types"] == ["authorization.approved", "card.state_changed"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d\d:\d\d", hook["created_at"])
    again = mine.post("/v1/webhooks", json=body, headers={"Idempotency-Key": key})
    assert again.status_code == 201 and again.headers.get("idempotent-replayed") == "true"
    assert again.json()["id"] == hook["id"] and again.json()["secret"] is None

    # the secret is nowhere in the database in clear
    secret = hook["secret"]
    dump = db(live, lambda conn: conn.fetchval(
        "SELECT string_agg(w::text, ' ') || coalesce((SELECT string_agg(r::text, ' ')"
        " FROM api_requests r), '') FROM api_webhooks w"))
    assert secret not in dump and secret[6:] not in dump

    assert mine.get(f"/v1/webhooks/{hook['id']}").json()["secret"] is None
    assert [w["id"] for w in mine.get("/v1/webhooks").json()["data"]] == [hook["id"]]
    assert other.get(f"/v1/webhooks/{hook['id']}").status_code == 404
    assert other.get("/v1/webhooks").json()["data"] == []
    assert other.delete(f"/v1/webhooks/{hook['id']}").status_code == 404

    rotated = mine.post(f"/v1/webhooks/{hook['id']}/rotate-secret", headers={"Idempotency-Key": unique("r")})
    assert rotated.status_code == 200 and rotated.json()["secret"] not in (None, secret)
    gone = mine.delete(f"/v1/webhooks/{hook['id']}")
    assert gone.status_code == 200 and gone.json()["state"] == "disabled"
    assert mine.post(f"/v1/webhooks/{hook['id']}/rotate-secret",
                     headers={"Idempotency-Key": unique("r")}).status_code == 409


@pytest.mark.parametrize("body, field", [
    ({"url": "ftp://example.com/x", "event_types": ["*"]}, "url"),
    ({"url": "http://user:pw@example.com/x", "event_types": ["*"]}, "url"),
    ({"url": "not a url", "event_types": ["*"]}, "url"),
    ({"url": "http://[::1/x", "event_types": ["*"]}, "url"),
    ({"url": "http://example.com:99999/x", "event_types": ["*"]}, "url"),
    ({"url": "http://example.com/\u0000", "event_types": ["*"]}, "url"),
    ({"url": "https://example.com/x", "event_types": ["card.exploded"]}, "event_types"),
    ({"url": "https://example.com/x", "event_types": ["*", "risk.alert"]}, "event_types"),
    ({"url": "https://example.com/x", "event_types": []}, "event_types"),
])
def test_a_bad_subscription_is_a_422_naming_the_field(
    make_client: Callable[..., httpx.Client], body: dict[str, Any], field: str
) -> None:
    client = make_client(["webhooks:write"])
    r = client.post("/v1/webhooks", json=body, headers={"Idempotency-Key": unique("bad")})
    assert r.status_code == 422, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    assert [e["field"] for e in r.json()["errors"]] == [field]


def test_webhooks_need_their_scope(make_client: Callable[..., httpx.Client]) -> None:
    client = make_client(["cards:read"])
    assert client.get("/v1/webhooks").status_code == 403
    assert client.get("/v1/events").status_code == 403


# -- delivery ---------------------------------------------------------------------------------------------
def test_an_event_is_delivered_signed_and_verifies_with_the_readme_code(
    live: System, make_client: Callable[..., httpx.Client], receiver: Receiver
) -> None:
    client = make_client(["webhooks:write"])
    hook = subscribe(client, receiver.url, ["card.state_changed"])
    card = card_number()
    marker = unique("m")
    (event_id,) = emit(live, Event("card.state_changed", {"marker": marker, "to": "frozen"}, card_id=card))
    got = wait_for(lambda: receiver.of(lambda d: d["data"].get("marker") == marker), what="the delivery")
    assert len(got) == 1
    r = got[0]
    assert r.doc["id"] == f"evt_{event_id}" and r.doc["type"] == "card.state_changed"
    assert r.doc["data"] == {"marker": marker, "to": "frozen"}
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d\d:\d\d", r.doc["created_at"])
    assert r.headers["Payswitch-Event-Id"] == f"evt_{event_id}"
    assert r.headers["Content-Type"] == "application/json"
    assert r.headers["User-Agent"] == "payswitch-webhooks/1"

    verify = readme_verify()
    signature = r.headers["Payswitch-Signature"]
    assert re.fullmatch(r"t=\d+,v1=[0-9a-f]{64}", signature)
    assert verify(hook["secret"], signature, r.body)
    assert not verify(hook["secret"], signature, r.body + b" ")
    assert not verify("whsec_wrong", signature, r.body)
    stale = re.sub(r"t=(\d+)", lambda m: f"t={int(m.group(1)) - 301}", signature)
    assert not verify(hook["secret"], stale, r.body)

    # the delivery is recorded, and the event is listed to the client with it
    def delivered() -> Any:
        page = client.get("/v1/events", params={"card": f"card_{card}"}).json()["data"]
        return page if page and page[0]["deliveries"] and page[0]["deliveries"][0]["state"] == "delivered" \
            else None

    page = wait_for(delivered, what="the delivered state")
    assert page[0]["id"] == f"evt_{event_id}"
    d = page[0]["deliveries"][0]
    assert d["webhook_id"] == hook["id"] and d["attempts"] == 1 and d["last_status"] == 204
    assert d["next_at"] is None and d["delivered_at"] is not None


def test_types_filter_and_a_merchant_bound_client_gets_only_its_merchant(
    live: System, make_client: Callable[..., httpx.Client], receiver: Receiver
) -> None:
    merchant = "898330160120001"
    shop = make_client(["webhooks:write"], merchant_id=merchant)
    subscribe(shop, receiver.url, ["*"])
    other_kind = make_client(["webhooks:write"])
    subscribe(other_kind, receiver.url, ["risk.alert"])
    card = card_number()
    marker = unique("m")
    emit(live,
         Event("authorization.approved", {"marker": marker, "n": 1}, card_id=card, merchant_id=merchant),
         Event("authorization.approved", {"marker": marker, "n": 2}, card_id=card,
               merchant_id="000000000000001"),
         Event("card.balance_low", {"marker": marker, "n": 3}, card_id=card))
    wait_for(lambda: receiver.of(lambda d: d["data"].get("marker") == marker), what="the delivery")
    time.sleep(1.5)  # anything else would have come by now
    assert [r.doc["data"]["n"] for r in receiver.of(lambda d: d["data"].get("marker") == marker)] == [1]

    listed = shop.get("/v1/events", params={"card": f"card_{card}"}).json()["data"]
    assert [e["data"]["n"] for e in listed] == [1]
    every = other_kind.get("/v1/events", params={"card": f"card_{card}"}).json()["data"]
    assert [e["data"]["n"] for e in every] == [3, 2, 1]  # newest first; no delivery to its risk.alert hook
    assert all(e["deliveries"] == [] for e in every)
    first = other_kind.get("/v1/events", params={"card": f"card_{card}", "limit": 2}).json()
    rest = other_kind.get("/v1/events",
                          params={"card": f"card_{card}", "cursor": first["next_cursor"]}).json()
    assert [e["data"]["n"] for e in first["data"] + rest["data"]] == [3, 2, 1]
    assert other_kind.get("/v1/events", params={"type": "nope"}).status_code == 422
    assert other_kind.get("/v1/events", params={"card": "garbage"}).status_code == 422
    low = shop.get("/v1/events", params={"type": "card.balance_low", "card": f"card_{card}"})
    assert low.json()["data"] == []


def test_resend_over_the_api_delivers_again_with_the_same_id(
    live: System, make_client: Callable[..., httpx.Client], receiver: Receiver
) -> None:
    client = make_client(["webhooks:write"])
    hook = subscribe(client, receiver.url, ["cardholder.kyc_changed"])
    marker = unique("m")
    (event_id,) = emit(live, Event("cardholder.kyc_changed", {"marker": marker}, card_id=card_number()))
    wait_for(lambda: receiver.of(lambda d: d["data"].get("marker") == marker), what="the delivery")
    time.sleep(0.5)  # its outcome recorded
    r = client.post(f"/v1/events/evt_{event_id}/resend", headers={"Idempotency-Key": unique("rs")})
    assert r.status_code == 200, r.text
    assert r.json() == {"event_id": f"evt_{event_id}", "webhook_ids": [hook["id"]]}
    got = wait_for(lambda: (lambda g: g if len(g) == 2 else None)(
        receiver.of(lambda d: d["data"].get("marker") == marker)), what="the redelivery")
    assert got[0].doc == got[1].doc and got[0].body == got[1].body  # the same event, id and bytes
    stranger = make_client(["webhooks:write"])
    assert stranger.post(f"/v1/events/evt_{event_id}/resend", json={"webhook_id": hook["id"]},
                         headers={"Idempotency-Key": unique("rs")}).status_code == 404
    assert client.post("/v1/events/evt_999999999999/resend",
                       headers={"Idempotency-Key": unique("rs")}).status_code == 404


def test_webhook_cli_adds_lists_and_removes(live: System, receiver: Receiver) -> None:
    name = unique("cli")
    db(live, lambda conn: __import__("api.auth", fromlist=["add_client"]).add_client(
        conn, name, ["webhooks:write"], "test"))
    out = live.cli("api", "webhook", "add", name, receiver.url, "--events", "risk.alert,card.balance_low")
    assert "signing secret (shown once" in out.stdout
    secret = re.search(r"whsec_[A-Za-z0-9_-]+", out.stdout)
    assert secret is not None
    hook_id = re.search(r"whk_\d+", out.stdout)
    assert hook_id is not None
    listed = json.loads(live.cli("--json", "api", "webhook", "list", "--client", name).stdout)
    assert [(w["id"], w["event_types"], w["state"]) for w in listed] == [
        (hook_id.group(0), ["card.balance_low", "risk.alert"], "active")]
    assert "secret" not in listed[0]
    live.cli("api", "webhook", "remove", hook_id.group(0))
    assert json.loads(live.cli("--json", "api", "webhook", "list", "--client", name).stdout) == []
    assert json.loads(live.cli("--json", "api", "webhook", "list", "--client", name, "--all").stdout)[0][
        "state"] == "disabled"
    bad = live.cli("api", "webhook", "add", name, "ftp://x", "--events", "risk.alert", check=False)
    assert bad.returncode != 0 and "http" in bad.stderr
