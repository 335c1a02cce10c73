"""Requests on a MACed link take the fast path: once a card's hash and PIN data are known, each request's
DE128 is verified in the same request_many as the PIN group (M8 beside EC), and the answers of one
wake-up are signed in one request_many (M6). A request whose MAC fails is answered 96 and posts
nothing, whatever its PIN; the others of its group are decided as usual."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
import trio

from host import catalog
from host.check import run_checks
from hsm_sim.client import HsmUnavailable, Reply
from tests.host.harness import Harness, message, pin_block, programme, running_host


async def _signed(h: Harness, zak: str, msg: dict[str, Any], *, forge: bool = False) -> dict[str, Any]:
    """``msg`` with its DE128 under ``zak`` (``forge``: that MAC with one bit flipped)."""
    c = h.client
    raw = c.codec.encode({**msg, "128": bytes(8)})
    mac = bytearray(bytes.fromhex((await h.crypto.hsm.h2h_mac(zak, c.codec.mac_block(raw)))[:16]))
    if forge:
        mac[0] ^= 1
    return {**msg, "128": bytes(mac)}


async def _burst(h: Harness, zak: str, items: Sequence[tuple[str, bytes, bool]]) -> list[dict[str, Any]]:
    """Every (PAN, PIN block, forged) as a MACed 0200 of 1.00, signed first, then all in flight at once
    on the one connection; the answers in order."""
    c = h.client
    msgs = [await _signed(h, zak, {**message(c, p, 100), "52": b}, forge=f) for p, b, f in items]
    answers: list[dict[str, Any]] = [{} for _ in msgs]

    async def one(i: int) -> None:
        answers[i] = await c.request(msgs[i])

    async with trio.open_nursery() as n:
        for i in range(len(msgs)):
            n.start_soon(one, i)
    return answers


def test_maced_requests_are_verified_and_signed_in_groups(
    db_url: str, hsm_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def body(h: Harness) -> None:
        pans = await programme(h, "MACB", bin_prefix="621251", cards=6, pin_required=True)
        hsm = h.service.crypto.hsm
        zak = (await hsm.form_key("008", ["0123456789ABCDEFFEDCBA9876543210", "0" * 32], "U")).under_lmk
        await h.pool.run(catalog.set_link, "48880000", "3des", None, None, None, zak)
        h.service._links.clear()
        real = hsm.request_many
        groups: list[list[str]] = []
        down: Exception | None = None

        async def recorded(commands: Sequence[tuple[str, bytes | str]]) -> list[Reply]:
            groups.append([command for command, _ in commands])
            if down is not None and "M6" not in groups[-1]:
                raise down
            return await real(commands)

        monkeypatch.setattr(hsm, "request_many", recorded)

        # First MACed PIN purchase of each card: hash and PIN data are read on the way (the slow path).
        answers = await _burst(h, zak, [(p, pin_block(p), False) for p in pans])
        assert [a["39"] for a in answers] == ["00"] * 6
        assert [c for g in groups for c in g if c != "M6"] == []  # verified one by one

        # Now every one is grouped: right PINs, then wrong PINs and forged MACs (one with a right PIN).
        groups.clear()
        items = [(p, pin_block(p), False) for p in pans]
        items += [(pans[0], pin_block(pans[0], "654321"), False), (pans[1], pin_block(pans[1]), True)]
        items += [(pans[2], pin_block(pans[2], "654321"), True)]
        answers = await _burst(h, zak, items)
        assert [a["39"] for a in answers] == ["00"] * 6 + ["55", "96", "96"]
        verified = [c for g in groups for c in g if c != "M6"]
        assert sorted(verified) == sorted(["M8", "EC"] * 9)  # every MAC beside its PIN, no task each
        assert max(len(g) for g in groups if "M8" in g) > 2
        signs = [g for g in groups if "M6" in g]
        assert sum(len(g) for g in signs) == 9 and len(signs) < 9  # answers signed in groups
        c = h.client
        for a in answers:  # every answer signed (a forged request's 96 too, as on the slow path)
            back = c.codec.encode(a)
            assert await hsm.verify_h2h_mac(zak, c.codec.mac_block(back), a["128"].hex())

        # The HSM fails for a whole verification group: every request of it 96, nothing posted, and
        # the group task lives on.
        down = HsmUnavailable("test: HSM down")
        answers = await _burst(h, zak, [(p, pin_block(p), False) for p in pans])
        assert [a["39"] for a in answers] == ["96"] * 6
        down = None
        answers = await _burst(h, zak, [(p, pin_block(p), False) for p in pans])
        assert [a["39"] for a in answers] == ["00"] * 6

        # Balance inquiries without a PIN: only their MACs go to the HSM, and the forged one is 96.
        groups.clear()
        bals = [
            await _signed(h, zak, message(c, p, None, proc="310000"), forge=k == 3)
            for k, p in enumerate(pans)
        ]
        codes = [""] * len(bals)

        async def one(i: int) -> None:
            codes[i] = (await c.request(bals[i]))["39"]

        async with trio.open_nursery() as n:
            for i in range(len(bals)):
                n.start_soon(one, i)
        assert codes == ["00", "00", "00", "96", "00", "00"]
        assert sorted(c for g in groups for c in g if c != "M6") == ["M8"] * 6

        spent = await h.pool.run(_spent)
        assert spent == 100 * (6 + 6 + 6)  # the forged and the HSM-down ones posted nothing

    async def main() -> None:
        async with running_host(db_url, hsm_server) as h:
            await body(h)
            failed = [r for r in await h.pool.run(run_checks) if not r.ok]
            assert not failed, failed

    trio.run(main)


async def _spent(conn: Any) -> int:
    return int(
        await conn.fetchval(
            "SELECT coalesce(sum(t.amount), 0) FROM transfers t JOIN cards c ON c.id = t.card_id"
            " JOIN products p ON p.id = c.product_id WHERE t.code = 'purchase' AND p.code = 'MACB'"
        )
    )
