"""Webhooks: a client's subscriptions, the dispatcher that delivers the event outbox to them, signatures.

A subscription (``api_webhooks``) is a client's URL and the event types it wants (``ops.outbox.
EVENT_TYPES`` or ``*``). Its signing secret ``whsec_...`` is shown once (at creation or rotation) and
kept sealed under the issuer's PII data key (HSM), because signing needs it in clear.

The dispatcher (:func:`dispatcher`, a background task of ``api serve``) does two things in a loop:

* **fan-out**: the events (``events``, written by host and settlement in the transaction of their
  change) after each subscription's cursor ``after_event`` become ``api_deliveries`` rows for the
  subscriptions that want them (a merchant-bound client only gets its merchant's events). The cursor
  stops before a hole in the event ids (a transaction still in flight may fill it) until the hole is
  ``GAP_SETTLE_S`` old (then it was a rollback); the scan past it is repeated harmlessly (``ON
  CONFLICT DO NOTHING``).
* **delivery**: a due pending delivery is claimed (``FOR UPDATE SKIP LOCKED``; its ``next_at`` moved
  past the attempt is the lease that keeps another API process off it) only when no earlier event of
  the same card is pending for that subscription, so a subscription sees each card's events in order;
  events without a card, other cards and other subscriptions go concurrently (``CONCURRENCY``). A 2xx
  within ``api.webhook_timeout_s`` is delivered; anything else is retried after
  ``api.webhook_backoff_s`` doubling (jitter: 75-100 %) up to ``api.webhook_backoff_max_s``, until
  ``api.webhook_retry_hours`` after the delivery's window began, then parked. ``resend`` makes a parked
  or delivered one pending now, with a new window.

The request: ``POST`` of ``{"id": "evt_<n>", "type": ..., "created_at": RFC 3339 local, "data": {...}}``
with ``Payswitch-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`` (api/README.md
"Webhooks" has the verification code). The event id is the same on every redelivery: receivers
de-duplicate by it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import random
import secrets
import time
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from typing import Any, Literal
from urllib.parse import urlsplit

import httpx
import trio
from prometheus_client import Counter, Gauge, Histogram

from host.keys import IssuerCrypto
from host.pii import reveal
from ops.localtime import iso_local
from ops.logs import get_logger
from ops.metrics import labelled
from ops.outbox import EVENT_TYPES

log = get_logger(__name__)

SECRET_PREFIX = "whsec_"
USER_AGENT = "payswitch-webhooks/1"
ALL = "*"
POLL_S = 0.25  # how often the dispatcher looks for new events and due deliveries when idle
FANOUT_BATCH = 500  # events scanned per subscription per pass
CONCURRENCY = 32  # deliveries in flight per API process
LEASE_MARGIN_S = 30  # a claimed delivery is due again this long after its timeout (the sender died)
GAP_SETTLE_S = 10.0  # a hole in the event ids this old is a rolled-back transaction, not one in flight
PENDING_EVERY_S = 5.0  # the pending gauge is counted this often
MAX_URL = 2048

DELIVERIES = Counter(
    "payswitch_api_webhook_deliveries_total",
    "Webhook delivery attempts by outcome: delivered, retry (failed, will be retried), parked (failed, "
    "retry window over).",
    ["outcome"],
)
PENDING = Gauge("payswitch_api_webhook_pending", "Webhook deliveries pending (due or waiting to retry).")
LATENCY = Histogram(
    "payswitch_api_webhook_delivery_seconds",
    "Webhook timing: attempt (one HTTP request) and end_to_end (event written to delivered).",
    ["kind"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 3600.0),
)


class WebhookError(ValueError):
    """A subscription cannot be made or changed as asked: str() says why (no secret in it); ``kind``
    says what sort of refusal (``invalid`` names the ``field``), for the API's problem type."""

    def __init__(self, message: str, *, kind: Literal["invalid", "not_found", "conflict"] = "invalid",
                 field: str | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.field = field


# -- subscriptions ---------------------------------------------------------------------------------------
def check_url(url: str) -> str:
    """An absolute http or https URL with a host; WebhookError otherwise."""
    url = url.strip()
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 -- raises ValueError for a port out of range
    except ValueError:
        parts = urlsplit("")
    printable = all(32 < ord(ch) < 127 for ch in url)  # no spaces, controls or NUL (IDNs as punycode)
    if parts.scheme not in ("http", "https") or not parts.hostname or len(url) > MAX_URL or not printable:
        raise WebhookError(f"a webhook URL is an absolute http:// or https:// URL of at most {MAX_URL} "
                           "characters", field="url")
    if parts.username or parts.password:
        raise WebhookError("a webhook URL may not hold a user name or password (the signature "
                           "authenticates us)", field="url")
    return url


def check_types(types: list[str]) -> list[str]:
    """The event types a subscription wants: ``["*"]`` (every type) or some of ``EVENT_TYPES``."""
    wanted = sorted({t.strip() for t in types if t.strip()})
    if not wanted:
        raise WebhookError(f"give the event types: {ALL} or some of {', '.join(EVENT_TYPES)}",
                           field="event_types")
    if ALL in wanted:
        if len(wanted) > 1:
            raise WebhookError(f"{ALL} means every type: give it alone", field="event_types")
        return [ALL]
    unknown = [t for t in wanted if t not in EVENT_TYPES]
    if unknown:
        raise WebhookError(f"unknown event type {', '.join(unknown)}; the types are {', '.join(EVENT_TYPES)}",
                           field="event_types")
    return wanted


def new_secret() -> str:
    return SECRET_PREFIX + secrets.token_urlsafe(32)


async def _seal_secret(crypto: IssuerCrypto) -> tuple[str, str]:
    """A new secret and its sealed form (HSM encryption under the PII data key, as host.pii.seal does)."""
    secret = new_secret()
    return secret, await crypto.encrypt_pan(secret, crypto.keys.pii_data)


_COLUMNS = "w.id, w.client_id, c.name AS client, w.url, w.event_types, w.state, w.created_at, w.after_event"


async def client_by_name(conn: Any, name: str) -> int:
    """The id of active client ``name`` (for the CLI); WebhookError otherwise."""
    row = await conn.fetchrow("SELECT id, state FROM api_clients WHERE name = $1", name)
    if row is None:
        raise WebhookError(f"no client {name}", kind="not_found")
    if row["state"] != "active":
        raise WebhookError(f"client {name} is revoked", kind="conflict")
    return int(row["id"])


async def create_webhook(pool: Any, crypto: IssuerCrypto, client_id: int, url: str,
                         event_types: list[str]) -> tuple[dict[str, Any], str]:
    """Subscribe ``url`` of client ``client_id`` to ``event_types`` from the next event on; the
    subscription and its secret (to be shown once)."""
    url = check_url(url)
    types = check_types(event_types)
    secret, sealed = await _seal_secret(crypto)

    async def insert(conn: Any) -> dict[str, Any]:
        webhook_id = await conn.fetchval(
            "INSERT INTO api_webhooks (client_id, url, event_types, secret_enc, after_event)"
            " VALUES ($1, $2, $3, $4, (SELECT coalesce(max(id), 0) FROM events)) RETURNING id",
            client_id, url, types, sealed,
        )
        found = await get_webhook(conn, int(webhook_id))
        assert found is not None
        return found

    made: dict[str, Any] = await pool.run(insert)
    return made, secret


async def rotate_secret(pool: Any, crypto: IssuerCrypto, webhook_id: int, *,
                        client_id: int | None = None) -> tuple[dict[str, Any], str] | None:
    """A new signing secret for an active subscription (the old one stops at once); None when there is
    no such subscription (of ``client_id``, when given)."""
    secret, sealed = await _seal_secret(crypto)

    async def update(conn: Any) -> dict[str, Any] | None:
        done = await conn.fetchval(
            "UPDATE api_webhooks SET secret_enc = $2 WHERE id = $1 AND state = 'active'"
            " AND ($3::bigint IS NULL OR client_id = $3) RETURNING id",
            webhook_id, sealed, client_id,
        )
        return None if done is None else await get_webhook(conn, webhook_id)

    row: dict[str, Any] | None = await pool.run(update)
    return None if row is None else (row, secret)


async def get_webhook(conn: Any, webhook_id: int, *, client_id: int | None = None) -> dict[str, Any] | None:
    row = await conn.fetchrow(
        f"SELECT {_COLUMNS} FROM api_webhooks w JOIN api_clients c ON c.id = w.client_id"
        " WHERE w.id = $1 AND ($2::bigint IS NULL OR w.client_id = $2)",
        webhook_id, client_id,
    )
    return None if row is None else dict(row)


async def list_webhooks(conn: Any, *, client_id: int | None = None, after: int | None = None,
                        limit: int = 100, include_disabled: bool = True) -> list[dict[str, Any]]:
    """Subscriptions in id order (of ``client_id`` when given), after id ``after``."""
    rows = await conn.fetch(
        f"SELECT {_COLUMNS} FROM api_webhooks w JOIN api_clients c ON c.id = w.client_id"
        " WHERE ($1::bigint IS NULL OR w.client_id = $1) AND w.id > $2 AND ($3 OR w.state = 'active')"
        " ORDER BY w.id LIMIT $4",
        client_id, after or 0, include_disabled, limit,
    )
    return [dict(r) for r in rows]


async def disable_webhook(
    conn: Any, webhook_id: int, *, client_id: int | None = None
) -> dict[str, Any] | None:
    """Stop delivering to a subscription (its pending deliveries stay, undelivered); None when there is
    no such subscription. Disabling a disabled one changes nothing."""
    done = await conn.fetchval(
        "UPDATE api_webhooks SET state = 'disabled' WHERE id = $1 AND ($2::bigint IS NULL OR client_id = $2)"
        " RETURNING id",
        webhook_id, client_id,
    )
    return None if done is None else await get_webhook(conn, webhook_id)


# -- events and their deliveries --------------------------------------------------------------------------
def _payload(value: Any) -> dict[str, Any]:
    loaded = json.loads(value) if isinstance(value, str) else value
    return dict(loaded)


async def list_events(
    conn: Any, *, client_id: int | None = None, merchant_id: str | None = None, event_type: str | None = None,
    card_id: int | None = None, state: str | None = None, webhook_id: int | None = None,
    before: int | None = None, limit: int = 20,
) -> list[dict[str, Any]]:
    """Events newest first (ids below ``before``), each with its deliveries (to ``client_id``'s
    subscriptions when given). ``merchant_id``: only that merchant's events (a merchant-bound client).
    ``state`` / ``webhook_id``: only events with such a delivery (and only those deliveries shown)."""
    by_delivery = state is not None or webhook_id is not None
    rows = await conn.fetch(
        """
        SELECT e.id, e.type, e.card_id, e.merchant_id, e.occurred_at, e.payload
          FROM events e
         WHERE ($1::bigint IS NULL OR e.id < $1)
           AND ($2::text IS NULL OR e.merchant_id = $2)
           AND ($3::text IS NULL OR e.type = $3)
           AND ($4::bigint IS NULL OR e.card_id = $4)
           AND (NOT $5 OR EXISTS (
                SELECT 1 FROM api_deliveries d JOIN api_webhooks w ON w.id = d.webhook_id
                 WHERE d.event_id = e.id AND ($6::text IS NULL OR d.state = $6)
                   AND ($7::bigint IS NULL OR d.webhook_id = $7)
                   AND ($8::bigint IS NULL OR w.client_id = $8)))
         ORDER BY e.id DESC
         LIMIT $9
        """,
        before, merchant_id, event_type, card_id, by_delivery, state, webhook_id, client_id, limit,
    )
    events = [dict(r) | {"payload": _payload(r["payload"]), "deliveries": []} for r in rows]
    if not events:
        return events
    deliveries = await conn.fetch(
        """
        SELECT d.event_id, d.webhook_id, d.state, d.attempts, d.next_at, d.last_status, d.last_error,
               d.last_attempt_at, d.delivered_at, d.window_from
          FROM api_deliveries d JOIN api_webhooks w ON w.id = d.webhook_id
         WHERE d.event_id = ANY($1::bigint[]) AND ($2::bigint IS NULL OR w.client_id = $2)
           AND ($3::text IS NULL OR d.state = $3) AND ($4::bigint IS NULL OR d.webhook_id = $4)
         ORDER BY d.event_id, d.webhook_id
        """,
        [e["id"] for e in events], client_id, state, webhook_id,
    )
    index = {e["id"]: e for e in events}
    for d in deliveries:
        index[d["event_id"]]["deliveries"].append(dict(d))
    return events


async def get_event(conn: Any, event_id: int, *, merchant_id: str | None = None) -> dict[str, Any] | None:
    row = await conn.fetchrow(
        "SELECT id, type, card_id, merchant_id, occurred_at, payload FROM events WHERE id = $1"
        " AND ($2::text IS NULL OR merchant_id = $2)",
        event_id, merchant_id,
    )
    return None if row is None else dict(row) | {"payload": _payload(row["payload"])}


def _wants(event_types: list[str], event_type: str) -> bool:
    return ALL in event_types or event_type in event_types


async def resend(conn: Any, event_id: int, *, webhook_id: int | None = None, client_id: int | None = None,
                 merchant_id: str | None = None) -> list[int]:
    """Make the event's deliveries (to ``webhook_id``, or to every subscription of ``client_id``, or to
    every subscription) pending now with a new retry window, whatever their state; the subscriptions
    it will go to. With ``webhook_id``, an event the subscription never got (older than it, or of a
    type it does not want) is sent to it as well. WebhookError when there is no such event (visible to
    ``merchant_id``) or subscription."""
    async with conn.transaction():
        event = await get_event(conn, event_id, merchant_id=merchant_id)
        if event is None:
            raise WebhookError(f"no event evt_{event_id}", kind="not_found")
        if webhook_id is not None:
            hook = await get_webhook(conn, webhook_id, client_id=client_id)
            if hook is None:
                raise WebhookError(f"no webhook whk_{webhook_id}", kind="not_found")
            if hook["state"] != "active":
                raise WebhookError(f"webhook whk_{webhook_id} is disabled", kind="conflict")
            await conn.execute(
                "INSERT INTO api_deliveries (webhook_id, event_id, card_id) VALUES ($1, $2, $3)"
                " ON CONFLICT DO NOTHING", webhook_id, event_id, event["card_id"],
            )
        rows = await conn.fetch(
            """
            UPDATE api_deliveries d SET state = 'pending', next_at = now(), window_from = now(),
                   attempts = 0, delivered_at = NULL
              FROM api_webhooks w
             WHERE w.id = d.webhook_id AND w.state = 'active' AND d.event_id = $1
               AND ($2::bigint IS NULL OR d.webhook_id = $2) AND ($3::bigint IS NULL OR w.client_id = $3)
            RETURNING d.webhook_id
            """,
            event_id, webhook_id, client_id,
        )
    return sorted(int(r["webhook_id"]) for r in rows)


async def count_pending(conn: Any) -> int:
    return int(await conn.fetchval(
        "SELECT count(*) FROM api_deliveries d JOIN api_webhooks w ON w.id = d.webhook_id"
        " WHERE d.state = 'pending' AND w.state = 'active'"
    ))


# -- signatures and bodies --------------------------------------------------------------------------------
def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The ``Payswitch-Signature`` header's value for ``body`` sent at ``timestamp``."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def event_body(event_id: int, event_type: str, occurred_at: datetime, payload: dict[str, Any],
               timezone: str) -> bytes:
    """The JSON a subscriber receives; the same bytes on every redelivery."""
    doc = {"id": f"evt_{event_id}", "type": event_type, "created_at": iso_local(occurred_at, timezone),
           "data": payload}
    return json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()


