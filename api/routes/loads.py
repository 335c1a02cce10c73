"""Loads: a top-up funded by the programme (scope ``loads:write``), with its funding reference.

Thin callers of api.payments: an ISO 8583 0200 / DE3 210000 from the API's own acquirer id, which the
host posts from the programme's funding account as ``card load`` does (specs/README.md, "API payments
and loads")."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Request
from pydantic import Field

from api import payments
from api.auth import Caller, require
from api.models import Model, Money, parse_id
from api.routes.payments import Payment, _ids, keeper, kept, out
from api.state import State

router = APIRouter(tags=["loads"])

Loader = Annotated[Caller, Depends(require("loads:write"))]
LoadId = Annotated[str, Path(pattern=r"^load_[0-9a-f]{16}$", description="a load's id (load_...)")]


class LoadIn(Model):
    card_id: str = Field(examples=["card_504"])
    amount: Money
    funding_reference: str = Field(pattern=r"^[A-Za-z0-9_.:/-]{1,28}$",
                                   description="where the programme's money came from (shown in the card's"
                                               " history)", examples=["wire-2026-12-02-0042"])
    metadata: dict[str, str] = Field(default_factory=dict, max_length=20)


@router.post("/v1/loads", status_code=201, response_model=Payment, summary="Load a card",
             responses={503: {"description": "the switch cannot be reached: nothing was sent"}})
async def create_load(body: LoadIn, request: Request, state: State, caller: Loader) -> Payment:
    """Credit a card from the programme's funding account. 201 approved or declined (over the product's
    or KYC tier's maximum balance: `decline` says so)."""
    card_id = parse_id("card", body.card_id)
    rid, resumed = _ids(request)
    outcome = await payments.load(state, caller, card_id=card_id, amount=body.amount.amount,
                                  currency=body.amount.currency, funding_reference=body.funding_reference,
                                  metadata=body.metadata, request_id=rid, resumed=resumed,
                                  keep=keeper(request, state))
    return out(state, kept(request, outcome))


@router.get("/v1/loads/{load_id}", response_model=Payment, summary="Get a load")
async def get_load(load_id: LoadId, state: State, caller: Loader) -> Payment:
    return out(state, await payments.get(state, caller, load_id, kinds=("load",)))
