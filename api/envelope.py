"""The request envelope: what every request goes through before and after its route.

A pure ASGI middleware (``install(app)``), outside FastAPI's exception handling and inside its
last-resort error handler. In order, for every HTTP request:

1. **Request id**: a sane incoming ``X-Request-Id`` (1-64 of ``A-Za-z0-9._:-``) is kept, else one is
   made; it is answered in ``X-Request-Id``, is in the log line and in ``request.state.request_id``.
2. **Limits**: a ``Content-Length`` above ``api.max_body_bytes`` is 413 ``payload-too-large`` at once;
   a body without one (chunked) is counted while it is read and refused the same way. A POST, PUT or
   PATCH with a body that is not ``application/json`` (or ``+json``) is 415 ``unsupported-media-type``.
3. **Client**: under ``/v1/`` the key is checked here (``api.auth.authenticate``: cached, so no round
   trip), so the rate limit (``api.ratelimit``; 429 ``rate-limited`` + ``Retry-After``) and the
   idempotency record know the client before the route runs. A missing or bad key is not answered here:
   the request goes on and the route's ``require`` answers 401.
4. **Idempotency** (every authenticated POST under ``/v1/``; api/README.md "Safe retries"): one
   statement begins (``begin``: insert the record, or tell replay / in progress / other body / run
   again apart in the same round trip), the route runs, one statement finishes (``finish``) *before*
   the answer is sent, so an answer a client saw is always the one a retry gets.
5. **Log and metrics**: one ``api_request`` line per request (method, route template, status, client,
   ms, request id; never the query or a body) and ``payswitch_api_requests_total{method,route,status}``,
   ``payswitch_api_request_seconds{route}``.

What a route sees in ``request.state``: ``request_id`` (str), ``caller`` (the authenticated
``api.auth.Caller``), and for a POST ``idem_request_id`` (the ``api_requests`` id) and ``idem_resumed``
(True when an earlier attempt of this same request may have done part of its work: it died mid-way or
answered 5xx; the payments code then finds its write-ahead row by the request id and sends the same ISO
request again). A route sets ``request.state.idem_store`` (a dict) to keep that instead of its body (a
one-time secret is never stored); that also keeps a 5xx answer, which is otherwise not kept.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import secrets
import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

import trio
from fastapi import FastAPI
from prometheus_client import Counter, Histogram

from api import problems
from api.auth import Caller, authenticate
from api.problems import Problem
from api.state import ApiState
from ops import audit
from ops.digits import is_digits
from ops.logs import get_logger, redact_text
from ops.metrics import labelled
from ops.pgpool import UNAVAILABLE, PgPool

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

log = get_logger(__name__)

REQUESTS = Counter("payswitch_api_requests_total", "API requests answered", ["method", "route", "status"])
REQUEST_SECONDS = Histogram(
    "payswitch_api_request_seconds", "time from request to answer", ["route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)

BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
# Answers not kept as the key's answer (the key may be sent again and the request runs again): the
# request did not do its work (401, 403: refused before it began; 429) or failed (>= 500).
NOT_KEPT = frozenset({401, 403, 429})
REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
IDEMPOTENCY_KEY = re.compile(r"^[\x21-\x7e]{1,255}$")  # visible ASCII
PURGE_EVERY_S = 60.0
PURGE_BATCH = 5_000
_WANTED = frozenset({b"authorization", b"content-length", b"content-type", b"idempotency-key",
                     b"x-request-id"})
UNMATCHED = "unmatched"


# -- the record (domain functions: SQL lives here) -------------------------------------------------
@dataclass(frozen=True, slots=True)
class Begun:
    """What ``begin`` found: ``run`` (new or again: ``attempts`` > 1), else an existing record."""

    run: bool
    id: int
    attempts: int
    state: str | None
    status: int | None
    response: str | None  # the kept answer's JSON text
    same: bool  # the same method, path and body
    age_ms: float  # of the current attempt


_BEGIN = """
WITH claimed AS (
    INSERT INTO api_requests AS r (client_id, idem_key, method, path, body_hash, source)
    VALUES ($1, $2, $3, $4, $5, $6)
    ON CONFLICT (client_id, idem_key) DO UPDATE
        SET state = 'started', status = NULL, response = NULL, finished_at = NULL, source = EXCLUDED.source,
            attempt_at = now(), attempts = r.attempts + 1
        WHERE r.body_hash = EXCLUDED.body_hash
          AND (r.state = 'failed'
               OR (r.state = 'started' AND r.attempt_at < now() - make_interval(secs => $7::float8 / 1000)))
    RETURNING r.id, r.attempts
)
SELECT true AS run, id, attempts, NULL::text AS state, NULL::int AS status, NULL::text AS response,
       true AS same, 0::float8 AS age_ms
