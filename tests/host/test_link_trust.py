"""Who may send money to the host (issue 14, defect 1): only a registered link, MACed or declared
``--no-mac`` and then only from loopback (unless ``host.allow_remote_no_mac``); anything else is
answered 03 and nothing is decided: no posting, no PIN try, no DE54, no auth_requests row."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import trio

import host.service
from host import catalog
from tests.host.harness import ACQ, Harness, message, pin_block, programme, reversal, running_host
from tests.host.helpers import cli_env, run

STRANGER = "99990001"  # a DE32 that is no link


def _run(db_url: str, hsm_server: Any, body: Callable[[Harness], Awaitable[None]], **host: Any) -> None:
    async def main() -> None:
        async with running_host(db_url, hsm_server, **host) as h:
            await body(h)

    trio.run(main)


async def _state(conn: Any) -> tuple[Any, ...]:
    """Everything a decision would move: balances, postings, decided requests, PIN tries."""
    accounts = await conn.fetch(
        "SELECT id, debits_pending, debits_posted, credits_pending, credits_posted FROM accounts ORDER BY id"
    )
    return (
        [tuple(r) for r in accounts],
        await conn.fetchval("SELECT count(*) FROM transfers"),
        await conn.fetchval("SELECT count(*) FROM auth_requests"),
        await conn.fetchval("SELECT coalesce(sum(pin_tries), 0) FROM cards"),
    )


def _as(link: str, msg: dict[str, Any]) -> dict[str, Any]:
    return {**msg, "32": link}


def test_unregistered_link_is_answered_03_and_nothing_is_decided(db_url: str, hsm_server: Any) -> None:
    async def body(h: Harness) -> None:
        (pan,) = await programme(h, "TRUSTU", bin_prefix="621260", cards=1, load=10_000)
        c = h.client
        before = await h.pool.run(_state)
        groups = h.service.pin_groups
        top_up = await c.request(_as(STRANGER, message(c, pan, 500_000, proc="210000")))
        assert top_up["39"] == "03" and "38" not in top_up
        buy = _as(STRANGER, message(c, pan, 100, **{"52": pin_block(pan, "999999")}))  # a wrong PIN
        assert (await c.request(buy))["39"] == "03"
        assert (await c.request(_as(STRANGER, reversal(c, buy))))["39"] == "03"
        inquiry = await c.request(_as(STRANGER, message(c, pan, None, proc="310000")))
        assert inquiry["39"] == "03" and "54" not in inquiry
        # by DE33 too: the link is the forwarding institution when there is one
        via = await c.request({**message(c, pan, 100), "33": STRANGER})
        assert via["39"] == "03"
        # network management from no link: no sign-on, no echo, no key change
        for code in ("001", "301", "101"):
            net = {"t": "0800", "7": c.now_de7(), "11": c.next_stan(), "32": STRANGER, "70": code}
            assert (await c.request(net))["39"] == "03"
        assert await h.pool.run(_state) == before
        assert h.service.pin_groups == groups  # no PIN went to the HSM
        # the registered link still works, and its echo is answered
        echo = {"t": "0800", "7": c.now_de7(), "11": c.next_stan(), "32": ACQ, "70": "301"}
        assert (await c.request(echo))["39"] == "00"
        assert (await c.request(message(c, pan, 100)))["39"] == "00"

    _run(db_url, hsm_server, body)


def test_a_flood_of_one_unknown_link_is_one_database_read(
    db_url: str, hsm_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    reads: list[str] = []
    real = host.service._link_row

    async def counted(conn: Any, link_id: str) -> dict[str, Any] | None:
        reads.append(link_id)
        return await real(conn, link_id)

    monkeypatch.setattr(host.service, "_link_row", counted)

    async def body(h: Harness) -> None:
        (pan,) = await programme(h, "TRUSTF", bin_prefix="621261", cards=1, load=10_000)
        c = h.client
        codes: list[str] = []

        async def one() -> None:
            codes.append((await c.request(_as(STRANGER, message(c, pan, 100))))["39"])

        async with trio.open_nursery() as n:
            for _ in range(50):
                n.start_soon(one)
        for _ in range(50):  # and one after the other, answered from the cache
            await one()
        assert codes == ["03"] * 100
        assert reads.count(STRANGER) == 1

    _run(db_url, hsm_server, body)


async def _undeclared(conn: Any, link_id: str) -> None:
    """A link row as an older release left it: no ZAK and no declaration (set_link refuses this)."""
    await conn.execute("INSERT INTO links (institution_id, profile) VALUES ($1, '3des')", link_id)


def test_link_without_mac_key_must_be_declared(db_url: str, hsm_server: Any) -> None:
    async def body(h: Harness) -> None:
        (pan,) = await programme(h, "TRUSTD", bin_prefix="621262", cards=1, load=10_000)
        c = h.client
        await h.pool.run(_undeclared, "77770001")
        before = await h.pool.run(_state)
        assert (await c.request(_as("77770001", message(c, pan, 100))))["39"] == "03"
        inquiry = await c.request(_as("77770001", message(c, pan, None, proc="310000")))
        assert inquiry["39"] == "03" and "54" not in inquiry
        assert await h.pool.run(_state) == before
        with pytest.raises(catalog.CatalogError, match="--zak, or --no-mac"):
            await h.pool.run(catalog.set_link, "77770002", "3des")
        assert await h.pool.run(_link_count, "77770002") == 0
        # declared: from loopback it works (the harness client is on 127.0.0.1)
        await h.pool.run(catalog.set_link, "77770001", "3des", None, None, None, None, True)
        h.service._links.clear()
        assert (await c.request(_as("77770001", message(c, pan, 100))))["39"] == "00"

    _run(db_url, hsm_server, body)


async def _link_count(conn: Any, link_id: str) -> int:
    return int(await conn.fetchval("SELECT count(*) FROM links WHERE institution_id = $1", link_id))


@pytest.mark.parametrize("allow", [False, True])
def test_no_mac_link_from_a_remote_peer(
    db_url: str, hsm_server: Any, allow: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A peer that is not loopback, as the host sees it: the loopback test itself is ops.peers' (its
    table test), so the client stays on loopback (no traffic leaves it) and the host is told its peers
    are remote; its own loopback client is then remote too."""
    monkeypatch.setattr(host.service, "peer_is_loopback", lambda _stream: False)

    async def body(h: Harness) -> None:
        (pan,) = await programme(h, f"TRUSTR{int(allow)}", bin_prefix=f"62126{3 + allow}", cards=1)
        before = await h.pool.run(_state)
        answer = await h.client.request(message(h.client, pan, 100, proc="210000"))
        if allow:
            assert answer["39"] == "00"
        else:
            assert answer["39"] == "03"
            assert await h.pool.run(_state) == before

    _run(db_url, hsm_server, body, allow_remote_no_mac=allow)


