"""PIN purchases verified in groups: once a card's hash and PIN data are known, its PIN requests go to the
HSM together in one request_many per wake-up of the host's PIN group task, and each still gets its own
answer (00 right PIN, 55 wrong, 96 when the HSM cannot say)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
import trio

from host.check import run_checks
from hsm_sim.client import HsmUnavailable, Reply
from tests.host.harness import Harness, message, pin_block, programme, running_host


async def _burst(h: Harness, blocks: Sequence[tuple[str, bytes]]) -> list[str]:
    """Every (PAN, PIN block) as a 0200 on the one connection, all in flight at once; codes in order."""
    c = h.client
    codes = [""] * len(blocks)

    async def one(i: int, pan: str, block: bytes) -> None:
        codes[i] = (await c.request(message(c, pan, 100, **{"52": block})))["39"]

    async with trio.open_nursery() as n:
        for i, (pan, block) in enumerate(blocks):
            n.start_soon(one, i, pan, block)
    return codes


def test_pin_purchases_are_verified_in_groups(
    db_url: str, hsm_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def body(h: Harness) -> None:
        pans = await programme(h, "PINB", bin_prefix="621250", cards=6, pin_required=True)
        hsm = h.service.crypto.hsm
        real = hsm.request_many
        groups: list[int] = []
        down: Exception | None = None

        async def recorded(commands: Sequence[tuple[str, bytes | str]]) -> list[Reply]:
            groups.append(len(commands))
            if down is not None:
                raise down
            return await real(commands)

        monkeypatch.setattr(hsm, "request_many", recorded)

        # First PIN purchase of each card: its hash and PIN data are read on the way (the slow path).
        assert await _burst(h, [(p, pin_block(p)) for p in pans]) == ["00"] * 6
        assert groups == []

        # Now every one is grouped: a right PIN for each card, then a wrong one for every other card.
        before = h.service.pin_groups
        blocks = [(p, pin_block(p)) for p in pans]
        blocks += [(p, pin_block(p, "654321") if k % 2 else pin_block(p)) for k, p in enumerate(pans)]
        codes = await _burst(h, blocks)
        assert codes == ["00"] * 6 + ["00", "55"] * 3
        assert sum(groups) == 12 and max(groups) > 1  # all through the groups, several in one
        assert h.service.pin_groups - before == len(groups)

        # A PIN block the HSM refuses gets 96 (nothing posted); the others of its group are decided.
        groups.clear()
        codes = await _burst(h, [(pans[0], bytes(8)), (pans[2], pin_block(pans[2]))])
        assert codes == ["96", "00"] and sum(groups) == 2

        # The HSM fails for a whole group, or a bug does: each of its requests is answered 96, and
        # the group task lives on for the next ones.
        for failure in (HsmUnavailable("test: HSM down"), RuntimeError("test: a bug")):
            down = failure
            codes = await _burst(h, [(p, pin_block(p)) for p in pans])
            assert codes == ["96"] * 6
            down = None
            assert await _burst(h, [(p, pin_block(p)) for p in pans]) == ["00"] * 6

        spent = await h.pool.run(_spent)
        assert spent == 100 * (6 + 9 + 1 + 6 + 6)

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
            " JOIN products p ON p.id = c.product_id WHERE t.code = 'purchase' AND p.code = 'PINB'"
        )
    )
