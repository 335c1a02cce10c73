"""The console in a real headless Chromium (tests/console/browser.py): the journeys of issue 18's
Done-when, each step screenshotted under var/test-output/console/<test name>/.

Log in with password and TOTP; find a card, freeze it and see the POS decline it; request a load as an
operator and approve it as a supervisor; see the risk alert a burst of wrong PINs raises; verify the
audit chain. Everything runs against the worker's live system (tests/fixtures/live.py): real processes,
the real database, the browser clicking the pages' own forms.
"""

from __future__ import annotations

import json
import time
from typing import Any

from selenium.webdriver.common.by import By

from pos.system import System
from tests.api.test_payments import issue_card
from tests.console.browser import (
    browser_fixture,
    click_button,
    fill,
    fresh_code,
    login,
    logout,
    page_fixture,
    shot,
    wait_for,
    wait_text,
    wait_url,
)
from tests.fixtures.console import new_operator

__all__ = ["browser_fixture", "page_fixture"]  # the fixtures `browser` and `page`, used by name


def test_login_with_password_and_totp_then_the_dashboard(live: System, page: Any) -> None:
    op = new_operator(live, "viewer")
    page.get(f"{live.api_url}/console/")
    wait_for(page, "input[name='password']")  # a stranger is sent to the login page
    assert "/console/login" in page.current_url
    fill(page, "name", op.name)
    fill(page, "password", op.password)
    shot(page, "login-password")
    click_button(page, "Next")
    # The first login enrols the authenticator: its QR code and secret, shown once.
    wait_for(page, "input[name='code']")
    assert page.find_elements(By.CSS_SELECTOR, "figure.qr svg"), "no enrolment QR at the first login"
    assert wait_for(page, ".totp-secret").text.strip() == op.totp_secret
    shot(page, "login-enrolment-qr")
    wait_for(page, "input[name='code']").send_keys(fresh_code(op.totp_secret))
    click_button(page, "Log in")
    wait_text(page, "Dashboard", css="main")
    assert op.name in wait_for(page, "form.who").text
    shot(page, "dashboard")
    logout(page)
    shot(page, "logged-out")
    page.get(f"{live.api_url}/console/")
    wait_for(page, "input[name='password']")  # the session ended with the logout

    login(page, live.api_url, op)  # again: no QR, no secret this time
    assert page.find_elements(By.CSS_SELECTOR, ".totp-secret") == []
    wait_text(page, "Dashboard", css="main")


def test_a_wrong_totp_code_is_refused(live: System, page: Any) -> None:
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


# -- a card: find it, freeze it, the POS declines it ---------------------------------------------

TERMINAL = "T0000001"
RIGHT_PIN = "123456"   # tests.api.test_payments.issue_card's
WRONG_PIN = "000000"


def pos_purchase(live: System, card: dict[str, Any], pin: str, amount: str = "1.00") -> dict[str, Any]:
    """A purchase keyed at the demo POS terminal (the real switch, host and HSM): its receipt as JSON."""
    r = live.cli("--json", "pos", "purchase", amount, "--card", card["pan"], "--expiry", card["expiry"],
                 "--pin", pin, "-t", TERMINAL, check=False)
    assert "Traceback" not in r.stderr, r.stderr
    assert r.stdout.strip().startswith("{"), (r.returncode, r.stdout, r.stderr)
    receipt: dict[str, Any] = json.loads(r.stdout)
    return receipt


def masked(pan: str) -> str:
    return pan[:6] + "*" * (len(pan) - 10) + pan[-4:]


def open_card_by_last4(page: Any, live: System, card: dict[str, Any]) -> None:
    """The card search as an operator uses it: last 4 digits, then the card's row."""
    page.get(f"{live.api_url}/console/cards")
    fill(page, "last4", card["pan"][-4:])
    shot(page, "card-search")
    click_button(page, "Search")
    link = wait_for(page, f"#card-list a[href$='/console/cards/{card['id']}']")
    row = link.find_element(By.XPATH, "./ancestor::tr")
    assert masked(card["pan"]) in row.text and card["pan"] not in page.page_source
    shot(page, "card-found")
    link.click()
    wait_for(page, "#card-summary")


