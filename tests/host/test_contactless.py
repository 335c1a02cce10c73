"""Contactless Quick Pay at the issuer (host.chip): no PIN within the product's no-CVM limits, a PIN
beyond them, the card's no-CVM counters reset by a PIN-verified approval; real host, HSM, PostgreSQL."""

from __future__ import annotations

from typing import Any

import trio

from host.check import run_checks
from tests.host.chip_helpers import chip_fields, chip_programme
from tests.host.harness import Harness, message, pin_block, running_host


async def counters(h: Harness, pan_stan: str) -> tuple[int, int]:
    async def q(conn: Any) -> tuple[int, int]:
        row = await conn.fetchrow(
            "SELECT c.no_cvm_amount, c.no_cvm_count FROM cards c JOIN auth_requests r ON r.card_id = c.id"
            " WHERE r.stan = $1",
            pan_stan,
        )
        return row["no_cvm_amount"], row["no_cvm_count"]

    return await h.pool.run(q)


def test_contactless_no_cvm_limits_and_reset(db_url: str, hsm_server: Any) -> None:
    async def body(h: Harness) -> None:
        pan = (
            await chip_programme(
                h, "QPASS", "sm4", "622660", pin_required=True, load=100_000,
                no_cvm_limit=30_000, no_cvm_cumulative_limit=60_000,
            )
        )[0]
        c = h.client
        atc = iter(range(1, 100))

        async def tap(amount: int, *, pin: bool = False) -> dict[str, Any]:
            fields: dict[str, Any] = chip_fields("sm4", pan, amount, next(atc), mode="071")
            if pin:
                fields["52"] = pin_block(pan)
            msg = message(c, pan, amount, **fields)
            answer = await c.request(msg)
            answer["stan"] = msg["11"]
            return answer

        first = await tap(20_000)  # within 300 yuan, no PIN, though the product requires one
        assert first["39"] == "00" and "48" in first
        assert await counters(h, first["stan"]) == (20_000, 1)
        assert (await tap(40_000))["39"] == "55"  # above the no-CVM limit: the PIN
        assert (await tap(30_000))["39"] == "00"  # 500 yuan without PIN in all
        over = await tap(20_000)  # 700 > the cumulative 600: the PIN
        assert over["39"] == "55"
        assert await counters(h, over["stan"]) == (50_000, 2)
        with_pin = await tap(20_000, pin=True)
        assert with_pin["39"] == "00"
        assert await counters(h, with_pin["stan"]) == (0, 0)  # reset by the PIN-verified approval
        again = await tap(10_000)
        assert again["39"] == "00" and await counters(h, again["stan"]) == (10_000, 1)
        # a contact chip sale of the same product asks for the PIN as the product says
        contact = message(c, pan, 1_000, **chip_fields("sm4", pan, 1_000, next(atc), mode="051"))
        assert (await c.request(contact))["39"] == "55"
        # a contactless "tap" without chip data is no tap: 30
        assert (await c.request(message(c, pan, 1_000, **{"22": "071"})))["39"] == "30"
        bal = await c.request(message(c, pan, None, proc="310000"))
        assert bal["54"].endswith(f"{100_000 - 80_000:012d}")
        failed = [r for r in await h.pool.run(run_checks) if not r.ok]
        assert not failed, failed

    async def main() -> None:
        async with running_host(db_url, hsm_server) as h:
            await body(h)

    trio.run(main)
