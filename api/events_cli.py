"""`payswitch api events list|resend`: the event outbox and its webhook deliveries.

Thin callers of api.webhooks. ``list`` shows events newest first, one line per delivery (an event no
subscription wanted has one line with no webhook), in the programme's local time. ``resend`` makes an
event's parked or delivered deliveries pending now, with a new retry window; the event keeps its id, so
receivers de-duplicate it.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import click

from api import webhooks
from api.models import public_id
from api.webhook_cli import _webhook_number
from host.cli import _run, _table
from ops.cli import AppContext, pass_app
from ops.digits import row_number
from ops.localtime import format_local, iso_local
from ops.outbox import EVENT_TYPES
from ops.pgpool import PgPool


@click.group()
def events() -> None:
    """Events (the outbox) and their webhook deliveries: list, resend."""


def _event_number(text: str) -> int:
    digits = text.removeprefix("evt_")
    if row_number(digits) is None:
        raise click.ClickException(f"{text!r} is not an event id (evt_1042 or 1042)")
    return int(digits)


def _json(e: dict[str, Any], tz: str) -> dict[str, Any]:
    return {
        "id": public_id("event", e["id"]), "type": e["type"], "created_at": iso_local(e["occurred_at"], tz),
        "card_id": e["card_id"], "merchant_id": e["merchant_id"], "data": e["payload"],
        "deliveries": [{
            "webhook_id": public_id("webhook", d["webhook_id"]), "state": d["state"],
            "attempts": d["attempts"],
            "next_at": iso_local(d["next_at"], tz) if d["state"] == "pending" else None,
            "last_attempt_at": iso_local(d["last_attempt_at"], tz), "last_status": d["last_status"],
            "last_error": d["last_error"], "delivered_at": iso_local(d["delivered_at"], tz),
        } for d in e["deliveries"]],
    }


def _lines(rows: list[dict[str, Any]], tz: str) -> list[dict[str, Any]]:
    out = []
    for e in rows:
        base = {"event": public_id("event", e["id"]), "type": e["type"], "card": e["card_id"] or "",
                "at": format_local(e["occurred_at"], tz)}
        if not e["deliveries"]:
            out.append(base | {"webhook": "-"})
        for d in e["deliveries"]:
            when = d["next_at"] if d["state"] == "pending" else d["delivered_at"] or d["last_attempt_at"]
            out.append(base | {
                "webhook": public_id("webhook", d["webhook_id"]), "state": d["state"],
                "attempts": d["attempts"],
                "status": d["last_status"] or "", "error": d["last_error"] or "",
                "next/last": format_local(when, tz),
            })
    return out


@events.command("list")
@click.option("--type", "event_type", type=click.Choice(list(EVENT_TYPES)), default=None,
              help="Only this type.")
@click.option("--state", type=click.Choice(["pending", "delivered", "parked"]), default=None,
              help="Only events with a delivery in this state.")
@click.option("--webhook", "webhook_id", default=None, help="Only deliveries to this subscription (whk_3).")
@click.option("--limit", type=click.IntRange(1, 10_000), default=50, show_default=True)
@pass_app
def events_list(app: AppContext, event_type: str | None, state: str | None, webhook_id: str | None,
                limit: int) -> None:
    """Events newest first, with their deliveries (state, attempts, last status or error, when next)."""
    tz = app.config.clearing.timezone
    hook = None if webhook_id is None else _webhook_number(webhook_id)

    async def work(pool: PgPool) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = await pool.run(partial(
            webhooks.list_events, event_type=event_type, state=state, webhook_id=hook, limit=limit))
        return rows

    rows = _run(app, work)
    app.emit([_json(e, tz) for e in rows],
             _table(_lines(rows, tz), ["event", "type", "card", "at", "webhook", "state", "attempts",
                                       "status", "error", "next/last"]))


@events.command("resend")
@click.argument("event_id")
@click.option("--webhook", "webhook_id", default=None,
              help="Only to this subscription (whk_3), even one that never got the event.")
@pass_app
def events_resend(app: AppContext, event_id: str, webhook_id: str | None) -> None:
    """Deliver EVENT_ID (evt_1042) again: its deliveries are pending now, whatever their state."""
    number = _event_number(event_id)
    hook = None if webhook_id is None else _webhook_number(webhook_id)

    async def work(pool: PgPool) -> list[int]:
        sent: list[int] = await pool.run(partial(webhooks.resend, webhook_id=hook), number)
        return sent

    try:
        sent = _run(app, work)
    except webhooks.WebhookError as exc:
        raise click.ClickException(str(exc)) from None
    ids = [public_id("webhook", w) for w in sent]
    shown = public_id("event", number)
    app.emit({"event_id": shown, "webhook_ids": ids},
             f"{shown} pending again for {', '.join(ids)}" if ids else
             f"{shown}: no active subscription has it (give --webhook to send it to one)")
