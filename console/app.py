"""Mount the console on the API's FastAPI app at /console (``payswitch api serve`` serves both).

Views are modules listed in ``VIEWS`` (each an ``APIRouter`` named ``router``, optionally a ``NAV`` list of
(label, path, least role)); a module not yet written is skipped. Console routes are not part of the
API's OpenAPI document. Static assets (htmx, CSS) are vendored under console/static: no CDN.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles

from console import web
from console.auth import ConsoleRefusal, LoginRequired, login_redirect

VIEWS: tuple[str, ...] = (
    "console.views.login",  # login (password, TOTP), enrolment, logout
    "console.views.dashboard",  # the dashboard (home)
    "console.views.cards",  # card search, card page and its actions
    "console.views.cardholders",  # cardholders, KYC/AML review queue
    "console.views.merchants",  # merchants, stores, terminals
    "console.views.network",  # links, routes, SAF queue
    "console.views.settlement",  # settlement runs and their reports
    "console.views.approvals",  # four eyes: requests and approvals
    "console.views.risk",  # risk alerts
    "console.views.audit",  # the audit trail and its verification
    "console.views.reports",  # daily, float, dormant, expiring (pages and CSV)
    "console.views.operators",  # operators (admin)
)


def mount(app: FastAPI) -> None:
    app.mount(f"{web.PREFIX}/static", StaticFiles(directory=str(web.TEMPLATES.parent / "static")),
              name="console-static")
    web.NAV.clear()
    for name in VIEWS:
        if importlib.util.find_spec(name) is None:
            continue
        module: Any = importlib.import_module(name)
        app.include_router(module.router, prefix=web.PREFIX, include_in_schema=False)
        web.NAV.extend(getattr(module, "NAV", ()))

    @app.exception_handler(LoginRequired)
    async def _login(request: Request, exc: LoginRequired) -> Response:
        if request.headers.get("hx-request"):
            return Response(status_code=401, headers={"HX-Redirect": f"{web.PREFIX}/login"})
        return login_redirect(request)

    @app.exception_handler(ConsoleRefusal)
    async def _refused(request: Request, exc: ConsoleRefusal) -> HTMLResponse:
        return web.render(request, "error.html", status=exc.status, message=exc.message)

    @app.get(web.PREFIX, include_in_schema=False)
    async def _root() -> RedirectResponse:
        return RedirectResponse(f"{web.PREFIX}/", status_code=307)
