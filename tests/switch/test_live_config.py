"""Links and routes changed while the switch runs (issue 6): the running switch takes them over at its
next configuration poll, without a restart.

Real PostgreSQL, the real HSM and the real switch process; the issuers are small H2H hosts in the test
process (tests/switch/fake_host.py); every change is made with the operator CLI.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.fixtures.hsm import HsmServer
from tests.fixtures.services import ServiceProcess, base_env, run_cli, start_switch
from tests.switch.fake_host import FakeHost
from tests.switch.terminal import Terminal
from tests.switch.test_pos_e2e import MERCHANT, ZPK3_HEX, _keys, _register_terminals, wait_until

PAN_A = "6212345678901234567"  # BIN 621234: link "issuer_a", routed from the start
PAN_B = "6212555678901234561"  # BIN 621255: link "issuer_b", added while the switch runs
PAN_C = "6212665678901234563"  # BIN 621266: link "issuer_c", added, then disabled / moved


@dataclass
class World:
    switch: ServiceProcess
    env: dict[str, str]
    keys: dict[str, str]
    hosts: list[FakeHost]

    def cli(self, *args: str) -> None:
        result = run_cli(list(args), self.env)
        assert result.returncode == 0, result.stderr

    def terminal(self, terminal_id: str = "T3DES001") -> Terminal:
        t = Terminal("3des", terminal_id, MERCHANT)
        t.connect(self.switch.ports["3des"])
        assert t.sign_on().code == "00"
        return t

    def host(self, **options: Any) -> FakeHost:
        host = FakeHost("3des", bytes.fromhex(ZPK3_HEX), **options).start()
        self.hosts.append(host)
        return host

    def add_link(self, name: str, host: FakeHost, *extra: str) -> None:
        self.cli(
            "switch", "link", "add", name, "--host", "127.0.0.1", "--port", str(host.port),
            "--scheme", "3des", "--zpk", self.keys["zpk3"], "--connections", "1", *extra,
        )  # fmt: skip


def _until_code(t: Terminal, pan: str, code: str, timeout: float = 10.0) -> dict[str, Any]:
    """Purchase on ``pan`` until it is answered ``code`` (the switch polls its configuration)."""
    deadline = time.monotonic() + timeout
    while True:
        r = t.exchange(t.purchase_msg(pan, 100, pin="123456"))
        if r.code == code:
            return r.msg
        assert time.monotonic() < deadline, f"still {r.code}, wanted {code}: {r.msg}"
        time.sleep(0.2)


@pytest.fixture(scope="module")
def world(db_url: str, hsm_server: HsmServer) -> Iterator[World]:
    keys = _keys(hsm_server)
    asyncio.run(_register_terminals(db_url, keys))
    w = World(None, base_env(db_url, hsm_server), keys, [])  # type: ignore[arg-type]
    host_a = w.host()
    w.add_link("issuer_a", host_a)
    w.cli("switch", "route", "add", "621234", "--link", "issuer_a")
    w.switch = start_switch(db_url, hsm_server, request_timeout_ms=3000, config_poll_s=1)
    try:
        wait_until(lambda: len(host_a.seen("0800")) >= 1, what="link sign-on")
        yield w
    finally:
        code = w.switch.stop()
        for host in w.hosts:
            host.stop()
        assert code == 0, w.switch.log()[-3000:]


def test_link_and_route_added_while_running_serve_the_next_purchase(world: World) -> None:
    t = world.terminal()
    assert t.exchange(t.purchase_msg(PAN_B, 100, pin="123456")).code == "91"  # no route yet
    host_b = world.host()
    world.add_link("issuer_b", host_b)
    world.cli("switch", "route", "add", "621255", "--link", "issuer_b")
    answer = _until_code(t, PAN_B, "00")
    assert [m["37"] for m in host_b.seen("0200")][-1] == answer["37"]  # it went to the new link
    assert t.exchange(t.purchase_msg(PAN_A, 100, pin="123456")).code == "00"  # the old one still works
    assert '"link added"' in world.switch.log() and '"routes changed"' in world.switch.log()
    t.close()


def test_disabled_link_drains_its_in_flight_request_then_its_bin_has_no_route(world: World) -> None:
    host_c = world.host(delay=1.5)  # answers each purchase after 1.5 s
    world.add_link("issuer_c", host_c)
    world.cli("switch", "route", "add", "621266", "--link", "issuer_c")
    t = world.terminal()
    host_c.delay = 0.0
    _until_code(t, PAN_C, "00")
    host_c.delay = 1.5
    slow = world.terminal("T3DES002")  # another terminal: a sign-on replaces the session keys
    answers: list[str] = []
    worker = threading.Thread(
        target=lambda: answers.append(slow.exchange(slow.purchase_msg(PAN_C, 200, pin="123456")).code)
    )
    before = len(host_c.seen("0200"))
    worker.start()
    wait_until(lambda: len(host_c.seen("0200")) > before, what="the slow purchase upstream")
    world.cli("switch", "link", "disable", "issuer_c", "--yes")  # while that purchase waits for its answer
    worker.join(10)
    assert answers == ["00"]  # the in-flight request was answered by the draining link
    _until_code(t, PAN_C, "91")  # its routes no longer match: no route (as for an unknown BIN)
    assert t.exchange(t.purchase_msg(PAN_A, 100, pin="123456")).code == "00"
    wait_until(lambda: '"link drained"' in world.switch.log(), what="the drained link logged")
    log = world.switch.log()
    assert '"link leaves the switch"' in log and '"unanswered": 0' in log
    # enabled again: it reconnects and its routes match again
    host_c.delay = 0.0
    signed_on = len(host_c.seen("0800"))
    world.cli("switch", "link", "enable", "issuer_c")
    _until_code(t, PAN_C, "00")
    assert len(host_c.seen("0800")) > signed_on
    t.close()
    slow.close()


def test_link_moved_to_another_host_is_restarted(world: World) -> None:
    host_d = world.host()
    world.add_link("issuer_d", host_d)
    world.cli("switch", "route", "add", "621277", "--link", "issuer_d")
    pan = "6212775678901234565"
    t = world.terminal()
    _until_code(t, pan, "00")
    host_e = world.host()
    world.add_link("issuer_d", host_e, "--replace")  # same name, another address
    deadline = time.monotonic() + 10
    while not host_e.seen("0200"):
        assert t.exchange(t.purchase_msg(pan, 100, pin="123456")).code in ("00", "91")
        assert time.monotonic() < deadline, "the restarted link never reached the new host"
        time.sleep(0.1)
    assert _until_code(t, pan, "00")["37"] == host_e.seen("0200")[-1]["37"]
    assert '"link restarted"' in world.switch.log()
    t.close()


def test_removed_link_leaves_the_routing(world: World) -> None:
    host_f = world.host()
    world.add_link("issuer_f", host_f)
    world.cli("switch", "route", "add", "621288", "--link", "issuer_f")
    pan = "6212885678901234567"
    t = world.terminal()
    _until_code(t, pan, "00")
    world.cli("switch", "link", "remove", "issuer_f", "--with-routes")
    _until_code(t, pan, "91")  # no route: 91 (switch/reasons.py)
    result = run_cli(["switch", "link", "remove", "issuer_f"], world.env)
    assert result.returncode == 1 and "no link named issuer_f" in result.stderr
    t.close()
