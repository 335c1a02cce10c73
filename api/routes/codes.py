"""Payment codes (issue 11): a one-time code for an active card, as `payswitch card code` makes one
(host.payment_codes.make_code). The code's digits are in the first answer only; the stored idempotent
answer has ``code: null`` and ``shown_once: true`` (only the code's keyed hash is in the database)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from pydantic import Field

from api.models import Model, Money, public_id
from api.routes.cards import CardPath, Writer, card_number, host_errors, load_card, minor_of, money, once
from api.state import State
from host import payment_codes
from host.business_day import business_today
from ops.localtime import iso_local
from ops.money import currency_numeric

router = APIRouter(tags=["payment codes"])


class CodeIn(Model):
    max_amount: Money | None = Field(default=None, description="the most the code may pay (default: no cap)")


class PaymentCode(Model):
    id: str = Field(examples=["code_88"])
    card_id: str = Field(examples=["card_504"])
    code: str | None = Field(
        description="the code's digits (a merchant scans or types them): in this first answer only",
        examples=["621234567890123456"],
    )
    shown_once: bool = Field(description="true when the code was shown already and is not in this answer")
    code_masked: str = Field(examples=["621234********3456"])
    created_at: str
    expires_at: str = Field(description="it pays once until then (RFC 3339)")
    max_amount: Money | None


@router.post(
    "/v1/cards/{card_id}/payment-codes",
    status_code=201,
    response_model=PaymentCode,
    summary="Make a payment code",
    responses={404: {"description": "no such card"}, 409: {"description": "the card is not active"}},
)
async def make_payment_code(
    card_id: CardPath, request: Request, state: State, caller: Writer, body: CodeIn | None = None
) -> PaymentCode:
    """A one-time code for an active card (physical or virtual), paying once within
    `host.payment_code_seconds` (POS entry mode 03)."""
    cid = await card_number(state, card_id)
    cap = None
    if body is not None and body.max_amount is not None:
        card = await load_card(state, cid)
        cap = minor_of(body.max_amount, currency_numeric(card.balance.currency), "max_amount")
    with host_errors():
        made = await payment_codes.make_code(
            state.pool,
            state.crypto,
            cid,
            seconds=state.config.host.payment_code_seconds,
            today=business_today(state.config),
            actor=caller.actor,
            max_amount=cap,
        )
    out = PaymentCode(
        id=public_id("code", made.id),
        card_id=public_id("card", cid),
        code=made.code,
        shown_once=False,
        code_masked=made.masked,
        created_at=iso_local(made.created_at, state.timezone) or "",
        expires_at=iso_local(made.expires_at, state.timezone) or "",
        max_amount=None if made.max_amount is None else money(made.max_amount, made.currency),
    )
    once(out, request)
    return out
