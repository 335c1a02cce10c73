"""Catalogue changes reach the running services (issue 15, item 1): real hsm_sim, host and switch
processes, changes made with the operator commands while they run.

- `product update` is in force from the host's next request (the host reads a card's product with
  every posting batch);
- `merchant suspend` is declined 03 by the host within its catalogue poll (host_catalog.version), not
  after the 30 s merchant cache; `merchant resume` lets purchases through again;
- `terminal disable` refuses a terminal that is signed on (58, from the switch's catalogue poll) and
  its next sign-on; `terminal enable` gives it back.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest

from tests.fixtures.hsm import HsmServer
from tests.fixtures.services import run_cli, start_switch
from tests.switch.terminal import Terminal
from tests.switch.test_host_e2e import MERCHANT, System, _wait_link, seeded


@pytest.fixture(scope="module")
def system(db_url: str, hsm_server: HsmServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    stub = seeded(db_url, hsm_server, tmp_path_factory, sm4_terminal=False)
    stub.start_host()
    stub.switch = start_switch(db_url, hsm_server, request_timeout_ms=800, config_poll_s=1)
    try:
        t = stub.terminal("3des")
        _wait_link(stub, t)
        t.close()
        yield stub
    finally:
        stub.switch.stop()
        stub.host.stop()
    check = run_cli(["ledger", "check"], stub.env)
    assert check.returncode == 0, check.stdout + check.stderr


def _until(code: str, attempt: Callable[[], str], seconds: float = 6.0) -> list[str]:
    """``attempt()`` answers ``code`` within ``seconds`` (well under the host's 30 s merchant cache);
    every answer it got on the way."""
    deadline = time.monotonic() + seconds
    seen = []
    while True:
        seen.append(attempt())
        if seen[-1] == code:
            return seen
        assert time.monotonic() < deadline, f"still {seen[-1]}, expected {code}"
        time.sleep(0.3)


def test_product_update_is_in_force_at_the_next_request(system: System) -> None:
    t = system.terminal("3des")
    try:
        assert t.exchange(system.buy(t, 0, 1000, pin="123456")).code == "00"
        system.cli("product", "update", "CAMPUS", "--per-txn-limit", "5.00")
        assert t.exchange(system.buy(t, 0, 1000, pin="123456")).code == "61"
        assert t.exchange(system.buy(t, 0, 500, pin="123456")).code == "00"
        system.cli("product", "update", "CAMPUS", "--no-pin")
        assert t.exchange(system.buy(t, 0, 100)).code == "00"  # no PIN sent: 55 before the update
        system.cli("product", "update", "CAMPUS", "--per-txn-limit", "1000", "--pin-required")
        assert t.exchange(system.buy(t, 0, 100)).code == "55"
        shown = system.cli("card", "show", str(system.card_ids[0]))  # the day's use, as the host counts it
        assert shown["today_count"] >= 3 and shown["today_amount_minor"] >= 1000 + 500 + 100
    finally:
        t.close()


def test_suspended_merchant_is_declined_03_by_the_running_host(system: System) -> None:
    t = system.terminal("3des")
    try:
        before = system.balance(1)
        assert t.exchange(system.buy(t, 1, 200, pin="123456")).code == "00"
        system.cli("merchant", "suspend", MERCHANT)
        answers = _until("03", lambda: t.exchange(system.buy(t, 1, 200, pin="123456")).code)
        history = system.cli("card", "history", str(system.card_ids[1]))
        rows = history if isinstance(history, list) else history.get("history", history.get("rows", []))
        assert any(r.get("rc") == "03" for r in rows)
        system.cli("merchant", "resume", MERCHANT)
        answers += _until("00", lambda: t.exchange(system.buy(t, 1, 200, pin="123456")).code)
        assert set(answers) == {"00", "03"}
        assert system.balance(1) == before - 200 * (1 + answers.count("00"))  # a 03 took nothing
    finally:
        t.close()


def test_disabled_terminal_is_refused_while_signed_on_and_at_sign_on(system: System) -> None:
    t = system.terminal("3des")
    try:
        assert t.exchange(system.buy(t, 2, 100, pin="123456")).code == "00"
        system.cli("terminal", "disable", "T3DES001")
        _until("58", lambda: t.exchange(system.buy(t, 2, 100, pin="123456")).code)
        assert t.sign_on().code == "58"
        system.cli("terminal", "enable", "T3DES001")
        again = Terminal("3des", "T3DES001", MERCHANT)
        again.connect(system.switch.ports["3des"])
        try:
            assert again.sign_on().code == "00"
            assert again.exchange(system.buy(again, 2, 100, pin="123456")).code == "00"
        finally:
            again.close()
    finally:
        t.close()
