"""Cardholders: register, get, search, update, KYC submissions and events, close.

Thin callers of host.cardholders (and host.kyc through it). The ID number, phone and e-mail a request
carries are sealed by the HSM before they reach the database (host.pii) and never come back: every
answer, the create answer too, has the masked forms only. A search by phone, e-mail or ID number looks
the value up by its keyed hash (the envelope logs the path, never the query). Invalid values are a 422
naming the field, never quoting the value.

A merchant-bound key reads no cardholders (403): a web shop's key has no business with the programme's
people.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Annotated, Any, Literal, get_args

from fastapi import APIRouter, Depends, Path, Query
from pydantic import Field, field_validator, model_validator

from api.auth import Caller, require
from api.models import TEXT, Model, Money, Page, parse_id, public_id
from api.problems import Problem
from api.state import ApiState, State
from host import cardholders, kyc, pii
from host.cardholders import CardholderError
from host.catalog import CatalogError
from ops.localtime import iso_local
from ops.money import currency_alpha

router = APIRouter(prefix="/v1/cardholders", tags=["cardholders"])

IdType = Literal["resident_id", "passport", "hk_macau_permit", "taiwan_permit", "foreign_permanent", "other"]
Level = Literal["anonymous", "named", "verified"]
AmlStatus = Literal["clear", "review", "confirmed"]
CardholderState = Literal["active", "closed"]
assert get_args(IdType) == cardholders.ID_TYPES
assert get_args(Level) == kyc.LEVELS
assert get_args(AmlStatus) == cardholders.AML_STATUSES
assert get_args(CardholderState) == cardholders.STATES

CardholderId = Annotated[str, Path(description="The cardholder's id", examples=["ch_12"])]
Reader = Annotated[Caller, Depends(require("cards:read"))]
Writer = Annotated[Caller, Depends(require("cardholders:write"))]


# -- models ---------------------------------------------------------------------------------------------
def _pii_valid(kind: pii.Kind, value: str | None) -> str | None:
    """A field validator: host.pii's rule for the kind; the message says the rule, never the value."""
    if value is not None:
        try:
            pii.normalise(kind, value)
        except pii.PiiError as exc:
            raise ValueError(str(exc)) from None
    return value


class _Identity(Model):
    id_type: IdType | None = Field(None, description="The identity document's type (with `id_number`)")
    id_number: str | None = Field(
        None,
        max_length=64,
        pattern=TEXT,
        description="The document's number: sealed by the HSM, only its masked form is ever shown",
        examples=["110101199003071234"],
    )
    phone: str | None = Field(
        None,
        max_length=32,
        pattern=TEXT,
        description="Phone number (sealed; shown as 138****5678)",
        examples=["13800138000"],
    )
    email: str | None = Field(
        None,
        max_length=254,
        pattern=TEXT,
        description="E-mail address (sealed; shown as a***@example.com)",
        examples=["alice@example.com"],
    )
    birth_date: dt.date | None = Field(None, description="Date of birth", examples=["1990-03-07"])
    address: str | None = Field(
        None,
        max_length=500,
        pattern=TEXT,
        description="Postal address, one line",
        examples=["1 Zhongguancun St, Haidian, Beijing"],
    )

    @field_validator("id_number")
    @classmethod
    def _id_number(cls, v: str | None) -> str | None:
        return _pii_valid("id_number", v)

    @field_validator("phone")
    @classmethod
    def _phone(cls, v: str | None) -> str | None:
        return _pii_valid("phone", v)

    @field_validator("email")
    @classmethod
    def _email(cls, v: str | None) -> str | None:
        return _pii_valid("email", v)

    @field_validator("birth_date")
    @classmethod
    def _born(cls, v: dt.date | None) -> dt.date | None:
        try:
            cardholders.check_birth_date(v)
        except CardholderError as exc:
            raise ValueError(str(exc)) from None
        return v

    @model_validator(mode="after")
    def _id_pair(self) -> _Identity:
        if (self.id_type is None) != (self.id_number is None):
            raise ValueError("an ID is its type and its number: give both id_type and id_number")
        return self


def _name_valid(v: str | None) -> str | None:
    if v is not None:
        try:
            cardholders.clean_name(v)
        except CardholderError as exc:
            raise ValueError(str(exc)) from None
    return v


class CardholderCreate(_Identity):
    """A cardholder to register. With an ID (`id_type` and `id_number`) they are `named` at once, else
    `anonymous`; every registration is screened against the AML watch lists."""

    name: str = Field(
        max_length=400, pattern=TEXT, description="The name, as on the ID", examples=["Wang Fang"]
    )

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        _name_valid(v)
        return v


