"""Login through the real forms of the live console: password then TOTP, enrolment QR at the first login,
lockout (password and TOTP) and its audit rows, idle and absolute timeouts, logout, cookie flags, login
CSRF, no session fixation, no open redirect."""

from __future__ import annotations

import re
import time
from typing import Any

import httpx
import pyotp
import pytest

from pos.system import System
from tests.api.conftest import db
from tests.fixtures.console import MadeOperator, new_operator

COOKIE = "payswitch_console"


def browser(live: System, **kw: Any) -> httpx.Client:
    return httpx.Client(base_url=live.api_url, timeout=30.0, follow_redirects=False, **kw)


def form_csrf(html: str) -> str:
    m = re.search(r'name="csrf" value="([^"]+)"', html)
    assert m, html
    return m.group(1)


def password(b: httpx.Client, op: MadeOperator, pw: str | None = None, next_: str = "/console/"
             ) -> httpx.Response:
    page = b.get("/console/login", params={"next": next_})
    assert page.status_code == 200, page.text
    return b.post("/console/login", data={"csrf": form_csrf(page.text), "name": op.name,
                                          "password": op.password if pw is None else pw, "next": next_})


def fresh_code(op: MadeOperator) -> str:
    """A code of a time step not used before by this operator (a code is accepted once only)."""
    totp = pyotp.TOTP(op.totp_secret)
    return totp.now()


def login(b: httpx.Client, op: MadeOperator, next_: str = "/console/") -> httpx.Response:
    r = password(b, op, next_=next_)
    assert r.status_code == 200 and 'name="code"' in r.text, r.text
    return b.post("/console/login/totp", data={"csrf": form_csrf(r.text), "code": fresh_code(op),
                                               "next": next_})


def signed_in(b: httpx.Client) -> bool:
    """Whether the browser holds a live full session (the login page sends it on, 303)."""
    r = b.get("/console/login")
    return r.status_code == 303


def full_csrf(live: System, b: httpx.Client) -> str:
    import hashlib

    digest = hashlib.sha256((b.cookies.get(COOKIE) or "").encode()).hexdigest()
    return str(db(live, lambda c: c.fetchval("SELECT csrf FROM operator_sessions WHERE token_hash = $1",
                                             digest)))


def audit_rows(live: System, actor: str) -> list[dict[str, Any]]:
    rows = db(live, lambda c: c.fetch("SELECT action, outcome, reason, target, before, after FROM audit_log"
                                      " WHERE actor = $1 ORDER BY id", actor))
    return [dict(r) for r in rows]


def test_first_login_shows_the_enrolment_qr_then_not_again(live: System) -> None:
    op = new_operator(live, "viewer")
    with browser(live) as b:
        r = password(b, op)
        assert r.status_code == 200 and "<svg" in r.text and op.totp_secret in r.text
        assert r.headers["cache-control"] == "no-store"
        r = b.post("/console/login/totp", data={"csrf": form_csrf(r.text), "code": fresh_code(op),
                                                "next": "/console/"})
        assert r.status_code == 303 and r.headers["location"] == "/console/"
        assert signed_in(b)
    enrolled = db(live, lambda c: c.fetchval("SELECT totp_enrolled FROM operators WHERE id = $1", op.id))
    assert enrolled is True
    with browser(live) as b:
        r = password(b, op)
        assert r.status_code == 200 and 'name="code"' in r.text
        assert "<svg" not in r.text and op.totp_secret not in r.text
    actions = [(a["action"], a["outcome"]) for a in audit_rows(live, op.name)]
    assert ("login.ok", "done") in actions
    for row in audit_rows(live, op.name):
        assert op.password not in str(row) and op.totp_secret not in str(row)


def test_a_code_is_accepted_once(live: System) -> None:
    op = new_operator(live, "viewer")
    with browser(live) as b:
        assert login(b, op).status_code == 303
    step = db(live, lambda c: c.fetchval("SELECT totp_last_step FROM operators WHERE id = $1", op.id))
    totp = pyotp.TOTP(op.totp_secret)
    with browser(live) as b:
        r = password(b, op)
        # the very code just accepted (its time step), given again: refused
        r = b.post("/console/login/totp", data={"csrf": form_csrf(r.text), "code": totp.at(step * 30),
                                                "next": "/console/"})
        assert r.status_code == 401 and "wrong code" in r.text
    rows = audit_rows(live, op.name)
    assert any(x["action"] == "login.failed" and x["reason"] in ("code used already", "wrong code")
               for x in rows)


