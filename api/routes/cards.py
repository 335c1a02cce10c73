"""Cards, balances, transactions, spend controls and PINs: thin callers of the host's card functions.

Every route resolves ``card_<n>`` to the host's card id and calls the function the `payswitch card ...`
command calls (host.issue, host.catalog, host.admin, host.replace, host.controls, host.pins), with the
API client as the actor of what they record (``caller.actor``). Reads need ``cards:read``, changes
``cards:write``. A host refusal (a card in the wrong state, money still on it) is a 409 ``conflict``
whose ``detail`` is the host's reason in words; an unknown card is a 404.

A new card's PAN (issue, replace) is in the first answer only: the stored idempotent answer
(``request.state.idem_store``) has ``pan: null`` and ``shown_once: true``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from pydantic import AwareDatetime, Field

from api.auth import Caller, require
from api.models import TEXT, Model, Money, Page, parse_id, public_id
from api.problems import Problem
from api.state import ApiState, State
from host import cardholders, catalog, controls, directory, rules
from host.admin import admin_unload, close_card
from host.business_day import business_date_now, business_today
from host.catalog import CatalogError
from host.controls import Changes, ControlsError, GroupCap
from host.issue import issue_cards
from host.kyc import KycError
from host.model import Txn
from host.pins import PinError, issuer_key, reset_pin, set_pin_sm2
from host.replace import replace_card
from hsm_sim.client import HsmCommandError
from ops.digits import row_number
from ops.localtime import iso_local
from ops.money import MoneyError, currency_alpha, currency_numeric

router = APIRouter(tags=["cards"])

Reader = Annotated[Caller, Depends(require("cards:read"))]
Writer = Annotated[Caller, Depends(require("cards:write"))]
CardPath = Annotated[str, Field(description="the card's id", examples=["card_504"])]

# the history's types: the host's transactions, a hold's expiry and a replacement's incoming balance
HISTORY_TYPES = tuple(t.value for t in Txn)
NOT_FOUND_PREFIXES = ("no card", "no cardholder", "no product")


# -- errors ----------------------------------------------------------------------------------------
@contextmanager
def host_errors() -> Iterator[None]:
    """A host refusal as a problem: an unknown card, cardholder or product 404, a control or amount
    that is not one 422, any other refusal (a state, money on the card) 409 with the host's words."""
    try:
        yield
    except (ControlsError, MoneyError) as exc:
        raise Problem("validation-error", str(exc)) from None
    except (CatalogError, KycError) as exc:
        text = str(exc)
        if text.startswith(NOT_FOUND_PREFIXES):
            raise Problem("not-found", text.split(" (")[0]) from None
        if text.startswith("no merchant group") or "cursor" in text:
            raise Problem("validation-error", text) from None
        raise Problem("conflict", text) from None


async def card_number(state: ApiState, text: str) -> int:
    """The host's id of ``card_<n>``; 404 when there is no such card."""
    cid = parse_id("card", text)
    if await state.pool.run(_shown, cid) is None:
        raise Problem("not-found", f"no card {public_id('card', cid)}")
    return cid


async def _shown(conn: Any, card_id: int) -> dict[str, Any] | None:
    try:
        return await directory.show_card(conn, card_id)
    except CatalogError:
        return None


# -- shapes ----------------------------------------------------------------------------------------
def money(minor: int | None, currency: str) -> Money:
    """Minor units of the host's ISO 4217 numeric currency as Money."""
    return Money(amount=int(minor or 0), currency=currency_alpha(currency))


def minor_of(m: Money, currency: str, what: str, *, positive: bool = True) -> int:
    """A request's Money in the card's currency (422 otherwise)."""
    try:
        numeric = currency_numeric(m.currency)
    except MoneyError:
        numeric = ""  # a well-formed code no card is in: the same answer as any other currency
    if numeric != currency:
        raise Problem("validation-error", f"{what}: the card's currency is {currency_alpha(currency)}")
    if positive and m.amount <= 0:
        raise Problem("validation-error", f"{what}: the amount must be more than zero")
    return m.amount


