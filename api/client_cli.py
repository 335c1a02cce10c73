"""`payswitch api client add|list|rotate|revoke`: the API's clients and their keys.

Thin callers of api.auth. A key is printed once (add, rotate) and never again: the database keeps only
its SHA-256, and `list` shows its public prefix. Mistakes are one line and exit 1.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import click

from api import auth
from api.auth import ClientError, NewKey
from host.cli import _run, _table
from ops.actor import cli_actor
from ops.cli import AppContext, pass_app
from ops.localtime import format_local, iso_local
from ops.pgpool import PgPool

T = TypeVar("T")

SHOWN_ONCE = ("This key is shown once: store it now (only its hash is kept; `api client rotate` makes a"
              " new one).")


def _call(app: AppContext, fn: Callable[..., Awaitable[T]], *args: Any, **kw: Any) -> T:
    async def work(pool: PgPool) -> T:
        async def on(conn: Any) -> T:
            return await fn(conn, *args, **kw)

        return await pool.run(on)

    try:
        return _run(app, work)
    except ClientError as exc:
        raise click.ClickException(str(exc)) from None


def _scopes(text: str) -> list[str]:
    return [s.strip() for s in text.split(",") if s.strip()]


def _emit_key(app: AppContext, made: NewKey, what: str, extra: dict[str, Any] | None = None) -> None:
    client = {"id": made.client_id, "name": made.name, "prefix": made.prefix, **(extra or {})}
    app.emit({"client": client, "key": made.key, "shown_once": True},
             f"{what} {made.name} (prefix {made.prefix})\n{made.key}\n{SHOWN_ONCE}")


@click.group()
def client() -> None:
    """API clients and their keys: add, list, rotate, revoke."""


@client.command("add")
@click.argument("name")
@click.option("--scopes", required=True, metavar="SCOPE[,SCOPE...]",
              help=f"What the key may do: {', '.join(auth.SCOPES)}.")
@click.option("--merchant", "merchant_id", default=None, metavar="MID",
              help="Bind the key to this merchant: it pays only there and reads only its merchant.")
@click.option("--rate", "rate", type=click.IntRange(1, 1_000_000), default=None,
              help="Requests a second for this client (default: api.rate_per_second).")
@pass_app
def client_add(app: AppContext, name: str, scopes: str, merchant_id: str | None, rate: int | None) -> None:
    """Add a client NAME; its key is printed once."""
    made = _call(app, auth.add_client, name, _scopes(scopes), cli_actor(), merchant_id=merchant_id,
                 rate_per_second=rate)
    _emit_key(app, made, "client added:", {"scopes": sorted(set(_scopes(scopes))), "merchant_id": merchant_id,
                                           "rate_per_second": rate})


@client.command("list")
@pass_app
def client_list(app: AppContext) -> None:
    """Every client: name, key prefix, scopes, merchant, rate, state and when (never a key or its hash)."""
    rows = _call(app, auth.list_clients)
    tz = app.config.clearing.timezone
    times = ("created_at", "rotated_at", "previous_expires_at", "revoked_at")
    data = [{**{k: v for k, v in r.items() if k not in times}, **{k: iso_local(r[k], tz) for k in times}}
            for r in rows]
    shown = [{
        "name": r["name"], "prefix": r["key_prefix"], "scopes": ",".join(r["scopes"]),
        "merchant": r["merchant_id"] or "-", "rate": r["rate_per_second"] or "default", "state": r["state"],
        "created": format_local(r["created_at"], tz),
        "rotated": format_local(r["rotated_at"], tz) if r["rotated_at"] else "-",
        "old key until": format_local(r["previous_expires_at"], tz) if r["previous_expires_at"] else "-",
        "revoked": format_local(r["revoked_at"], tz) if r["revoked_at"] else "-",
    } for r in rows]
    cols = ["name", "prefix", "scopes", "merchant", "rate", "state", "created", "rotated", "old key until",
            "revoked"]
    app.emit(data, _table(shown, cols))


@client.command("rotate")
@click.argument("name")
@click.option("--grace-hours", type=click.FloatRange(0, 720), default=0.0, show_default=True,
              help="Keep the previous key working this long (0: refused at once).")
@pass_app
def client_rotate(app: AppContext, name: str, grace_hours: float) -> None:
    """A new key for NAME, printed once; the previous one works GRACE_HOURS more."""
    made = _call(app, auth.rotate_client, name, grace_seconds=round(grace_hours * 3600))
    _emit_key(app, made, "key rotated:", {"grace_hours": grace_hours})


@client.command("revoke")
@click.argument("name")
@pass_app
def client_revoke(app: AppContext, name: str) -> None:
    """Refuse every key of NAME from now on (other API processes within a few seconds)."""
    client_id = _call(app, auth.revoke_client, name)
    app.emit({"client": {"id": client_id, "name": name, "state": "revoked"}},
             f"client {name} revoked: keys refused (by a running API within {auth.CACHE_SECONDS:g} s)")
