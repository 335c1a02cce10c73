"""Cards: the search (last 4, masked PAN or its first 6, cardholder name, state, product) and a card's
page (balance, limits and their use, history with decline reasons, state changes) with its actions.

Thin callers of the host's card functions, the same ones `payswitch card ...` and the API call:
host.directory (list, show), host.controls (limits), host.catalog (state changes, history),
host.card_events, host.pins (PIN reset), host.admin (load, unload, close). Each action is a plain form
POST (``console.auth.action``: session, CSRF, role) that records its audit row and sends the browser
back to the card page (303). A load or unload above ``console.four_eyes_minor`` is not done here: the
answer is a form that asks for a supervisor's approval (``/console/approvals/request``).
"""

from __future__ import annotations

import dataclasses
import re
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse

from console.auth import Acting, ConsoleRefusal, Viewer, action, api_state
from console.operators import Session
from console.web import PREFIX, render
from host import card_events, catalog, controls, directory, rules
from host.admin import admin_load, admin_unload, close_card, load_refusal
from host.business_day import business_date_now, business_today
from host.cardholders import Filter, list_cardholders
from host.catalog import CatalogError
from host.controls import ControlsError
from host.kyc import KycError
from host.pins import reset_pin
from ops.digits import is_digits, row_number
from ops.money import MoneyError, format_amount, format_money, parse_money

router = APIRouter()
NAV = [("Cards", "/console/cards", "viewer")]

STATES = ("inventory", "active", "frozen", "lost", "stolen", "expired", "closed")
PAGE = 25
HISTORY_PAGE = 20
# what a finished action says on the card page (the query carries only the key)
DONE = {
    "freeze": "The card is frozen.",
    "unfreeze": "The card is active again.",
    "lost": "The card is blocked as lost.",
    "stolen": "The card is blocked as stolen.",
    "pin_reset": "A new PIN was drawn; its PIN mailer is written.",
    "load": "The card was loaded.",
    "unload": "Money was taken off the card.",
    "close": "The card is closed.",
}


CARD_FREEZE = action("card.freeze", "operator")
CARD_UNFREEZE = action("card.unfreeze", "operator")
CARD_BLOCK = action("card.block", "operator")
CARD_PIN_RESET = action("card.pin_reset", "operator")
CARD_LOAD = action("card.load", "operator")
CARD_UNLOAD = action("card.unload", "operator")
CARD_CLOSE = action("card.close", "supervisor")


def actor(session: Session) -> str:
    """Who the host's own records (card_events) name: the console's operator."""
    return f"console:{session.operator.name}"


def refused(exc: Exception) -> ConsoleRefusal:
    text = str(exc)
    return ConsoleRefusal(404 if text.startswith("no card") else 409, text)


def card_id_of(text: str) -> int:
    if row_number(text) is None:
        raise ConsoleRefusal(404, "no such card")
    return int(text)


# -- search ----------------------------------------------------------------------------------------
def pan_filter(text: str) -> directory.CardFilter:
    """The PAN box: the first 6 digits, a masked PAN (621234*********1234) or its first 6 + last 4.
    A whole PAN is not taken (it would be in the address and the logs): the last 4 find it."""
    t = text.strip().replace(" ", "")
    if re.fullmatch(r"[0-9]{6}", t):
        return directory.CardFilter(first6=t)
    if re.fullmatch(r"[0-9]{4}", t):
        return directory.CardFilter(last4=t)
    if is_digits(t) and len(t) > 10:
        raise CatalogError("give the masked PAN or its last 4 digits, not the whole card number")
    return directory.card_filter_for_pan(t)


@router.get("/cards", response_class=HTMLResponse)
async def cards(request: Request, session: Session = Viewer) -> HTMLResponse:
    state = api_state(request)
    q = {k: v.strip() for k, v in request.query_params.items() if isinstance(v, str)}
    shown = {k: q.get(k, "") for k in ("last4", "pan", "name", "state", "product", "cardholder")}
    flt = directory.CardFilter()
    problem = ""
    holders: list[dict[str, Any]] = []
    no_holder = False
    rows: list[dict[str, Any]] = []
    next_cursor: str | None = None
    try:
        if shown["pan"]:
            flt = pan_filter(shown["pan"])
        if shown["last4"]:
            flt = dataclasses.replace(flt, last4=shown["last4"])
        if shown["state"]:
            if shown["state"] not in STATES:
                raise CatalogError(f"state: one of {', '.join(STATES)}")
            flt = dataclasses.replace(flt, state=shown["state"])
        if shown["product"]:
            flt = dataclasses.replace(flt, product=shown["product"])
        if shown["cardholder"]:
            if row_number(shown["cardholder"]) is None:
                raise CatalogError("cardholder: a cardholder's id")
            flt = dataclasses.replace(flt, cardholder=int(shown["cardholder"]))
        search = True
        if shown["name"] and flt.cardholder is None:
            found = await list_cardholders(state.pool, None, Filter(name=shown["name"]), limit=PAGE)
            holders = found.rows
            if len(holders) == 1:
                flt = dataclasses.replace(flt, cardholder=int(holders[0]["id"]))
                holders = []
            else:
                search = False  # several (or no) cardholders of that name: choose one first
                no_holder = not holders
        if search:
            cursor = q.get("cursor") or None
            if cursor is not None and row_number(cursor) is None:
                raise CatalogError("cursor: give the one the previous page's link has")
            chosen = flt
            page = await state.pool.run(
                lambda conn: directory.list_cards(conn, chosen, after=cursor, limit=PAGE))
            rows, next_cursor = page.rows, page.next
    except (CatalogError, KycError) as exc:
        problem = str(exc)
    query = urlencode({k: v for k, v in shown.items() if v})
    return render(request, "cards.html", rows=rows, holders=holders, shown=shown, states=STATES,
                  problem=problem, next_cursor=next_cursor, query=query, no_holder=no_holder)