class CardOut(Model):
    id: str = Field(description="the card's id", examples=["card_504"])
    number_masked: str = Field(
        description="the PAN, first 6 and last 4 digits", examples=["621234******1234"]
    )
    last4: str = Field(examples=["1234"])
    product: str = Field(description="the product's code", examples=["CAMPUS"])
    form: Literal["physical", "virtual"] = Field(description="a virtual card pays by payment code")
    state: str = Field(
        description="inventory, active, frozen, lost, stolen, expired or closed", examples=["active"]
    )
    cardholder_id: str | None = Field(description="its owner; null for an anonymous card", examples=["ch_12"])
    label: str | None = Field(description="the card's name, if it has one", examples=["alice"])
    expiry: str = Field(description="YYMM", examples=["2912"])
    balance: Money = Field(description="the posted (ledger) balance")
    available: Money = Field(description="the balance less what pending pre-authorizations hold")
    kyc_tier: str = Field(description="the KYC tier that caps the balance: anonymous, named or verified")
    tier_max_balance: Money = Field(description="the most the card may hold at its tier (and product)")
    created_at: str = Field(
        description="when it was issued (RFC 3339)", examples=["2026-12-02T15:04:05+08:00"]
    )
    updated_at: str = Field(description="its last change (RFC 3339)")


def card_out(r: dict[str, Any], tz: str) -> CardOut:
    """A host card row (directory.show_card or directory.list_cards) as the API shows it."""
    cur = r["currency"]
    cap = r["max_balance"] if r["tier_max_balance"] is None else min(r["tier_max_balance"], r["max_balance"])
    return CardOut(
        id=public_id("card", r["id"]),
        number_masked=r["pan_masked"],
        last4=r["pan_masked"][-4:],
        product=r["product"],
        form=r["form"],
        state=r["state"],
        cardholder_id=public_id("cardholder", r["cardholder_id"]) if r["cardholder_id"] else None,
        label=r["label"],
        expiry=r["expiry"],
        balance=money(r["balance"], cur),
        available=money(r["available"], cur),
        kyc_tier=r["tier"],
        tier_max_balance=money(cap, cur),
        created_at=iso_local(r["issued_at"], tz) or "",
        updated_at=iso_local(r["updated_at"], tz) or "",
    )


async def load_card(state: ApiState, card_id: int) -> CardOut:
    with host_errors():
        row = await state.pool.run(directory.show_card, card_id)
    return card_out(row, state.timezone)


class StateChange(Model):
    action: str = Field(description="what was done", examples=["freeze"])
    from_state: str = Field(examples=["active"])
    to_state: str = Field(examples=["frozen"])


class CardChanged(Model):
    card: CardOut
    change: StateChange


# -- issue, get, list ------------------------------------------------------------------------------
class CardIssue(Model):
    product: str = Field(min_length=1, max_length=32, pattern=TEXT, description="the product's code",
                         examples=["CAMPUS"])
    form: Literal["physical", "virtual"] | None = Field(
        default=None, description="default: the product's form; a virtual card needs a cardholder"
    )
    cardholder_id: str | None = Field(
        default=None, description="issue it to this cardholder", examples=["ch_12"]
    )
    label: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z0-9_.-]{1,32}$",
        description="a name for the card (not all digits)",
        examples=["kiosk-7"],
    )
    activate: bool = Field(default=False, description="a physical card: active at once (else inventory)")


class CardIssued(CardOut):
    pan: str | None = Field(
        description="the full card number: in this first answer only (null in a replay)",
        examples=["6212341234567890123"],
    )
    shown_once: bool = Field(description="true when the PAN was shown already and is not in this answer")
    pin_mailer: str | None = Field(description="a physical card: the PIN-mailer file it was written to")


def once(out: Model, request: Request) -> None:
    """Store the answer without its one-time secrets (the envelope keeps this instead of the body)."""
    stored = out.model_dump(mode="json")
    for key in ("pan", "code"):
        if key in stored:
            stored[key] = None
    stored["shown_once"] = True
    request.state.idem_store = stored


