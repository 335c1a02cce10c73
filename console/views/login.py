"""Login (password, then TOTP), logout. console.operators does the checking; this only speaks HTTP."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from console import operators
from console.auth import COOKIE, api_state, client_address, session_of, set_cookie
from console.web import PREFIX, render

router = APIRouter()


def _next(target: str | None) -> str:
    """Only a path under the console (never another site: no open redirect)."""
    if target and target.startswith(PREFIX + "/") and not target.startswith("//") and "\\" not in target:
        return target
    return PREFIX + "/"


@router.get("/login", response_class=HTMLResponse)
async def login_page(request: Request, next: str | None = None) -> HTMLResponse:
    return render(request, "login.html", next=_next(next), step="password")


@router.post("/login")
async def login(request: Request, name: Annotated[str, Form()], password: Annotated[str, Form()],
                next: Annotated[str, Form()] = "") -> Response:
    state = api_state(request)
    try:
        token, _ = await operators.password_step(state.pool, state.config.console, name, password,
                                                 client_address(request))
    except operators.OperatorError as exc:
        return render(request, "login.html", status=401, next=_next(next), step="password", error=str(exc),
                      name=name)
    response = render(request, "login.html", next=_next(next), step="totp")
    set_cookie(response, request, token)
    return response


@router.post("/login/totp")
async def login_totp(request: Request, code: Annotated[str, Form()], next: Annotated[str, Form()] = ""
                     ) -> Response:
    state = api_state(request)
    token = request.cookies.get(COOKIE, "")
    try:
        new_token, _ = await operators.totp_step(state.pool, state.crypto, state.config.console, token, code,
                                                 client_address(request))
    except operators.OperatorError as exc:
        return render(request, "login.html", status=401, next=_next(next), step="totp", error=str(exc))
    response = RedirectResponse(_next(next), status_code=303)
    set_cookie(response, request, new_token)
    return response


@router.post("/logout")
async def logout(request: Request) -> Response:
    session = await session_of(request)
    token = request.cookies.get(COOKIE, "")
    if session is not None and token:
        await operators.end_session(api_state(request).pool, token)
    response = RedirectResponse(f"{PREFIX}/login", status_code=303)
    response.delete_cookie(COOKIE, path=PREFIX)
    return response
