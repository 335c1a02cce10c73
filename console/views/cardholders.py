"""Cardholders: the search, a cardholder's page (masked details, KYC tier, cards, AML hits), the KYC
review queue (named cardholders whose documents may be checked: approve to verified, or reject) and
the AML review queue (watch-list hits to clear or confirm).

Thin callers of host.cardholders (list, show), host.kyc (decide) and host.aml (review queue, clear,
confirm): the functions `payswitch cardholder ...`, `kyc ...` and `aml review` call. A search by phone
or ID number is a POST (the value must not be in an address or a log; the HSM hashes it for the
lookup) and is itself recorded in the audit trail, masked.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse

from console.auth import Acting, ConsoleRefusal, Viewer, action, api_state
from console.operators import Session
from console.web import PREFIX, render
from host import aml, cardholders, kyc
from host.cardholders import AML_STATUSES, STATES, CardholderError, Filter
from host.catalog import CatalogError
from ops.digits import is_digits, row_number

router = APIRouter()
NAV = [
    ("Cardholders", "/console/cardholders", "viewer"),
    ("KYC queue", "/console/cardholders/kyc", "viewer"),
    ("AML queue", "/console/cardholders/aml", "viewer"),
]

PAGE = 25
DONE = {
    "kyc_approve": "KYC approved: the cardholder is verified.",
    "kyc_reject": "KYC rejected: the level stays.",
    "aml_clear": "AML hits cleared.",
    "aml_confirm": "AML match confirmed: the cardholder's active cards are frozen.",
}


CARDHOLDER_LOOKUP = action("cardholder.lookup", "viewer")
KYC_APPROVE = action("kyc.approve", "operator")
KYC_REJECT = action("kyc.reject", "operator")
AML_CLEAR = action("aml.clear", "supervisor")
AML_CONFIRM = action("aml.confirm", "supervisor")


def actor(session: Session) -> str:
    return f"console:{session.operator.name}"


def holder_id_of(text: str) -> int:
    if row_number(text) is None:
        raise ConsoleRefusal(404, "no such cardholder")
    return int(text)


def cursor_of(request: Request) -> str | None:
    cursor = request.query_params.get("cursor") or None
    if cursor is not None and row_number(cursor) is None:
        raise ConsoleRefusal(400, "not a cursor of this list")
    return cursor


def masked(value: str) -> str:
    """A phone or ID number as the audit row keeps it: its last 4 characters only."""
    v = value.strip()
    return "*" * max(len(v) - 4, 0) + v[-4:]


# -- search ----------------------------------------------------------------------------------------
async def _search(request: Request, flt: Filter, shown: dict[str, str], cursor: str | None,
                  lookup: str = "") -> HTMLResponse:
    state = api_state(request)
    rows: list[dict[str, Any]] = []
    next_cursor = None
    problem = ""
    try:
        page = await cardholders.list_cardholders(state.pool, state.crypto, flt, after=cursor, limit=PAGE)
        rows, next_cursor = page.rows, page.next
    except CatalogError as exc:
        problem = str(exc)
    query = urlencode({k: v for k, v in shown.items() if v})
    return render(request, "cardholders.html", rows=rows, shown=shown, problem=problem, lookup=lookup,
                  next_cursor=None if lookup else next_cursor, query=query, levels=kyc.LEVELS,
                  aml_statuses=AML_STATUSES, states=STATES)


@router.get("/cardholders", response_class=HTMLResponse)
async def list_page(request: Request, session: Session = Viewer) -> HTMLResponse:
    q = request.query_params
    shown = {k: (q.get(k) or "").strip() for k in ("name", "kyc", "aml", "state")}
    flt = Filter(name=shown["name"] or None, kyc_level=shown["kyc"] or None, aml_status=shown["aml"] or None,
                 state=shown["state"] or None)
    return await _search(request, flt, shown, cursor_of(request))


@router.post("/cardholders/lookup", response_class=HTMLResponse)
async def lookup(request: Request, acting: Acting = CARDHOLDER_LOOKUP) -> HTMLResponse:
    """By phone or ID number (exact; hashed by the HSM): a POST, so the value stays out of addresses."""
    kind = acting.form.get("kind", "")
    value = acting.form.get("value", "").strip()
    if kind not in ("phone", "id_number") or not value or len(value) > 64:
        raise ConsoleRefusal(422, "Look up by phone or ID number: give the whole value.")
    flt = Filter(phone=value) if kind == "phone" else Filter(id_number=value)
    await acting.record(target="cardholders", after={kind: masked(value)}, reason="lookup")
    shown = {"name": "", "kyc": "", "aml": "", "state": ""}
    return await _search(request, flt, shown, None, lookup=f"{kind.replace('_', ' ')} {masked(value)}")


# -- the queues ------------------------------------------------------------------------------------
@router.get("/cardholders/kyc", response_class=HTMLResponse)
async def kyc_queue(request: Request, session: Session = Viewer) -> HTMLResponse:
    """Active cardholders at ``named`` (an ID recorded, documents not yet checked)."""
    state = api_state(request)
    name = (request.query_params.get("name") or "").strip()
    problem = ""
    rows: list[dict[str, Any]] = []
    next_cursor = None
    try:
        page = await cardholders.list_cardholders(
            state.pool, None, Filter(name=name or None, kyc_level="named", state="active"),
            after=cursor_of(request), limit=PAGE)
        rows, next_cursor = page.rows, page.next
    except CatalogError as exc:
        problem = str(exc)
    return render(request, "kyc_queue.html", rows=rows, name=name, problem=problem, next_cursor=next_cursor,
                  query=urlencode({"name": name} if name else {}))


@router.get("/cardholders/aml", response_class=HTMLResponse)
async def aml_queue(request: Request, session: Session = Viewer) -> HTMLResponse:
    """Cardholders in AML review, oldest pending hit first, with their hits; a page at a time."""
    state = api_state(request)
    text = request.query_params.get("page") or "1"
    if not is_digits(text) or not 1 <= int(text) <= 1000:
        raise ConsoleRefusal(400, "page: a page number")
    page = int(text)
    queue = await state.pool.run(aml.review_queue, page * PAGE + 1)
    rows = queue[(page - 1) * PAGE: page * PAGE]
    more = len(queue) > page * PAGE
    return render(request, "aml_queue.html", rows=rows, page=page, more=more)


# -- one cardholder --------------------------------------------------------------------------------
@router.get("/cardholders/{holder_id}", response_class=HTMLResponse)
async def cardholder(request: Request, holder_id: str, session: Session = Viewer) -> HTMLResponse:
    state = api_state(request)
    hid = holder_id_of(holder_id)

    async def work(conn: Any) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        return await cardholders.show_cardholder(conn, hid), await aml.hits_of(conn, hid)

    try:
        holder, hits = await state.pool.run(work)
    except CatalogError as exc:
        raise ConsoleRefusal(404, str(exc)) from None
    done = DONE.get(request.query_params.get("done", ""), "")
    return render(request, "cardholder.html", h=holder, hits=hits, done=done)


def _reason(acting: Acting) -> str:
    reason = " ".join(acting.form.get("reason", "").split())
    if not reason:
        raise ConsoleRefusal(422, "Say why (the reason is kept with the decision).")
    if len(reason) > 500:
        raise ConsoleRefusal(422, "The reason is at most 500 characters.")
    return reason


async def _status(request: Request, hid: int) -> dict[str, Any]:
    try:
        row: dict[str, Any] = await api_state(request).pool.run(cardholders.show_cardholder, hid)
    except CatalogError as exc:
        raise ConsoleRefusal(404, str(exc)) from None
    return row


async def _kyc(request: Request, acting: Acting, holder_id: str, decision: str) -> RedirectResponse:
    hid = holder_id_of(holder_id)
    reason = _reason(acting)
    before = await _status(request, hid)
    try:
        d = await api_state(request).pool.run(
            lambda conn: kyc.decide(conn, hid, decision, reason=reason, actor=actor(acting.session)))
    except (kyc.KycError, CardholderError) as exc:
        raise ConsoleRefusal(409, str(exc)) from None
    await acting.record(target=f"cardholder:{hid}", before={"kyc_level": before["kyc_level"]},
                        after={"kyc_level": d.to_level, "decision": d.decision}, reason=reason)
    return RedirectResponse(f"{PREFIX}/cardholders/{hid}?done=kyc_{decision}", status_code=303)


@router.post("/cardholders/{holder_id}/kyc/approve")
async def kyc_approve(request: Request, holder_id: str, acting: Acting = KYC_APPROVE
                      ) -> RedirectResponse:
    return await _kyc(request, acting, holder_id, "approve")


@router.post("/cardholders/{holder_id}/kyc/reject")
async def kyc_reject(request: Request, holder_id: str, acting: Acting = KYC_REJECT
                     ) -> RedirectResponse:
    return await _kyc(request, acting, holder_id, "reject")


async def _aml(request: Request, acting: Acting, holder_id: str, verb: str) -> RedirectResponse:
    hid = holder_id_of(holder_id)
    reason = _reason(acting)
    before = await _status(request, hid)
    decide = aml.clear if verb == "clear" else aml.confirm
    try:
        d = await api_state(request).pool.run(
            lambda conn: decide(conn, hid, actor=actor(acting.session), reason=reason))
    except aml.AmlError as exc:
        raise ConsoleRefusal(409, str(exc)) from None
    await acting.record(target=f"cardholder:{hid}", before={"aml_status": before["aml_status"]},
                        after={"aml_status": d.aml_status, "hits": d.hits, "frozen_cards": d.frozen_cards},
                        reason=reason)
    return RedirectResponse(f"{PREFIX}/cardholders/{hid}?done=aml_{verb}", status_code=303)


@router.post("/cardholders/{holder_id}/aml/clear")
async def aml_clear(request: Request, holder_id: str, acting: Acting = AML_CLEAR
                    ) -> RedirectResponse:
    return await _aml(request, acting, holder_id, "clear")


@router.post("/cardholders/{holder_id}/aml/confirm")
async def aml_confirm(request: Request, holder_id: str, acting: Acting = AML_CONFIRM
                      ) -> RedirectResponse:
    return await _aml(request, acting, holder_id, "confirm")