def test_wrong_password_then_lockout_is_shown_and_recorded(live: System) -> None:
    op = new_operator(live, "operator")
    limit = 5  # console.lockout_after of the shipped configuration
    with browser(live) as b:
        for i in range(limit):
            r = password(b, op, pw="not the password at all")
            assert r.status_code == 401
            if i < limit - 1:
                assert "wrong name or password" in r.text
        assert "locked" in r.text
        r = password(b, op)  # the right password, but locked
        assert r.status_code == 401 and "locked" in r.text
        assert COOKIE not in b.cookies
    rows = audit_rows(live, op.name)
    assert [r["action"] for r in rows].count("login.failed") == limit + 1
    assert [r["action"] for r in rows].count("login.locked") == 1
    assert all(r["outcome"] == "refused" for r in rows)
    for row in rows:
        assert "not the password" not in str(row) and op.password not in str(row)


def test_wrong_totp_codes_lock_too(live: System) -> None:
    op = new_operator(live, "operator")
    with browser(live) as b:
        r = password(b, op)
        for _ in range(5):
            r = b.post("/console/login/totp", data={"csrf": form_csrf(r.text), "code": "000000",
                                                    "next": "/console/"})
            assert r.status_code == 401
            if "locked" in r.text:
                break
        assert "locked" in r.text
        assert not signed_in(b)
    rows = audit_rows(live, op.name)
    assert any(r["action"] == "login.locked" for r in rows)
    # unlocked by the operators' function (as `operator unlock` and the admin page do), it logs in again
    db(live, lambda c: c.execute("UPDATE operators SET locked_until = now() - interval '1 second'"
                                 " WHERE id = $1", op.id))
    with browser(live) as b:
        assert login(b, op).status_code == 303


def test_unknown_name_and_disabled_operator(live: System) -> None:
    op = new_operator(live, "viewer")
    unknown = "SELECT count(*) FROM audit_log WHERE actor = 'unknown' AND action = 'login.failed'"
    before = db(live, lambda c: c.fetchval(unknown))
    with browser(live) as b:
        r = password(b, MadeOperator(0, "nobody-here", "viewer", "x" * 12, ""))
        assert r.status_code == 401 and "wrong name or password" in r.text
        assert db(live, lambda c: c.fetchval(unknown)) > before
        assert not db(live, lambda c: c.fetchval("SELECT count(*) FROM audit_log WHERE actor = 'nobody-here'"
                                                 " OR target LIKE '%nobody-here%'"))
        db(live, lambda c: c.execute("UPDATE operators SET disabled_at = now() WHERE id = $1", op.id))
        r = password(b, op)
        assert r.status_code == 401 and "disabled" in r.text


def test_login_form_needs_its_csrf_token(live: System) -> None:
    op = new_operator(live, "viewer")
    with browser(live) as b:
        # a foreign site posting the login form: no login cookie, or a token that is not the cookie's
        r = b.post("/console/login", data={"name": op.name, "password": op.password, "next": "/console/"})
        assert r.status_code == 403
        b.get("/console/login")
        r = b.post("/console/login", data={"csrf": "forged-token-forged-token", "name": op.name,
                                           "password": op.password})
        assert r.status_code == 403 and COOKIE not in b.cookies
        r = password(b, op)
        assert r.status_code == 200
        r = b.post("/console/login/totp", data={"code": fresh_code(op), "next": "/console/"})
        assert r.status_code == 403


def _cookie(r: httpx.Response, name: str) -> str:
    return next(c for c in r.headers.get_list("set-cookie") if c.startswith(f"{name}="))


def test_cookie_flags(live: System) -> None:
    op = new_operator(live, "viewer")
    with browser(live) as b:
        page = b.get("/console/login")
        login_cookie = _cookie(page, "payswitch_login").lower()
        assert "httponly" in login_cookie and "samesite=strict" in login_cookie
        r = b.post("/console/login", data={"csrf": form_csrf(page.text), "name": op.name,
                                           "password": op.password})
        flags = _cookie(r, COOKIE).lower()
        assert "httponly" in flags and "samesite=strict" in flags and "path=/console" in flags
        assert "; secure" not in flags  # plain HTTP, not configured
    with browser(live, headers={"X-Forwarded-Proto": "https"}) as b:
        page = b.get("/console/login")
        login_cookie = _cookie(page, "payswitch_login")
        assert "; secure" in login_cookie.lower()
        # httpx keeps a Secure cookie for https only: sent by hand, as the browser behind TLS would
        value = login_cookie.split(";", 1)[0]
        b.cookies.clear()
        r = b.post("/console/login", data={"csrf": form_csrf(page.text), "name": op.name,
                                           "password": op.password}, headers={"Cookie": value})
        assert r.status_code == 200, r.text
        session_cookie = _cookie(r, COOKIE).lower()
        assert "; secure" in session_cookie and "httponly" in session_cookie
        assert "samesite=strict" in session_cookie


