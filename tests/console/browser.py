"""A real headless Chromium for the console's browser tests (tests/console/test_browser.py).

Debian's ``chromium`` and ``chromium-driver`` (/usr/bin/chromium, /usr/bin/chromedriver; ``.ci/run``
installs them when missing) driven by selenium. One browser per pytest worker (session scope); the
function fixture ``page`` hands a test that browser with its cookies cleared and its screenshot folder set.

Screenshots: ``shot(driver, name)`` writes ``NN-name.png`` (NN counts up within the test) under
``var/test-output/console/<test name>/`` in the checkout (var/ is not committed; the folder of a test is
emptied when the test starts). ``PAYSWITCH_TEST_OUTPUT`` names another root instead of var/test-output.

A test skips, with one line saying why, only when the browser or its driver is absent (and so could not
be installed): every other failure to start it is an error.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import shutil
import tempfile
import time
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import pyotp
import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
ROOT = Path(__file__).resolve().parents[2]
WAIT = 30.0  # seconds an element or a page may take on a busy 2-core box

# Headless Chromium as root in a container: no sandbox, no GPU, /tmp instead of a small /dev/shm, and
# none of the calls home (updates, sync, field trials) a test machine without internet would wait on.
ARGS = (
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
    "--no-default-browser-check", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--disable-quic", "--disable-extensions", "--window-size=1280,1000",
    "--lang=en-US",
)

_dirs: dict[int, Path] = {}       # id(driver) -> the running test's screenshot folder
_counters: dict[int, Iterator[int]] = {}


def output_root() -> Path:
    return Path(os.environ.get("PAYSWITCH_TEST_OUTPUT") or ROOT / "var" / "test-output") / "console"


def missing() -> str | None:
    absent = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    if absent:
        return f"no headless browser: {', '.join(absent)} missing (apt-get install chromium chromium-driver)"
    return None


@pytest.fixture(scope="session", name="browser")
def browser_fixture() -> Generator[Any, None, None]:
    """A selenium WebDriver on the system Chromium, one per worker."""
    why = missing()
    if why:
        pytest.skip(why)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="payswitch-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in (*ARGS, f"--user-data-dir={profile}"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture(name="page")
def page_fixture(browser: Any, request: pytest.FixtureRequest) -> Generator[Any, None, None]:
    """The worker's browser for one test: no cookies left from the test before, screenshots in the
    test's own folder."""
    browser.delete_all_cookies()
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.name)
    folder = output_root() / name
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True, exist_ok=True)
    _dirs[id(browser)], _counters[id(browser)] = folder, itertools.count(1)
    failed_before = request.session.testsfailed
    try:
        yield browser
    finally:
        # The call's report is logged before teardown: a failure has been counted by now.
        if request.session.testsfailed > failed_before:
            with contextlib.suppress(Exception):  # a dead page's screenshot must not hide the failure
                shot(browser, "failed")
        browser.delete_all_cookies()


_DIGITS = re.compile(r"(?<![0-9A-Za-z])\d{13,19}(?![0-9A-Za-z])")


def luhn_ok(number: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(number)):
        d = int(ch) * (2 if i % 2 else 1)
        total += d - 9 if d > 9 else d
    return total % 10 == 0


def full_pans(html: str) -> list[str]:
    """Card numbers in clear on a page: Luhn-valid 13-19 digit runs on a programme BIN (62...)."""
    return [m for m in _DIGITS.findall(html) if m.startswith("62") and luhn_ok(m)]


def shot(driver: Any, name: str) -> Path:
    """Save a PNG of the whole page as it is now, named by the step; returns its path. Every page
    screenshotted is also checked for a card number in clear (only the masked form may be shown)."""
    pans = full_pans(driver.page_source)
    assert not pans, f"{driver.current_url} shows a full card number ({pans[0][:6]}...{pans[0][-4:]})"
    folder = _dirs.get(id(driver)) or output_root() / "unnamed"
    counter = _counters.setdefault(id(driver), itertools.count(1))
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{next(counter):02d}-{re.sub(r'[^A-Za-z0-9_.-]+', '-', name)}.png"
    # The full height of the page, not only the window: a long list is seen whole.
    height = int(driver.execute_script(
        "return Math.max(document.body ? document.body.scrollHeight : 0, 600)"))
    width = int(driver.get_window_size()["width"])
    driver.set_window_size(width, min(max(height + 120, 1000), 6000))
    try:
        driver.save_screenshot(str(path))
    finally:
        driver.set_window_size(width, 1000)
    return path


# -- page helpers ---------------------------------------------------------------------------------

def wait_for(driver: Any, css: str, timeout: float = WAIT) -> Any:
    """The first element matching ``css`` once it is there (and visible)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout).until(ec.visibility_of_element_located((By.CSS_SELECTOR, css)))


def wait_text(driver: Any, text: str, timeout: float = WAIT, css: str = "body") -> None:
    """Wait until ``text`` is shown in the element ``css`` (the whole page by default)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, timeout).until(ec.text_to_be_present_in_element((By.CSS_SELECTOR, css), text))


def wait_url(driver: Any, fragment: str, timeout: float = WAIT) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, timeout).until(lambda d: fragment in d.current_url)


def fill(driver: Any, field: str, value: str) -> Any:
    """Type ``value`` into the form field named ``field`` (cleared first); returns the element."""
    element = wait_for(driver, f"[name='{field}']")
    element.clear()
    element.send_keys(value)
    return element


def click_button(driver: Any, text: str, within: str = "main") -> None:
    """Click the (first) button or submit input whose text is ``text``, inside ``within``."""
    from selenium.webdriver.common.by import By

    xpath = (".//*[self::button or self::input[@type='submit']]"
             f"[normalize-space(.)='{text}' or @value='{text}']")
    scope = wait_for(driver, within)
    buttons = [b for b in scope.find_elements(By.XPATH, xpath) if b.is_displayed()]
    if not buttons:
        raise AssertionError(f"no button {text!r} in {within} of {driver.current_url}")
    buttons[0].click()


def login(driver: Any, base_url: str, operator: Any, next_path: str = "/console/") -> None:
    """Log in through the forms as a person would: name and password, then the TOTP code of the
    operator's secret (tests/fixtures/console.py ``new_operator``). Screenshots both steps."""
    driver.get(f"{base_url}/console/login?next={next_path}")
    fill(driver, "name", operator.name)
    fill(driver, "password", operator.password)
    shot(driver, "login-password")
    click_button(driver, "Next")
    code = wait_for(driver, "input[name='code']")
    code.send_keys(fresh_code(operator.totp_secret))
    shot(driver, "login-totp")
    click_button(driver, "Log in")
    wait_for(driver, "form.who")  # signed in: the header names the operator


def logout(driver: Any) -> None:
    click_button(driver, "Log out", within="form.who")
    wait_for(driver, "input[name='password']")


_last_step: dict[str, int] = {}  # secret -> the step of the code last typed (the server takes each once)


def fresh_code(secret: str) -> str:
    """The current code, unless it expires within 3 s or was used already by this operator (then wait
    for the next one): the server accepts a step's code once, and a code turning over between typing and
    the server's check would fail the login for no reason."""
    totp = pyotp.TOTP(secret)
    while True:
        now = time.time()
        step, left = int(now) // totp.interval, totp.interval - now % totp.interval
        if left >= 3 and step > _last_step.get(secret, -1):
            _last_step[secret] = step
            return totp.at(step * totp.interval)
        time.sleep(left + 0.2)
