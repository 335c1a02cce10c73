"""Card expiry: `payswitch card expire` and the host's sweep move exactly the cards past their YYMM.

Real PostgreSQL, the real HSM and a real H2H socket: a purchase on a card past its expiry is declined
54 before the sweep (the rules check the date) and after it (the state says expired).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import asyncpg
import pytest
import trio
from prometheus_client import REGISTRY

from host.rules import yymm
from specs.clearing import business_date_of
from tests.host.harness import Harness, message, programme, running_host
from tests.host.helpers import cli_env, ok, run

PAST, LAST_YEAR, FUTURE = "2401", "2512", "4912"


@pytest.fixture(scope="module")
def env(db_url: str, hsm_server: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return cli_env(tmp_path_factory.mktemp("cardexpiry"), db_url, hsm_server.env)


def states(db_url: str) -> dict[int, str]:
    return {r["id"]: r["state"] for r in _q(db_url, "SELECT id, state FROM cards ORDER BY id")}


def _q(db_url: str, query: str, *args: Any) -> list[Any]:
    import asyncio

    async def main() -> list[Any]:
        conn = await asyncpg.connect(db_url)
        try:
            return list(await conn.fetch(query, *args))
        finally:
            await conn.close()

    return asyncio.run(main())


def test_expiry_sweep_moves_exactly_the_past_cards(env: dict[str, str], db_url: str, hsm_server: Any) -> None:
    # "this month" of the programme's business date (the default clearing zone and cut-over), which the
    # sweep takes as today: on a month's last evening it is already the next month's
    this_month = yymm(business_date_of(dt.datetime.now(dt.UTC), "23:00", "Asia/Shanghai"))
    pans: list[str] = []

    async def before(h: Harness) -> None:
        pans.extend(await programme(h, "EXPY", cards=7, load=10_000))
        ids = [r["id"] for r in await h.pool.run(_ids)]
        # 0 active, past | 1 frozen, last year | 2 active, future | 3 active, this month (valid through
        # its end) | 4 closed, past | 5 lost, past | 6 active, last year
        setup = [
            (ids[0], "active", PAST),
            (ids[1], "frozen", LAST_YEAR),
            (ids[2], "active", FUTURE),
            (ids[3], "active", this_month),
            (ids[4], "closed", PAST),
            (ids[5], "lost", PAST),
            (ids[6], "active", LAST_YEAR),
        ]
        await h.pool.run(_set, setup)
        c = h.client
        assert (await c.request(message(c, pans[0], 100)))["39"] == "54"  # before the sweep: the date
        assert (await c.request(message(c, pans[6], 100)))["39"] == "54"
        assert (await c.request(message(c, pans[2], 100)))["39"] == "00"
        assert (await c.request(message(c, pans[3], 100)))["39"] == "00"  # expires at the month's end

    with_host(db_url, hsm_server, before)
    start = states(db_url)
    ids = sorted(start)

    dry = ok(env, "card", "expire", "--dry-run")
    assert dry["dry_run"] and dry["count"] == 3 and dry["by_state"] == {"active": 2, "frozen": 1}
    assert dry["expiry_before"] == this_month
    assert states(db_url) == start  # a dry run moves nothing
    human = run(env, "card", "expire", "--dry-run")
    assert human.exit_code == 0 and human.output.startswith("dry run: 3 cards would expire")
    # as of a date next month, the card of this month would expire too (the future one not)
    later = dt.datetime.now(dt.UTC).date().replace(day=1) + dt.timedelta(days=40)
    assert ok(env, "card", "expire", "--dry-run", "--as-of", later.isoformat())["count"] == 4
    bad = run(env, "card", "expire", "--as-of", "2026-13-01")
    assert bad.exit_code == 2 and "Traceback" not in bad.output

    before_count = _expired_metric("active")
    moved = ok(env, "card", "expire")
    assert not moved["dry_run"] and moved["count"] == 3 and moved["by_state"] == {"active": 2, "frozen": 1}
    assert _expired_metric("active") == before_count + 2
    after = states(db_url)
    expired = {ids[0], ids[1], ids[6]}
    assert {i for i, s in after.items() if s == "expired"} == expired
    assert {i: s for i, s in after.items() if i not in expired} == {
        i: s for i, s in start.items() if i not in expired
    }  # closed stays closed, lost stays lost, the live ones stay active
    again = run(env, "card", "expire")
    assert again.exit_code == 0 and again.output.startswith("0 cards expired")

    # the state machine: an expired card is not activated or unfrozen
    assert run(env, "card", "unfreeze", str(ids[1])).exit_code == 1
    assert run(env, "card", "activate", str(ids[0])).exit_code == 1
    held = run(env, "card", "close", str(ids[0]))
    assert held.exit_code == 1 and "--forfeit" in held.output  # it still holds its 100.00
    closed = run(env, "card", "close", str(ids[0]), "--forfeit")
    assert closed.exit_code == 0 and "expired -> closed" in closed.output
    _q(db_url, "UPDATE cards SET state = 'expired' WHERE id = $1", ids[0])

    async def after_sweep(h: Harness) -> None:
        c = h.client
        assert (await c.request(message(c, pans[0], 100)))["39"] == "54"
        assert (await c.request(message(c, pans[1], 100)))["39"] == "54"
        assert (await c.request(message(c, pans[2], 100)))["39"] == "00"

    with_host(db_url, hsm_server, after_sweep)


def test_host_runs_the_sweep(db_url: str, hsm_server: Any) -> None:
    """`host serve` moves a card past its expiry within host.card_expiry_seconds."""

    async def body(h: Harness) -> None:
        (pan,) = await programme(h, "EXPH", bin_prefix="621239", cards=1, load=0)
        (card_id,) = [r["id"] for r in await h.pool.run(_ids, "EXPH")]
        await h.pool.run(_set, [(card_id, "active", PAST)])
        with trio.fail_after(15):
            while (await h.pool.run(_state, card_id)) != "expired":
                await trio.sleep(0.2)
        assert (await h.client.request(message(h.client, pan, 100)))["39"] == "54"

    with_host(db_url, hsm_server, body, card_expiry_seconds=1)


def test_an_inventory_card_past_its_expiry_is_not_activated_and_expires(
    env: dict[str, str], db_url: str
) -> None:
    ok(env, "product", "add", "EXPI", "--kind", "reloadable", "--bin", "621238", "--no-pin")
    (card,) = ok(env, "card", "issue", "--product", "EXPI")["cards"]
    _q(db_url, "UPDATE cards SET expiry = $2 WHERE id = $1", card["card_id"], PAST)
    refused = run(env, "card", "activate", str(card["card_id"]))
    assert refused.exit_code == 1 and "past its expiry 2401" in refused.output
    # stock past its date can no longer be sold: the sweep moves it to expired, and it stays refused
    assert ok(env, "card", "expire", "--dry-run")["by_state"].get("inventory") == 1
    assert ok(env, "card", "expire")["by_state"].get("inventory") == 1
    assert [tuple(r) for r in _q(db_url, "SELECT state FROM cards WHERE id = $1", card["card_id"])] == [
        ("expired",)
    ]
    assert run(env, "card", "activate", str(card["card_id"])).exit_code == 1


# -- helpers ---------------------------------------------------------------------------------------
def _expired_metric(state: str) -> float:
    import host.expiry  # noqa: F401  (defines the counter)

    value = REGISTRY.get_sample_value("payswitch_host_cards_expired_total", {"from_state": state})
    return value or 0.0


def with_host(db_url: str, hsm_server: Any, body: Any, **host: Any) -> None:
    async def main() -> None:
        async with running_host(db_url, hsm_server, **host) as h:
            await body(h)

    trio.run(main)


async def _ids(conn: Any, product: str = "EXPY") -> list[Any]:
    return list(
        await conn.fetch(
            "SELECT c.id FROM cards c JOIN products p ON p.id = c.product_id WHERE p.code = $1 ORDER BY c.id",
            product,
        )
    )


async def _set(conn: Any, rows: list[tuple[int, str, str]]) -> None:
    for card_id, state, expiry in rows:
        await conn.execute("UPDATE cards SET state = $2, expiry = $3 WHERE id = $1", card_id, state, expiry)


async def _state(conn: Any, card_id: int) -> str:
    state: str = await conn.fetchval("SELECT state FROM cards WHERE id = $1", card_id)
    return state