@router.post(
    "/v1/cards",
    status_code=201,
    response_model=CardIssued,
    summary="Issue a card",
    responses={
        404: {"description": "no such product or cardholder"},
        409: {"description": "the cardholder cannot own this product's cards"},
    },
)
async def issue_card(body: CardIssue, request: Request, state: State, caller: Writer) -> CardIssued:
    """A physical card (into inventory unless `activate`, its PIN mailer written where `card issue`
    writes it) or a virtual one (issued to `cardholder_id`, active at once, no mailer). The PAN is in
    this answer only."""
    if body.label is not None and (problem := directory.label_problem(body.label)):
        raise Problem("validation-error", problem)
    with host_errors():
        product = await state.pool.run(catalog.product, body.product)
        form = body.form or product["form"]
        if form == "virtual" and body.cardholder_id is None:
            raise Problem("validation-error", "a virtual card is issued to a cardholder: give cardholder_id")
        if body.label is not None and await state.pool.run(_label_taken, body.label):
            raise Problem("conflict", f"the label {body.label} names another card")
        options: dict[str, Any] = {
            "activate": body.activate,
            "mailer_dir": Path(state.config.host.mailer_dir),
            "today": business_today(state.config),
            "form": body.form,
            "actor": caller.actor,
        }
        if body.cardholder_id is None:
            cards, mailer = await issue_cards(state.pool, state.crypto, body.product, 1, **options)
        else:
            owner = parse_id("cardholder", body.cardholder_id)
            cards, mailer = await cardholders.issue_to(
                state.pool, state.crypto, owner, body.product, 1, **options
            )
        (made,) = cards
        if body.label is not None:
            await state.pool.run(directory.set_card_label, made.card_id, body.label)
    card = await load_card(state, made.card_id)
    out = CardIssued(
        **card.model_dump(), pan=made.pan, shown_once=False, pin_mailer=str(mailer) if mailer else None
    )
    once(out, request)
    return out


async def _label_taken(conn: Any, label: str) -> bool:
    try:
        await directory.card_by_ref(conn, label)
    except CatalogError:
        return False
    return True


@router.get(
    "/v1/cards/{card_id}",
    response_model=CardOut,
    summary="A card",
    responses={404: {"description": "no such card"}},
)
async def get_card(card_id: CardPath, state: State, caller: Reader) -> CardOut:
    return await load_card(state, await card_number(state, card_id))


