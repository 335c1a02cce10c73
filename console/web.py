"""Rendering: the Jinja2 environment, its filters (money, local time) and ``render``.

Money is shown as yuan with two decimals and its currency (``ops.money.format_money``), times in the
programme's local time with its offset (``ops.localtime.format_local``). Every page extends
``base.html``; its navigation is the ``NAV`` of every view module, filtered by the operator's role.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse
from jinja2 import Environment, FileSystemLoader, select_autoescape

from console.roles import rank
from ops.localtime import format_local
from ops.money import format_money

TEMPLATES = Path(__file__).parent / "templates"
PREFIX = "/console"

# (label, path, least role): filled by console.app from every view module's NAV
NAV: list[tuple[str, str, str]] = []

env = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=select_autoescape(["html", "svg"]),
                  trim_blocks=True, lstrip_blocks=True)


def _money(minor: int | None, currency: str | None = "CNY") -> str:
    return "" if minor is None else format_money(int(minor), currency or "CNY")


def timezone_of(request: Request) -> str:
    state = getattr(request.app.state, "api", None)
    return str(state.timezone) if state is not None else "Asia/Shanghai"


def render(request: Request, template: str, status: int = 200, **context: Any) -> HTMLResponse:
    """``template`` with the operator, the CSRF token, the navigation and the local-time filter."""
    session = getattr(request.state, "console_session", None)
    tz = timezone_of(request)
    role = session.operator.role if session is not None else None
    nav = [(label, path) for label, path, least in NAV if role is not None and rank(role) >= rank(least)]

    def local(instant: dt.datetime | None, seconds: bool = True) -> str:
        return format_local(instant, tz, seconds=seconds) if instant is not None else ""

    html = env.get_template(template).render(
        request=request, session=session, operator=session.operator if session else None,
        csrf=session.csrf if session else "", nav=nav, prefix=PREFIX, money=_money, local=local,
        **context)
    return HTMLResponse(html, status_code=status)
