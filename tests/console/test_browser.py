"""The console in a real headless Chromium (tests/console/browser.py): the journeys of issue 18's
Done-when, each step screenshotted under var/test-output/console/<test name>/.

Log in with password and TOTP; find a card, freeze it and see the POS decline it; request a load as an
operator and approve it as a supervisor; see the risk alert a burst of wrong PINs raises; verify the
audit chain. Everything runs against the worker's live system (tests/fixtures/live.py): real processes,
the real database, the browser clicking the pages' own forms.
"""

from __future__ import annotations

from typing import Any

from pos.system import System
from tests.console.browser import browser_fixture, login, logout, page_fixture, shot, wait_for, wait_text
from tests.fixtures.console import new_operator

__all__ = ["browser_fixture", "page_fixture"]  # the fixtures `browser` and `page`, used by name


def test_login_with_password_and_totp_then_the_dashboard(live: System, page: Any) -> None:
    op = new_operator(live, "viewer")
    page.get(f"{live.api_url}/console/")
    wait_for(page, "input[name='password']")  # a stranger is sent to the login page
    assert "/console/login" in page.current_url
    login(page, live.api_url, op)
    wait_text(page, "Dashboard", css="main")
    assert op.name in wait_for(page, "form.who").text
    shot(page, "dashboard")
    logout(page)
    shot(page, "logged-out")
    page.get(f"{live.api_url}/console/")
    wait_for(page, "input[name='password']")  # the session ended with the logout


def test_a_wrong_totp_code_is_refused(live: System, page: Any) -> None:
    from tests.console.browser import click_button, fill

    op = new_operator(live, "viewer")
    page.get(f"{live.api_url}/console/login")
    fill(page, "name", op.name)
    fill(page, "password", op.password)
    click_button(page, "Next")
    code = wait_for(page, "input[name='code']")
    code.send_keys("000000" if not _is_code(op.totp_secret, "000000") else "111111")
    click_button(page, "Log in")
    alert = wait_for(page, "[role='alert']")
    shot(page, "wrong-code")
    assert "wrong code" in alert.text
    assert page.find_elements("css selector", "form.who") == []


def _is_code(secret: str, code: str) -> bool:
    import pyotp

    return bool(pyotp.TOTP(secret).verify(code, valid_window=1))
