"""Webhook subscriptions and the events they deliver (scope ``webhooks:write``).

Thin callers of api.webhooks. A client sees and changes only its own subscriptions; it sees every
event of the programme, or, with a merchant-bound key, only its merchant's. The signing secret is in
the answer that makes it (create, rotate-secret) and nowhere else: the stored idempotent answer has
``"secret": null``.
"""

from __future__ import annotations

from functools import partial
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Query, Request
from pydantic import Field

from api import webhooks
from api.auth import Caller, require
from api.models import Model, Page, parse_id, public_id
from api.problems import Problem, not_found
from api.state import ApiState, State
from ops.digits import row_number
from ops.localtime import iso_local
from ops.outbox import EVENT_TYPES

router = APIRouter(tags=["webhooks"])

Subscriber = Annotated[Caller, Depends(require("webhooks:write"))]
WebhookId = Annotated[str, Path(description="The subscription's id", examples=["whk_3"])]
EventId = Annotated[str, Path(description="The event's id", examples=["evt_1042"])]
_TYPES = ", ".join(EVENT_TYPES)


# -- models ---------------------------------------------------------------------------------------------
class WebhookCreate(Model):
    url: str = Field(max_length=webhooks.MAX_URL, description="Where events are POSTed (http or https)",
                     examples=["https://shop.example.com/payswitch/events"])
    event_types: list[Annotated[str, Field(max_length=64)]] = Field(min_length=1, max_length=32,
                                   description=f"`[\"*\"]` for every type, or some of: {_TYPES}",
                                   examples=[["authorization.approved", "card.state_changed"]])


class Webhook(Model):
    id: str = Field(examples=["whk_3"])
    url: str
    event_types: list[str]
    state: Literal["active", "disabled"]
    created_at: str | None = Field(description="RFC 3339 with the programme's offset")
    secret: str | None = Field(None, description="The signing secret `whsec_...`: only in the answer that "
                               "creates or rotates it (null in a replayed answer and everywhere else)")


class Delivery(Model):
    webhook_id: str
    state: Literal["pending", "delivered", "parked"]
    attempts: int
    next_at: str | None = Field(description="when a pending delivery is tried next")
    last_attempt_at: str | None
    last_status: int | None = Field(description="the HTTP status of the last attempt (none: no answer)")
    last_error: str | None = Field(description="why the last attempt failed (`HTTP 500`, `timeout`...)")
    delivered_at: str | None


class Event(Model):
    id: str = Field(examples=["evt_1042"], description="The same on every redelivery: de-duplicate by it")
    type: str
    created_at: str | None
    card_id: str | None
    merchant_id: str | None
    data: dict[str, Any]
    deliveries: list[Delivery] = Field(description="to this client's subscriptions")


class ResendRequest(Model):
    webhook_id: str | None = Field(None, description="Only to this subscription (else to each of yours "
                                   "that got it); it may be one that never got this event",
                                   examples=["whk_3"])


class Resent(Model):
    event_id: str
    webhook_ids: list[str] = Field(description="the subscriptions it is pending for again")


_NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"description": "No such subscription of this client"}}


# -- helpers --------------------------------------------------------------------------------------------
def _view(state: ApiState, row: dict[str, Any], secret: str | None = None) -> Webhook:
    return Webhook(id=public_id("webhook", row["id"]), url=row["url"], event_types=list(row["event_types"]),
                   state=row["state"], created_at=iso_local(row["created_at"], state.timezone), secret=secret)


def _event(state: ApiState, e: dict[str, Any]) -> Event:
    tz = state.timezone
    return Event(
        id=public_id("event", e["id"]), type=e["type"], created_at=iso_local(e["occurred_at"], tz),
        card_id=None if e["card_id"] is None else public_id("card", e["card_id"]),
        merchant_id=e["merchant_id"], data=e["payload"],
        deliveries=[Delivery(
            webhook_id=public_id("webhook", d["webhook_id"]), state=d["state"], attempts=d["attempts"],
            next_at=iso_local(d["next_at"], tz) if d["state"] == "pending" else None,
            last_attempt_at=iso_local(d["last_attempt_at"], tz), last_status=d["last_status"],
            last_error=d["last_error"], delivered_at=iso_local(d["delivered_at"], tz),
        ) for d in e["deliveries"]],
    )


def _invalid(field: str, message: str) -> Problem:
    return Problem("validation-error", f"{field}: {message}", errors=[{"field": field, "message": message}])


def _shown_once(request: Request, view: Webhook) -> Webhook:
    """The answer with its secret; the idempotency record keeps it without."""
    request.state.idem_store = view.model_dump() | {"secret": None}
    return view


async def _own(state: ApiState, caller: Caller, webhook_id: str) -> dict[str, Any]:
    row = await state.pool.run(partial(webhooks.get_webhook, client_id=caller.client_id),
                               parse_id("webhook", webhook_id))
    if row is None:
        raise not_found("webhook with that id")
    found: dict[str, Any] = row
    return found


# -- subscriptions --------------------------------------------------------------------------------------
@router.post("/v1/webhooks", status_code=201, response_model=Webhook, summary="Subscribe a URL to events")
async def create_webhook(body: WebhookCreate, request: Request, state: State, caller: Subscriber) -> Webhook:
    """Events written from now on, of the types asked, are POSTed to `url`, signed with the secret in
    this answer (shown once: keep it). See api/README.md "Webhooks" for the body, the signature and the
    retries."""
    try:
        row, secret = await webhooks.create_webhook(state.pool, state.crypto, caller.client_id, body.url,
                                                    body.event_types)
    except webhooks.WebhookError as exc:
        raise _invalid(exc.field or "body", str(exc)) from None
    return _shown_once(request, _view(state, row, secret))


