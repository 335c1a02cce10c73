"""The link row cache: an expired entry is refreshed by one read while requests keep flowing."""

from __future__ import annotations

import asyncio
import threading
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


def test_refresh_started_before_a_key_change_does_not_bring_the_old_zpk_back(
    db_url: str, hsm_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from host import catalog

    real = host.service._link_row
    release = trio.Event()
    slow: list[bool] = [False]
    read_done = threading.Event()

    async def gated(conn: Any, link_id: str) -> dict[str, Any] | None:
        row = await real(conn, link_id)  # read now (the old ZPK) ...
        if slow[0]:
            slow[0] = False
            read_done.set()
            while not release.is_set():  # ... and come back after the key change (asyncio side)
                await asyncio.sleep(0.01)
        return row

    monkeypatch.setattr(host.service, "_link_row", gated)

    async def body(h: Harness) -> None:
        (pan,) = await programme(h, "LINKK", bin_prefix="621249", cards=1, load=10_000)
        c = h.client
        zmk = await h.crypto.hsm.form_key("000", ["0123456789ABCDEFFEDCBA9876543210", "0" * 32], "U")
        await h.pool.run(catalog.set_link, "48880000", "3des", zmk.under_lmk, None, None)
        h.service._links.clear()
        assert (await c.request(message(c, pan, 100, **{"52": pin_block(pan)})))["39"] == "00"
        link_id = "48880000"
        old_zpk = h.service._links[link_id][1]["zpk"]  # type: ignore[index]
        slow[0] = True
        h.service._refresh_link(link_id)  # a background refresh reads the row with the old ZPK
        with trio.fail_after(10):
            while not read_done.is_set():
                await trio.sleep(0.01)
        new = await h.crypto.hsm.generate_key(
            "001", "U", under=zmk.under_lmk, under_tmk=False, export_scheme="U"
        )
        assert new.under_kek is not None
        change = {
            "t": "0800",
            "7": c.now_de7(),
            "11": c.next_stan(),
            "32": link_id,
            "70": "101",
            "48": new.under_kek + new.check_value[:16],
        }
        assert (await c.request(change))["39"] == "00"
        release.set()  # the stale read finishes after the change
        await trio.sleep(0.2)
        cached = h.service._links.get(link_id)
        assert cached is None or cached[1]["zpk"] != old_zpk  # type: ignore[index]
        assert (await h.service._link(link_id))["zpk"] != old_zpk  # type: ignore[index]

    async def main() -> None:
        async with running_host(db_url, hsm_server) as h:
            await body(h)

    trio.run(main)
