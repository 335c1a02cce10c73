"""Merchants, their stores and terminals: read-only, thin callers of host.directory.

A merchant is named by its merchant id (DE42, as on its receipts and in its key's binding). A
merchant-bound key sees its own merchant only: any other merchant id is a 404, as an unknown one is, so
a key cannot probe which merchants exist. Terminal keys (TMK and its check value) are never shown.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal, get_args

from fastapi import APIRouter, Depends, Path, Query
from pydantic import Field

from api.auth import Caller, require
from api.models import TEXT, Model, Money, Page
from api.problems import Problem
from api.state import ApiState, State
from host import directory
from host.catalog import CatalogError
from ops.localtime import iso_local
from ops.money import currency_alpha

router = APIRouter(prefix="/v1/merchants", tags=["merchants"])

MerchantState = Literal["active", "suspended", "closed"]
TerminalState = Literal["active", "disabled"]
assert set(get_args(MerchantState)) == set(directory.MERCHANT_STATES)
assert get_args(TerminalState) == directory.TERMINAL_STATES

Reader = Annotated[Caller, Depends(require("cards:read"))]
MerchantId = Annotated[str, Path(description="The merchant id (DE42)", examples=["898330160120001"])]
Cursor = Annotated[
    str | None, Query(pattern=r"^[0-9]{1,18}$", description="`next_cursor` of the previous page")
]
DE42 = re.compile(r"[ -~]{1,15}")
Limit = Annotated[int, Query(ge=1, le=100, description="Page size")]
_ERRORS: dict[int | str, dict[str, Any]] = {404: {"description": "No merchant with that id (for this key)"}}


class Merchant(Model):
    merchant_id: str = Field(description="DE42", examples=["898330160120001"])
    name: str = Field(examples=["Campus Canteen"])
    mcc: str = Field(description="Merchant category code", examples=["5814"])
    group: str | None = Field(None, description="The merchant group (closed-loop acceptance)")
    acquirer_id: str = Field(description="The institution that acquires it ('' for the programme's own)")
    currency: str = Field(description="ISO 4217 alphabetic", examples=["CNY"])
    fee_rate_bps: int = Field(ge=0, le=10000, description="Merchant fee, basis points of each purchase")
    state: MerchantState
    store_count: int = Field(ge=0)
    terminal_count: int = Field(ge=0)
    created_at: str = Field(description="RFC 3339", examples=["2026-12-02T15:04:05+08:00"])


class MerchantDetail(Merchant):
    store_codes: list[str] = Field(description="Its stores' codes")
    payable: Money = Field(description="What it is owed, not yet paid out")


class Store(Model):
    merchant_id: str = Field(examples=["898330160120001"])
    code: str = Field(examples=["S001"])
    name: str
    address: str
    terminal_count: int = Field(ge=0)
    created_at: str = Field(description="RFC 3339")


class Terminal(Model):
    terminal_id: str = Field(description="DE41", examples=["T0000001"])
    merchant_id: str = Field(examples=["898330160120001"])
    store: str | None = Field(None, description="The store's code, if it is in one")
    scheme: Literal["3des", "sm4"] = Field(description="Its key scheme")
    state: TerminalState
    created_at: str = Field(description="RFC 3339")


def _visible(caller: Caller, merchant_id: str) -> None:
    """A merchant-bound key sees its own merchant only: another is "not found", never "forbidden" (as a
    merchant id that cannot be one is)."""
    if not DE42.fullmatch(merchant_id) or (
        caller.merchant_id is not None and caller.merchant_id != merchant_id
    ):
        raise Problem("not-found", "no merchant with that id")


async def _merchant(state: ApiState, caller: Caller, merchant_id: str) -> dict[str, Any]:
    _visible(caller, merchant_id)
    try:
        found: dict[str, Any] = await state.pool.run(directory.show_merchant, merchant_id)
    except CatalogError:
        raise Problem("not-found", "no merchant with that id") from None
    return found


def _merchant_view(state: ApiState, r: dict[str, Any]) -> dict[str, Any]:
    return {
        "merchant_id": r["merchant_id"],
        "name": r["name"],
        "mcc": r["mcc"],
        "group": r["group_code"],
        "acquirer_id": r["acquirer_id"],
        "currency": currency_alpha(r["currency"]),
        "fee_rate_bps": r["fee_rate_bps"],
        "state": r["state"],
        "store_count": int(r["stores"]),
        "terminal_count": int(r["terminals"]),
        "created_at": iso_local(r["created_at"], state.timezone),
    }


def _bad_cursor(exc: Exception) -> Problem:
    return Problem(
        "validation-error",
        "cursor: give the next_cursor of the previous page",
        errors=[{"field": "cursor", "message": "give the next_cursor of the previous page"}],
    )


@router.get("", response_model=Page[Merchant], summary="List merchants")
async def list_merchants(
    state: State,
    caller: Reader,
    state_: Annotated[MerchantState | None, Query(alias="state", description="Merchant state")] = None,
    mcc: Annotated[str | None, Query(pattern=r"^[0-9]{4}$", description="Merchant category code")] = None,
    group: Annotated[
        str | None, Query(max_length=64, pattern=TEXT, description="Merchant group code")
    ] = None,
    name: Annotated[
        str | None, Query(max_length=100, pattern=TEXT, description="Part of the name (any case)")
    ] = None,
    cursor: Cursor = None,
    limit: Limit = 20,
) -> Page[Merchant]:
    """A programme key lists every merchant; a merchant-bound key its own only."""
    try:
        page = await state.pool.run(
            lambda conn: directory.list_merchants(
                conn,
                state=state_,
                mcc=mcc,
                group=group,
                name=name,
                merchant_id=caller.merchant_id,
                after=cursor,
                limit=limit,
            )
        )
    except CatalogError as exc:
        raise _bad_cursor(exc) from None
    return Page[Merchant](
        data=[Merchant(**_merchant_view(state, r)) for r in page.rows], next_cursor=page.next
    )


@router.get("/{merchant_id}", response_model=MerchantDetail, summary="Get a merchant", responses=_ERRORS)
async def get_merchant(merchant_id: MerchantId, state: State, caller: Reader) -> MerchantDetail:
    r = await _merchant(state, caller, merchant_id)
    return MerchantDetail(
        **_merchant_view(state, r),
        store_codes=list(r["store_codes"]),
        payable=Money(amount=int(r["payable"]), currency=currency_alpha(r["currency"])),
    )


@router.get(
    "/{merchant_id}/stores", response_model=Page[Store], summary="A merchant's stores", responses=_ERRORS
)
async def list_stores(
    merchant_id: MerchantId, state: State, caller: Reader, cursor: Cursor = None, limit: Limit = 20
) -> Page[Store]:
    await _merchant(state, caller, merchant_id)
    try:
        page = await state.pool.run(
            lambda conn: directory.list_stores(conn, merchant=merchant_id, after=cursor, limit=limit)
        )
    except CatalogError as exc:
        raise _bad_cursor(exc) from None
    tz = state.timezone
    return Page[Store](
        data=[
            Store(
                merchant_id=r["merchant_id"],
                code=r["code"],
                name=r["name"],
                address=r["address"],
                terminal_count=int(r["terminals"]),
                created_at=str(iso_local(r["created_at"], tz)),
            )
            for r in page.rows
        ],
        next_cursor=page.next,
    )


@router.get(
    "/{merchant_id}/terminals",
    response_model=Page[Terminal],
    summary="A merchant's terminals",
    responses=_ERRORS,
)
async def list_terminals(
    merchant_id: MerchantId,
    state: State,
    caller: Reader,
    store: Annotated[str | None, Query(max_length=32, pattern=TEXT, description="A store's code")] = None,
    state_: Annotated[TerminalState | None, Query(alias="state", description="Terminal state")] = None,
    cursor: Cursor = None,
    limit: Limit = 20,
) -> Page[Terminal]:
    await _merchant(state, caller, merchant_id)
    try:
        page = await state.pool.run(
            lambda conn: directory.list_terminals(
                conn, merchant=merchant_id, store=store, state=state_, after=cursor, limit=limit
            )
        )
    except CatalogError as exc:
        raise _bad_cursor(exc) from None
    tz = state.timezone
    return Page[Terminal](
        data=[
            Terminal(
                terminal_id=r["terminal_id"],
                merchant_id=r["merchant_id"],
                store=r["store"],
                scheme=r["scheme"],
                state=r["state"],
                created_at=str(iso_local(r["created_at"], tz)),
            )
            for r in page.rows
        ],
        next_cursor=page.next,
    )
