"""ops.guard: caps per listener and per source, eviction of the connection that never framed, idle and
frame deadlines; and the /metrics endpoint under slow clients (a real server on a real port)."""

from __future__ import annotations

import contextlib
import socket
from http.client import HTTPConnection

from ops.guard import CLOSED, ConnectionGuard, GuardLimits
from ops.metrics import serve_metrics
from ops.pgembed import free_port


def _closed(listener: str, reason: str) -> float:
    value = CLOSED.labels(listener=listener, reason=reason)._value.get()
    return float(value)


def _guard(name: str, **kw: float) -> tuple[ConnectionGuard, list[str]]:
    limits = {"max_connections": 4, "max_per_source": 3, "idle_timeout": 10.0, "frame_timeout": 2.0, **kw}
    return ConnectionGuard(name, GuardLimits(**limits)), []  # type: ignore[arg-type]


def test_per_source_cap_refuses_the_flooding_source_only() -> None:
    guard, closed = _guard("t-source")
    for i in range(3):
        assert guard.admit("10.0.0.1", 0.0, lambda i=i: closed.append(f"a{i}")) is not None
    assert guard.admit("10.0.0.1", 0.0, lambda: None) is None
    assert guard.admit("10.0.0.2", 0.0, lambda: None) is not None
    assert _closed("t-source", "per_source") == 1 and closed == []


def test_full_listener_evicts_the_oldest_connection_that_never_framed() -> None:
    guard, closed = _guard("t-evict", max_per_source=10)
    working = guard.admit("10.0.0.1", 0.0, lambda: closed.append("working"))
    assert working is not None
    working.framed(0.5, pending=False)
    idle = [guard.admit("10.0.0.1", 1.0 + i, lambda i=i: closed.append(f"idle{i}")) for i in range(3)]
    assert all(idle)
    newcomer = guard.admit("10.0.0.9", 5.0, lambda: closed.append("new"))
    assert newcomer is not None and closed == ["idle0"]  # the oldest idle one, not the working one
    assert len(guard) == 4 and _closed("t-evict", "evicted") == 1
    # a frame once completed protects a connection; when all have, a newcomer is refused
    for slot in list(guard.slots):
        slot.framed(6.0, pending=False)
    assert guard.admit("10.0.0.9", 7.0, lambda: None) is None
    assert _closed("t-evict", "full") == 1
    # an evicted connection's own release (its reader unwinding) does not free a second place
    assert idle[0] is not None
    guard.release(idle[0])
    assert len(guard) == 4 and sum(guard.per_source.values()) == 4
    guard.release(newcomer)
    assert len(guard) == 3 and guard.per_source == {"10.0.0.1": 3}


def test_only_a_complete_frame_resets_idle_and_a_started_frame_has_a_deadline() -> None:
    guard, closed = _guard("t-deadline")
    slow = guard.admit("10.0.0.1", 0.0, lambda: closed.append("slow"))
    quiet = guard.admit("10.0.0.2", 0.0, lambda: closed.append("quiet"))
    busy = guard.admit("10.0.0.3", 0.0, lambda: closed.append("busy"), busy=lambda: True)
    live = guard.admit("10.0.0.4", 0.0, lambda: closed.append("live"))
    assert slow and quiet and busy and live
    for t in range(9):  # a byte a second: never a frame
        slow.partial(float(t), pending=True)
    assert guard.sweep(1.5) == 0
    assert guard.sweep(2.5) == 1 and closed == ["slow"]  # 2 s after its first byte
    for t in (3.0, 6.0, 9.0):
        live.framed(t, pending=False)
    guard.sweep(10.5)
    assert closed == ["slow", "quiet"]  # idle 10 s: quiet goes, busy (in flight) and live stay
    assert _closed("t-deadline", "frame_timeout") == 1 and _closed("t-deadline", "idle") == 1
    live.partial(11.0, pending=True)
    live.framed(12.0, pending=True)  # frames done and the next one begun: its clock starts now
    assert live.frame_started == 12.0
    live.partial(12.5, pending=False)
    assert live.frame_started is None


def test_metrics_endpoint_serves_while_slow_clients_are_cut_off() -> None:
    limits = GuardLimits(max_connections=8, max_per_source=6, idle_timeout=60.0, frame_timeout=1.0)
    port = serve_metrics("guardtest", free_port(), limits=limits)
    slow = []
    for _ in range(10):  # more than the per-source cap: the rest are refused at once
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        s.sendall(b"GET /metr")  # and never the rest
        slow.append(s)
    # another source still gets in (127.0.0.2 is loopback too on Linux)
    http = HTTPConnection("127.0.0.1", port, timeout=5, source_address=("127.0.0.2", 0))
    http.request("GET", "/metrics")
    body = http.getresponse().read().decode()
    http.close()
    assert "payswitch_connections_closed_total" in body and 'service="guardtest"' in body
    for s in slow:  # each cut off at the 1 s deadline (the socket's own 5 s timeout fails the test)
        with contextlib.suppress(ConnectionResetError):
            assert s.recv(100) == b""
        s.close()
    assert _closed("metrics", "per_source") >= 4 and _closed("metrics", "frame_timeout") >= 6