class CardholderUpdate(_Identity):
    """The fields to change (at least one); a field left out or null keeps its value. A name or birth
    date change is screened again; a new ID makes an anonymous or verified cardholder `named`."""

    name: str | None = Field(None, max_length=400, pattern=TEXT, description="The name, as on the ID")

    @field_validator("name")
    @classmethod
    def _name(cls, v: str | None) -> str | None:
        return _name_valid(v)

    @model_validator(mode="after")
    def _something(self) -> CardholderUpdate:
        if all(getattr(self, f) is None for f in type(self).model_fields):
            raise ValueError("nothing to change: give at least one field")
        return self


class Cardholder(Model):
    id: str = Field(description="The cardholder's id", examples=["ch_12"])
    name: str = Field(examples=["Wang Fang"])
    id_type: IdType | None = None
    id_number_masked: str | None = Field(None, examples=["**************1234"])
    phone_masked: str | None = Field(None, examples=["138****8000"])
    email_masked: str | None = Field(None, examples=["a***@example.com"])
    birth_date: dt.date | None = None
    address: str = ""
    kyc_level: Level = Field(description="The KYC level reached")
    tier: Level = Field(description="The level that decides card limits: anonymous while AML is not clear")
    aml_status: AmlStatus = Field(description="The AML screening's status")
    state: CardholderState
    card_count: int = Field(ge=0, description="Cards they own")
    created_at: str = Field(description="RFC 3339", examples=["2026-12-02T15:04:05+08:00"])
    updated_at: str = Field(description="RFC 3339", examples=["2026-12-02T15:04:05+08:00"])


class OwnedCard(Model):
    id: str = Field(examples=["card_504"])
    label: str | None = None
    pan_masked: str = Field(examples=["621234******1234"])
    state: str
    form: str = Field(description="physical or virtual")
    product: str
    balance: Money


class CardholderDetail(Cardholder):
    cards: list[OwnedCard] = Field(description="The cards they own, oldest first")


class KycEvent(Model):
    id: int
    at: str = Field(description="RFC 3339")
    decision: str = Field(description="registered, approved, rejected, downgraded, id_changed, closed")
    from_level: Level
    to_level: Level
    actor: str = Field(description="Who decided (`api:<client>` for an API client)")
    reason: str