# -- the card's page -------------------------------------------------------------------------------
async def card_view(request: Request, cid: int, cursor: str | None) -> dict[str, Any]:
    state = api_state(request)

    async def work(conn: Any) -> dict[str, Any]:
        card = await directory.show_card(conn, cid)
        today = await business_date_now(conn, state.config)
        limits = await controls.card_limits(conn, cid, today)
        history, nxt = await catalog.card_history_page(conn, cid, HISTORY_PAGE, after=cursor)
        events = await card_events.events(conn, cid, 50)
        return {"card": card, "limits": limits, "history": history, "next_cursor": nxt, "events": events}

    try:
        view: dict[str, Any] = await state.pool.run(work)
    except (CatalogError, ControlsError) as exc:
        raise refused(exc) from None
    for r in view["history"]:
        r["reason_text"] = "" if str(r["rc"]) == "00" else (rules.describe(r["reason"])
                                                         or f"response code {r['rc']}")
    view["labels"] = controls.LABEL
    view["four_eyes_minor"] = state.config.console.four_eyes_minor
    return view


@router.get("/cards/{card_id}", response_class=HTMLResponse)
async def card(request: Request, card_id: str, session: Session = Viewer) -> HTMLResponse:
    cid = card_id_of(card_id)
    cursor = request.query_params.get("cursor") or None
    if cursor is not None and len(cursor) > 400:
        raise ConsoleRefusal(400, "not a cursor of this list")
    try:
        view = await card_view(request, cid, cursor)
    except ValueError:
        raise ConsoleRefusal(400, "not a cursor of this list") from None
    done = DONE.get(request.query_params.get("done", ""), "")
    return render(request, "card.html", done=done, **view)


def back(cid: int, done: str) -> RedirectResponse:
    return RedirectResponse(f"{PREFIX}/cards/{cid}?done={done}", status_code=303)


def reason_of(acting: Acting, required: bool = False) -> str:
    reason = " ".join(acting.form.get("reason", "").split())
    if required and not reason:
        raise ConsoleRefusal(422, "Say why (the reason is kept in the audit record).")
    if len(reason) > 500:
        raise ConsoleRefusal(422, "The reason is at most 500 characters.")
    return reason


async def _move(request: Request, acting: Acting, cid: int, target: str, verb: str) -> RedirectResponse:
    state = api_state(request)
    reason = reason_of(acting)
    today = business_today(state.config) if verb == "unfreeze" else None
    try:
        old, new = await state.pool.run(lambda conn: catalog.set_card_state(
            conn, cid, target, action="unfreeze" if verb == "unfreeze" else None, today=today,
            actor=actor(acting.session), reason=reason))
    except (CatalogError, KycError) as exc:
        raise refused(exc) from None
    await acting.record(target=f"card:{cid}", before={"state": old}, after={"state": new}, reason=reason)
    return back(cid, verb)


@router.post("/cards/{card_id}/freeze")
async def freeze(request: Request, card_id: str, acting: Acting = CARD_FREEZE
                 ) -> RedirectResponse:
    return await _move(request, acting, card_id_of(card_id), "frozen", "freeze")


@router.post("/cards/{card_id}/unfreeze")
async def unfreeze(request: Request, card_id: str, acting: Acting = CARD_UNFREEZE
                   ) -> RedirectResponse:
    return await _move(request, acting, card_id_of(card_id), "active", "unfreeze")


@router.post("/cards/{card_id}/block")
async def block(request: Request, card_id: str, acting: Acting = CARD_BLOCK
                ) -> RedirectResponse:
    """Lost or stolen: blocked for good (answered 41 / 43)."""
    kind = acting.form.get("kind", "")
    if kind not in ("lost", "stolen"):
        raise ConsoleRefusal(422, "Block as lost or as stolen.")
    return await _move(request, acting, card_id_of(card_id), kind, kind)


