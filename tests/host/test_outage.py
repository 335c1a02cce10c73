"""The database gone in the middle of a request (found by the fault schedules, seed 6): a request whose
link row, PIN data or key change needs a read it cannot get is answered 96, and the host lives on.
Before, the read's exception ended the connection's nursery and with it `host serve`."""

from __future__ import annotations

from typing import Any

import trio

from host import catalog
from ops.pgembed import Status
from tests.fixtures.pg import DatabaseAway
from tests.host.harness import Harness, message, programme, running_host

LINK = "48889999"  # registered while the database is up, never read by the host before the outage


def test_database_gone_mid_request_is_answered_96_and_the_host_lives_on(
    db_url: str, hsm_server: Any, pg_cluster: Status
) -> None:
    async def body(h: Harness) -> None:
        (pan,) = await programme(h, "OUTAGE", bin_prefix="621262", cards=1, load=10_000)
        await h.pool.run(catalog.set_link, LINK, "3des", None, None, None, None, True)
        c = h.client
        with DatabaseAway(pg_cluster, db_url):  # every read now fails
            answer = await c.request({**message(c, pan, 100), "32": LINK})
            assert answer["39"] == "96"
        await trio.sleep(0.2)
        # the same host, the same connection: the link is read now and the purchase decided
        assert (await c.request({**message(c, pan, 100), "32": LINK}))["39"] == "00"

    async def main() -> None:
        async with running_host(db_url, hsm_server) as h:
            await body(h)

    trio.run(main)


def test_a_batch_waits_out_the_database_and_is_posted_once(
    db_url: str, hsm_server: Any, pg_cluster: Status
) -> None:
    """The ledger unreachable under a batch: no 96 (its COMMIT may have landed with its answer lost,
    and a terminal told 96 does not reverse), the batch waits and is posted when the database is
    back, once; the answer comes then (found by the fault schedules, seed 98)."""
    async def body(h: Harness) -> None:
        (pan,) = await programme(h, "WAITS", bin_prefix="621264", cards=1, load=10_000)
        c = h.client
        assert (await c.request(message(c, pan, 100)))["39"] == "00"  # link and card cached
        answers: list[dict[str, Any]] = []

        async def buy() -> None:
            answers.append(await c.request(message(c, pan, 250)))

        with DatabaseAway(pg_cluster, db_url) as away:
            async with trio.open_nursery() as n:
                n.start_soon(buy)
                await trio.sleep(1.0)
                assert answers == []  # waiting, not answered 96
                away.back()
        assert answers[0]["39"] == "00"
        balance = await c.request(message(c, pan, None, proc="310000"))
        assert balance["54"].endswith("C000000009650")  # 10,000 - 100 - 250, each once

    async def main() -> None:
        async with running_host(db_url, hsm_server) as h:
            await body(h)

    trio.run(main)