def backoff(attempts: int, base_s: float, cap_s: float) -> float:
    """Seconds before the next try after ``attempts`` failed ones (1, 2, ...): ``base_s`` doubling, at
    most ``cap_s``, times a jitter of 75-100 % (so many failing deliveries do not retry in step)."""
    delay: float = min(cap_s, base_s * 2.0 ** min(attempts - 1, 30))
    return delay * random.uniform(0.75, 1.0)


# -- the dispatcher ---------------------------------------------------------------------------------------
_GAPS: dict[int, float] = {}  # event id missing from a scan -> when first seen missing (monotonic)


async def fan_out(conn: Any, batch: int = FANOUT_BATCH) -> int:
    """Turn the events after each active subscription's cursor into its deliveries; how many made.
    Each subscription is locked while it is fanned out (SKIP LOCKED: another process skips it)."""
    made = 0
    hooks = await conn.fetch("SELECT id FROM api_webhooks WHERE state = 'active' ORDER BY id")
    now = time.monotonic()
    for hook in hooks:
        async with conn.transaction():
            w = await conn.fetchrow(
                "SELECT w.id, w.event_types, w.after_event, c.merchant_id FROM api_webhooks w"
                " JOIN api_clients c ON c.id = w.client_id"
                " WHERE w.id = $1 AND w.state = 'active' FOR UPDATE OF w SKIP LOCKED",
                hook["id"],
            )
            if w is None:
                continue
            events = await conn.fetch(
                "SELECT id, type, card_id, merchant_id FROM events WHERE id > $1 ORDER BY id LIMIT $2",
                w["after_event"], batch,
            )
            if not events:
                continue
            wanted = [e for e in events if _wants(w["event_types"], e["type"])
                      and (w["merchant_id"] is None or e["merchant_id"] == w["merchant_id"])]
            if wanted:
                status = await conn.execute(
                    "INSERT INTO api_deliveries (webhook_id, event_id, card_id)"
                    " SELECT $1, * FROM unnest($2::bigint[], $3::bigint[]) ON CONFLICT DO NOTHING",
                    w["id"], [e["id"] for e in wanted], [e["card_id"] for e in wanted],
                )
                made += int(status.split()[-1])
            cursor = int(w["after_event"])
            for e in events:
                missing = range(cursor + 1, int(e["id"]))
                if any(now - _GAPS.setdefault(g, now) < GAP_SETTLE_S for g in missing):
                    break  # a transaction may still commit that id: scan from here again next time
                cursor = int(e["id"])  # (a settled hole stays known, for the other subscriptions)
            if cursor != w["after_event"]:
                await conn.execute("UPDATE api_webhooks SET after_event = $2 WHERE id = $1", w["id"], cursor)
    if len(_GAPS) > 100_000:
        _GAPS.clear()
    return made


