"""A programme's back office on the payswitch HTTP API, with only httpx and the standard library.

    PAYSWITCH_API_KEY=psk_... python examples/backoffice.py --api http://127.0.0.1:8080

It does what a back office does for a new customer, one API call each:

1. subscribes a webhook receiver it runs itself (``http.server`` on 127.0.0.1) to card events;
2. registers a cardholder (with an ID: the cardholder is ``named``);
3. issues them a virtual card (its number is in that answer only);
4. loads it (a top-up funded by the programme, with the funding reference of the money received);
5. makes a payment code, as the cardholder's app would show it;
6. pays with the code at the demo POS terminal (``payswitch pos purchase AMOUNT --code CODE``: the
   terminal is the POS simulator, so this is a card-present purchase over ISO 8583);
7. reads the balance and the history, and waits for the webhooks of the load and the purchase,
   checking each ``Payswitch-Signature`` (HMAC-SHA256 over ``<t>.<body>``) and de-duplicating by the
   event id.

The key needs the scopes cardholders:write, cards:write, cards:read, loads:write and webhooks:write
(`payswitch api client add backoffice --scopes cardholders:write,cards:write,cards:read,loads:write,
webhooks:write`). It exits 0 when every step worked, 1 with the step that failed otherwise.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import hmac
import json
import os
import queue
import random
import shlex
import subprocess
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx

SIGNATURE_TOLERANCE_S = 300
EVENT_TYPES = ["authorization.approved", "authorization.declined", "card.balance_low", "card.state_changed",
               "cardholder.kyc_changed"]


class Failed(Exception):
    """A step that did not work: str() says which and why."""


# -- webhooks: a receiver that checks signatures --------------------------------------------------------
def verify(secret: str, header: str, body: bytes, now: float | None = None) -> bool:
    """Whether ``header`` (``t=<unix seconds>,v1=<hex>``) signs ``body`` with ``secret``, recently."""
    parts = dict(p.split("=", 1) for p in header.split(",") if "=" in p)
    try:
        timestamp = int(parts["t"])
    except (KeyError, ValueError):
        return False
    if abs((now or time.time()) - timestamp) > SIGNATURE_TOLERANCE_S:
        return False  # a replayed old delivery
    expected = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return any(hmac.compare_digest(expected, v) for k, v in parts.items() if k == "v1")


class Receiver:
    """Webhook deliveries on http://127.0.0.1:<port>/hooks; verified events go to ``events``."""

    def __init__(self) -> None:
        self.secret = ""
        self.events: queue.Queue[dict[str, Any]] = queue.Queue()
        self.seen: set[str] = set()
        self.refused = 0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if not receiver.secret or not verify(receiver.secret,
                                                     self.headers.get("Payswitch-Signature", ""), body):
                    receiver.refused += 1
                    self.send_response(400)
                    self.end_headers()
                    return
                self.send_response(204)  # acknowledge first: the sender retries anything else
                self.end_headers()
                event = json.loads(body)
                if event["id"] not in receiver.seen:  # at least once: de-duplicate by the event id
                    receiver.seen.add(event["id"])
                    receiver.events.put(event)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Receiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def wait_for(self, want: Any, timeout: float) -> list[dict[str, Any]]:
        """Every event received until ``want(events)`` is true; Failed after ``timeout`` seconds."""
        got: list[dict[str, Any]] = []
        deadline = time.monotonic() + timeout
        while not want(got):
            left = deadline - time.monotonic()
            if left <= 0:
                kinds = ", ".join(f"{e['type']} {e['data'].get('txn', '')}".strip() for e in got) or "none"
                raise Failed(f"webhooks: not all the events came within {timeout:.0f} s (got: {kinds})")
            try:
                got.append(self.events.get(timeout=min(left, 0.5)))
            except queue.Empty:
                continue
        return got


# -- the API ------------------------------------------------------------------------------------------
class Api:
    def __init__(self, base_url: str, key: str) -> None:
        self.http = httpx.Client(base_url=base_url.rstrip("/"), timeout=30.0,
                                 headers={"Authorization": f"Bearer {key}"})

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        headers = {"Idempotency-Key": str(uuid.uuid4())} if method == "POST" else {}
        for attempt in range(3):
            try:
                r = self.http.request(method, path, json=body, headers=headers)
            except httpx.TransportError as exc:  # the same key again: the answer is not repeated twice
                if attempt == 2:
                    raise Failed(f"{method} {path}: {type(exc).__name__}") from None
                continue
            if r.status_code == 429 or (r.status_code == 409 and "in-progress" in r.text):
                time.sleep(float(r.headers.get("Retry-After", "1")))
                continue
            break
        if r.status_code >= 400:
            try:
                problem = r.json()
                slug = str(problem.get("type", "")).rsplit("/", 1)[-1]
                why = f"{slug}: {problem.get('detail', problem.get('title'))}"
            except ValueError:
                why = r.text[:200]
            raise Failed(f"{method} {path}: HTTP {r.status_code} {why}")
        return r.json() if r.content else None

    def close(self) -> None:
        self.http.close()