@router.post("/cards/{card_id}/pin-reset")
async def pin_reset(request: Request, card_id: str, acting: Acting = CARD_PIN_RESET
                    ) -> RedirectResponse:
    state = api_state(request)
    cid = card_id_of(card_id)
    reason = reason_of(acting)
    try:
        done = await reset_pin(state.pool, state.crypto, cid, mailer_dir=Path(state.config.host.mailer_dir),
                               today=business_today(state.config), actor=actor(acting.session))
    except CatalogError as exc:
        raise refused(exc) from None
    await acting.record(target=f"card:{cid}", before={"state": done.state},
                        after={"state": done.state, "pin": "reset", "pin_tries": 0,
                               "pin_mailer": done.mailer.name if done.mailer else None}, reason=reason)
    return back(cid, "pin_reset")


async def _money_form(request: Request, acting: Acting, cid: int) -> tuple[int, str, dict[str, Any]]:
    """The form's amount (yuan) in the card's minor units, its reason, and the card."""
    state = api_state(request)
    try:
        card = await state.pool.run(directory.show_card, cid)
    except CatalogError as exc:
        raise refused(exc) from None
    reason = reason_of(acting, required=True)
    try:
        amount = parse_money(acting.form.get("amount", ""), card["currency"])
    except MoneyError as exc:
        raise ConsoleRefusal(422, f"Amount: {exc}") from None
    return amount, reason, card


def _needs_approval(request: Request, kind: str, cid: int, amount: int, reason: str,
                    card: dict[str, Any]) -> HTMLResponse:
    limit = api_state(request).config.console.four_eyes_minor
    return render(request, "_four_eyes.html", status=409, kind=kind, cid=cid, amount=amount, reason=reason,
                  card=card, limit=limit, amount_text=format_money(amount, card["currency"]),
                  amount_field=format_amount(amount, card["currency"]))


@router.post("/cards/{card_id}/load", response_model=None)
async def load(request: Request, card_id: str, acting: Acting = CARD_LOAD
               ) -> RedirectResponse | HTMLResponse:
    """A manual load from the programme's funding account, up to ``console.four_eyes_minor``."""
    state = api_state(request)
    cid = card_id_of(card_id)
    amount, reason, card = await _money_form(request, acting, cid)
    if amount > state.config.console.four_eyes_minor:
        return _needs_approval(request, "load", cid, amount, reason, card)
    reference = f"console:{uuid.uuid4().hex[:20]}"
    d = await admin_load(state.pool, cid, amount, reference)
    if d.code != "00":
        why = await load_refusal(state.pool, cid, d)
        await acting.record(target=f"card:{cid}", before={"balance": card["balance"]},
                            after={"amount": amount, "response_code": d.code}, reason=reason,
                            outcome="refused")
        raise ConsoleRefusal(409, f"The load was refused: {why}.")
    await acting.record(target=f"card:{cid}", before={"balance": card["balance"]},
                        after={"balance": card["balance"] + amount, "amount": amount,
                               "currency": card["currency"], "reference": reference}, reason=reason)
    return back(cid, "load")


@router.post("/cards/{card_id}/unload", response_model=None)
async def unload(request: Request, card_id: str, acting: Acting = CARD_UNLOAD
                 ) -> RedirectResponse | HTMLResponse:
    """Money off the card to the cash-out payable (paid by the next settlement run), up to
    ``console.four_eyes_minor``."""
    state = api_state(request)
    cid = card_id_of(card_id)
    amount, reason, card = await _money_form(request, acting, cid)
    if amount > state.config.console.four_eyes_minor:
        return _needs_approval(request, "unload", cid, amount, reason, card)
    reference = f"console:{uuid.uuid4().hex[:20]}"
    try:
        u = await admin_unload(state.pool, cid, reference, amount)
    except CatalogError as exc:
        raise refused(exc) from None
    await acting.record(target=f"card:{cid}", before={"balance": card["balance"]},
                        after={"balance": u.balance, "amount": u.amount, "currency": u.currency,
                               "reference": reference}, reason=reason)
    return back(cid, "unload")


@router.post("/cards/{card_id}/close")
async def close(request: Request, card_id: str, acting: Acting = CARD_CLOSE
                ) -> RedirectResponse:
    """Closed for good; refused while it holds money (unload it first)."""
    state = api_state(request)
    cid = card_id_of(card_id)
    reason = reason_of(acting, required=True)
    try:
        done = await close_card(state.pool, cid, actor=actor(acting.session))
    except CatalogError as exc:
        raise refused(exc) from None
    await acting.record(target=f"card:{cid}", before={"state": done.from_state}, after={"state": "closed"},
                        reason=reason)
    return back(cid, "close")