@dataclass(frozen=True, slots=True)
class Claimed:
    webhook_id: int
    event_id: int
    attempts: int
    url: str
    secret_enc: str
    type: str
    occurred_at: datetime
    payload: dict[str, Any]


async def claim(conn: Any, limit: int, lease_s: float) -> list[Claimed]:
    """Up to ``limit`` due deliveries, each the earliest pending one of its card for its subscription,
    leased for ``lease_s`` (their ``next_at`` moved on: no other process claims them meanwhile)."""
    rows = await conn.fetch(
        """
        WITH due AS (
            SELECT d.webhook_id, d.event_id
              FROM api_deliveries d JOIN api_webhooks w ON w.id = d.webhook_id
             WHERE d.state = 'pending' AND d.next_at <= now() AND w.state = 'active'
               AND (d.card_id IS NULL OR NOT EXISTS (
                    SELECT 1 FROM api_deliveries p
                     WHERE p.webhook_id = d.webhook_id AND p.card_id = d.card_id
                       AND p.state = 'pending' AND p.event_id < d.event_id))
             ORDER BY d.next_at, d.event_id
             LIMIT $1
               FOR UPDATE OF d SKIP LOCKED
        )
        UPDATE api_deliveries d SET next_at = now() + make_interval(secs => $2)
          FROM due, api_webhooks w, events e
         WHERE d.webhook_id = due.webhook_id AND d.event_id = due.event_id
           AND w.id = d.webhook_id AND e.id = d.event_id
        RETURNING d.webhook_id, d.event_id, d.attempts, w.url, w.secret_enc, e.type, e.occurred_at, e.payload
        """,
        limit, float(lease_s),
    )
    return [Claimed(int(r["webhook_id"]), int(r["event_id"]), int(r["attempts"]), r["url"], r["secret_enc"],
                    r["type"], r["occurred_at"], _payload(r["payload"])) for r in rows]