def test_find_a_card_freeze_it_and_the_pos_declines_it(live: System, page: Any) -> None:
    card = issue_card(live)
    assert pos_purchase(live, card, RIGHT_PIN).get("approved"), "the card pays before the freeze"
    op = new_operator(live, "operator")
    login(page, live.api_url, op)
    open_card_by_last4(page, live, card)
    assert wait_for(page, "h1 .state").text == "active"
    shot(page, "card-page")

    fill(page, "reason", "browser test: customer reports it missing")  # the first form: Freeze
    click_button(page, "Freeze", within="#card-actions")
    done = wait_for(page, "#done")
    assert "frozen" in done.text
    assert wait_for(page, "h1 .state").text == "frozen"
    shot(page, "card-frozen")

    receipt = pos_purchase(live, card, RIGHT_PIN)
    assert not receipt.get("approved") and receipt.get("code") not in (None, "00"), receipt
    page.refresh()
    history = wait_for(page, "#card-history")
    wait_text(page, "card frozen", css="#card-history")  # the decline, with the host's reason
    shot(page, "card-declined-at-the-pos")
    decline = history.find_element(By.XPATH, ".//tr[.//td[contains(., 'card frozen')]]")
    assert str(receipt["code"]) in decline.text and "purchase" in decline.text


# -- a risk alert from a burst of wrong PINs -------------------------------------------------------

def test_a_burst_of_wrong_pins_raises_an_alert_shown_in_the_console(live: System, page: Any) -> None:
    card = issue_card(live)
    for _ in range(3):  # risk.pin_failures = 3 (ops/payswitch.default.toml)
        receipt = pos_purchase(live, card, WRONG_PIN)
        assert receipt.get("code") in ("55", "75"), receipt
    op = new_operator(live, "operator")
    login(page, live.api_url, op, next_path="/console/risk")
    wait_for(page, "form.filters")
    shot(page, "risk-alerts")
    # The monitor reads the decisions every risk.poll_s (2 s): reload the card's alerts until it is there.
    deadline = time.monotonic() + 90
    while True:
        page.get(f"{live.api_url}/console/risk?card={card['id']}")
        rows = page.find_elements(By.CSS_SELECTOR, "table.alerts tbody tr.state-open")
        if rows or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert rows, "no open alert for the card within 90 s"
    row = rows[0]
    assert masked(card["pan"]) in row.text and card["pan"] not in page.page_source
    shot(page, "risk-alert-for-the-card")
    row.find_element(By.CSS_SELECTOR, "a[href*='/console/risk/']").click()
    wait_text(page, "Evidence", css="main")
    shot(page, "risk-alert-page")
    click_button(page, "Freeze card")
    wait_for(page, "[role='status']")
    wait_text(page, "card is frozen", css="main")
    shot(page, "risk-alert-card-frozen")
    receipt = pos_purchase(live, card, RIGHT_PIN)
    assert not receipt.get("approved"), receipt


# -- four eyes: a load requested by an operator, approved by a supervisor ---------------------------

FOUR_EYES_PRODUCT = "FOUREYES"  # anonymous cards up to 5,000.00, as tests/console/test_approvals_page.py


def four_eyes_card(live: System) -> int:
    live.cli("product", "add", FOUR_EYES_PRODUCT, "--kind", "reloadable", "--bin", "621277", "--name",
             "Four eyes", "--max-balance", "5000.00", "--max-balance-anonymous", "5000.00", check=False)
    out = json.loads(live.cli("--json", "card", "issue", "--product", FOUR_EYES_PRODUCT, "--activate").stdout)
    return int(out["cards"][0]["card_id"])


