"""The console is served by `api serve`: a logged-in operator sees the dashboard, a stranger is sent to
the login page, a full login (password, then TOTP) works through the forms."""

from __future__ import annotations

import re
from typing import Any

import httpx
import pyotp

from pos.system import System
from tests.fixtures.console import new_operator


def _csrf(html: str) -> str:
    m = re.search(r'name="csrf" value="([^"]+)"', html)
    assert m, html
    return m.group(1)


def test_dashboard_needs_a_session(live: System, console_as: Any) -> None:
    with httpx.Client(base_url=live.api_url, follow_redirects=False) as anon:
        r = anon.get("/console/")
        assert r.status_code == 303 and r.headers["location"].startswith("/console/login?next=/console/")
    c = console_as("viewer")
    r = c.get("/console/")
    assert r.status_code == 200 and "Dashboard" in r.text and c.operator.name in r.text


def test_login_with_password_then_totp(live: System) -> None:
    op = new_operator(live, "operator")
    with httpx.Client(base_url=live.api_url, follow_redirects=False) as b:
        page = b.get("/console/login")  # the login form's own CSRF token (console/views/login.py)
        r = b.post("/console/login", data={"name": op.name, "password": op.password, "next": "/console/",
                                           "csrf": _csrf(page.text)})
        assert r.status_code == 200 and 'name="code"' in r.text
        before = b.cookies.get("payswitch_console")
        code = pyotp.TOTP(op.totp_secret).now()
        r = b.post("/console/login/totp", data={"code": code, "next": "/console/", "csrf": _csrf(r.text)})
        assert r.status_code == 303 and r.headers["location"] == "/console/"
        assert b.cookies.get("payswitch_console") != before  # a new token after the login
        assert b.get("/console/").status_code == 200
