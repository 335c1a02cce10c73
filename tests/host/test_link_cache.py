"""The link row cache: an expired entry is refreshed by one read while requests keep flowing."""

from __future__ import annotations

from typing import Any

import pytest
import trio

import host.service
from tests.host.harness import Harness, message, pin_block, programme, running_host


def test_stale_link_is_read_once_for_all_requests_in_flight(
    db_url: str, hsm_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    reads: list[str] = []
    real = host.service._link_row

    async def counted(conn: Any, link_id: str) -> dict[str, Any] | None:
        reads.append(link_id)
        return await real(conn, link_id)

    monkeypatch.setattr(host.service, "_link_row", counted)

    async def body(h: Harness) -> None:
        pans = await programme(h, "LINKC", cards=3, load=10_000)
        c = h.client
        assert (await c.request(message(c, pans[0], 100, **{"52": pin_block(pans[0])})))["39"] == "00"
        link_id = "48880000"
        expiry, row = h.service._links[link_id]
        h.service._links[link_id] = (0.0, row)  # expired: the next requests must not each read it
        reads.clear()
        codes: list[str] = []

        async def buy(pan: str) -> None:
            codes.append((await c.request(message(c, pan, 100, **{"52": pin_block(pan)})))["39"])

        async with trio.open_nursery() as n:
            for i in range(30):
                n.start_soon(buy, pans[i % 3])
        assert codes == ["00"] * 30
        assert reads == [link_id]
        assert h.service._links[link_id][0] > expiry - 1  # refreshed

        h.service._links.clear()  # unknown: read once, every waiting request shares that read
        reads.clear()
        async with trio.open_nursery() as n:
            for i in range(10):
                n.start_soon(buy, pans[i % 3])
        assert reads == [link_id]

    async def main() -> None:
        async with running_host(db_url, hsm_server) as h:
            await body(h)

    trio.run(main)