async def record(conn: Any, webhook_id: int, event_id: int, *, delivered: bool, status: int | None,
                 error: str | None, retry_in_s: float, retry_hours: int) -> str | None:
    """Write one attempt's outcome; the delivery's state after it (None if it was no longer pending:
    disabled meanwhile, or recorded by another)."""
    new_state = await conn.fetchval(
        """
        UPDATE api_deliveries SET attempts = attempts + 1, last_attempt_at = now(), last_status = $4,
               last_error = $5,
               state = CASE WHEN $3 THEN 'delivered'
                            WHEN now() + make_interval(secs => $6) > window_from + make_interval(hours => $7)
                            THEN 'parked' ELSE 'pending' END,
               delivered_at = CASE WHEN $3 THEN now() END,
               next_at = CASE WHEN $3 THEN next_at ELSE now() + make_interval(secs => $6) END
         WHERE webhook_id = $1 AND event_id = $2 AND state = 'pending'
        RETURNING state
        """,
        webhook_id, event_id, delivered, status, error, float(retry_in_s), retry_hours,
    )
    return None if new_state is None else str(new_state)


def _error_text(exc: BaseException) -> str:
    """What went wrong, short and without any response body (the class, and the OS's reason)."""
    if isinstance(exc, httpx.TimeoutException):
        return "timeout"
    cause = exc.__cause__ or exc.__context__
    reason = f": {cause}" if isinstance(cause, OSError) and str(cause) else ""
    return f"{type(exc).__name__}{reason}"[:200]