@router.get("/v1/webhooks", response_model=Page[Webhook], summary="Your subscriptions")
async def list_webhooks(
    state: State,
    caller: Subscriber,
    cursor: Annotated[str | None, Query(pattern=r"^[0-9]{1,18}$",
                                        description="`next_cursor` of the previous page")] = None,
    limit: Annotated[int, Query(ge=1, le=100, description="Page size")] = 20,
) -> Page[Webhook]:
    rows = await state.pool.run(partial(webhooks.list_webhooks, client_id=caller.client_id,
                                        after=int(cursor) if cursor else None, limit=limit))
    return Page[Webhook](data=[_view(state, r) for r in rows],
                         next_cursor=str(rows[-1]["id"]) if len(rows) == limit else None)


@router.get("/v1/webhooks/{webhook_id}", response_model=Webhook, summary="A subscription",
            responses=_NOT_FOUND)
async def get_webhook(webhook_id: WebhookId, state: State, caller: Subscriber) -> Webhook:
    return _view(state, await _own(state, caller, webhook_id))


@router.delete("/v1/webhooks/{webhook_id}", response_model=Webhook, summary="Disable a subscription",
               responses=_NOT_FOUND)
async def disable_webhook(webhook_id: WebhookId, state: State, caller: Subscriber) -> Webhook:
    """Nothing more is sent to it (what is pending stays undelivered); it stays listed, disabled."""
    row = await state.pool.run(partial(webhooks.disable_webhook, client_id=caller.client_id),
                               parse_id("webhook", webhook_id))
    if row is None:
        raise not_found("webhook with that id")
    return _view(state, row)


@router.post("/v1/webhooks/{webhook_id}/rotate-secret", response_model=Webhook,
             summary="A new signing secret", responses=_NOT_FOUND | {409: {"description": "disabled"}})
async def rotate_secret(webhook_id: WebhookId, request: Request, state: State, caller: Subscriber) -> Webhook:
    """The old secret stops at once: deliveries from now on are signed with the new one (shown once)."""
    row = await _own(state, caller, webhook_id)
    if row["state"] != "active":
        raise Problem("conflict", "this subscription is disabled")
    done = await webhooks.rotate_secret(state.pool, state.crypto, row["id"], client_id=caller.client_id)
    if done is None:
        raise Problem("conflict", "this subscription is disabled")
    return _shown_once(request, _view(state, done[0], done[1]))


# -- events ---------------------------------------------------------------------------------------------
@router.get("/v1/events", response_model=Page[Event], summary="Events, newest first")
async def list_events(
    state: State,
    caller: Subscriber,
    type_: Annotated[str | None, Query(alias="type", max_length=64,
                                       description=f"Only this type: {_TYPES}")] = None,
    card: Annotated[str | None, Query(max_length=40, description="Only this card's", examples=["card_504"])]
    = None,
    cursor: Annotated[str | None, Query(pattern=r"^[0-9]{1,18}$",
                                        description="`next_cursor` of the previous page")] = None,
    limit: Annotated[int, Query(ge=1, le=100, description="Page size")] = 20,
) -> Page[Event]:
    """Every event of the programme (a merchant-bound key: its merchant's only), each with its
    deliveries to your subscriptions."""
    if type_ is not None and type_ not in EVENT_TYPES:
        raise _invalid("type", f"one of {_TYPES}")
    card_id: int | None = None
    if card is not None:
        digits = card.removeprefix("card_")
        if row_number(digits) is None:
            raise _invalid("card", "a card id such as card_504")
        card_id = int(digits)
    rows = await state.pool.run(partial(
        webhooks.list_events, client_id=caller.client_id, merchant_id=caller.merchant_id, event_type=type_,
        card_id=card_id, before=int(cursor) if cursor else None, limit=limit))
    return Page[Event](data=[_event(state, e) for e in rows],
                       next_cursor=str(rows[-1]["id"]) if len(rows) == limit else None)


@router.post("/v1/events/{event_id}/resend", response_model=Resent, summary="Deliver an event again",
             responses={404: {"description": "No such event, or no such subscription of this client"},
                        409: {"description": "The subscription is disabled"}})
async def resend_event(event_id: EventId, state: State, caller: Subscriber,
                       body: ResendRequest | None = None) -> Resent:
    """Its deliveries to your subscriptions (or to `webhook_id`) are pending again now, with a new retry
    window, whether they were parked or delivered. The event keeps its id: de-duplicate by it."""
    number = parse_id("event", event_id)
    hook = parse_id("webhook", body.webhook_id) if body is not None and body.webhook_id else None
    try:
        sent = await state.pool.run(partial(webhooks.resend, webhook_id=hook, client_id=caller.client_id,
                                            merchant_id=caller.merchant_id), number)
    except webhooks.WebhookError as exc:
        raise Problem("conflict" if exc.kind == "conflict" else "not-found", str(exc)) from None
    return Resent(event_id=public_id("event", number), webhook_ids=[public_id("webhook", w) for w in sent])
