"""`payswitch api webhook add|list|remove`: a client's webhook subscriptions, from the operator's side.

Thin callers of api.webhooks (the same functions as ``/v1/webhooks``). ``add`` prints the signing secret
once: it is kept only sealed under the issuer's PII key, never shown again (``rotate-secret`` makes a new
one).
"""

from __future__ import annotations

from typing import Any

import click

from api import webhooks
from api.models import public_id
from host.cli import _run, _table
from host.keys import IssuerCrypto
from ops.cli import AppContext, pass_app
from ops.digits import row_number
from ops.localtime import format_local, iso_local
from ops.pgpool import PgPool


def _webhook_number(text: str) -> int:
    digits = text.removeprefix("whk_")
    if row_number(digits) is None:
        raise click.ClickException(f"{text!r} is not a webhook id (whk_3 or 3)")
    return int(digits)


def _row(row: dict[str, Any], tz: str, *, human: bool) -> dict[str, Any]:
    return {
        "id": public_id("webhook", row["id"]),
        "client": row["client"],
        "url": row["url"],
        "event_types": ",".join(row["event_types"]) if human else list(row["event_types"]),
        "state": row["state"],
        "created_at": format_local(row["created_at"], tz) if human else iso_local(row["created_at"], tz),
    }


@click.group()
def webhook() -> None:
    """Webhook subscriptions: add (prints the secret once), list, remove."""


@webhook.command("add")
@click.argument("client")
@click.argument("url")
@click.option("--events", "events", required=True,
              help="Event types, comma-separated, or * for every type.")
@pass_app
def webhook_add(app: AppContext, client: str, url: str, events: str) -> None:
    """Subscribe URL of API client CLIENT to event types; prints the signing secret once."""
    tz = app.config.clearing.timezone

    async def work(pool: PgPool, crypto: IssuerCrypto) -> tuple[dict[str, Any], str]:
        client_id = await pool.run(webhooks.client_by_name, client)
        return await webhooks.create_webhook(pool, crypto, client_id, url, events.split(","))

    try:
        row, secret = _run(app, work, hsm=True)
    except webhooks.WebhookError as exc:
        raise click.ClickException(str(exc)) from None
    shown = _row(row, tz, human=False) | {"secret": secret}
    types = ",".join(row["event_types"])
    app.emit(shown, f"webhook {shown['id']} for {row['client']}: {row['url']} ({types})\n"
             f"signing secret (shown once, keep it): {secret}")


@webhook.command("list")
@click.option("--client", default=None, help="Only this client's.")
@click.option("--all", "include_disabled", is_flag=True, help="Disabled ones too.")
@pass_app
def webhook_list(app: AppContext, client: str | None, include_disabled: bool) -> None:
    """Webhook subscriptions (without their secrets)."""
    tz = app.config.clearing.timezone

    async def work(pool: PgPool) -> list[dict[str, Any]]:
        client_id = None if client is None else await pool.run(webhooks.client_by_name, client)

        async def fetch(conn: Any) -> list[dict[str, Any]]:
            return await webhooks.list_webhooks(conn, client_id=client_id, limit=10_000,
                                                include_disabled=include_disabled)

        rows: list[dict[str, Any]] = await pool.run(fetch)
        return rows

    try:
        rows = _run(app, work)
    except webhooks.WebhookError as exc:
        raise click.ClickException(str(exc)) from None
    app.emit([_row(r, tz, human=False) for r in rows],
             _table([_row(r, tz, human=True) for r in rows],
                    ["id", "client", "state", "event_types", "url", "created_at"]))


@webhook.command("remove")
@click.argument("webhook_id")
@pass_app
def webhook_remove(app: AppContext, webhook_id: str) -> None:
    """Disable subscription WEBHOOK_ID (whk_3): nothing more is sent to it."""
    number = _webhook_number(webhook_id)
    tz = app.config.clearing.timezone

    async def work(pool: PgPool) -> dict[str, Any] | None:
        row: dict[str, Any] | None = await pool.run(webhooks.disable_webhook, number)
        return row

    row = _run(app, work)
    if row is None:
        raise click.ClickException(f"no webhook {public_id('webhook', number)}")
    app.emit(_row(row, tz, human=False), f"webhook {public_id('webhook', number)} disabled")