FROM claimed
UNION ALL
SELECT false, r.id, r.attempts, r.state, r.status, r.response::text, r.body_hash = $5,
       extract(epoch FROM now() - r.attempt_at)::float8 * 1000
FROM api_requests r
WHERE r.client_id = $1 AND r.idem_key = $2 AND NOT EXISTS (SELECT 1 FROM claimed)
"""


async def begin(
    conn: Any, client_id: int, key: str, method: str, path: str, body_hash: str, source: str | None,
    stale_ms: int,
) -> Begun:
    """Insert the record of (client, key), or find it: one round trip. A ``failed`` record, or a
    ``started`` one older than ``stale_ms``, with the same body is claimed for another attempt."""
    for _ in range(3):
        row = await conn.fetchrow(_BEGIN, client_id, key, method, path, body_hash, source, stale_ms)
        if row is not None:
            return Begun(row["run"], int(row["id"]), int(row["attempts"]), row["state"], row["status"],
                         row["response"], row["same"], float(row["age_ms"]))
        # A concurrent request inserted the key after this statement's snapshot: look again.
    raise RuntimeError("idempotency record neither inserted nor found")


async def finish(conn: Any, request_id: int, state: str, status: int, response: str | None) -> None:
    """Close the attempt: ``done`` with the kept answer, or ``failed`` (its status, nothing kept)."""
    await conn.execute(
        "UPDATE api_requests SET state = $2, status = $3, response = $4::jsonb, finished_at = now()"
        " WHERE id = $1",
        request_id, state, status, response,
    )


AUDITED_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_AUDIT_FAILURES: tuple[type[BaseException], ...] = (*UNAVAILABLE, audit.AuditError)
_FINISH_THEN = ("UPDATE api_requests SET state = $15, status = $16, response = $17::jsonb,"
                " finished_at = now() WHERE id = $14")


@dataclass(frozen=True, slots=True)
class Audited:
    """The audit row of one state-changing request (ops.audit): who, from where, what, how it ended."""

    actor: str
    source: str
    action: str
    target: str
    status: int

    @property
    def outcome(self) -> str:
        return "done" if self.status < 400 else "failed" if self.status >= 500 else "refused"


async def record_request(conn: Any, row: Audited, finish_args: tuple[int, str, int, str | None] | None = None,
                         ) -> None:
    """The request's audit row; with ``finish_args`` (request id, state, status, response) the
    idempotency record is closed in the same statement as the row's insert (``finish``)."""
    await audit.record(conn, actor=row.actor, role="api", source=row.source, action=row.action,
                       target=row.target, after={"status": row.status}, outcome=row.outcome,
                       then=_FINISH_THEN if finish_args is not None else "", then_args=finish_args or ())


async def purge(conn: Any, hours: int, limit: int = PURGE_BATCH) -> int:
    """Delete up to ``limit`` records older than ``hours``; how many."""
    done = await conn.execute(
        "DELETE FROM api_requests WHERE id IN (SELECT id FROM api_requests WHERE created_at <"
        " now() - make_interval(hours => $1) ORDER BY created_at LIMIT $2 FOR UPDATE SKIP LOCKED)",
        hours, limit,
    )
    return int(done.split()[-1])


async def purge_expired(pool: PgPool, hours: int) -> int:
    """Every record older than ``hours``, in batches of ``PURGE_BATCH``; how many."""
    total = 0
    while True:
        n = await pool.run(purge, hours)
        total += n
        if n < PURGE_BATCH:
            return total
        await trio.sleep(0)


async def purger(state: ApiState) -> None:
    """Background task of ``api serve``: forget keys older than ``api.idempotency_hours``, every minute."""
    while True:
        try:
            n = await purge_expired(state.pool, state.config.api.idempotency_hours)
            if n:
                log.info("api_idempotency_purged", records=n)
        except UNAVAILABLE as exc:
            log.warning("api_idempotency_purge_failed", error=type(exc).__name__)
        await trio.sleep(PURGE_EVERY_S)