class KycSubmissionIn(Model):
    """A KYC submission: the level asked for and its evidence, decided as the host decides an operator's.
    `verified` needs `document_check` (passed: approved; failed: rejected, the level stays); `named` from
    `anonymous` needs the ID (`id_type`, `id_number`: sealed, recorded first); a lower level is a
    downgrade."""

    level: Level = Field(description="The level asked for", examples=["verified"])
    document_check: Literal["passed", "failed"] | None = Field(
        None, description="The programme's check of the identity document (with level verified only)"
    )
    id_type: IdType | None = Field(None, description="The identity document checked (with `id_number`)")
    id_number: str | None = Field(
        None, max_length=64, pattern=TEXT, description="Its number (sealed, never shown)"
    )
    reason: str = Field(
        min_length=1,
        max_length=500,
        pattern=TEXT,
        description="Why: kept with the decision",
        examples=["passport checked in branch"],
    )

    @field_validator("id_number")
    @classmethod
    def _id_number(cls, v: str | None) -> str | None:
        return _pii_valid("id_number", v)

    @field_validator("reason")
    @classmethod
    def _reason(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("say why (it is kept with the decision)")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> KycSubmissionIn:
        if (self.id_type is None) != (self.id_number is None):
            raise ValueError("an ID is its type and its number: give both id_type and id_number")
        if (self.level == "verified") != (self.document_check is not None):
            raise ValueError("document_check goes with level verified, and level verified needs it")
        return self


class KycDecision(Model):
    cardholder_id: str = Field(examples=["ch_12"])
    decision: str = Field(description="What was recorded: approved, rejected, downgraded or id_changed")
    from_level: Level = Field(description="The level before the submission")
    kyc_level: Level = Field(description="The level now")
    event_id: int
    at: str = Field(description="RFC 3339")
    actor: str
    reason: str


class CloseRequest(Model):
    reason: str = Field("", max_length=500, pattern=TEXT, description="Why (kept with the KYC events)")


# -- helpers --------------------------------------------------------------------------------------------
_CLI_HINT = re.compile(r"\s*\(`[^`]*`[^)]*\)")


def _detail(exc: Exception) -> str:
    """A host refusal's line without the command-line hints it carries for operators."""
    return _CLI_HINT.sub("", str(exc))


def _conflict(exc: Exception) -> Problem:
    return Problem("conflict", _detail(exc))


def _no_merchant_key(caller: Caller) -> None:
    if caller.merchant_id is not None:
        raise Problem("forbidden", "a merchant-bound key reads no cardholders")


async def _existing(state: ApiState, text: str) -> int:
    """The cardholder's number from its id; 404 when there is none."""
    cid = parse_id("cardholder", text)
    try:
        return await state.pool.run(cardholders.resolve_cardholder, str(cid))
    except CardholderError:
        raise Problem("not-found", "no cardholder with that id") from None


def _view(state: ApiState, r: dict[str, Any]) -> dict[str, Any]:
    tz = state.timezone
    return {
        "id": public_id("cardholder", int(r["id"])),
        **{k: r[k] for k in cardholders.SHOWN},
        "birth_date": r["birth_date"],
        "address": r["address"] or "",
        "card_count": int(r["cards"]),
        "created_at": iso_local(r["created_at"], tz),
        "updated_at": iso_local(r["updated_at"], tz),
    }


def _event(state: ApiState, e: dict[str, Any]) -> KycEvent:
    return KycEvent(
        id=int(e["id"]),
        at=str(iso_local(e["at"], state.timezone)),
        decision=e["decision"],
        from_level=e["from_level"],
        to_level=e["to_level"],
        actor=e["actor"],
        reason=e["reason"] or "",
    )


async def _detail_of(state: ApiState, cid: int) -> CardholderDetail:
    r = await state.pool.run(cardholders.show_cardholder, cid)
    cards = [
        OwnedCard(
            id=public_id("card", int(c["id"])),
            label=c["label"],
            pan_masked=c["pan_masked"],
            state=c["state"],
            form=c["form"],
            product=c["product"],
            balance=Money(amount=int(c["balance"]), currency=currency_alpha(c["currency"])),
        )
        for c in r["owned_cards"]
    ]
    return CardholderDetail(**_view(state, r), cards=cards)


async def _one(state: ApiState, cid: int) -> Cardholder:
    full = await _detail_of(state, cid)
    return Cardholder(**full.model_dump(exclude={"cards"}))


_ERRORS: dict[int | str, dict[str, Any]] = {404: {"description": "No cardholder with that id"}}


# -- routes ---------------------------------------------------------------------------------------------
@router.post(
    "",
    status_code=201,
    response_model=Cardholder,
    summary="Register a cardholder",
    responses={409: {"description": "A live cardholder holds that ID number already"}},
)
async def create_cardholder(body: CardholderCreate, state: State, caller: Writer) -> Cardholder:
    _no_merchant_key(caller)
    new = cardholders.NewCardholder(
        name=body.name,
        id_type=body.id_type,
        id_number=body.id_number,
        phone=body.phone,
        email=body.email,
        birth_date=body.birth_date,
        address=body.address or "",
    )
    try:
        done = await cardholders.register(
            state.pool, state.crypto, new, caller.actor, aml_threshold=state.config.aml.threshold
        )
    except CardholderError as exc:
        raise _conflict(exc) from None
    return await _one(state, done.cardholder_id)


@router.get("", response_model=Page[Cardholder], summary="Search cardholders")
async def search_cardholders(
    state: State,
    caller: Reader,
    name: Annotated[
        str | None, Query(max_length=200, pattern=TEXT, description="Part of the name (any case)")
    ] = None,
    phone: Annotated[
        str | None, Query(max_length=32, pattern=TEXT, description="A phone number (exact)")
    ] = None,
    email: Annotated[
        str | None, Query(max_length=254, pattern=TEXT, description="An e-mail address (exact)")
    ] = None,
    id_number: Annotated[
        str | None, Query(max_length=64, pattern=TEXT, description="An ID number (exact)")
    ] = None,
    kyc_level: Annotated[Level | None, Query(description="KYC level")] = None,
    aml_status: Annotated[AmlStatus | None, Query(description="AML status")] = None,
    state_: Annotated[CardholderState | None, Query(alias="state", description="active or closed")] = None,
    cursor: Annotated[
        str | None, Query(pattern=r"^[0-9]{1,18}$", description="`next_cursor` of the previous page")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=100, description="Page size")] = 20,
) -> Page[Cardholder]:
    """Every filter given must match. Phone, e-mail and ID number are looked up by their keyed hash
    (exact, after normalisation: `+86 138-0013-8000` finds `13800138000`)."""
    _no_merchant_key(caller)
    searched: tuple[tuple[pii.Kind, str | None], ...] = (
        ("phone", phone),
        ("email", email),
        ("id_number", id_number),
    )
    for field, value in searched:
        try:
            _pii_valid(field, value)
        except ValueError as exc:
            raise Problem(
                "validation-error", f"{field}: {exc}", errors=[{"field": field, "message": str(exc)}]
            ) from None
    if name is not None and not cardholders.name_key(name):
        raise Problem(
            "validation-error",
            "name: give part of the name",
            errors=[{"field": "name", "message": "give part of the name"}],
        )
    flt = cardholders.Filter(name, phone, email, id_number, kyc_level, aml_status, state_)
    try:
        page = await cardholders.list_cardholders(state.pool, state.crypto, flt, after=cursor, limit=limit)
    except CatalogError as exc:
        raise Problem("validation-error", _detail(exc)) from None
    return Page[Cardholder](data=[Cardholder(**_view(state, r)) for r in page.rows], next_cursor=page.next)


