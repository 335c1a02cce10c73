"""The operators page (admins): list and filter, add (the new TOTP secret and QR shown once), disable,
unlock, reset TOTP, change role. Every change is an action checked by console.auth and done by
console.operators, which writes its audit row in the change's transaction (no SQL here)."""

from __future__ import annotations

from typing import Annotated
from urllib.parse import urlencode

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from markupsafe import Markup

from console import operators
from console.auth import Acting, ConsoleRefusal, Viewer, action, api_state
from console.operators import By, OperatorError
from console.roles import ROLES, rank
from console.web import PREFIX, render
from ops.digits import row_number

router = APIRouter()
NAV = [("Operators", "/console/operators", "admin")]
STATES = ("active", "locked", "disabled")
ADD = action("operator.add", "admin")
DISABLE = action("operator.disable", "admin")
UNLOCK = action("operator.unlock", "admin")
RESET_TOTP = action("operator.reset_totp", "admin")
ROLE = action("operator.role", "admin")


def _by(acting: Acting) -> By:
    op = acting.session.operator
    return By(op.name, op.role, acting.source)


def _refusal(exc: OperatorError) -> ConsoleRefusal:
    text = str(exc)
    return ConsoleRefusal(404 if text.startswith("no operator") else 400, text)


def _back(name: str | None = None) -> RedirectResponse:
    return RedirectResponse(f"{PREFIX}/operators" + (f"?name={name}" if name else ""), status_code=303)


@router.get("/operators", response_class=HTMLResponse)
async def operator_list(request: Request, role: str = "", state: str = "", name: str = "", cursor: str = "",
                        session: operators.Session = Viewer) -> HTMLResponse:
    if rank(session.operator.role) < rank("admin"):
        raise ConsoleRefusal(403, "Only an admin may see the operators.")
    after = row_number(cursor)
    try:
        rows, next_cursor = await operators.list_operators(
            api_state(request).pool, role=role or None, state=state or None, name=name[:32] or None,
            after=after)
    except OperatorError as exc:
        raise ConsoleRefusal(400, str(exc)) from None
    query = urlencode({k: v for k, v in (("role", role), ("state", state), ("name", name)) if v})
    return render(request, "operators.html", rows=rows, roles=ROLES, states=STATES, role=role, state=state,
                  name=name, next_cursor=None if next_cursor is None else str(next_cursor), query=query)


def _secret_page(request: Request, added: operators.Added, what: str) -> Response:
    response = render(request, "operators_secret.html", added=added, what=what,
                      qr=Markup(operators.qr_svg(added.provisioning_uri)))
    response.headers["Cache-Control"] = "no-store"
    return response


@router.post("/operators")
async def operator_add(request: Request, name: Annotated[str, Form(max_length=64)] = "",
                       role: Annotated[str, Form(max_length=20)] = "",
                       password: Annotated[str, Form(max_length=2000)] = "",
                       email: Annotated[str, Form(max_length=320)] = "",
                       acting: Acting = ADD) -> Response:
    state = api_state(request)
    by = _by(acting)
    try:
        added = await operators.add_operator(state.pool, state.crypto, name, role, password,
                                             created_by=by.actor, email=email or None, by=by)
    except OperatorError as exc:
        raise _refusal(exc) from None
    return _secret_page(request, added, "New operator")


@router.post("/operators/{name}/disable")
async def operator_disable(name: str, reason: Annotated[str, Form(max_length=500)] = "",
                           acting: Acting = DISABLE) -> Response:
    try:
        await operators.disable_operator(acting.pool, name, _by(acting), reason=reason)
    except OperatorError as exc:
        raise _refusal(exc) from None
    return _back(name)


@router.post("/operators/{name}/unlock")
async def operator_unlock(name: str, reason: Annotated[str, Form(max_length=500)] = "",
                          acting: Acting = UNLOCK) -> Response:
    try:
        await operators.unlock_operator(acting.pool, name, _by(acting), reason=reason)
    except OperatorError as exc:
        raise _refusal(exc) from None
    return _back(name)


@router.post("/operators/{name}/reset-totp")
async def operator_reset_totp(request: Request, name: str,
                              reason: Annotated[str, Form(max_length=500)] = "",
                              acting: Acting = RESET_TOTP) -> Response:
    try:
        added = await operators.reset_totp(acting.pool, api_state(request).crypto, name, _by(acting),
                                           reason=reason)
    except OperatorError as exc:
        raise _refusal(exc) from None
    return _secret_page(request, added, "New TOTP secret for")


@router.post("/operators/{name}/role")
async def operator_role(name: str, role: Annotated[str, Form(max_length=20)] = "",
                        reason: Annotated[str, Form(max_length=500)] = "",
                        acting: Acting = ROLE) -> Response:
    try:
        await operators.set_role(acting.pool, name, role, _by(acting), reason=reason)
    except OperatorError as exc:
        raise _refusal(exc) from None
    return _back(name)