def body_hash(method: str, path: str, query: bytes, body: bytes) -> str:
    """SHA-256 over method, path (with its query) and body: "the same request"."""
    h = hashlib.sha256(method.encode())
    h.update(b" ")
    h.update(path.encode())
    h.update(b"?")
    h.update(query)
    h.update(b"\n")
    h.update(body)
    return h.hexdigest()


# -- the middleware ------------------------------------------------------------------------------
class _Exchange:
    """What the log line and the metrics say about one request."""

    __slots__ = ("client", "replayed", "status")

    def __init__(self) -> None:
        self.status = 500
        self.client: str | None = None
        self.replayed = False


CONSOLE = "/console"
# Money and payment-code requests are not audit rows: each has its own append-only record naming the
# client (api_payments with client_id and the request, the switch's journal, the host's chained ledger,
# payment_codes). A row each would only repeat them, behind the audit chain's one lock, at every purchase
# (bench.api: 79 API purchases/s with it, against 136 without). Management requests are audited.
RECORDED_ELSEWHERE = frozenset({
    "/v1/payments", "/v1/payments/{payment_id}/refund", "/v1/payments/{payment_id}/reversal", "/v1/loads",
    "/v1/cards/{card_id}/payment-codes",
})


def _is_json(content_type: str | None) -> bool:
    if not content_type:
        return False
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


def _templates(app: Any) -> list[tuple[re.Pattern[str], str]]:
    """The app's path templates as patterns, fewest parameters first (``/v1/cards/search`` before
    ``/v1/cards/{card_id}``); from its OpenAPI document, made once per app."""
    cached: list[tuple[re.Pattern[str], str]] | None = getattr(app.state, "envelope_templates", None)
    if cached is not None:
        return cached
    try:
        paths = list(app.openapi().get("paths", {}))
    except Exception:  # a document that cannot be made: label by "unmatched" rather than fail requests
        paths = []
    out = [(re.compile("^" + re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(p)) + "$"), p)
           for p in sorted(paths, key=lambda p: (p.count("{"), p))]
    app.state.envelope_templates = out
    return out


def _route_of(scope: Scope) -> str | None:
    """The matched route's template (``/v1/cards/{card_id}``), found again if the route never ran."""
    route = scope.get("route")
    if route is not None and getattr(route, "path", None):
        return str(route.path)
    app = scope.get("app")
    if app is None:
        return None
    path = scope.get("path", "")
    for pattern, template in _templates(app):
        if pattern.match(path):
            return template
    return None


class _TooLarge(Exception):
    pass


class _Disconnected(Exception):
    pass


