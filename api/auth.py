"""API clients, their secret keys and scopes: who is calling, and may they do this.

A key looks like ``psk_<prefix>_<secret>``: ``prefix`` (8 characters) names the key in lists and logs,
``secret`` is 32 random bytes. Only the SHA-256 of the whole key is stored (``api_clients.key_hash``),
so the database never holds a usable key; it is printed once by ``payswitch api client add|rotate``.
A request sends it as ``Authorization: Bearer psk_...``.

Scopes (``SCOPES``) say what a key may do; a route declares the scope it needs with
``Depends(require("cards:read"))``. A merchant-bound key (``--merchant MID``) pays only at its merchant
and reads only its merchant, stores and terminals. A rotation keeps the previous key working for a
grace period; a revoked client is refused at once in the process that revoked it and within
``CACHE_SECONDS`` in any other (the lookup is cached so a purchase costs no extra database round trip).
"""

from __future__ import annotations

import hashlib
import re
import secrets
import string
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from fastapi import Request

from api.problems import Problem
from api.state import ApiState
from host import directory
from host.catalog import CatalogError

SCOPES: dict[str, str] = {
    "cards:read": "read cards, balances, transactions, cardholders; merchants, stores, terminals",
    "cards:write": "issue, freeze, report lost, replace, unload, close cards; controls, PINs, payment codes",
    "cardholders:write": "register and update cardholders, submit KYC",
    "payments:write": "purchases, refunds and reversals",
    "loads:write": "top-ups funded by the programme",
    "webhooks:write": "subscribe URLs to events, list and resend events",
}
KEY_PATTERN = re.compile(r"^psk_([a-z2-7]{8})_([A-Za-z0-9_-]{43})$")
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
CACHE_SECONDS = 5.0
_PREFIX_ALPHABET = string.ascii_lowercase + "234567"  # base32, lower case


class ClientError(ValueError):
    """A client cannot be added, rotated or revoked as asked: str() says why, for the operator."""


@dataclass(frozen=True, slots=True)
class Caller:
    """The authenticated client of this request."""

    client_id: int
    name: str
    scopes: frozenset[str]
    merchant_id: str | None
    rate_per_second: int | None

    @property
    def actor(self) -> str:
        """How host records name this client (card_events, kyc_events; the audit trail)."""
        return f"api:{self.name}"


@dataclass(frozen=True, slots=True)
class NewKey:
    client_id: int
    name: str
    key: str  # shown once
    prefix: str


def make_key() -> tuple[str, str]:
    """A new key and its prefix."""
    prefix = "".join(secrets.choice(_PREFIX_ALPHABET) for _ in range(8))
    return f"psk_{prefix}_{secrets.token_urlsafe(32)}", prefix


def key_hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def check_scopes(scopes: list[str]) -> list[str]:
    unknown = [s for s in scopes if s not in SCOPES]
    if unknown:
        raise ClientError(f"unknown scope {', '.join(unknown)}; the scopes are {', '.join(SCOPES)}")
    if not scopes:
        raise ClientError(f"give at least one scope: {', '.join(SCOPES)}")
    return sorted(set(scopes))


async def add_client(
    conn: Any, name: str, scopes: list[str], actor: str, *, merchant_id: str | None = None,
    rate_per_second: int | None = None,
) -> NewKey:
    """Register a client; its key is returned once. The merchant, when given, must exist."""
    if not NAME_PATTERN.fullmatch(name):
        raise ClientError("a client name is 1-64 letters, digits, `.`, `_` or `-`, starting with a letter "
                          "or digit")
    wanted = check_scopes(scopes)
    if rate_per_second is not None and rate_per_second < 1:
        raise ClientError("a rate is at least 1 request a second")
    if merchant_id is not None:
        try:
            await directory.show_merchant(conn, merchant_id)
        except CatalogError:
            raise ClientError(f"no merchant {merchant_id} (`payswitch merchant list` shows them)") from None
    if await conn.fetchval("SELECT 1 FROM api_clients WHERE name = $1", name):
        raise ClientError(f"a client named {name} exists already (rotate its key: `api client rotate`)")
    key, prefix = make_key()
    client_id = await conn.fetchval(
        "INSERT INTO api_clients (name, scopes, merchant_id, key_prefix, key_hash, rate_per_second, actor)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
        name, wanted, merchant_id, prefix, key_hash(key), rate_per_second, actor,
    )
    return NewKey(int(client_id), name, key, prefix)


