"""Payments: purchase by payment code or by card (card not present), refund, reversal, get, list.

Thin callers of api.payments (api/README.md, "Payments, refunds, reversals, loads"). A payment is an ISO
8583 request to the switch; its answer is the resource, 201 whether approved or declined.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request
from pydantic import Field

from api import payments
from api.auth import Caller, merchant_allowed, require
from api.models import Model, Money, Page
from api.state import ApiState, State

router = APIRouter(tags=["payments"])

Payer = Annotated[Caller, Depends(require("payments:write"))]
PaymentId = Annotated[str, Path(pattern=r"^pay_[0-9a-f]{16}$", description="a payment's id (pay_...)")]


class CardIn(Model):
    number: str = Field(pattern=r"^[0-9]{13,19}$", description="the card number (PAN)")
    expiry: str = Field(pattern=r"^[0-9]{4}$", description="YYMM, as printed MM/YY", examples=["3012"])


class PaymentIn(Model):
    amount: Money
    merchant_id: str = Field(pattern=r"^[0-9A-Za-z]{1,15}$", examples=["898330160120001"])
    terminal_id: str | None = Field(default=None, pattern=r"^[0-9A-Za-z]{1,8}$",
                                    description="the merchant's terminal to act as (default: its first active"
                                                " one)")
    payment_code: str | None = Field(default=None, pattern=r"^[0-9]{18}$",
                                     description="a payment code from the cardholder's app (entry mode 032)")
    card: CardIn | None = Field(default=None,
                                description="card not present (entry mode 812): number and expiry")
    reference: str | None = Field(default=None, max_length=64, description="your reference, kept with it")
    metadata: dict[str, str] = Field(default_factory=dict, max_length=20)


class RefundIn(Model):
    amount: Money | None = Field(default=None, description="default: all that is left to refund")
    reference: str | None = Field(default=None, max_length=64)
    metadata: dict[str, str] = Field(default_factory=dict, max_length=20)


class CardOut(Model):
    id: str = Field(examples=["card_504"])
    number: str = Field(description="masked: first 6 and last 4", examples=["621234*********4567"])


class Decline(Model):
    code: str = Field(description="the ISO 8583 response code", examples=["51"])
    reason: str = Field(description="why, in words", examples=["insufficient funds"])


class Payment(Model):
    id: str = Field(examples=["pay_0f3a9c1d2b4e5f60"])
    type: str = Field(description="purchase | refund | load")
    status: str = Field(description="approved | declined | reversed | failed")
    amount: Money
    card: CardOut | None
    merchant_id: str
    terminal_id: str
    rrn: str = Field(description="retrieval reference number (DE37)")
    auth_code: str | None = Field(description="the issuer's approval code (DE38)")
    response_code: str | None
    decline: Decline | None
    balance: Money | None = Field(description="the card's available balance after it, when the answer has it")
    original_id: str | None = Field(description="a refund's payment")
    reference: str | None
    metadata: dict[str, Any]
    created_at: str


def _ids(request: Request) -> tuple[int | None, bool]:
    st = request.state
    return getattr(st, "idem_request_id", None), bool(getattr(st, "idem_resumed", False))


def keeper(request: Request, state: ApiState) -> payments.Keep | None:
    """The idempotency record's answer (201 and the resource), committed with the switch's answer."""
    request_id = getattr(request.state, "idem_request_id", None)
    if request_id is None:
        return None
    return payments.Keep(request_id, 201,
                         lambda outcome: json.dumps(out(state, outcome).model_dump(mode="json")))


def kept(request: Request, outcome: payments.Outcome) -> payments.Outcome:
    """Tell the envelope its record is finished already (only once committed: else it finishes it)."""
    if outcome.kept:
        request.state.idem_finished = True
    return outcome


def out(state: State, outcome: payments.Outcome | dict[str, Any]) -> Payment:
    if isinstance(outcome, payments.Outcome):
        doc = payments.resource(outcome.row, state.timezone)
        doc["balance"] = outcome.balance
    else:
        doc = payments.resource(outcome, state.timezone)
    return Payment.model_validate(doc)


@router.post("/v1/payments", status_code=201, response_model=Payment, summary="Make a payment",
             responses={403: {"description": "a merchant-bound key at another merchant"},
                        503: {"description": "the switch cannot be reached: nothing was sent"}})
async def create_payment(body: PaymentIn, request: Request, state: State, caller: Payer) -> Payment:
    """A purchase by payment code (from the cardholder's app) or by card number and expiry (card not
    present), at the merchant's terminal. 201 approved or declined (`decline` says why)."""
    merchant_allowed(caller, body.merchant_id)
    rid, resumed = _ids(request)
    outcome = await payments.purchase(
        state, caller, amount=body.amount.amount, currency=body.amount.currency, merchant_id=body.merchant_id,
        terminal_id=body.terminal_id, payment_code=body.payment_code,
        card_number=body.card.number if body.card else None, expiry=body.card.expiry if body.card else None,
        reference=body.reference, metadata=body.metadata, request_id=rid, resumed=resumed,
        keep=keeper(request, state))
    return out(state, kept(request, outcome))


@router.get("/v1/payments", response_model=Page[Payment], summary="List your payments")
async def list_payments(state: State, caller: Payer, cursor: str | None = Query(default=None, max_length=200),
                        limit: int = Query(default=20, ge=1, le=100)) -> Page[Payment]:
    """The payments and refunds this client made, newest first."""
    rows, nxt = await payments.list_own(state, caller, kinds=("purchase", "refund"), cursor=cursor,
                                        limit=limit)
    return Page[Payment](data=[out(state, r) for r in rows], next_cursor=nxt)


@router.get("/v1/payments/{payment_id}", response_model=Payment, summary="Get a payment")
async def get_payment(payment_id: PaymentId, state: State, caller: Payer) -> Payment:
    return out(state, await payments.get(state, caller, payment_id, kinds=("purchase", "refund")))


@router.post("/v1/payments/{payment_id}/refund", status_code=201, response_model=Payment,
             summary="Refund a payment", responses={409: {"description": "more than is left to refund"}})
async def refund_payment(payment_id: PaymentId, request: Request, state: State, caller: Payer,
                         body: RefundIn | None = None) -> Payment:
    """A refund (0220) of all or part of an approved purchase: the refund's own resource."""
    body = body or RefundIn()
    rid, resumed = _ids(request)
    outcome = await payments.refund(
        state, caller, payment_id, amount=body.amount.amount if body.amount else None,
        currency=body.amount.currency if body.amount else None, reference=body.reference,
        metadata=body.metadata, request_id=rid, resumed=resumed, keep=keeper(request, state))
    return out(state, kept(request, outcome))


@router.post("/v1/payments/{payment_id}/reversal", status_code=201, response_model=Payment,
             summary="Reverse a payment")
async def reverse_payment(payment_id: PaymentId, request: Request, state: State, caller: Payer) -> Payment:
    """A reversal (0400) of a purchase or refund: undone at the issuer; the payment, status `reversed`."""
    rid, resumed = _ids(request)
    return out(state, await payments.reversal(state, caller, payment_id, request_id=rid, resumed=resumed))