async def _read_body(receive: Receive, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _Disconnected
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise _TooLarge
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _replaying(body: bytes, receive: Receive) -> Receive:
    """A receive that gives the body read already, then waits on the real one (for the disconnect)."""
    given = False

    async def again() -> Message:
        nonlocal given
        if not given:
            given = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return again


async def _send_raw(send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-length", str(len(body)).encode()), *headers]})
    await send({"type": "http.response.body", "body": body})


class Envelope:
    """The ASGI middleware; see the module docstring."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        headers: dict[bytes, str] = {}
        for name, value in scope["headers"]:
            if name in _WANTED and name not in headers:
                headers[name] = value.decode("latin-1")
        request_id = headers.get(b"x-request-id")
        if request_id is None or not REQUEST_ID.fullmatch(request_id):
            request_id = secrets.token_hex(8)
        st: dict[str, Any] = dict(scope.get("state") or {})
        scope["state"] = st
        st["request_id"] = request_id
        ex = _Exchange()
        id_header = (b"x-request-id", request_id.encode())

        async def answer(message: Message) -> None:
            if message["type"] == "http.response.start":
                ex.status = message["status"]
                message["headers"] = [*message.get("headers", ()), id_header]
            await send(message)

        try:
            await self._handle(scope, receive, answer, headers, st, ex)
        except _Disconnected:
            ex.status = 499  # the client went away before its body arrived
        finally:
            seconds = time.perf_counter() - started
            template = _route_of(scope)
            route = template or UNMATCHED
            labelled(REQUESTS, scope["method"], route, str(ex.status)).inc()
            labelled(REQUEST_SECONDS, route).observe(seconds)
            log.info("api_request", method=scope["method"], route=template or scope.get("path", ""),
                     status=ex.status, client=ex.client, ms=round(seconds * 1000, 2),
                     request_id=request_id, **({"replayed": True} if ex.replayed else {}))

    async def _problem(self, scope: Scope, receive: Receive, send: Send, problem: Problem) -> None:
        await problems.response(problem, scope.get("path"))(scope, receive, send)

    async def _run_app(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The app; an unexpected exception is a 500 problem here (with our headers and log line)."""
        began = False

        async def tracking(message: Message) -> None:
            nonlocal began
            if message["type"] == "http.response.start":
                began = True
            await send(message)

        try:
            await self.app(scope, receive, tracking)
        except Exception as exc:
            if began:
                raise
            # The text may quote a value (a PAN): only the class is logged, nothing goes to the client.
            log.error("api_unexpected_error", path=scope.get("path"), error=type(exc).__name__)
            await self._problem(scope, receive, send,
                                Problem("internal", "an unexpected error; it has been logged"))

    async def _handle(self, scope: Scope, receive: Receive, send: Send, headers: dict[bytes, str],
                      st: dict[str, Any], ex: _Exchange) -> None:
        app = scope.get("app")
        api: ApiState | None = getattr(getattr(app, "state", None), "api", None)
        if api is None:  # create_app(None): the document only
            await self._run_app(scope, receive, send)
            return
        limit = api.config.api.max_body_bytes
        length = headers.get(b"content-length")
        if length is not None and (not is_digits(length) or int(length) > limit):
            await self._problem(scope, receive, send, Problem(
                "payload-too-large", f"the body may have at most {limit} bytes") if is_digits(length)
                else Problem("bad-request", "Content-Length is not a number"))
            return
        method: str = scope["method"]
        path: str = scope["path"]
        if path == CONSOLE or path.startswith(CONSOLE + "/"):
            # the operators' console (console/): HTML forms with its own session, CSRF and roles; no API
            # key, no Idempotency-Key, no JSON-only bodies
            await self._run_app(scope, receive, send)
            return
        caller: Caller | None = None
        if path.startswith("/v1/") and b"authorization" in headers:
            try:
                caller = await authenticate(api, headers[b"authorization"])
            except Problem:
                caller = None  # the route's `require` answers 401
            except UNAVAILABLE:
                await self._problem(scope, receive, send,
                                    Problem("unavailable", "the database cannot be reached"))
                return
            if caller is not None:
                ex.client = caller.name
                st["caller"] = caller
                if api.limiter is not None:
                    try:
                        api.limiter.check(caller, api.config.api)
                    except Problem as problem:
                        await self._problem(scope, receive, send, problem)
                        return
                    st["rate_checked"] = True
        body = b""
        if method in BODY_METHODS or (length is not None and length != "0"):
            try:
                body = await _read_body(receive, limit)
            except _TooLarge:
                await self._problem(scope, receive, send,
                                    Problem("payload-too-large", f"the body may have at most {limit} bytes"))
                return
            receive = _replaying(body, receive)
            if body and method in BODY_METHODS and not _is_json(headers.get(b"content-type")):
                await self._problem(scope, receive, send,
                                    Problem("unsupported-media-type", "send the body as application/json"))
                return
        if caller is not None and method in AUDITED_METHODS and path.startswith("/v1/"):
            if _route_of(scope) not in RECORDED_ELSEWHERE:
                await self._audited(scope, receive, send, api, caller, headers, st, ex, body)
            elif method == "POST":  # still idempotent; only the audit row is left to its own record
                await self._idempotent(scope, receive, send, api, caller, headers, st, ex, body)
            else:
                await self._run_app(scope, receive, send)
            return
        await self._run_app(scope, receive, send)

    async def _audited(self, scope: Scope, receive: Receive, send: Send, api: ApiState, caller: Caller,
                       headers: dict[bytes, str], st: dict[str, Any], ex: _Exchange, body: bytes) -> None:
        """A state-changing request: its audit row, written with the idempotency finish when the route
        ran (``_idempotent`` sets ``audited``), else right after the answer; a replay writes none."""
        client = scope.get("client")
        st["audit_row"] = lambda status: Audited(caller.actor, client[0] if client else "",
                                                  f"api.{scope['method']} {_route_of(scope) or UNMATCHED}",
                                                  redact_text(scope["path"]), status)
        if scope["method"] == "POST":
            await self._idempotent(scope, receive, send, api, caller, headers, st, ex, body)
        else:
            await self._run_app(scope, receive, send)
        if st.get("audited") or ex.replayed:
            return
        try:
            await api.pool.run(record_request, st["audit_row"](ex.status))
        except _AUDIT_FAILURES as exc:
            log.warning("api_audit_failed", path=scope["path"], error=type(exc).__name__)

    async def _idempotent(self, scope: Scope, receive: Receive, send: Send, api: ApiState, caller: Caller,
                          headers: dict[bytes, str], st: dict[str, Any], ex: _Exchange, body: bytes) -> None:
        key = headers.get(b"idempotency-key")
        if key is None or not IDEMPOTENCY_KEY.fullmatch(key):
            await self._problem(scope, receive, send, Problem(
                "idempotency-key-missing",
                "send an Idempotency-Key header (1-255 visible ASCII characters; a UUID will do)"
                if key is None else "an Idempotency-Key is 1-255 visible ASCII characters"))
            return
        method: str = scope["method"]
        path: str = scope["path"]
        digest = body_hash(method, path, scope.get("query_string", b""), body)
        client = scope.get("client")
        source = client[0] if client else None
        stale_ms = 2 * api.config.api.request_timeout_ms
        try:
            begun = await api.pool.run(begin, caller.client_id, key, method, path, digest, source, stale_ms)
        except UNAVAILABLE:
            await self._problem(scope, receive, send,
                                Problem("unavailable", "the database cannot be reached"))
            return
        if not begun.run:
            if not begun.same:
                await self._problem(scope, receive, send, Problem(
                    "idempotency-key-reused", "this Idempotency-Key was sent with another method, path or"
                    " body; use a new key for a new request"))
            elif begun.state == "done":
                ex.replayed = True
                status = begun.status or 200
                media = problems.MEDIA_TYPE if status >= 400 else "application/json"
                data = begun.response.encode() if begun.response is not None else b""
                await _send_raw(send, status, data, [(b"content-type", media.encode()),
                                                     (b"idempotent-replayed", b"true")])
            else:
                wait = max(1, math.ceil((stale_ms - begun.age_ms) / 1000))
                await self._problem(scope, receive, send, Problem(
                    "idempotency-in-progress", "a request with this Idempotency-Key is still running; retry"
                    " later for its answer", headers={"Retry-After": str(wait)}))
            return
        st["idem_request_id"] = begun.id
        st["idem_resumed"] = begun.attempts > 1
        held: list[Message] = []

        async def hold(message: Message) -> None:
            held.append(message)

        await self._run_app(scope, receive, hold)
        start = next((m for m in held if m["type"] == "http.response.start"), None)
        status = int(start["status"]) if start is not None else 500
        store = st.get("idem_store")
        response: str | None = None
        if store is not None:
            state = "done"
            response = json.dumps(store, default=str)
        elif status >= 500 or status in NOT_KEPT:
            state = "failed"
        else:
            state = "done"
            content_type = next((v for k, v in (start or {}).get("headers", ()) if k == b"content-type"), b"")
            data = b"".join(m.get("body", b"") for m in held if m["type"] == "http.response.body")
            if data and b"json" in content_type:
                response = data.decode()
        try:
            if "audit_row" not in st:  # recorded elsewhere (RECORDED_ELSEWHERE): the finish alone
                if not st.get("idem_finished"):  # a payment's route commits it with the switch's answer
                    await api.pool.run(finish, begun.id, state, status, response)
            else:
                row: Audited = st["audit_row"](status)
                if not st.get("idem_finished"):
                    await api.pool.run(record_request, row, (begun.id, state, status, response))
                else:
                    await api.pool.run(record_request, row)
                st["audited"] = True
        except audit.AuditError as exc:  # a path that looks like a PAN: the record closed, no row
            log.warning("api_audit_failed", path=path, error=type(exc).__name__)
            await api.pool.run(finish, begun.id, state, status, response)
            st["audited"] = True
        except UNAVAILABLE as exc:
            # The answer goes out; the record stays `started` and a retry after 2 * request_timeout_ms
            # runs the request again (a payment finds its write-ahead row and gets the switch's first answer).
            log.warning("api_idempotency_finish_failed", request=begun.id, error=type(exc).__name__)
        for message in held:
            await send(message)


def install(app: FastAPI) -> None:
    """Put the envelope around every request of ``app``."""
    app.add_middleware(Envelope)
