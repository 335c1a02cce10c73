"""The switch process under a connection flood (issue 14, defect 4): idle sockets filling a POS port
do not lock new terminals out, one source cannot take more than its share, and bytes that never make
a frame do not keep a connection open. Small caps and timeouts keep it to seconds."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.fixtures.hsm import HsmServer
from tests.fixtures.services import ServiceProcess, start_switch
from tests.switch.terminal import Terminal
from tests.switch.test_pos_e2e import MERCHANT, _keys, register_terminals

TERMINALS = [f"TFLOOD{i:02d}" for i in range(20)]
CAP = 150  # connections per listener in these tests (ulimit -n is far above it)
WELL_BEHAVED = "127.0.0.2"  # another source address: the whole of 127/8 is loopback on Linux


async def _register(db_url: str, tmk: str) -> None:
    await register_terminals(db_url, [(tid, "3des", tmk) for tid in TERMINALS], "Flood Canteen")


@pytest.fixture(scope="module")
def registered(db_url: str, hsm_server: HsmServer) -> dict[str, Any]:
    asyncio.run(_register(db_url, _keys(hsm_server)["tmk3"]))
    return {"db_url": db_url, "hsm": hsm_server}


@pytest.fixture()
def switch(registered: dict[str, Any], request: pytest.FixtureRequest) -> Iterator[ServiceProcess]:
    overrides = {"max_connections": CAP, "signon_per_minute": 1000, **request.param}
    process = start_switch(registered["db_url"], registered["hsm"], **overrides)
    try:
        yield process
    finally:
        assert process.stop() == 0, process.log()[-3000:]


def _flood(port: int, n: int) -> list[socket.socket]:
    return [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(n)]


def _well_behaved(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(WELL_BEHAVED, 0))


def _is_closed(s: socket.socket, timeout: float) -> bool:
    s.settimeout(timeout)
    try:
        return s.recv(10) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def _serve_terminals(port: int) -> list[str]:
    """20 terminals connect and sign on, each keeping its connection (all 20 open at the end)."""
    codes, terminals = [], []
    try:
        for tid in TERMINALS:
            t = Terminal("3des", tid, MERCHANT)
            terminals.append(t)
            t.sock = _well_behaved(port)
            try:
                codes.append(t.sign_on().code)
            except (AssertionError, OSError):
                codes.append("closed")
        # still served on the connections they hold
        codes += [t.sign_on().code if t.sock else "closed" for t in terminals]
    finally:
        for t in terminals:
            t.close()
    return codes


@pytest.mark.parametrize("switch", [{"max_per_source": CAP}], indirect=True)
def test_a_full_listener_still_serves_new_terminals(switch: ServiceProcess) -> None:
    """CAP idle sockets fill the POS port (the per-source cap allows it); 20 new terminals from
    elsewhere are all served: each evicts the flood socket open longest that never sent a frame."""
    port = switch.ports["3des"]
    flood = _flood(port, CAP)
    try:
        time.sleep(0.5)  # all accepted by now
        assert _serve_terminals(port) == ["00"] * 40
        evicted = sum(_is_closed(s, 0.2) for s in flood[:40])
        assert evicted >= 20  # the oldest of the flood gave way, not the terminals
    finally:
        for s in flood:
            s.close()


@pytest.mark.parametrize("switch", [{"max_per_source": 40}], indirect=True)
def test_one_source_is_refused_at_its_own_cap(switch: ServiceProcess) -> None:
    port = switch.ports["3des"]
    flood = _flood(port, 60)
    try:
        assert all(_is_closed(s, 5.0) for s in flood[40:])  # refused at once
        assert not any(_is_closed(s, 0.05) for s in flood[:40])  # the first 40 kept (idle 300 s)
        assert _serve_terminals(port) == ["00"] * 40
    finally:
        for s in flood:
            s.close()


@pytest.mark.parametrize("switch", [{"frame_timeout_s": 1, "idle_timeout_s": 2}], indirect=True)
def test_a_byte_every_so_often_does_not_keep_a_connection(switch: ServiceProcess) -> None:
    """A frame started and never finished is closed after frame_timeout_s, however often its bytes
    come; and a connection that sends complete frames lives past idle_timeout_s."""
    port = switch.ports["3des"]
    drip = socket.create_connection(("127.0.0.1", port), timeout=5)
    working = Terminal("3des", TERMINALS[0], MERCHANT)
    working.sock = _well_behaved(port)
    try:
        drip.sendall(b"\x00")  # LEN's first byte; the rest never comes in time
        closed_at = None
        started = time.monotonic()
        while time.monotonic() - started < 5.0:
            with contextlib.suppress(OSError):  # (a closed socket may refuse the byte)
                drip.sendall(b"\x40")
            if _is_closed(drip, 0.3):
                closed_at = time.monotonic() - started
                break
            if working.sock is not None and time.monotonic() - started > 1.0:
                assert working.sign_on().code == "00"  # a complete frame: not idle
        assert closed_at is not None, "a dripping connection was never closed"
        # A complete frame every 0.5 s keeps the working connection past idle_timeout_s (3 s and more
        # after connecting). The drip may close before the loop above signed on even once, so the gap
        # since the working connection's last frame is never left to chance.
        while time.monotonic() - started < 3.0:
            assert working.sign_on().code == "00"
            time.sleep(0.5)
        assert working.sign_on().code == "00"
    finally:
        drip.close()
        working.close()
