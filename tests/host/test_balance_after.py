"""An approved sale or load answers with the card's balances after it (DE54, specs/README.md "Balance
after"), so the terminal prints them on the receipt; a retransmission gets the same DE54 again, a
decline none. Real host, PostgreSQL and HSM over H2H."""

from __future__ import annotations

from typing import Any

from tests.host.harness import Harness, message, programme
from tests.host.test_h2h import run


def test_balance_after_each_approval(db_url: str, hsm_server: Any) -> None:
    async def body(h: Harness) -> None:
        pan, _, _ = await programme(h, "BALAFTER", load=10_000)
        c = h.client
        buy = message(c, pan, 1_234)
        first = await c.request(buy)
        assert first["39"] == "00"
        assert first["54"] == "1001156C0000000087661002156C000000008766"  # ledger and available after
        assert (await c.request(buy))["54"] == first["54"]  # the retransmission: the first answer's
        top = await c.request(message(c, pan, 2_000, proc="210000"))
        assert top["39"] == "00" and top["54"].endswith("1002156C000000010766")
        declined = await c.request(message(c, pan, 1_000_000))
        assert declined["39"] in ("51", "61") and "54" not in declined

    run(db_url, hsm_server, body)