def test_a_load_requested_by_an_operator_takes_effect_when_a_supervisor_approves(live: System, page: Any
                                                                                  ) -> None:
    cid = four_eyes_card(live)
    operator, supervisor = new_operator(live, "operator"), new_operator(live, "supervisor")
    login(page, live.api_url, operator, next_path=f"/console/cards/{cid}")
    wait_for(page, "#card-actions")
    shot(page, "card-before-the-load")
    fill(page, "amount", "1500.00")  # above console.four_eyes_minor (1,000.00)
    wait_for(page, "#load-reason").send_keys("browser test: a refund paid onto the card")
    click_button(page, "Load", within="#card-actions")
    wait_text(page, "approval is needed", css="main")
    shot(page, "load-needs-approval")
    click_button(page, "Request approval of this load")
    wait_url(page, "/console/approvals/")
    wait_text(page, "requested", css="h1")
    approval_url = page.current_url
    assert operator.name in wait_for(page, ".requested-by").text
    assert page.find_elements(By.XPATH, "//button[normalize-space(.)='Approve']") == [], \
        "the requester is offered the approval"
    shot(page, "load-requested")
    page.get(f"{live.api_url}/console/cards/{cid}")
    assert "1,500.00" not in wait_for(page, "#card-balance").text  # nothing moved yet
    logout(page)

    login(page, live.api_url, supervisor, next_path="/console/approvals")
    link = wait_for(page, f"a[href$='{approval_url.split(live.api_url, 1)[1]}']")
    shot(page, "approvals-queue")
    link.click()
    wait_for(page, "#approve-reason").send_keys("checked the refund slip")
    shot(page, "approval-to-decide")
    click_button(page, "Approve")
    wait_text(page, "approved", css="h1")
    assert supervisor.name in wait_for(page, ".decided-by").text
    assert operator.name in wait_for(page, ".requested-by").text
    wait_text(page, "loaded 1,500.00 CNY", css="main")
    shot(page, "load-approved")
    page.get(f"{live.api_url}/console/cards/{cid}")
    wait_text(page, "1,500.00 CNY", css="#card-balance")
    shot(page, "card-after-the-load")


# -- the audit trail and its chain ---------------------------------------------------------------

def test_the_audit_trail_shows_the_actions_and_its_chain_verifies(live: System, page: Any) -> None:
    card = issue_card(live, load_yuan=None)
    op = new_operator(live, "operator")
    login(page, live.api_url, op, next_path=f"/console/cards/{card['id']}")
    fill(page, "reason", "browser test: audit")
    click_button(page, "Freeze", within="#card-actions")
    wait_for(page, "#done")
    shot(page, "card-frozen")
    page.get(f"{live.api_url}/console/audit")
    fill(page, "actor", op.name)
    click_button(page, "Filter")
    wait_text(page, "card.freeze", css="main")
    body = wait_for(page, "main").text
    assert card["pan"] not in page.page_source
    assert op.name in body
    shot(page, "audit-trail-of-the-operator")
    click_button(page, "Verify chain")  # htmx swaps the result in; without JavaScript a page of its own
    result = wait_for(page, "#verify-result p")
    wait_text(page, "Audit chain OK", css="#verify-result")
    shot(page, "audit-chain-verified")
    assert "BROKEN" not in result.text


# -- without JavaScript ----------------------------------------------------------------------------

def test_without_javascript_the_pages_read_and_the_forms_post(live: System, page: Any) -> None:
    """Scripts off in the browser (htmx never runs): login, the dashboard, the card search and its
    card, and "Verify chain" as a plain form post answered by a page of its own."""
    page.execute_cdp_cmd("Emulation.setScriptExecutionDisabled", {"value": True})
    try:
        card = issue_card(live, load_yuan="10.00")
        op = new_operator(live, "viewer")
        login(page, live.api_url, op)
        wait_text(page, "Dashboard", css="main")
        shot(page, "no-js-dashboard")
        open_card_by_last4(page, live, card)
        wait_text(page, "10.00 CNY", css="#card-balance")
        shot(page, "no-js-card")
        page.get(f"{live.api_url}/console/audit")
        click_button(page, "Verify chain")
        wait_text(page, "Audit chain OK", css="#verify-result")
        assert "/console/audit/verify" in page.current_url  # a full post: htmx did not run
        shot(page, "no-js-audit-verified")
    finally:
        page.execute_cdp_cmd("Emulation.setScriptExecutionDisabled", {"value": False})
