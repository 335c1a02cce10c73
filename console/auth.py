"""Who is asking, and may they: the session cookie, CSRF on every form, roles on every action.

``signed_in`` (a dependency) gives the live full session or sends the browser to the login page. Every
state-changing view takes ``Depends(action("card.freeze", "operator"))``: it registers the action with
its least role (console.roles), checks the session, the CSRF token (form field ``csrf`` or header
``X-CSRF-Token``) and the role, and records a refusal in the audit trail (ops.audit) before answering
403. The view then records what it did with ``Acting.record`` (same row format, outcome ``done``).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

from fastapi import Depends, Request
from fastapi.responses import RedirectResponse

from console import operators
from console.roles import may, register
from console.web import PREFIX
from ops import audit

COOKIE = "payswitch_console"


class ConsoleRefusal(Exception):
    """Answered as an HTML page with ``status`` (console.app installs the handler)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class LoginRequired(Exception):
    """The browser goes to the login page (303), or an htmx request gets HX-Redirect."""


def api_state(request: Request) -> Any:
    return request.app.state.api


def client_address(request: Request) -> str:
    return request.client.host if request.client else ""


def secure(request: Request) -> bool:
    """Whether the cookie is marked Secure: configured, or the request came over TLS (or a proxy's)."""
    config = api_state(request).config.console
    proto = request.headers.get("x-forwarded-proto", request.url.scheme)
    return bool(config.secure_cookies) or proto == "https"


def set_cookie(response: Any, request: Request, token: str) -> None:
    response.set_cookie(COOKIE, token, httponly=True, samesite="strict", secure=secure(request),
                        path=PREFIX, max_age=api_state(request).config.console.session_hours * 3600)


async def session_of(request: Request) -> operators.Session | None:
    token = request.cookies.get(COOKIE)
    if not token:
        return None
    state = api_state(request)
    return await operators.lookup(state.pool, state.config.console, token)


async def signed_in(request: Request) -> operators.Session:
    session = await session_of(request)
    if session is None or session.stage != "full":
        raise LoginRequired()
    request.state.console_session = session
    return session


def login_redirect(request: Request) -> RedirectResponse:
    # only a path of ours goes into ?next= (never a full URL: no open redirect)
    target = request.url.path if request.url.path.startswith(PREFIX + "/") else PREFIX + "/"
    return RedirectResponse(f"{PREFIX}/login?next={target}", status_code=303)


@dataclass
class Acting:
    """An operator taking an action: who, from where, and the form they sent."""

    session: operators.Session
    action: str
    source: str
    form: dict[str, str]
    pool: Any

    async def record(self, *, target: str, before: Any = None, after: Any = None, reason: str = "",
                     outcome: str = "done", conn: Any = None) -> int:
        """The action's audit row (in ``conn``'s transaction when given, else on its own)."""
        op = self.session.operator

        async def work(c: Any) -> int:
            return await audit.record(c, actor=op.name, role=op.role, source=self.source,
                                      action=self.action, target=target, before=before, after=after,
                                      reason=reason, outcome=outcome)

        if conn is not None:
            return await work(conn)
        return int(await self.pool.run(work))


def action(name: str, least: str) -> Any:
    """The dependency of a state-changing view: session, CSRF, role (a refusal is recorded)."""
    register(name, least)

    async def check(request: Request) -> Acting:
        session = await signed_in(request)
        state = api_state(request)
        form: dict[str, str] = {}
        if request.headers.get("content-type", "").startswith(("application/x-www-form-urlencoded",
                                                               "multipart/form-data")):
            form = {k: v for k, v in (await request.form()).items() if isinstance(v, str)}
        sent = request.headers.get("x-csrf-token") or form.get("csrf", "")
        acting = Acting(session, name, client_address(request), form, state.pool)
        if not sent or not secrets.compare_digest(sent, session.csrf):
            await acting.record(target=request.url.path, outcome="refused",
                                reason="missing or wrong CSRF token")
            raise ConsoleRefusal(403, "This form has expired or did not come from the console. Reload the"
                                      " page and try again.")
        if not may(session.operator.role, name):
            await acting.record(target=request.url.path, outcome="refused",
                                reason=f"role {session.operator.role} may not {name}")
            raise ConsoleRefusal(403, f"Your role ({session.operator.role}) may not do this ({name}).")
        return acting

    return Depends(check)


Viewer = Depends(signed_in)
