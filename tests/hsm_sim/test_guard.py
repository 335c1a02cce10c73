"""The HSM process under ops.guard (issue 14, defect 4): a per-source cap, the listener cap with
eviction of a never-framed connection, idle and frame deadlines. Small limits keep it to seconds."""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Iterator

import pytest

from tests.fixtures.hsm import HsmServer, start_hsm, stop_hsm

ECHO = b"\x00\x0aHEADB20000"  # LEN 10: header HEAD, B2 (echo), data length 0000


@pytest.fixture(scope="module")
def hsm() -> Iterator[HsmServer]:
    server = start_hsm(extra_env={
        "PAYSWITCH_HSM_MAX_CONNECTIONS": "30",
        "PAYSWITCH_HSM_MAX_PER_SOURCE": "20",
        "PAYSWITCH_HSM_IDLE_TIMEOUT_S": "2",
        "PAYSWITCH_HSM_FRAME_TIMEOUT_S": "1",
    })
    try:
        yield server
    finally:
        stop_hsm(server.process)


def _connect(port: int, source: str = "127.0.0.1") -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=5, source_address=(source, 0))


def _closed(s: socket.socket, timeout: float) -> bool:
    s.settimeout(timeout)
    try:
        return s.recv(100) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def _echoes(s: socket.socket) -> bool:
    s.sendall(ECHO)
    s.settimeout(5)
    return s.recv(100)[6:8] == b"B3"


def test_caps_per_source_and_eviction_keep_other_clients_served(hsm: HsmServer) -> None:
    flood = [_connect(hsm.port) for _ in range(25)]
    try:
        assert all(_closed(s, 5.0) for s in flood[20:])  # over this source's 20: refused
        others = [_connect(hsm.port, f"127.0.0.{2 + i // 10}") for i in range(20)]  # 20 + 20 > 30
        try:
            assert all(_echoes(s) for s in others)
            assert sum(_closed(s, 0.2) for s in flood[:20]) >= 10  # the oldest idle ones gave way
        finally:
            for s in others:
                s.close()
    finally:
        for s in flood:
            s.close()


def test_idle_and_dripping_connections_are_closed(hsm: HsmServer) -> None:
    idle, drip, working = _connect(hsm.port), _connect(hsm.port), _connect(hsm.port, "127.0.0.9")
    try:
        drip.sendall(b"\x00")
        started = time.monotonic()
        drip_closed = None
        while time.monotonic() - started < 5.0 and drip_closed is None:
            with contextlib.suppress(OSError):
                drip.sendall(b"\x20")  # a byte every 0.3 s, never a whole command
            if _closed(drip, 0.3):
                drip_closed = time.monotonic() - started
            assert _echoes(working)  # complete commands: never idle
        assert drip_closed is not None, "a dripping connection was never closed"
        assert _closed(idle, 5.0)  # no command for idle_timeout_s
        assert _echoes(working)
    finally:
        for s in (idle, drip, working):
            s.close()