@router.get(
    "/{cardholder_id}", response_model=CardholderDetail, summary="Get a cardholder", responses=_ERRORS
)
async def get_cardholder(cardholder_id: CardholderId, state: State, caller: Reader) -> CardholderDetail:
    """The cardholder (personal data masked) and the cards they own."""
    _no_merchant_key(caller)
    return await _detail_of(state, await _existing(state, cardholder_id))


@router.patch(
    "/{cardholder_id}",
    response_model=Cardholder,
    summary="Update a cardholder",
    responses={**_ERRORS, 409: {"description": "Closed, or the ID number is another's"}},
)
async def update_cardholder(
    cardholder_id: CardholderId, body: CardholderUpdate, state: State, caller: Writer
) -> Cardholder:
    _no_merchant_key(caller)
    cid = await _existing(state, cardholder_id)
    changes = cardholders.Changes(
        body.name, body.id_type, body.id_number, body.phone, body.email, body.birth_date, body.address
    )
    try:
        await cardholders.update_cardholder(
            state.pool, state.crypto, cid, changes, caller.actor, aml_threshold=state.config.aml.threshold
        )
    except CardholderError as exc:
        raise _conflict(exc) from None
    return await _one(state, cid)


@router.post(
    "/{cardholder_id}/kyc",
    response_model=KycDecision,
    summary="Submit KYC",
    responses={**_ERRORS, 409: {"description": "The cardholder's state or level refuses it"}},
)
async def submit_kyc(
    cardholder_id: CardholderId, body: KycSubmissionIn, state: State, caller: Writer
) -> KycDecision:
    """Decided at once; a card's limits follow from its next request."""
    _no_merchant_key(caller)
    cid = await _existing(state, cardholder_id)
    sub = cardholders.KycSubmission(
        level=body.level,
        reason=body.reason,
        document_check=body.document_check,
        id_type=body.id_type,
        id_number=body.id_number,
    )
    try:
        d = await cardholders.submit_kyc(
            state.pool, state.crypto, cid, sub, caller.actor, aml_threshold=state.config.aml.threshold
        )
    except CardholderError as exc:
        raise _conflict(exc) from None
    return KycDecision.model_validate(
        {
            "cardholder_id": public_id("cardholder", cid),
            "decision": d.decision,
            "from_level": d.from_level,
            "kyc_level": d.to_level,
            "event_id": d.event_id,
            "at": iso_local(d.at, state.timezone),
            "actor": d.actor,
            "reason": d.reason,
        }
    )


@router.get(
    "/{cardholder_id}/kyc",
    response_model=Page[KycEvent],
    summary="A cardholder's KYC events",
    responses=_ERRORS,
)
async def kyc_events(cardholder_id: CardholderId, state: State, caller: Reader) -> Page[KycEvent]:
    """Every KYC event, oldest first: registration, decisions, ID changes, the closing (one page)."""
    _no_merchant_key(caller)
    r = await state.pool.run(cardholders.show_cardholder, await _existing(state, cardholder_id))
    return Page[KycEvent](data=[_event(state, e) for e in r["kyc_events"]], next_cursor=None)


@router.post(
    "/{cardholder_id}/close",
    response_model=Cardholder,
    summary="Close a cardholder",
    responses={**_ERRORS, 409: {"description": "Closed already, or owns cards not closed"}},
)
async def close_cardholder(
    cardholder_id: CardholderId, state: State, caller: Writer, body: CloseRequest | None = None
) -> Cardholder:
    """For good: the ID number is free again. Refused while they own a card that is not closed."""
    _no_merchant_key(caller)
    cid = await _existing(state, cardholder_id)
    reason = body.reason if body is not None else ""
    try:
        await state.pool.run(cardholders.close_cardholder, cid, caller.actor, reason)
    except CardholderError as exc:
        raise _conflict(exc) from None
    return await _one(state, cid)