def resident_id() -> str:
    """A made-up mainland resident ID with a valid check digit (GB 11643), for the demo cardholder."""
    born = f"{random.randint(1960, 2004)}{random.randint(1, 12):02d}{random.randint(1, 28):02d}"
    body = f"110101{born}{random.randint(0, 999):03d}"
    weights = [7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2]
    check = "10X98765432"[sum(int(d) * w for d, w in zip(body, weights, strict=True)) % 11]
    return body + check


def yuan(money: dict[str, Any]) -> str:
    return f"{money['amount'] // 100}.{money['amount'] % 100:02d} {money['currency']}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--api", default="http://127.0.0.1:8080",
                    help="the API's base URL")
    ap.add_argument("--key", default=os.environ.get("PAYSWITCH_API_KEY"), help="default: $PAYSWITCH_API_KEY")
    ap.add_argument("--product", default="CAMPUS", help="a product whose cards can be virtual")
    ap.add_argument("--load", type=int, default=200_00, help="fen to load (default 200.00 yuan)")
    ap.add_argument("--purchase", default="12.50", help="yuan to pay at the terminal")
    ap.add_argument("--payswitch", default="payswitch",
                    help="how to run the payswitch command (e.g. 'python -m ops')")
    ap.add_argument("--webhook-timeout", type=float, default=60.0, help="seconds to wait for the webhooks")
    args = ap.parse_args(argv)
    if not args.key:
        print("backoffice: give the API key: --key or $PAYSWITCH_API_KEY", file=sys.stderr)
        return 2
    api = Api(args.api, args.key)
    try:
        with Receiver() as receiver:
            run(api, receiver, args)
    except Failed as exc:
        print(f"backoffice: failed: {exc}", file=sys.stderr)
        return 1
    finally:
        api.close()
    return 0


def run(api: Api, receiver: Receiver, args: argparse.Namespace) -> None:
    hook = api.call("POST", "/v1/webhooks", {"url": receiver.url, "event_types": EVENT_TYPES})
    receiver.secret = hook["secret"]  # shown once: a back office keeps it in its secret store
    print(f"1. webhook {hook['id']} -> {receiver.url} ({', '.join(hook['event_types'])})")
    try:
        holder = api.call("POST", "/v1/cardholders", {
            "name": "Wang Fang", "id_type": "resident_id", "id_number": resident_id(),
            "phone": f"139{random.randint(0, 99_999_999):08d}", "address": "1 Zhongguancun St, Beijing"})
        print(f"2. cardholder {holder['id']} ({holder['kyc_level']}, ID {holder['id_number_masked']})")

        card = api.call("POST", "/v1/cards", {"product": args.product, "form": "virtual",
                                               "cardholder_id": holder["id"]})
        print(f"3. virtual card {card['id']} {card['number_masked']} ({card['state']}); the full number "
              f"was in that answer only")

        reference = f"BO-{uuid.uuid4().hex[:16]}"
        load = api.call("POST", "/v1/loads", {"card_id": card["id"], "funding_reference": reference,
                                              "amount": {"amount": args.load, "currency": "CNY"}})
        print(f"4. load {load['id']} of {yuan(load['amount'])} (funding reference {reference}): "
              f"{load['status']}")
        if load["status"] != "approved":
            raise Failed(f"the load was {load['status']} ({load.get('response_code')})")

        code = api.call("POST", f"/v1/cards/{card['id']}/payment-codes", {})
        print(f"5. payment code {code['code_masked']}, pays once until {code['expires_at']}")

        command = [*shlex.split(args.payswitch), "pos", "purchase", args.purchase, "--code", code["code"]]
        pos = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
        receipt = (pos.stdout.strip() or pos.stderr.strip()).splitlines()
        if pos.returncode != 0:
            raise Failed(f"pos purchase: exit {pos.returncode}: {receipt[-1] if receipt else 'no output'}")
        print(f"6. paid {args.purchase} CNY at the demo terminal: {receipt[0] if receipt else 'approved'}")

        balance = api.call("GET", f"/v1/cards/{card['id']}/balance")
        history = api.call("GET", f"/v1/cards/{card['id']}/transactions?limit=10")
        kinds = ", ".join(f"{t['type']} {yuan(t['amount'])} {t['response_code']}" for t in history["data"])
        print(f"7. balance {yuan(balance['available'])} available; history: {kinds}")
        paid = round(float(args.purchase) * 100)
        if balance["available"]["amount"] != args.load - paid:
            raise Failed(f"the balance is {yuan(balance['available'])}, not the load less the purchase")

        def mine(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
            return [e for e in events if e["type"] == "authorization.approved"
                    and e["data"].get("card") == card["id"]]

        def both(events: list[dict[str, Any]]) -> bool:
            txns = {e["data"].get("txn") for e in mine(events)}
            return "purchase" in txns and len(mine(events)) >= 2

        events = receiver.wait_for(both, args.webhook_timeout)
        for e in mine(events):
            d = e["data"]
            print(f"8. webhook {e['id']} {e['type']}: {d.get('txn')} {yuan(d['amount'])}, "
                  f"balance {yuan(d['balance'])} (signature verified)")
        if receiver.refused:
            raise Failed(f"{receiver.refused} webhook deliveries had a bad signature")
    finally:
        with contextlib.suppress(Failed):  # an unsubscribe that failed is not the example's point
            api.call("DELETE", f"/v1/webhooks/{hook['id']}")
    print("done")


if __name__ == "__main__":
    sys.exit(main())
