"""Login (password, then TOTP, with the enrolment QR at the first login), logout.

console.operators does the checking; this only speaks HTTP. The login form carries a pre-session CSRF
token (double submit: the same random value in a SameSite=Strict, HttpOnly cookie and in the form), so a
foreign site cannot log a browser in under its own account; the TOTP form carries the password-stage
session's token, logout the full session's. Each step sets a new session cookie (no fixation), and
``next`` is only ever a path under /console/ (no open redirect). Pages holding a secret are not cached.
"""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from markupsafe import Markup

from console import operators
from console.auth import COOKIE, ConsoleRefusal, api_state, client_address, secure, session_of, set_cookie
from console.web import PREFIX, render

router = APIRouter()
LOGIN_COOKIE = "payswitch_login"  # the pre-session CSRF token of the login form (double submit)
_REFUSED = "This form has expired or did not come from the console. Reload the page and try again."


def _next(target: str | None) -> str:
    """Only a path under the console (never another site: no open redirect)."""
    if (target and target.startswith(PREFIX + "/") and not target.startswith("//") and "\\" not in target
            and target.isprintable() and not any(c.isspace() for c in target) and len(target) <= 2000):
        return target
    return PREFIX + "/"


def _login_token(request: Request) -> str:
    token = request.cookies.get(LOGIN_COOKIE, "")
    return token if 20 <= len(token) <= 100 and token.isascii() else secrets.token_urlsafe(32)


def _set_login_cookie(response: Response, request: Request, token: str) -> None:
    response.set_cookie(LOGIN_COOKIE, token, httponly=True, samesite="strict", secure=secure(request),
                        path=PREFIX, max_age=3600)


def _no_store(response: Response) -> Response:
    response.headers["Cache-Control"] = "no-store"
    return response


def _password_page(request: Request, next_: str, *, status: int = 200, error: str = "", name: str = ""
                   ) -> Response:
    token = _login_token(request)
    response = render(request, "login.html", status=status, next=next_, step="password", error=error,
                      name=name, login_csrf=token)
    _set_login_cookie(response, request, token)
    return _no_store(response)


async def _totp_page(request: Request, session: operators.Session, next_: str, *, status: int = 200,
                     error: str = "") -> Response:
    state = api_state(request)
    enrol = await operators.enrolment(state.pool, state.crypto, session)
    qr = Markup(operators.qr_svg(enrol.provisioning_uri)) if enrol is not None else None
    response = render(request, "login.html", status=status, next=next_, step="totp", error=error,
                      step_csrf=session.csrf, enrol=enrol, qr=qr)
    return _no_store(response)


def _same(sent: str, expected: str) -> bool:
    return bool(sent) and bool(expected) and secrets.compare_digest(sent.encode(), expected.encode())


@router.get("/login", response_class=HTMLResponse)
async def login_page(request: Request, next: str | None = None) -> Response:
    session = await session_of(request)
    if session is not None and session.stage == "full":
        return RedirectResponse(_next(next), status_code=303)
    if session is not None and session.stage == "password":
        return await _totp_page(request, session, _next(next))
    return _password_page(request, _next(next))


@router.post("/login")
async def login(request: Request, name: Annotated[str, Form(max_length=200)] = "",
                password: Annotated[str, Form(max_length=2000)] = "", next: Annotated[str, Form()] = "",
                csrf: Annotated[str, Form()] = "") -> Response:
    if not _same(csrf, request.cookies.get(LOGIN_COOKIE, "")):
        raise ConsoleRefusal(403, _REFUSED)
    state = api_state(request)
    try:
        token, session = await operators.password_step(state.pool, state.config.console, name, password,
                                                       client_address(request))
    except operators.OperatorError as exc:
        return _password_page(request, _next(next), status=401, error=str(exc), name=name)
    old = request.cookies.get(COOKIE, "")
    if old:
        await operators.end_session(state.pool, old)  # whatever the browser held before is worth nothing
    response = await _totp_page(request, session, _next(next))
    set_cookie(response, request, token)
    response.delete_cookie(LOGIN_COOKIE, path=PREFIX)
    return response


@router.get("/login/totp", response_class=HTMLResponse)
async def login_totp_page(request: Request, next: str | None = None) -> Response:
    session = await session_of(request)
    if session is None or session.stage != "password":
        return RedirectResponse(f"{PREFIX}/login?next={_next(next)}", status_code=303)
    return await _totp_page(request, session, _next(next))


@router.post("/login/totp")
async def login_totp(request: Request, code: Annotated[str, Form(max_length=20)] = "",
                     next: Annotated[str, Form()] = "", csrf: Annotated[str, Form()] = "") -> Response:
    state = api_state(request)
    token = request.cookies.get(COOKIE, "")
    session = await session_of(request)
    if session is None or session.stage != "password":
        if session is None and csrf:
            return _password_page(request, _next(next), status=401,
                                  error="the login has expired: give the password again")
        raise ConsoleRefusal(403, _REFUSED)
    if not _same(csrf, session.csrf):
        raise ConsoleRefusal(403, _REFUSED)
    try:
        new_token, _ = await operators.totp_step(state.pool, state.crypto, state.config.console, token, code,
                                                 client_address(request))
    except operators.OperatorError as exc:
        if str(exc) == operators.LOCKED:
            response = _password_page(request, _next(next), status=401, error=str(exc))
            response.delete_cookie(COOKIE, path=PREFIX)
            return response
        again = await session_of(request)
        if again is None:
            return _password_page(request, _next(next), status=401, error=str(exc))
        return await _totp_page(request, again, _next(next), status=401, error=str(exc))
    response = RedirectResponse(_next(next), status_code=303)
    set_cookie(response, request, new_token)
    return response


@router.post("/logout")
async def logout(request: Request, csrf: Annotated[str, Form()] = "") -> Response:
    session = await session_of(request)
    token = request.cookies.get(COOKIE, "")
    sent = request.headers.get("x-csrf-token") or csrf
    if session is None:
        if not sent:
            raise ConsoleRefusal(403, _REFUSED)
        response = RedirectResponse(f"{PREFIX}/login", status_code=303)
        response.delete_cookie(COOKIE, path=PREFIX)
        return response
    if not _same(sent, session.csrf):
        raise ConsoleRefusal(403, _REFUSED)
    await operators.logout(api_state(request).pool, token, session, client_address(request))
    response = RedirectResponse(f"{PREFIX}/login", status_code=303)
    response.delete_cookie(COOKIE, path=PREFIX)
    return response