class _Dispatcher:
    def __init__(self, state: Any) -> None:
        self.state = state
        self.cfg = state.config.api
        self.in_flight = 0
        self.secrets: dict[str, str] = {}

    async def secret(self, sealed: str) -> str:
        clear = self.secrets.get(sealed)
        if clear is None:
            if len(self.secrets) > 10_000:
                self.secrets.clear()
            clear = self.secrets[sealed] = await reveal(self.state.crypto, sealed)
        return clear

    async def deliver(self, http: httpx.AsyncClient, c: Claimed) -> None:
        cfg = self.cfg
        status: int | None = None
        error: str | None = None
        started = time.monotonic()
        try:
            body = event_body(c.event_id, c.type, c.occurred_at, c.payload, self.state.timezone)
            headers = {
                "Content-Type": "application/json",
                "User-Agent": USER_AGENT,
                "Payswitch-Event-Id": f"evt_{c.event_id}",
                "Payswitch-Signature": sign(await self.secret(c.secret_enc), int(time.time()), body),
            }
            with trio.move_on_after(cfg.webhook_timeout_s) as scope:
                response = await http.post(c.url, content=body, headers=headers)
                status = response.status_code
            if scope.cancelled_caught:
                error = "timeout"
            elif not 200 <= response.status_code < 300:
                error = f"HTTP {response.status_code}"
        except Exception as exc:  # anything at all is a failed attempt, retried later
            error = _error_text(exc)
        labelled(LATENCY, "attempt").observe(time.monotonic() - started)
        ok = error is None
        retry_in = 0.0 if ok else backoff(c.attempts + 1, cfg.webhook_backoff_s, cfg.webhook_backoff_max_s)
        try:
            outcome = await self.state.pool.run(partial(
                record, delivered=ok, status=status, error=error, retry_in_s=retry_in,
                retry_hours=cfg.webhook_retry_hours,
            ), c.webhook_id, c.event_id)
        except Exception as exc:  # the lease runs out and it is sent again: at least once
            log.warning("webhook_record_failed", webhook=c.webhook_id, event_id=c.event_id,
                        error=type(exc).__name__)
            return
        if outcome == "delivered":
            labelled(DELIVERIES, "delivered").inc()
            labelled(LATENCY, "end_to_end").observe(max(0.0, time.time() - c.occurred_at.timestamp()))
        elif outcome is not None:
            labelled(DELIVERIES, "retry" if outcome == "pending" else "parked").inc()
            log.info("webhook_failed", webhook=c.webhook_id, event_id=c.event_id, attempt=c.attempts + 1,
                     error=error, state=outcome, retry_in_s=round(retry_in, 1))

    async def run_one(self, http: httpx.AsyncClient, c: Claimed) -> None:
        try:
            await self.deliver(http, c)
        except Exception as exc:  # a bug here must not stop the API process; the lease retries it
            log.error("webhook_deliver_crashed", webhook=c.webhook_id, event_id=c.event_id,
                      error=type(exc).__name__)
        finally:
            self.in_flight -= 1

    async def run(self) -> None:
        pool = self.state.pool
        lease = self.cfg.webhook_timeout_s + LEASE_MARGIN_S
        counted = 0.0
        timeout = httpx.Timeout(float(self.cfg.webhook_timeout_s))
        limits = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY)
        async with httpx.AsyncClient(timeout=timeout, limits=limits, follow_redirects=False,
                                     trust_env=False) as http, trio.open_nursery() as nursery:
            while True:
                claimed: list[Claimed] = []
                room = CONCURRENCY - self.in_flight
                try:
                    await pool.run(fan_out, FANOUT_BATCH)
                    if room > 0:
                        claimed = await pool.run(claim, room, lease)
                    if time.monotonic() - counted > PENDING_EVERY_S:
                        PENDING.set(await pool.run(count_pending))
                        counted = time.monotonic()
                except Exception as exc:  # the database is away: try again shortly, never stop
                    log.warning("webhook_dispatch_failed", error=type(exc).__name__)
                    await trio.sleep(1.0)
                for c in claimed:
                    self.in_flight += 1
                    nursery.start_soon(self.run_one, http, c)
                # a full claim means more may be due at once; otherwise wait for new events
                await trio.sleep(0 if claimed and len(claimed) == room else POLL_S)


async def dispatcher(state: Any) -> None:
    """The background task of ``api serve``: fan events out to subscriptions and deliver them, until
    cancelled."""
    while True:
        try:
            await _Dispatcher(state).run()
        except Exception as exc:  # never take the API process down with it: start again
            log.error("webhook_dispatcher_crashed", error=type(exc).__name__)
            await trio.sleep(1.0)