async def rotate_client(conn: Any, name: str, *, grace_seconds: int = 0) -> NewKey:
    """A new key for ``name``; the previous one keeps working ``grace_seconds`` (0: refused at once)."""
    async with conn.transaction():
        row = await conn.fetchrow(
            "SELECT id, state, key_hash FROM api_clients WHERE name = $1 FOR UPDATE", name
        )
        if row is None:
            raise ClientError(f"no client {name}")
        if row["state"] != "active":
            raise ClientError(f"client {name} is revoked; add a new client instead")
        key, prefix = make_key()
        await conn.execute(
            "UPDATE api_clients SET key_hash = $2, key_prefix = $3, rotated_at = now(),"
            " previous_hash = CASE WHEN $4 > 0 THEN key_hash END,"
            " previous_expires_at = CASE WHEN $4 > 0 THEN now() + make_interval(secs => $4) END"
            " WHERE id = $1",
            row["id"], key_hash(key), prefix, grace_seconds,
        )
    _CACHE.clear()
    return NewKey(int(row["id"]), name, key, prefix)


async def revoke_client(conn: Any, name: str) -> int:
    """Refuse every key of ``name`` from now on; its id."""
    client_id = await conn.fetchval(
        "UPDATE api_clients SET state = 'revoked', revoked_at = now(), previous_hash = NULL"
        " WHERE name = $1 AND state = 'active' RETURNING id", name,
    )
    if client_id is None:
        exists = await conn.fetchval("SELECT 1 FROM api_clients WHERE name = $1", name)
        raise ClientError(f"client {name} is revoked already" if exists else f"no client {name}")
    _CACHE.clear()
    return int(client_id)


async def list_clients(conn: Any) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        "SELECT id, name, scopes, merchant_id, key_prefix, state, rate_per_second, created_at, rotated_at,"
        " CASE WHEN previous_expires_at > now() THEN previous_expires_at END AS previous_expires_at,"
        " revoked_at, actor FROM api_clients ORDER BY id"
    )
    return [dict(r) for r in rows]


async def _lookup(conn: Any, digest: str) -> Any:
    return await conn.fetchrow(
        "SELECT id, name, scopes, merchant_id, rate_per_second FROM api_clients WHERE state = 'active'"
        " AND (key_hash = $1 OR (previous_hash = $1 AND previous_expires_at > now()))",
        digest,
    )


_CACHE: dict[str, tuple[float, Caller | None]] = {}


async def authenticate(state: ApiState, authorization: str | None) -> Caller:
    """The client whose key is in ``Authorization: Bearer ...``; a 401 problem otherwise."""
    if not authorization or not authorization.startswith("Bearer "):
        raise Problem("unauthenticated", "send the key as `Authorization: Bearer psk_...`",
                      headers={"WWW-Authenticate": "Bearer"})
    key = authorization[7:].strip()
    if not KEY_PATTERN.fullmatch(key):
        raise Problem("unauthenticated", "that is not an API key", headers={"WWW-Authenticate": "Bearer"})
    digest = key_hash(key)
    now = time.monotonic()
    hit = _CACHE.get(digest)
    if hit is None or hit[0] < now:
        row = await state.pool.run(_lookup, digest)
        caller = None if row is None else Caller(
            int(row["id"]), row["name"], frozenset(row["scopes"]), row["merchant_id"], row["rate_per_second"]
        )
        if len(_CACHE) > 10_000:
            _CACHE.clear()
        _CACHE[digest] = hit = (now + CACHE_SECONDS, caller)
    if hit[1] is None:
        raise Problem("unauthenticated", "unknown or revoked key", headers={"WWW-Authenticate": "Bearer"})
    return hit[1]


def require(*scopes: str) -> Callable[..., Awaitable[Caller]]:
    """A dependency: the caller, who must hold every one of ``scopes`` (403 ``scope-missing``)."""
    for s in scopes:
        if s not in SCOPES:
            raise ValueError(f"unknown scope {s!r}")

    async def dependency(request: Request) -> Caller:
        # Not Depends(get_state): FastAPI runs a plain-def dependency in a worker thread (a thread hop
        # per request on the purchase path).
        state: ApiState = request.app.state.api
        # The envelope (api.envelope) has authenticated the key and taken its rate-limit token already
        # when it let the request through with a caller; without the envelope this does both.
        known: Caller | None = getattr(request.state, "caller", None)
        caller = known or await authenticate(state, request.headers.get("authorization"))
        missing = [s for s in scopes if s not in caller.scopes]
        if missing:
            raise Problem("scope-missing", f"this needs the scope {', '.join(missing)}")
        request.state.caller = caller
        if state.limiter is not None and not getattr(request.state, "rate_checked", False):
            state.limiter.check(caller, state.config.api)
        return caller

    return dependency


def merchant_allowed(caller: Caller, merchant_id: str) -> None:
    """A merchant-bound key acts only for its merchant (403 ``merchant-mismatch``)."""
    if caller.merchant_id is not None and caller.merchant_id != merchant_id:
        raise Problem("merchant-mismatch", f"this key is bound to merchant {caller.merchant_id}")