def test_maced_link_without_de128_is_refused_and_nothing_posted(db_url: str, hsm_server: Any) -> None:
    async def body(h: Harness) -> None:
        (pan,) = await programme(h, "TRUSTM", bin_prefix="621266", cards=1, load=10_000)
        c = h.client
        zak = await h.crypto.hsm.form_key("008", ["0123456789ABCDEFFEDCBA9876543210", "0" * 32], "U")
        await h.pool.run(catalog.set_link, ACQ, "3des", None, None, None, zak.under_lmk)
        h.service._links.clear()
        before = await h.pool.run(_state)
        assert (await c.request(message(c, pan, 100, proc="210000")))["39"] == "96"
        assert (await c.request(message(c, pan, 100)))["39"] == "96"
        inquiry = await c.request(message(c, pan, None, proc="310000"))
        assert inquiry["39"] == "96" and "54" not in inquiry
        assert await h.pool.run(_state) == before
        # the ZAK took the place of the no-MAC declaration
        assert await h.pool.run(_no_mac, ACQ) is False

    _run(db_url, hsm_server, body)


async def _no_mac(conn: Any, link_id: str) -> bool:
    return bool(await conn.fetchval("SELECT no_mac FROM links WHERE institution_id = $1", link_id))


def test_link_command_refusals(db_url: str, hsm_server: Any, tmp_path: Path) -> None:
    env = cli_env(tmp_path, db_url, hsm_server.env)
    zak = "U" + "0123456789ABCDEF" * 2
    neither = run(env, "host", "link", "66660001", "--profile", "3des")
    both = run(env, "host", "link", "66660001", "--profile", "3des", "--no-mac", "--zak", zak)
    for result in (neither, both):
        assert result.exit_code == 1 and "Traceback" not in result.output
        assert len(result.output.strip().splitlines()) == 1 and "--no-mac" in result.output
        assert "--zak" in result.output
    declared = run(env, "--json", "host", "link", "66660001", "--profile", "3des", "--no-mac")
    assert declared.exit_code == 0, declared.output
    assert '"no_mac": true' in declared.output
    # a later change of the ZPK keeps the declaration
    again = run(env, "host", "link", "66660001", "--profile", "3des", "--zpk", zak)
    assert again.exit_code == 0, again.output
