"""The whole path with the real processes: terminals -> switch -> authorization host -> ledger.

Everything is set up through the operator CLIs (host product/card/merchant/terminal/link, switch
link/route), then the real hsm_sim, host and switch processes run against one PostgreSQL database.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import trio

from tests.fixtures.hsm import HsmServer
from tests.fixtures.services import ServiceProcess, base_env, free_port, run_cli, start_service, start_switch
from tests.switch.terminal import TMK_HEX, Terminal

ZPK_HEX = "89ABCDEF01234567FEDCBA9876543210"
MERCHANT = "898330160120001"
BIN = "621234"


@dataclass
class System:
    env: dict[str, str]
    db_url: str
    hsm: HsmServer
    host: ServiceProcess
    switch: ServiceProcess
    pans: list[str]
    card_ids: list[int]
    expiries: list[str]

    def buy(self, t: Terminal, i: int, amount: int, pin: str | None = None) -> dict[str, Any]:
        return t.purchase_msg(self.pans[i], amount, pin=pin, expiry=self.expiries[i])

    def cli(self, *args: str) -> Any:
        result = run_cli(["--json", *args], self.env)
        assert result.returncode == 0, f"payswitch {' '.join(args)}: {result.stderr}"
        return json.loads(result.stdout) if result.stdout.strip() else None

    def balance(self, i: int) -> int:
        return int(self.cli("card", "show", str(self.card_ids[i]))["balance_minor"])

    def terminal(self, scheme: str) -> Terminal:
        t = Terminal(scheme, "T3DES001" if scheme == "3des" else "TSM40001", MERCHANT)
        t.connect(self.switch.ports[scheme])
        assert t.sign_on().code == "00"
        return t

    def start_host(self) -> ServiceProcess:
        port = int(self.env["PAYSWITCH_HOST_PORT"])
        self.host = start_service("host", ["host", "serve"], self.env, port)
        return self.host


def _form_zpk(hsm: HsmServer) -> str:
    async def main() -> str:
        async with hsm.client() as h:
            return (await h.form_key("001", [ZPK_HEX, "0" * 32])).under_lmk

    return trio.run(main)


def seeded(
    db_url: str,
    hsm_server: HsmServer,
    tmp_path_factory: pytest.TempPathFactory,
    *,
    sm4_terminal: bool = True,
    link_connections: int = 2,
) -> System:
    """The campus programme through the operator CLIs: host keys, a product and three loaded cards with
    PIN 123456, the merchant and its terminals, the host link, and the switch's link to the host with its
    route. Nothing is started yet (``start_host``, then the switch)."""
    host_port = free_port()
    env = {
        **base_env(db_url, hsm_server),
        "PAYSWITCH_HOST_PORT": str(host_port),
        "PAYSWITCH_HOST_METRICS_PORT": "0",
        "PAYSWITCH_HOST_PROFILE": "3des",
        "PAYSWITCH_HOST_MAILER_DIR": str(tmp_path_factory.mktemp("mailers")),
    }
    zpk = _form_zpk(hsm_server)
    stub = System(env, db_url, hsm_server, None, None, [], [], [])  # type: ignore[arg-type]
    stub.cli("host", "keys")
    stub.cli("product", "add", "CAMPUS", "--kind", "reloadable", "--bin", BIN, "--pin-scheme", "3des")
    issued = stub.cli("card", "issue", "--product", "CAMPUS", "--count", "3", "--pin", "123456", "--activate")
    stub.pans = [c["pan"] for c in issued["cards"]]
    stub.card_ids = [c["card_id"] for c in issued["cards"]]
    stub.expiries = [str(c["expiry"]) for c in issued["cards"]]
    for cid in stub.card_ids:
        stub.cli("card", "load", str(cid), "--amount", "500.00")
    stub.cli("merchant", "add", MERCHANT, "--name", "Campus Canteen", "--mcc", "5812")
    stub.cli("terminal", "add", "T3DES001", "--merchant", MERCHANT, "--scheme", "3des", "--tmk", TMK_HEX)
    if sm4_terminal:
        stub.cli("terminal", "add", "TSM40001", "--merchant", MERCHANT, "--scheme", "sm4", "--tmk", TMK_HEX)
    stub.cli("host", "link", "48880000", "--profile", "3des", "--zpk", zpk, "--no-mac")  # switch on loopback
    stub.cli(
        "switch", "link", "add", "issuer", "--host", "127.0.0.1", "--port", str(host_port),
        "--scheme", "3des", "--zpk", zpk, "--connections", str(link_connections),
    )  # fmt: skip
    stub.cli("switch", "route", "add", BIN, "--link", "issuer")
    return stub


@pytest.fixture(scope="module")
def system(db_url: str, hsm_server: HsmServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    stub = seeded(db_url, hsm_server, tmp_path_factory)
    env = stub.env
    stub.start_host()
    stub.switch = start_switch(db_url, hsm_server, request_timeout_ms=800, saf_retry_s=1)
    try:
        t = stub.terminal("3des")  # wait until the link to the host is signed on
        deadline = time.monotonic() + 10
        while t.exchange(t.purchase_msg("6999000000000000001", 1)).code not in ("91",):
            assert time.monotonic() < deadline
        _wait_link(stub, t)
        t.close()
        yield stub
    finally:
        assert stub.switch.stop() == 0, stub.switch.log()[-3000:]
        stub.host.stop()
    check = run_cli(["ledger", "check"], env)
    assert check.returncode == 0, check.stdout + check.stderr


def _wait_link(system: System, t: Terminal) -> None:
    deadline = time.monotonic() + 15
    while True:
        r = t.exchange(system.buy(t, 2, 1, pin="123456"))
        if r.code == "00":
            return
        assert r.code == "91" and time.monotonic() < deadline, r.msg


def test_purchase_with_pin_on_both_profiles_posts_to_the_ledger(system: System) -> None:
    for scheme, amount in (("3des", 1234), ("sm4", 2000)):
        t = system.terminal(scheme)
        before = system.balance(0)
        r = t.exchange(system.buy(t, 0, amount, pin="123456"))
        assert r.code == "00" and t.verify_mac(r) and r.msg["38"].strip()
        assert system.balance(0) == before - amount
        t.close()


def test_wrong_pin_and_wrong_mac_post_nothing(system: System) -> None:
    t = system.terminal("3des")
    before = system.balance(1)
    r = t.exchange(system.buy(t, 1, 100, pin="000000"))
    assert r.code == "55" and t.verify_mac(r)
    r = t.exchange(system.buy(t, 1, 100, pin="123456"), bad_mac=True)
    assert r.code == "A0" and r.resign
    assert system.balance(1) == before
    t.close()


def test_duplicate_posts_once(system: System) -> None:
    t = system.terminal("sm4")
    before = system.balance(1)
    msg = system.buy(t, 1, 300, pin="123456")
    first = t.exchange(msg)
    second = t.exchange(msg)
    assert first.code == second.code == "00" and first.msg["37"] == second.msg["37"]
    assert system.balance(1) == before - 300
    t.close()


def test_balance_inquiry_returns_de54(system: System) -> None:
    t = system.terminal("3des")
    msg = system.buy(t, 1, 0, pin="123456")
    msg.pop("4")
    msg["3"] = "310000"
    msg["60"] = f"01{t.batch:06d}000"
    r = t.exchange(msg)
    assert r.code == "00" and r.msg["54"] == f"1002156C{system.balance(1):012d}"
    t.close()


def test_terminal_reversal_restores_the_balance(system: System) -> None:
    t = system.terminal("3des")
    before = system.balance(2)
    msg = system.buy(t, 2, 700, pin="123456")
    assert t.exchange(msg).code == "00"
    assert system.balance(2) == before - 700
    rev = t.exchange(t.reversal_msg(msg))
    assert rev.code == "00" and t.verify_mac(rev)
    assert system.balance(2) == before
    t.close()


def test_void_and_refund_name_the_original_by_rrn(system: System) -> None:
    t = system.terminal("3des")
    before = system.balance(2)
    sale = t.exchange(system.buy(t, 2, 1000, pin="123456"))
    assert sale.code == "00"
    void = system.buy(t, 2, 1000)
    void.update(
        {
            "3": "200000",
            "37": sale.msg["37"],
            "38": sale.msg["38"],
            "60": f"23{t.batch:06d}000",
            "61": f"{t.batch:06d}{sale.msg['11']}",
        }
    )
    void["22"] = "012"
    r = t.exchange(void)
    assert r.code == "00" and t.verify_mac(r), r.msg
    assert system.balance(2) == before
    sale = t.exchange(system.buy(t, 2, 2000, pin="123456"))
    assert sale.code == "00"
    refund = system.buy(t, 2, 500)
    refund.update(
        {
            "t": "0220",
            "3": "200000",
            "37": sale.msg["37"],
            "60": f"25{t.batch:06d}000",
            "61": f"{t.batch:06d}{sale.msg['11']}{time.strftime('%m%d')}",
        }
    )
    refund["22"] = "012"
    r = t.exchange(refund)
    assert r.msg["t"] == "0230" and r.code == "00" and t.verify_mac(r), r.msg
    assert system.balance(2) == before - 1500
    t.close()


def test_host_killed_mid_request_98_then_reversal_after_restart(system: System) -> None:
    t = system.terminal("3des")
    before = system.balance(0)
    # 1. host frozen: the purchase reaches its socket, the switch times out -> 98, 0420 queued;
    #    the host then resumes, posts the late purchase, and the 0420 behind it undoes it.
    os.kill(system.host.process.pid, signal.SIGSTOP)
    try:
        r = t.exchange(system.buy(t, 0, 900, pin="123456"))
    finally:
        os.kill(system.host.process.pid, signal.SIGCONT)
    assert r.code == "98" and t.verify_mac(r)
    _until(
        lambda: system.balance(0) == before and _saf_empty(system),
        "reversal of the late purchase",
        info=lambda: (
            before,
            system.balance(0),
            system.cli("switch", "saf", "list", "--all"),
            system.switch.log()[-3000:],
            system.host.log()[-3000:],
        ),
    )
    # 2. host killed with the request in flight; the advice waits in PostgreSQL until it restarts
    os.kill(system.host.process.pid, signal.SIGSTOP)
    r = t.exchange(system.buy(t, 0, 800, pin="123456"))
    assert r.code == "98"
    system.host.kill()
    waiting = system.cli("switch", "saf", "list")
    assert len(waiting) >= 1
    # the link is down now: a purchase is answered 91 at once, without waiting for a timeout
    time.sleep(0.3)
    started = time.monotonic()
    r = t.exchange(system.buy(t, 0, 100, pin="123456"))
    assert r.code == "91" and time.monotonic() - started < 0.5 and t.verify_mac(r)
    system.start_host()
    _until(
        lambda: _saf_empty(system),
        "reversal advice delivered after the host restarted\n" + system.switch.log()[-6000:],
    )
    assert system.balance(0) == before
    # the link came back: purchases work again
    _wait_link(system, t)
    t.close()


def _saf_empty(system: System) -> bool:
    return not system.cli("switch", "saf", "list")


def _until(predicate: Any, what: str, timeout: float = 20.0, info: Any = None) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}: {info() if info else ''}"
        time.sleep(0.2)
