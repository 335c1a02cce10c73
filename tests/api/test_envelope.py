"""The request envelope (api/envelope.py) in-process: the real app (create_app) on a real database, with
a test-only router whose POST route counts its calls, can sleep, fail or keep a one-time secret out of
its stored answer. Driven by httpx's ASGI transport inside trio (PgPool needs a trio loop).

Plus one test against the live process: a bad key is a 401 problem there too, and /healthz answers.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import re
from collections import Counter as Tally
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Annotated, Any, cast

import httpx
import pytest
import trio
from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from prometheus_client import REGISTRY

from api import auth
from api.app import create_app
from api.auth import Caller, add_client, require, revoke_client
from api.envelope import body_hash, purge_expired
from api.problems import MEDIA_TYPE, PROBLEM_TYPES, TYPE_BASE
from api.ratelimit import Limiter
from api.state import ApiState
from ops.config import load
from ops.pgpool import PgPool
from pos.system import System
from tests.api.conftest import unique

# -- the test router -----------------------------------------------------------------------------
CALLS: Tally[str] = Tally()  # idempotency key -> times the route ran
RESUMED: dict[str, list[bool]] = {}
REQUEST_IDS: dict[str, int] = {}
ROUTER = APIRouter()


@ROUTER.post("/v1/test/echo")
async def echo(request: Request, caller: Annotated[Caller, Depends(require("payments:write"))],
               ) -> JSONResponse:
    key = request.headers["idempotency-key"]
    CALLS[key] += 1
    RESUMED.setdefault(key, []).append(bool(request.state.idem_resumed))
    REQUEST_IDS[key] = request.state.idem_request_id
    raw = await request.body()
    body: dict[str, Any] = json.loads(raw) if raw else {}
    if body.get("sleep"):
        await trio.sleep(float(body["sleep"]))
    if CALLS[key] <= int(body.get("fail_times", 0)):
        return JSONResponse({"error": "try again"}, status_code=503)
    answer = {"n": CALLS[key], "client": caller.name, "echo": body.get("value")}
    if body.get("secret"):
        answer["secret"] = "s3cr3t-" + key
        request.state.idem_store = {**answer, "secret": None, "shown_once": True}
    return JSONResponse(answer, status_code=int(body.get("status", 201)))


@ROUTER.get("/v1/test/ping")
async def ping(caller: Annotated[Caller, Depends(require("cards:read"))]) -> dict[str, str]:
    return {"pong": caller.name}


@ROUTER.post("/v1/test/boom")
async def boom(_caller: Annotated[Caller, Depends(require("payments:write"))]) -> dict[str, str]:
    raise RuntimeError("card 6200000000000000 exploded")  # the text never reaches client or log


# -- harness -------------------------------------------------------------------------------------
Client = httpx.AsyncClient


def run(db_url: str, test: Callable[[Client, PgPool], Awaitable[None]], **api: Any) -> None:
    """``await test(client, pool)`` against create_app on a real database; ``api`` overrides [api]."""
    base = load(env={})
    config = dataclasses.replace(base, api=dataclasses.replace(base.api, **api))

    async def main() -> None:
        with PgPool(db_url, min_size=1, max_size=4) as pool:
            state = ApiState(config=config, pool=pool, hsm=None, crypto=cast(Any, None), limiter=Limiter())
            app = create_app(state)
            app.include_router(ROUTER)
            transport = httpx.ASGITransport(app=app, client=("192.0.2.7", 40000))
            async with httpx.AsyncClient(transport=transport, base_url="http://api.test") as client:
                await test(client, pool)

    trio.run(main)


async def new_key(pool: PgPool, scopes: list[str], **kw: Any) -> tuple[str, dict[str, str]]:
    name = unique("env")
    made = await pool.run(functools.partial(add_client, **kw), name, scopes, "test")
    return name, {"Authorization": f"Bearer {made.key}"}


def assert_problem(resp: httpx.Response, slug: str) -> dict[str, Any]:
    status = PROBLEM_TYPES[slug][0]
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith(MEDIA_TYPE)
    doc: dict[str, Any] = resp.json()
    assert doc["type"] == TYPE_BASE + slug and doc["status"] == status and doc["title"]
    return doc


def idem(headers: dict[str, str], key: str) -> dict[str, str]:
    return {**headers, "Idempotency-Key": key}


# -- idempotency ---------------------------------------------------------------------------------
def test_replay_returns_the_first_answer_and_runs_once(db_url: str) -> None:
    async def test(c: Client, pool: PgPool) -> None:
        name, h = await new_key(pool, ["payments:write"])
        key = unique("k")
        first = await c.post("/v1/test/echo", json={"value": 7}, headers=idem(h, key))
        assert first.status_code == 201 and first.json() == {"n": 1, "client": name, "echo": 7}
        assert "idempotent-replayed" not in first.headers
        again = await c.post("/v1/test/echo", json={"value": 7}, headers=idem(h, key))
        assert again.status_code == 201 and again.json() == first.json()
        assert again.headers["idempotent-replayed"] == "true"
        assert again.headers["content-type"] == "application/json"
        assert CALLS[key] == 1
        # Another client's same key is its own request.
        _, other = await new_key(pool, ["payments:write"])
        theirs = await c.post("/v1/test/echo", json={"value": 7}, headers=idem(other, key))
        assert theirs.status_code == 201 and "idempotent-replayed" not in theirs.headers
        assert CALLS[key] == 2
        # The record attributes the request: client, method, path, status, source.
        row = (await pool.run(lambda conn: conn.fetchrow(
            "SELECT r.method, r.path, r.status, r.state, r.source, c.name FROM api_requests r"
            " JOIN api_clients c ON c.id = r.client_id WHERE r.id = $1", REQUEST_IDS[key])))
        assert dict(row) == {"method": "POST", "path": "/v1/test/echo", "status": 201, "state": "done",
                             "source": "192.0.2.7", "name": row["name"]}

    run(db_url, test)


def test_a_replayed_error_is_the_same_problem(db_url: str) -> None:
    async def test(c: Client, pool: PgPool) -> None:
        _, h = await new_key(pool, ["payments:write"])
        key = unique("k")
        first = await c.post("/v1/test/echo", json={"status": 409}, headers=idem(h, key))
        again = await c.post("/v1/test/echo", json={"status": 409}, headers=idem(h, key))
        assert first.status_code == again.status_code == 409 and again.json() == first.json()
        assert again.headers["idempotent-replayed"] == "true" and CALLS[key] == 1

    run(db_url, test)


def test_same_key_other_request_is_422(db_url: str) -> None:
    async def test(c: Client, pool: PgPool) -> None:
        _, h = await new_key(pool, ["payments:write"])
        key = unique("k")
        assert (await c.post("/v1/test/echo", json={"value": 1}, headers=idem(h, key))).status_code == 201
        assert_problem(await c.post("/v1/test/echo", json={"value": 2}, headers=idem(h, key)),
                       "idempotency-key-reused")
        assert_problem(await c.post("/v1/test/echo?x=1", json={"value": 1}, headers=idem(h, key)),
                       "idempotency-key-reused")
        assert_problem(await c.post("/v1/test/boom", json={"value": 1}, headers=idem(h, key)),
                       "idempotency-key-reused")
        assert CALLS[key] == 1

    run(db_url, test)


def test_a_post_needs_a_usable_key(db_url: str) -> None:
    async def test(c: Client, pool: PgPool) -> None:
        _, h = await new_key(pool, ["payments:write"])
        assert_problem(await c.post("/v1/test/echo", json={}, headers=h), "idempotency-key-missing")
        for bad in ("", "x" * 256, "with space"):
            assert_problem(await c.post("/v1/test/echo", json={}, headers=idem(h, bad)),
                           "idempotency-key-missing")

    run(db_url, test)


def test_concurrent_same_key_is_409_then_replayed(db_url: str) -> None:
    async def test(c: Client, pool: PgPool) -> None:
        _, h = await new_key(pool, ["payments:write"])
        key = unique("k")
        answers: dict[str, httpx.Response] = {}

        async def slow() -> None:
            answers["slow"] = await c.post("/v1/test/echo", json={"sleep": 1.0}, headers=idem(h, key))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(slow)
            with trio.fail_after(10):  # the first request holds the key once its route runs
                while not CALLS[key]:
                    await trio.sleep(0.01)
            busy = await c.post("/v1/test/echo", json={"sleep": 1.0}, headers=idem(h, key))
        assert_problem(busy, "idempotency-in-progress")
        assert int(busy.headers["retry-after"]) >= 1
        assert answers["slow"].status_code == 201
        again = await c.post("/v1/test/echo", json={"sleep": 1.0}, headers=idem(h, key))
        assert again.json() == answers["slow"].json() and again.headers["idempotent-replayed"] == "true"
        assert CALLS[key] == 1

    run(db_url, test)


def test_a_stale_started_record_is_resumed(db_url: str) -> None:
    async def test(c: Client, pool: PgPool) -> None:
        name, h = await new_key(pool, ["payments:write"])
        key = unique("k")
        body = json.dumps({"value": 3}).encode()
        digest = body_hash("POST", "/v1/test/echo", b"", body)

        async def died(conn: Any) -> int:  # what a process killed mid-request leaves
            return int(await conn.fetchval(
                "INSERT INTO api_requests (client_id, idem_key, method, path, body_hash, created_at,"
                " attempt_at) SELECT id, $2, 'POST', '/v1/test/echo', $3, now() - interval '1 minute',"
                " now() - interval '1 minute' FROM api_clients WHERE name = $1 RETURNING id",
                name, key, digest))

        request_id = await pool.run(died)
        headers = {**idem(h, key), "content-type": "application/json"}
        resp = await c.post("/v1/test/echo", content=body, headers=headers)
        assert resp.status_code == 201 and "idempotent-replayed" not in resp.headers
        assert RESUMED[key] == [True] and REQUEST_IDS[key] == request_id
        row = await pool.run(lambda conn: conn.fetchrow(
            "SELECT state, attempts FROM api_requests WHERE id = $1", request_id))
        assert (row["state"], row["attempts"]) == ("done", 2)
        # A young `started` record is still running: 409.
        young = unique("k")

        async def running(conn: Any) -> None:
            await conn.execute(
                "INSERT INTO api_requests (client_id, idem_key, method, path, body_hash)"
                " SELECT id, $2, 'POST', '/v1/test/echo', $3 FROM api_clients WHERE name = $1", name, young,
                digest)

        await pool.run(running)
        busy = await c.post("/v1/test/echo", content=body, headers={**headers, "Idempotency-Key": young})
        assert_problem(busy, "idempotency-in-progress")
        assert CALLS[young] == 0

    run(db_url, test, request_timeout_ms=5000)


def test_idem_store_is_kept_instead_of_the_body(db_url: str) -> None:
    async def test(c: Client, pool: PgPool) -> None:
        _, h = await new_key(pool, ["payments:write"])
        key = unique("k")
        first = await c.post("/v1/test/echo", json={"secret": True}, headers=idem(h, key))
        assert first.json()["secret"] == "s3cr3t-" + key
        again = await c.post("/v1/test/echo", json={"secret": True}, headers=idem(h, key))
        assert again.status_code == 201 and again.json()["secret"] is None and again.json()["shown_once"]
        stored = await pool.run(lambda conn: conn.fetchval(
            "SELECT response::text FROM api_requests WHERE id = $1", REQUEST_IDS[key]))
        assert "s3cr3t" not in stored and CALLS[key] == 1

    run(db_url, test)


def test_5xx_and_refusals_are_not_kept(db_url: str) -> None:
    async def test(c: Client, pool: PgPool) -> None:
        _, h = await new_key(pool, ["payments:write"])
        key = unique("k")
        first = await c.post("/v1/test/echo", json={"fail_times": 1}, headers=idem(h, key))
        assert first.status_code == 503
        state = await pool.run(lambda conn: conn.fetchval(
            "SELECT state FROM api_requests WHERE id = $1", REQUEST_IDS[key]))
        assert state == "failed"
        retry = await c.post("/v1/test/echo", json={"fail_times": 1}, headers=idem(h, key))
        assert retry.status_code == 201 and "idempotent-replayed" not in retry.headers
        assert CALLS[key] == 2 and RESUMED[key] == [False, True]
        # An unexpected exception is a 500 problem, its text nowhere; the key can be retried.
        boom_key = unique("k")
        doc = assert_problem(await c.post("/v1/test/boom", json={}, headers=idem(h, boom_key)), "internal")
        assert "6200" not in json.dumps(doc)
        assert (await c.post("/v1/test/boom", json={}, headers=idem(h, boom_key))).status_code == 500
        # Refused for its scope: not kept either (the key works once the client may do it).
        _, reader = await new_key(pool, ["cards:read"])
        assert_problem(await c.post("/v1/test/echo", json={}, headers=idem(reader, unique("k"))),
                       "scope-missing")

    run(db_url, test)


def test_purge_forgets_old_keys(db_url: str) -> None:
    async def test(c: Client, pool: PgPool) -> None:
        _, h = await new_key(pool, ["payments:write"])
        old, fresh = unique("k"), unique("k")
        for key in (old, fresh):
            assert (await c.post("/v1/test/echo", json={}, headers=idem(h, key))).status_code == 201
        await pool.run(lambda conn: conn.execute(
            "UPDATE api_requests SET created_at = now() - interval '25 hours' WHERE id = $1",
            REQUEST_IDS[old]))
        assert await purge_expired(pool, 24) >= 1
        left = await pool.run(lambda conn: conn.fetch(
            "SELECT id FROM api_requests WHERE id = ANY($1::bigint[])",
            [REQUEST_IDS[old], REQUEST_IDS[fresh]]))
        assert [r["id"] for r in left] == [REQUEST_IDS[fresh]]
        again = await c.post("/v1/test/echo", json={}, headers=idem(h, old))  # a forgotten key is new again
        assert again.status_code == 201 and CALLS[old] == 2

    run(db_url, test)


# -- limits --------------------------------------------------------------------------------------
def test_body_size_limit(db_url: str) -> None:
    async def test(c: Client, pool: PgPool) -> None:
        _, h = await new_key(pool, ["payments:write"])
        big = json.dumps({"value": "x" * 2000})
        doc = assert_problem(await c.post("/v1/test/echo", content=big, headers={
            **idem(h, unique("k")), "content-type": "application/json"}), "payload-too-large")
        assert "1024" in doc["detail"]

        async def chunks() -> AsyncIterator[bytes]:
            for _ in range(5):
                yield b"x" * 300

        chunked = await c.post("/v1/test/echo", content=chunks(), headers={
            **idem(h, unique("k")), "content-type": "application/json"})
        assert "content-length" not in chunked.request.headers
        assert_problem(chunked, "payload-too-large")
        # Unauthenticated requests are limited too.
        assert_problem(await c.post("/v1/test/echo", content=big), "payload-too-large")
        ok = await c.post("/v1/test/echo", json={"value": "x" * 900}, headers=idem(h, unique("k")))
        assert ok.status_code == 201

    run(db_url, test, max_body_bytes=1024)


def test_body_must_be_json(db_url: str) -> None:
    async def test(c: Client, pool: PgPool) -> None:
        _, h = await new_key(pool, ["payments:write"])
        key = unique("k")
        for content_type in ("text/plain", "application/x-www-form-urlencoded", None):
            headers = idem(h, key) | ({"content-type": content_type} if content_type else {})
            assert_problem(await c.post("/v1/test/echo", content=b'{"value": 1}', headers=headers),
                           "unsupported-media-type")
        assert CALLS[key] == 0
        ok = await c.post("/v1/test/echo", content=b"{}", headers={
            **idem(h, key), "content-type": "application/merge-patch+json; charset=utf-8"})
        assert ok.status_code == 201
        empty = await c.post("/v1/test/echo", headers=idem(h, unique("k")))  # no body: no media type needed
        assert empty.status_code == 201

    run(db_url, test)


def test_rate_limit(db_url: str) -> None:
    async def test(c: Client, pool: PgPool) -> None:
        _, h = await new_key(pool, ["cards:read", "payments:write"], rate_per_second=1)
        answers: list[tuple[str, httpx.Response]] = []

        async def one(key: str | None) -> None:
            if key is None:
                answers.append(("", await c.get("/v1/test/ping", headers=h)))
            else:
                answers.append((key, await c.post("/v1/test/echo", json={}, headers=idem(h, key))))

        # Ten at once against a bucket of one token refilled once a second: a busy machine may refill one
        # or two while they run, never most of them.
        async with trio.open_nursery() as nursery:
            for i in range(10):
                nursery.start_soon(one, None if i % 2 else unique("k"))
        limited = [(key, r) for key, r in answers if r.status_code == 429]
        assert len(limited) >= 5 and all(r.status_code in (200, 201, 429) for _, r in answers)
        for key, resp in limited:
            assert_problem(resp, "rate-limited")
            assert int(resp.headers["retry-after"]) >= 1
            if key:
                assert CALLS[key] == 0  # a refused POST never ran and left no record
        refused_posts = [key for key, _ in limited if key]
        if refused_posts:
            assert await pool.run(lambda conn: conn.fetchval(
                "SELECT count(*) FROM api_requests WHERE idem_key = ANY($1::text[])", refused_posts)) == 0
        # Another client has its own bucket (the default rate).
        _, other = await new_key(pool, ["cards:read"])
        for _ in range(3):
            assert (await c.get("/v1/test/ping", headers=other)).status_code == 200
        await trio.sleep(1.05)
        assert (await c.get("/v1/test/ping", headers=h)).status_code == 200

    run(db_url, test, rate_burst=1)


# -- authentication ------------------------------------------------------------------------------
def test_unauthenticated_and_forbidden(db_url: str) -> None:
    async def test(c: Client, pool: PgPool) -> None:
        name, h = await new_key(pool, ["cards:read"])
        unknown = "Bearer psk_abcdefgh_" + "A" * 43
        for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": "Basic dXNlcjpwdw=="},
                        {"Authorization": unknown}):
            for resp in (await c.get("/v1/test/ping", headers=headers),
                         await c.post("/v1/test/echo", json={}, headers=headers)):
                assert_problem(resp, "unauthenticated")
                assert resp.headers["www-authenticate"] == "Bearer"
        assert (await c.get("/v1/test/ping", headers=h)).status_code == 200
        await pool.run(revoke_client, name)  # clears this process's cache: refused at once
        assert_problem(await c.get("/v1/test/ping", headers=h), "unauthenticated")
        _, reader = await new_key(pool, ["cards:read"])
        doc = assert_problem(await c.post("/v1/test/echo", json={}, headers=idem(reader, unique("k"))),
                             "scope-missing")
        assert "payments:write" in doc["detail"]
        _, payer = await new_key(pool, ["payments:write"])
        assert_problem(await c.get("/v1/test/ping", headers=payer), "scope-missing")

    run(db_url, test)


# -- observability -------------------------------------------------------------------------------
def test_request_id_metrics_and_log_line(db_url: str) -> None:
    from structlog.testing import capture_logs

    async def test(c: Client, pool: PgPool) -> None:
        name, h = await new_key(pool, ["cards:read", "payments:write"])
        before = REGISTRY.get_sample_value("payswitch_api_requests_total",
                                           {"method": "GET", "route": "/v1/test/ping", "status": "200"}) or 0
        with capture_logs() as logs:
            mine = await c.get("/v1/test/ping?pan=6200000000000000", headers={**h, "X-Request-Id": "abc-123"})
            made = await c.get("/v1/test/ping", headers={**h, "X-Request-Id": "bad id\twith junk"})
            key = unique("k")
            for _ in range(2):
                await c.post("/v1/test/echo", json={"value": "6200000000000000"}, headers=idem(h, key))
        assert mine.headers["x-request-id"] == "abc-123"
        assert re.fullmatch(r"[0-9a-f]{16}", made.headers["x-request-id"])
        lines = [e for e in logs if e["event"] == "api_request"]
        assert len(lines) == 4
        assert lines[3]["route"] == "/v1/test/echo" and lines[3]["replayed"] is True  # the route never ran
        assert lines[0] | {"ms": 0} == {"event": "api_request", "log_level": "info", "method": "GET",
                                        "route": "/v1/test/ping", "status": 200, "client": name, "ms": 0,
                                        "request_id": "abc-123"}
        assert "6200" not in json.dumps(logs, default=str)
        assert lines[2]["route"] == "/v1/test/echo" and lines[2]["status"] == 201
        after = REGISTRY.get_sample_value("payswitch_api_requests_total",
                                          {"method": "GET", "route": "/v1/test/ping", "status": "200"})
        assert after == before + 2
        assert (REGISTRY.get_sample_value("payswitch_api_request_seconds_count",
                                          {"route": "/v1/test/ping"}) or 0) >= 2
        # A route that does not exist is counted as `unmatched`, not by its raw path.
        await c.get("/v1/nothing/here/card_1", headers=h)
        assert REGISTRY.get_sample_value("payswitch_api_requests_total",
                                         {"method": "GET", "route": "unmatched", "status": "404"})

    run(db_url, test)


def test_cached_auth_sees_revocation_within_cache_seconds(db_url: str) -> None:
    """Another process's revocation (simulated: the row changes, this process's cache does not)."""
    async def test(c: Client, pool: PgPool) -> None:
        name, h = await new_key(pool, ["cards:read"])
        assert (await c.get("/v1/test/ping", headers=h)).status_code == 200
        await pool.run(lambda conn: conn.execute(
            "UPDATE api_clients SET state = 'revoked', revoked_at = now() WHERE name = $1", name))
        await trio.sleep(auth.CACHE_SECONDS + 0.1)
        assert_problem(await c.get("/v1/test/ping", headers=h), "unauthenticated")

    run(db_url, test)


# -- the live process ----------------------------------------------------------------------------
def test_live_bad_key_is_a_401_problem_and_healthz_works(live: System) -> None:
    with httpx.Client(base_url=live.api_url, timeout=10.0) as c:
        assert c.get("/healthz").json() == {"status": "ok"}
        doc = c.get("/v1/openapi.json").json()
        paths = [p for p, ops in doc["paths"].items() if p.startswith("/v1/") and "get" in ops
                 and ops["get"].get("security", True)]
        if not paths:
            pytest.skip("no authenticated GET route in the live API yet")
        path = re.sub(r"\{[^}]+\}", "x1", paths[0])
        resp = c.get(path, headers={"Authorization": "Bearer psk_abcdefgh_" + "B" * 43})
        assert_problem(resp, "unauthenticated")
        assert re.fullmatch(r"[0-9a-f]{16}", resp.headers["x-request-id"])
        limit = load(live.config_path, env={}).api.max_body_bytes
        assert_problem(c.post("/v1/anything", content=b"x" * (limit + 1)), "payload-too-large")
