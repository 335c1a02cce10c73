"""The host's H2H listener under ops.guard (issue 14, defect 4): per-source cap, the listener cap with
eviction of a never-framed connection, idle and frame deadlines; the harness's client keeps being
answered throughout. Small limits keep it to seconds."""

from __future__ import annotations

from typing import Any

import trio

from host.client import H2HClient
from tests.fixtures.hsm import HsmServer
from tests.host.harness import Harness, running_host

LIMITS = {"max_connections": 12, "max_per_source": 8, "idle_timeout_s": 2, "frame_timeout_s": 1}


async def _open(port: int, source: str) -> trio.SocketStream:
    sock = trio.socket.socket()
    await sock.bind((source, 0))
    await sock.connect(("127.0.0.1", port))
    return trio.SocketStream(sock)


async def _closed(stream: trio.SocketStream, timeout: float) -> bool:
    with trio.move_on_after(timeout):
        try:
            return await stream.receive_some(100) == b""
        except trio.BrokenResourceError:
            return True
    return False


async def _echo(c: H2HClient) -> str:
    msg: dict[str, Any] = {"t": "0800", "7": c.now_de7(), "11": c.next_stan(), "32": "48880000", "70": "301"}
    answer = await c.request(msg)
    return str(answer["t"])


def test_host_caps_and_deadlines(db_url: str, hsm_server: HsmServer) -> None:
    async def main() -> None:
        async with running_host(db_url, hsm_server, **LIMITS) as h:
            await _caps(h)
            await _deadlines(h)

    trio.run(main)


async def _caps(h: Harness) -> None:
    # the harness client (127.0.0.1) holds one place, and has completed a frame; the flood takes the
    # other 7 places of that source
    assert await _echo(h.client) == "0810"
    flood = [await _open(h.port, "127.0.0.1") for _ in range(9)]
    assert all([await _closed(s, 5.0) for s in flood[7:]])  # over the per-source cap: refused
    newcomers = [await _open(h.port, f"127.0.0.{2 + i % 2}") for i in range(8)]  # 1 + 7 + 8 > 12
    evicted = sum([await _closed(s, 0.2) for s in flood[:7]])
    assert evicted >= 4  # the flood's oldest gave way; the framed harness client did not
    assert await _echo(h.client) == "0810"
    for s in flood + newcomers:
        await s.aclose()


async def _deadlines(h: Harness) -> None:
    idle = await _open(h.port, "127.0.0.4")
    drip = await _open(h.port, "127.0.0.5")
    await drip.send_all(b"\x00")
    closed = False
    with trio.move_on_after(5.0):
        while not closed:
            try:
                await drip.send_all(b"\x30")  # a byte every 0.3 s, never a whole frame
            except trio.BrokenResourceError:
                closed = True
                break
            closed = await _closed(drip, 0.3)
            assert await _echo(h.client) == "0810"  # complete frames: not idle
    assert closed, "a dripping connection was never closed"
    assert await _closed(idle, 5.0)  # no frame for idle_timeout_s
    assert await _echo(h.client) == "0810"
    await idle.aclose()
    await drip.aclose()
