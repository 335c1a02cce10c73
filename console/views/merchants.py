"""Merchants, their stores and terminals: the list (filters, pages), a merchant's page, onboarding forms
(merchant, store, terminal), suspend / reactivate a merchant, disable / enable a terminal.

Thin callers of host.directory (finding) and host.catalog (changing), the functions `payswitch merchant
add`, `store add`, `terminal add|disable|enable` and `merchant suspend|resume` use. A terminal's TMK is
formed in the HSM from two clear components typed into the form (never stored, shown or audited: the
audit row has its check value). A fee change is four-eyes: the page links to the approvals request form.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse

from console import forms
from console.auth import Acting, ConsoleRefusal, Viewer, action, api_state
from console.operators import Session
from console.roles import may
from console.web import PREFIX, render
from host import catalog, directory
from host.catalog import CatalogError
from ops.digits import is_digits

router = APIRouter()
NAV = [("Merchants", "/console/merchants", "viewer")]

ADD_MERCHANT = action("merchant.add", "operator")
ADD_STORE = action("store.add", "operator")
ADD_TERMINAL = action("terminal.add", "operator")
SUSPEND = action("merchant.suspend", "supervisor")
DISABLE_TERMINAL = action("terminal.disable", "operator")

PAGE = 50
HEX32 = re.compile(r"[0-9A-Fa-f]{32}")


def _opt(value: str | None) -> str | None:
    value = (value or "").strip()
    return value or None


def _url(merchant_id: str) -> str:
    return f"{PREFIX}/merchants/{quote(merchant_id, safe='')}"


def _can(session: Session, name: str) -> bool:
    return may(session.operator.role, name)


async def _db(request: Request, fn: Any, *args: Any, **kw: Any) -> Any:
    return await forms.run(request, fn, *args, refused=(CatalogError,), **kw)


@router.get("/merchants", response_class=HTMLResponse)
async def merchants(request: Request, session: Session = Viewer, state: str = "", name: str = "",
                    mcc: str = "", group: str = "", acquirer: str = "", cursor: str = "") -> HTMLResponse:
    if state and state not in directory.MERCHANT_STATES:
        raise ConsoleRefusal(400, f"state {state!r}: one of {', '.join(directory.MERCHANT_STATES)}")
    page = await _db(request, directory.list_merchants, state=_opt(state), name=_opt(name), mcc=_opt(mcc),
                     group=_opt(group), acquirer=_opt(acquirer), after=_opt(cursor), limit=PAGE)
    filters = {"state": state, "name": name, "mcc": mcc, "group": group, "acquirer": acquirer}
    return render(request, "merchants.html", page=page, filters=filters, states=directory.MERCHANT_STATES,
                  next_cursor=page.next, query=urlencode({k: v for k, v in filters.items() if v}),
                  can_add=_can(session, "merchant.add"), url=_url)


@router.post("/merchants")
async def add_merchant(request: Request, acting: Acting = ADD_MERCHANT) -> RedirectResponse:
    f = acting.form
    merchant_id = f.get("merchant_id", "").strip()
    mcc = f.get("mcc", "").strip()
    if not re.fullmatch(r"[ -~]{1,15}", merchant_id):
        raise ConsoleRefusal(400, "merchant id (DE42): 1 to 15 printable characters")
    if not re.fullmatch(r"[0-9]{4}", mcc):
        raise ConsoleRefusal(400, "MCC: 4 digits")
    fee = f.get("fee_bps", "0").strip() or "0"
    if not is_digits(fee) or not 0 <= int(fee) <= 10000:
        raise ConsoleRefusal(400, "fee: 0 to 10000 basis points")
    name, group, acquirer = f.get("name", "").strip(), _opt(f.get("group")), f.get("acquirer", "").strip()
    currency = f.get("currency", "156").strip() or "156"
    if await _db(request, catalog.merchant_exists, merchant_id):
        raise ConsoleRefusal(409, f"merchant {merchant_id} already exists")
    mid = await _db(request, catalog.add_merchant, merchant_id, name, mcc, group, acquirer, currency,
                    int(fee))
    await acting.record(target=f"merchant:{merchant_id}", after={
        "id": mid, "merchant_id": merchant_id, "name": name, "mcc": mcc, "group": group,
        "acquirer_id": acquirer, "currency": currency, "fee_rate_bps": int(fee), "state": "active"})
    return RedirectResponse(_url(merchant_id), status_code=303)


@router.get("/merchants/{merchant_id}", response_class=HTMLResponse)
async def merchant(request: Request, merchant_id: str, session: Session = Viewer, stores_after: str = "",
                   terminals_after: str = "", terminal_state: str = "") -> HTMLResponse:
    m = await _db(request, directory.show_merchant, merchant_id)
    stores = await _db(request, directory.list_stores, merchant=merchant_id, after=_opt(stores_after),
                       limit=PAGE)
    if terminal_state and terminal_state not in directory.TERMINAL_STATES:
        raise ConsoleRefusal(400, f"terminal state {terminal_state!r}")
    terminals = await _db(request, directory.list_terminals, merchant=merchant_id,
                          state=_opt(terminal_state), after=_opt(terminals_after), limit=PAGE)
    fee_link = f"{PREFIX}/approvals/request?" + urlencode({"kind": "merchant_fee",
                                                                   "target": f"merchant:{merchant_id}"})
    return render(request, "merchant.html", m=m, stores=stores, terminals=terminals, url=_url(merchant_id),
                  terminal_state=terminal_state, fee_link=fee_link,
                  can_store=_can(session, "store.add"), can_terminal=_can(session, "terminal.add"),
                  can_suspend=_can(session, "merchant.suspend"),
                  can_disable=_can(session, "terminal.disable"),
                  transitions=catalog.MERCHANT_TRANSITIONS.get(m["state"], ()))


@router.post("/merchants/{merchant_id}/stores")
async def add_store(request: Request, merchant_id: str, acting: Acting = ADD_STORE) -> RedirectResponse:
    f = acting.form
    code, name, address = f.get("code", "").strip(), f.get("name", "").strip(), f.get("address", "").strip()
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,32}", code):
        raise ConsoleRefusal(400, "store code: 1 to 32 letters, digits, '_' or '-'")
    await _db(request, catalog.merchant_ref, merchant_id)
    if await _db(request, catalog.store_exists, merchant_id, code):
        raise ConsoleRefusal(409, f"store {code} already exists at merchant {merchant_id}")
    sid = await _db(request, catalog.add_store, merchant_id, code, name, address)
    await acting.record(target=f"store:{merchant_id}/{code}",
                        after={"id": sid, "merchant_id": merchant_id, "code": code, "name": name,
                               "address": address})
    return RedirectResponse(_url(merchant_id), status_code=303)


@router.post("/merchants/{merchant_id}/terminals")
async def add_terminal(request: Request, merchant_id: str, acting: Acting = ADD_TERMINAL) -> RedirectResponse:
    f = acting.form
    terminal_id = f.get("terminal_id", "").strip()
    scheme = f.get("scheme", "")
    store = _opt(f.get("store"))
    components = [f.get("tmk1", "").strip(), f.get("tmk2", "").strip()]
    if not re.fullmatch(r"[ -~]{1,8}", terminal_id):
        raise ConsoleRefusal(400, "terminal id (DE41): 1 to 8 printable characters")
    if scheme not in ("3des", "sm4"):
        raise ConsoleRefusal(400, "scheme: 3des or sm4")
    if not all(HEX32.fullmatch(c) for c in components):
        raise ConsoleRefusal(400, "each TMK component is 32 hexadecimal characters")
    await _db(request, catalog.merchant_ref, merchant_id)
    if await _db(request, catalog.terminal_exists, merchant_id, terminal_id):
        raise ConsoleRefusal(409, f"terminal {terminal_id} already exists at merchant {merchant_id}")
    from hsm_sim.client import HsmCommandError

    hsm = api_state(request).hsm
    try:
        if scheme == "sm4":
            key = await hsm.form_sm4_key("002", components)
        else:
            key = await hsm.form_key("002", components, "U")
    except HsmCommandError as exc:
        raise ConsoleRefusal(400, f"the HSM refused the TMK ({exc.code}: parity or format)") from None
    tid = await _db(request, catalog.add_terminal, terminal_id, merchant_id, scheme, key.under_lmk,
                    key.check_value, store)
    await acting.record(target=f"terminal:{merchant_id}/{terminal_id}",
                        after={"id": tid, "terminal_id": terminal_id, "merchant_id": merchant_id,
                               "store": store, "scheme": scheme, "tmk_check": key.check_value[:6],
                               "state": "active"})
    return RedirectResponse(_url(merchant_id), status_code=303)


@router.post("/merchants/{merchant_id}/state")
async def merchant_state(request: Request, merchant_id: str, acting: Acting = SUSPEND) -> RedirectResponse:
    to = acting.form.get("to", "")
    if to not in ("suspended", "active"):
        raise ConsoleRefusal(400, "a merchant is suspended or reactivated here (closing is the CLI's)")
    old, new = await _db(request, catalog.set_merchant_state, merchant_id, to)
    await acting.record(target=f"merchant:{merchant_id}", before={"state": old}, after={"state": new},
                        reason=acting.form.get("reason", "").strip())
    return RedirectResponse(_url(merchant_id), status_code=303)


@router.post("/merchants/{merchant_id}/terminals/{terminal_id}/state")
async def terminal_state(request: Request, merchant_id: str, terminal_id: str,
                         acting: Acting = DISABLE_TERMINAL) -> RedirectResponse:
    to = acting.form.get("to", "")
    if to not in directory.TERMINAL_STATES:
        raise ConsoleRefusal(400, f"a terminal is {' or '.join(directory.TERMINAL_STATES)}")
    ref = await _db(request, directory.terminal_ref, terminal_id, merchant_id)
    old, new = await _db(request, catalog.set_terminal_state, ref, to)
    await acting.record(target=f"terminal:{merchant_id}/{terminal_id}", before={"state": old},
                        after={"state": new}, reason=acting.form.get("reason", "").strip())
    back = acting.form.get("next", "")
    return RedirectResponse(back if back.startswith(PREFIX + "/") else _url(merchant_id), status_code=303)