@router.get("/v1/cards", response_model=Page[CardOut], summary="Find cards")
async def list_cards(
    state: State,
    caller: Reader,
    cardholder_id: Annotated[str | None, Query(description="cards this cardholder owns")] = None,
    card_state: Annotated[
        Literal["inventory", "active", "frozen", "lost", "stolen", "expired", "closed"] | None,
        Query(alias="state"),
    ] = None,
    product: Annotated[str | None, Query(max_length=32, pattern=TEXT,
                                         description="the product's code")] = None,
    form: Annotated[Literal["physical", "virtual"] | None, Query()] = None,
    last4: Annotated[str | None, Query(pattern=r"^[0-9]{4}$", description="the PAN's last 4 digits")] = None,
    label: Annotated[str | None, Query(max_length=32, pattern=TEXT)] = None,
    cursor: Annotated[str | None, Query(description="next_cursor of the previous page")] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> Page[CardOut]:
    """Every filter given must match; cards in id order, a page at a time."""
    owner = None
    if cardholder_id is not None:
        try:
            owner = parse_id("cardholder", cardholder_id)
        except Problem:
            return Page[CardOut](data=[], next_cursor=None)
    if cursor is not None and row_number(cursor) is None:
        raise Problem(
            "validation-error",
            "cursor: give the next_cursor a page answered",
            errors=[{"field": "cursor", "message": "not a cursor of this list"}],
        )
    flt = directory.CardFilter(
        state=card_state, product=product, label=label, cardholder=owner, form=form, last4=last4
    )
    with host_errors():
        page = await state.pool.run(lambda conn: directory.list_cards(conn, flt, after=cursor, limit=limit))
    return Page[CardOut](data=[card_out(r, state.timezone) for r in page.rows], next_cursor=page.next)


# -- state changes ---------------------------------------------------------------------------------
async def _move(
    state: ApiState, caller: Caller, card_text: str, target: str, action: str, reason: str = ""
) -> CardChanged:
    cid = await card_number(state, card_text)
    today = business_today(state.config) if action == "unfreeze" else None
    with host_errors():
        old, new = await state.pool.run(
            lambda conn: catalog.set_card_state(
                conn,
                cid,
                target,
                action="unfreeze" if action == "unfreeze" else None,
                today=today,
                actor=caller.actor,
                reason=reason,
            )
        )
    return CardChanged(
        card=await load_card(state, cid), change=StateChange(action=action, from_state=old, to_state=new)
    )


_CONFLICT: dict[int | str, dict[str, Any]] = {
    404: {"description": "no such card"},
    409: {"description": "the card's state does not allow it"},
}


@router.post(
    "/v1/cards/{card_id}/freeze", response_model=CardChanged, summary="Freeze a card", responses=_CONFLICT
)
async def freeze(card_id: CardPath, state: State, caller: Writer) -> CardChanged:
    """Declined (05) until unfrozen."""
    return await _move(state, caller, card_id, "frozen", "freeze")


@router.post(
    "/v1/cards/{card_id}/unfreeze", response_model=CardChanged, summary="Unfreeze a card", responses=_CONFLICT
)
async def unfreeze(card_id: CardPath, state: State, caller: Writer) -> CardChanged:
    return await _move(state, caller, card_id, "active", "unfreeze")


class Report(Model):
    reason: Literal["lost", "stolen"] = Field(description="answered 41 (lost) or 43 (stolen) from now on")


@router.post(
    "/v1/cards/{card_id}/report",
    response_model=CardChanged,
    summary="Report a card lost or stolen",
    responses=_CONFLICT,
)
async def report(card_id: CardPath, body: Report, state: State, caller: Writer) -> CardChanged:
    """A named card only (an anonymous card can be frozen instead). Blocked for good: replace it to
    move its money to a new card."""
    return await _move(state, caller, card_id, body.reason, body.reason)


class ReplaceIn(Model):
    reason: Literal["lost", "stolen", "damaged", "expiring"] = Field(
        description="lost / stolen block the old card as such; damaged / expiring (keeps the PIN) close it"
    )


class Replaced(Model):
    old_card: CardOut
    change: StateChange = Field(description="what the old card became")
    card: CardOut = Field(description="the new card")
    pan: str | None = Field(description="the new card's number: in this first answer only")
    shown_once: bool = Field(description="true when the PAN was shown already and is not in this answer")
    moved: Money = Field(description="the balance moved to the new card")
    pin: str | None = Field(description="new, kept or new_no_pin_lmk; null in a replay")
    pin_mailer: str | None = Field(description="a physical card: the PIN-mailer file of the new card")
    duplicate: bool = Field(description="the card had been replaced already: that replacement")


@router.post(
    "/v1/cards/{card_id}/replace", response_model=Replaced, summary="Replace a card", responses=_CONFLICT
)
async def replace(
    card_id: CardPath, body: ReplaceIn, request: Request, state: State, caller: Writer
) -> Replaced:
    """A new PAN on the same product; the balance, today's use and the cardholder move to it in one
    ledger transfer; the old card is blocked. A named card only, not while holds are pending."""
    cid = await card_number(state, card_id)
    with host_errors():
        r = await replace_card(
            state.pool,
            state.crypto,
            cid,
            body.reason,
            actor=caller.actor,
            today=business_today(state.config),
            mailer_dir=Path(state.config.host.mailer_dir),
            timezone=state.timezone,
        )
    out = Replaced(
        old_card=await load_card(state, r.old_card_id),
        change=StateChange(action="replace", from_state=r.old_from, to_state=r.old_to),
        card=await load_card(state, r.new_card_id),
        pan=r.pan,
        shown_once=r.pan is None,
        moved=money(r.moved, r.currency),
        pin=r.pin or None,
        pin_mailer=str(r.mailer) if r.mailer else None,
        duplicate=r.duplicate,
    )
    once(out, request)
    return out


class UnloadIn(Model):
    amount: Money | None = Field(default=None, description="default: all that is available")
    destination: Literal["bank", "desk"] | None = Field(
        default=None,
        description="bank: the cardholder's registered bank account; desk: the programme's desk;"
        " default: the bank account when one is registered, else the desk",
    )
    reference: str = Field(
        pattern=r"^[A-Za-z0-9_.:/-]{1,64}$",
        description="your reference for the payout: the same one twice unloads once",
        examples=["refund-2026-0042"],
    )


class Destination(Model):
    payee: Literal["bank_account", "desk"]
    bank_name: str | None = None
    account_masked: str | None = None
    account_holder: str | None = None
    why: str = ""


class Unloaded(Model):
    card: CardOut
    reference: str
    unloaded: Money
    held: Money = Field(description="still held by pending pre-authorizations (not unloaded)")
    duplicate: bool = Field(description="the reference had unloaded already: nothing moved now")
    destination: Destination = Field(description="where the next settlement run pays it")


@router.post(
    "/v1/cards/{card_id}/unload",
    response_model=Unloaded,
    summary="Take money off a card",
    responses=_CONFLICT,
)
async def unload(card_id: CardPath, body: UnloadIn, state: State, caller: Writer) -> Unloaded:
    """Moves money to the cash-out payable; the next settlement run pays it to the cardholder under
    the reference."""
    from host.bank_accounts import Destination as HostDestination

    cid = await card_number(state, card_id)
    card = await load_card(state, cid)
    amount = None
    if body.amount is not None:
        amount = minor_of(body.amount, currency_numeric(card.balance.currency), "amount")
    with host_errors():
        u = await admin_unload(state.pool, cid, body.reference, amount, to=body.destination)
    dest = u.destination or HostDestination("desk", why="unloaded before payout destinations were kept")
    shown = {k: v for k, v in dest.as_json().items() if k != "cardholder_id"}
    return Unloaded(
        card=await load_card(state, cid),
        reference=u.reference,
        unloaded=money(u.amount, u.currency),
        held=money(u.held, u.currency),
        duplicate=u.duplicate,
        destination=Destination(**shown),
    )


class CloseIn(Model):
    forfeit: bool = Field(default=False, description="post the balance to breakage income and close")


class ClosedOut(CardChanged):
    forfeited: Money = Field(description="posted to breakage income (0: the card was empty)")


@router.post(
    "/v1/cards/{card_id}/close",
    response_model=ClosedOut,
    summary="Close a card for good",
    responses=_CONFLICT,
)
async def close(card_id: CardPath, body: CloseIn, state: State, caller: Writer) -> ClosedOut:
    """Refused while it holds money: unload it first, or forfeit."""
    cid = await card_number(state, card_id)
    with host_errors():
        done = await close_card(state.pool, cid, forfeit=body.forfeit, actor=caller.actor)
    return ClosedOut(
        card=await load_card(state, cid),
        change=StateChange(action="close", from_state=done.from_state, to_state="closed"),
        forfeited=money(done.forfeited, done.currency),
    )


# -- balance and transactions ----------------------------------------------------------------------
class Balance(Model):
    card_id: str = Field(examples=["card_504"])
    ledger: Money = Field(description="the posted balance")
    available: Money = Field(description="what can be spent: the ledger balance less holds")
    held: Money = Field(description="held by pending pre-authorizations")


@router.get(
    "/v1/cards/{card_id}/balance",
    response_model=Balance,
    summary="A card's balance",
    responses={404: {"description": "no such card"}},
)
async def balance(card_id: CardPath, state: State, caller: Reader) -> Balance:
    cid = await card_number(state, card_id)
    with host_errors():
        r = await state.pool.run(directory.show_card, cid)
    cur = r["currency"]
    return Balance(
        card_id=public_id("card", cid),
        ledger=money(r["balance"], cur),
        available=money(r["available"], cur),
        held=money(r["held"], cur),
    )


class Decline(Model):
    reason: str | None = Field(description="the host's reason key", examples=["card_frozen"])
    text: str = Field(description="the reason in words", examples=["card frozen"])


class Transaction(Model):
    type: str = Field(
        description="purchase, refund, topup, admin_load, reversal, expiry, ...", examples=["purchase"]
    )
    mti: str = Field(description="the ISO 8583 message type ('' for a posting of the host's own)")
    amount: Money
    response_code: str = Field(examples=["00"])
    approved: bool
    decline: Decline | None = Field(description="why it was declined; null when approved")
    merchant_id: str | None = None
    terminal_id: str | None = None
    rrn: str | None = None
    auth_id: str | None = None
    posting_id: int | None = Field(description="the ledger transfer it made, if any")
    phase: str | None = Field(description="single, pending (a hold), ...")
    at: str = Field(description="when the host received it (RFC 3339)")


def _blank(v: Any) -> Any:
    return v if v not in ("", None) else None


@router.get(
    "/v1/cards/{card_id}/transactions",
    response_model=Page[Transaction],
    summary="A card's history",
    responses={404: {"description": "no such card"}},
)
async def transactions(
    card_id: CardPath,
    state: State,
    caller: Reader,
    since: Annotated[AwareDatetime | None, Query(description="at or after (RFC 3339)")] = None,
    until: Annotated[AwareDatetime | None, Query(description="before (RFC 3339)")] = None,
    types: Annotated[
        list[Literal[HISTORY_TYPES]] | None,  # type: ignore[valid-type]
        Query(alias="type", description="only these types (repeatable)"),
    ] = None,
    cursor: Annotated[
        str | None, Query(max_length=400, description="next_cursor of the previous page")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> Page[Transaction]:
    """Newest first: requests (approved and declined, with the decline's reason), postings of the
    host's own (hold expiries, the balance a replacement brought)."""
    cid = await card_number(state, card_id)
    for name, when in (("since", since), ("until", until)):
        try:
            if when is not None and not 1900 <= when.astimezone(dt.UTC).year <= 9000:
                raise OverflowError(name)
        except OverflowError:
            raise Problem(
                "validation-error",
                f"{name}: a time between the years 1900 and 9000",
                errors=[{"field": name, "message": "out of range"}],
            ) from None
    with host_errors():
        rows, nxt = await state.pool.run(
            lambda conn: catalog.card_history_page(
                conn, cid, limit, after=cursor, since=since, until=until, types=list(types or []) or None
            )
        )
        cur = (await state.pool.run(directory.show_card, cid))["currency"]
    out = []
    for r in rows:
        rc = str(r["rc"])
        out.append(
            Transaction(
                type=r["txn"],
                mti=r["mti"],
                amount=money(r["amount"], cur),
                response_code=rc,
                approved=rc == "00",
                decline=None
                if rc == "00"
                else Decline(reason=r["reason"], text=rules.describe(r["reason"]) or f"response code {rc}"),
                merchant_id=_blank(r["merchant_id"]),
                terminal_id=_blank(r["terminal_id"]),
                rrn=_blank(r["rrn"]),
                auth_id=_blank(r["auth_id"]),
                posting_id=r["posting_id"],
                phase=r["phase"],
                at=iso_local(r["at"], state.timezone) or "",
            )
        )
    return Page[Transaction](data=out, next_cursor=nxt)


# -- spend controls --------------------------------------------------------------------------------
_COUNT = Field(default=None, ge=1, le=1_000_000)


class LimitValues(Model):
    """A card's own limits (each at most its product's: an override only lowers)."""

    per_txn: Money | None = Field(default=None, description="the largest purchase")
    day_amount: Money | None = Field(default=None, description="purchases per business day")
    day_count: int | None = _COUNT
    week_amount: Money | None = Field(default=None, description="purchases per ISO week")
    week_count: int | None = _COUNT
    month_amount: Money | None = Field(default=None, description="purchases per calendar month")
    month_count: int | None = _COUNT
    lifetime_amount: Money | None = Field(default=None, description="purchases over the card's life")
    lifetime_count: int | None = _COUNT


class GroupCapIn(Model):
    group: str = Field(
        pattern=r"^[A-Za-z0-9_-]{1,32}$", description="a merchant group's code", examples=["snacks"]
    )
    span: Literal["day", "week", "month", "lifetime"]
    amount: Money | None = None
    count: int | None = _COUNT


class ControlsDoc(Model):
    limits: LimitValues
    hours: list[str] = Field(description="allowed local times", examples=[["mon-fri@11:00-13:30"]])
    group_caps: list[GroupCapIn]


class ControlsIn(Model):
    limits: LimitValues = Field(default_factory=LimitValues)
    hours: list[str] | None = Field(
        default=None,
        max_length=controls.MAX_HOURS,
        description="allowed local times (clearing.timezone), replacing the card's list ([] removes it):"
        " HH:MM-HH:MM, optionally after DAYS@ (mon-fri@, sat+sun@)",
        examples=[["06:30-09:00", "mon-fri@11:00-13:30"]],
    )
    group_caps: list[GroupCapIn] = Field(default_factory=list, max_length=controls.MAX_GROUP_CAPS)
    clear: bool = Field(default=False, description="drop all the card's own controls first")


class LimitUse(Model):
    limit: str = Field(
        description="per_txn, day_amount, day_count, week_amount, ...", examples=["day_amount"]
    )
    label: str = Field(examples=["daily limit"])
    span: str = Field(description="transaction, day, week, month or lifetime")
    measure: Literal["amount", "count"]
    source: Literal["product", "card"] = Field(description="whose limit is the effective one")
    amount: Money | None = Field(description="an amount limit")
    count: int | None = Field(description="a count limit")
    used_amount: Money | None = None
    used_count: int | None = None
    remaining_amount: Money | None = None
    remaining_count: int | None = None


class GroupCapUse(Model):
    group: str
    span: str
    source: Literal["product", "card"]
    amount: Money | None
    count: int | None
    used_amount: Money | None
    used_count: int | None
    remaining_amount: Money | None
    remaining_count: int | None


class Hours(Model):
    product: list[str]
    card: list[str] = Field(description="the card's own, narrowing the product's")


class ControlsOut(Model):
    card_id: str
    product: str
    business_date: str = Field(description="the business day the day counters count in (YYYY-MM-DD)")
    limits: list[LimitUse]
    hours: Hours
    group_caps: list[GroupCapUse]
    overrides: ControlsDoc = Field(description="the card's own controls, as set")


def _maybe(minor: int | None, cur: str) -> Money | None:
    return None if minor is None else money(minor, cur)


def controls_out(v: dict[str, Any]) -> ControlsOut:
    cur = v["currency"]
    limits = []
    for r in v["limits"]:
        amount = r["measure"] == "amount"
        usage = r["limit"] != "per_txn"
        limits.append(
            LimitUse(
                limit=r["limit"],
                label=controls.LABEL[r["limit"]],
                span=r["span"],
                measure=r["measure"],
                source=r["source"],
                amount=money(r["value"], cur) if amount else None,
                count=None if amount else r["value"],
                used_amount=money(r["used"], cur) if amount and usage else None,
                used_count=r["used"] if usage and not amount else None,
                remaining_amount=money(r["remaining"], cur) if amount and usage else None,
                remaining_count=r["remaining"] if usage and not amount else None,
            )
        )
    own = v["overrides"]
    own_caps = {(c["group"], c["span"]) for c in own["group_caps"]}
    caps = [
        GroupCapUse(
            group=g["group"],
            span=g["span"],
            source="card" if (g["group"], g["span"]) in own_caps else "product",
            amount=_maybe(g["amount"], cur),
            count=g["count"],
            used_amount=money(g["used_amount"], cur) if g["amount"] is not None else None,
            used_count=g["used_count"] if g["count"] is not None else None,
            remaining_amount=_maybe(g["remaining_amount"], cur),
            remaining_count=g["remaining_count"],
        )
        for g in v["group_caps"]
    ]
    doc_limits: dict[str, Any] = {
        k: (val if k.endswith("count") else money(val, cur)) for k, val in own["limits"].items()
    }
    doc = ControlsDoc(
        limits=LimitValues(**doc_limits),
        hours=own["hours"],
        group_caps=[
            GroupCapIn(group=g["group"], span=g["span"], amount=_maybe(g["amount"], cur), count=g["count"])
            for g in own["group_caps"]
        ],
    )
    return ControlsOut(
        card_id=public_id("card", v["card_id"]),
        product=v["product"],
        business_date=v["business_date"].isoformat(),
        limits=limits,
        hours=Hours(**v["hours"]),
        group_caps=caps,
        overrides=doc,
    )


@router.get(
    "/v1/cards/{card_id}/controls",
    response_model=ControlsOut,
    summary="A card's spend controls",
    responses={404: {"description": "no such card"}},
)
async def get_controls(card_id: CardPath, state: State, caller: Reader) -> ControlsOut:
    """Its effective limits (the lower of the product's and the card's), where each comes from, and
    what is used and left in its window now; allowed hours; merchant-group caps."""
    cid = await card_number(state, card_id)
    with host_errors():
        today = await state.pool.run(business_date_now, state.config)
        view = await state.pool.run(controls.card_limits, cid, today)
    return controls_out(view)


@router.post(
    "/v1/cards/{card_id}/controls",
    response_model=ControlsOut,
    summary="Set a card's own controls",
    responses={
        404: {"description": "no such card"},
        409: {"description": "above the product's limit (an override only lowers it)"},
    },
)
async def set_controls(card_id: CardPath, body: ControlsIn, state: State, caller: Writer) -> ControlsOut:
    """Limits given are set, others kept (`clear` drops all first); `hours` replaces the card's list;
    a group cap replaces the one of its group and span. Each may only lower its product's."""
    cid = await card_number(state, card_id)
    card = await load_card(state, cid)
    cur = currency_numeric(card.balance.currency)
    limits: dict[str, int] = {}
    for key, val in body.limits:
        if val is None:
            continue
        limits[key] = val if isinstance(val, int) else minor_of(val, cur, f"limits.{key}")
    caps = []
    for i, g in enumerate(body.group_caps):
        amount = None if g.amount is None else minor_of(g.amount, cur, f"group_caps.{i}.amount")
        if amount is None and g.count is None:
            raise Problem("validation-error", f"group_caps.{i}: a cap gives an amount, a count or both")
        caps.append(GroupCap(g.group, g.span, amount, g.count))
    with host_errors():
        hours = None
        if body.hours is not None:
            hours = controls.parse_hours(",".join(body.hours)) if body.hours else ()
        changes = Changes(limits, hours, tuple(caps), frozenset({"all"}) if body.clear else frozenset())
        today = await state.pool.run(business_date_now, state.config)
        view = await state.pool.run(controls.set_card_limits, cid, changes, today)
    return controls_out(view)


# -- PINs ------------------------------------------------------------------------------------------
class PinKey(Model):
    curve: str = Field(examples=["sm2p256v1"])
    public_key: str = Field(description="04 || x || y, hex")
    check_value: str
    pem: str = Field(description="the public key as SubjectPublicKeyInfo PEM")
    ciphertext: str = Field(description="the ciphertext layout an app sends", examples=["C1C3C2"])
    plaintext: str = Field(description="what an app encrypts")


@router.get("/v1/pin-key", response_model=PinKey, summary="The issuer's SM2 key for PIN blocks")
async def pin_key(state: State, caller: Reader) -> PinKey:
    """An app encrypts (SM2, C1C3C2) a format-0 PIN block and its UTC seconds under this key; only
    the HSM decrypts it."""
    key = await issuer_key(state.pool, state.crypto)
    return PinKey(**key.public())


class PinSet(Model):
    sm2_block: str = Field(
        pattern=r"^[0-9A-Fa-f]{226}$",
        description="the PIN block under the issuer's SM2 key, C1C3C2 in hex (113 bytes)",
    )


class PinChangedOut(Model):
    card_id: str
    action: Literal["pin_set", "pin_reset"]
    state: str = Field(description="the card's state")
    pin_tries: int = Field(description="PIN tries after the change (cleared)", examples=[0])
    pin_mailer: str | None = Field(default=None, description="a reset: the new PIN-mailer file")


@router.post(
    "/v1/cards/{card_id}/pin",
    response_model=PinChangedOut,
    summary="Set a PIN from an app",
    responses={**_CONFLICT, 422: {"description": "the block does not decrypt, is stale or replayed"}},
)
async def set_pin(card_id: CardPath, body: PinSet, state: State, caller: Writer) -> PinChangedOut:
    """Decrypted and turned into a PVV only inside the HSM; PIN tries cleared. A block is accepted
    within 300 s of the time in it, and only when newer than the card's last PIN change."""
    from host.pins import parse_block

    cid = await card_number(state, card_id)
    try:
        block = parse_block(body.sm2_block)
        done = await set_pin_sm2(
            state.pool, state.crypto, cid, block, today=business_today(state.config), actor=caller.actor
        )
    except PinError as exc:
        text = str(exc)
        raise Problem("conflict" if "its PIN cannot be" in text else "validation-error", text) from None
    except HsmCommandError as exc:  # the HSM refused the block for a reason host.pins does not name
        raise Problem("validation-error", f"the HSM refused the SM2 block (error {exc.code})") from None
    return PinChangedOut(card_id=public_id("card", cid), action="pin_set", state=done.state, pin_tries=0)


class PinResetIn(Model):
    pass


@router.post(
    "/v1/cards/{card_id}/pin/reset", response_model=PinChangedOut, summary="Reset a PIN", responses=_CONFLICT
)
async def pin_reset(
    card_id: CardPath, state: State, caller: Writer, body: PinResetIn | None = None
) -> PinChangedOut:
    """A new random PIN drawn inside the HSM, PIN tries cleared, and a new PIN mailer (written where
    `card pin reset` writes it). The PIN is never in the answer."""
    cid = await card_number(state, card_id)
    with host_errors():
        done = await reset_pin(
            state.pool,
            state.crypto,
            cid,
            mailer_dir=Path(state.config.host.mailer_dir),
            today=business_today(state.config),
            actor=caller.actor,
        )
    return PinChangedOut(
        card_id=public_id("card", cid),
        action="pin_reset",
        state=done.state,
        pin_tries=0,
        pin_mailer=str(done.mailer) if done.mailer else None,
    )