def test_no_session_fixation(live: System) -> None:
    op = new_operator(live, "viewer")
    with browser(live) as b:
        r = password(b, op)
        planted = b.cookies.get(COOKIE)
        r = b.post("/console/login/totp", data={"csrf": form_csrf(r.text), "code": fresh_code(op),
                                                "next": "/console/"})
        assert r.status_code == 303
        after = b.cookies.get(COOKIE)
        assert after and after != planted
        assert signed_in(b)
    # the cookie of the password step (what an attacker could have planted) is worth nothing after
    with browser(live) as other:
        other.cookies.set(COOKIE, planted or "", path="/console")
        assert not signed_in(other)
    # a cookie the browser held before the login is ended by the login
    with browser(live) as b:
        assert login(b, op).status_code in (303, 401)


@pytest.mark.parametrize("target", ["https://evil.example/", "//evil.example", "/\\evil.example",
                                    "/console/\\..\\evil", "javascript:alert(1)", "/evil", "",
                                    "/console/\r\nLocation: https://evil.example/"])
def test_no_open_redirect(live: System, target: str) -> None:
    op = new_operator(live, "viewer")
    with browser(live) as b:
        r = password(b, op, next_=target)
        assert r.status_code == 200
        r = b.post("/console/login/totp", data={"csrf": form_csrf(r.text), "code": fresh_code(op),
                                                "next": target})
        assert r.status_code == 303
        assert r.headers["location"] == "/console/"


def test_next_keeps_a_console_path(live: System) -> None:
    op = new_operator(live, "viewer")
    with browser(live) as b:
        r = login(b, op, next_="/console/operators?x=1")
        assert r.status_code == 303 and r.headers["location"] == "/console/operators?x=1"


def session_clock(live: System, token: str, column: str, interval: str) -> None:
    import hashlib

    digest = hashlib.sha256(token.encode()).hexdigest()
    db(live, lambda c: c.execute(f"UPDATE operator_sessions SET {column} = {column} - interval '{interval}'"
                                 " WHERE token_hash = $1", digest))


def test_idle_timeout(live: System) -> None:
    op = new_operator(live, "viewer")
    with browser(live) as b:
        assert login(b, op).status_code == 303
        token = b.cookies.get(COOKIE) or ""
        session_clock(live, token, "seen_at", "14 minutes")  # idle limit is 15 min
        assert signed_in(b)  # and seen_at is now again
        session_clock(live, token, "seen_at", "16 minutes")
        assert not signed_in(b)


def test_absolute_timeout(live: System) -> None:
    op = new_operator(live, "viewer")
    with browser(live) as b:
        assert login(b, op).status_code == 303
        token = b.cookies.get(COOKIE) or ""
        session_clock(live, token, "created_at", "7 hours 58 minutes")  # absolute limit 8 h
        assert signed_in(b)
        session_clock(live, token, "created_at", "3 minutes")
        assert not signed_in(b)  # used all along, still ended


def test_logout(live: System) -> None:
    op = new_operator(live, "viewer")
    with browser(live) as b:
        assert login(b, op).status_code == 303
        token = b.cookies.get(COOKIE) or ""
        csrf = full_csrf(live, b)
        assert b.post("/console/logout").status_code == 403  # without its CSRF token
        r = b.post("/console/logout", data={"csrf": csrf})
        assert r.status_code == 303 and r.headers["location"] == "/console/login"
    with browser(live) as again:
        again.cookies.set(COOKIE, token, path="/console")
        assert not signed_in(again)
    assert any(r["action"] == "logout" for r in audit_rows(live, op.name))


def test_lockout_runs_out_and_counts_anew(live: System) -> None:
    op = new_operator(live, "viewer")
    db(live, lambda c: c.execute("UPDATE operators SET failed_logins = 5, locked_until = now()"
                                 " - interval '1 minute' WHERE id = $1", op.id))
    with browser(live) as b:
        r = password(b, op, pw="still not the password")
        assert r.status_code == 401 and "wrong name or password" in r.text  # one failure, not locked
        time.sleep(0.01)
        assert login(b, op).status_code == 303
