"""The business day is the programme's day (issue 15 item 5).

Daily amount and count limits roll over at the local cut-over (``clearing.timezone``,
``clearing.cutover``: the business date of the clearing file), not at UTC midnight; "today" for card
expiry is the business date; the times people see (``card history``) are local with the offset.
The ledger's clock (``Ledger.clock``, or ``now`` of ``post_batch``) is what the tests move.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import re
from collections.abc import Awaitable, Callable
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg
import pytest
import trio

from host import catalog
from host.business_day import BusinessDay
from host.check import run_checks
from host.ledger import Ledger
from host.model import Decision, Request, Txn
from ops.localtime import iso_local
from specs.clearing import business_date_of
from tests.host import harness
from tests.host.helpers import cli_env, fake_hash, ok, programme, req, run

SHANGHAI = ZoneInfo("Asia/Shanghai")


def shanghai(local: str) -> dt.datetime:
    """'2026-12-01 22:59:59' on the Shanghai wall clock, as the UTC instant."""
    return dt.datetime.fromisoformat(local).replace(tzinfo=SHANGHAI).astimezone(dt.UTC)


def on_db(db_url: str, body: Callable[[Any], Awaitable[None]]) -> None:
    async def main() -> None:
        conn = await asyncpg.connect(db_url)
        try:
            await body(conn)
            failed = [r for r in await run_checks(conn) if not r.ok]
            assert not failed, failed
        finally:
            await conn.close()

    asyncio.run(main())


async def at(conn: Any, ledger: Ledger, when: dt.datetime, *reqs: Request) -> list[str]:
    decisions: list[Decision] = await ledger.post_batch(conn, list(reqs), when)
    return [d.code for d in decisions]


async def counters(conn: Any, pan: str) -> tuple[Any, ...]:
    row = await conn.fetchrow(
        "SELECT a.day, a.day_amount, a.day_count FROM cards c JOIN accounts a ON a.id = c.account_id"
        " WHERE c.pan_hash = $1",
        fake_hash(pan),
    )
    return tuple(row)


# -- the cached boundary --------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("cutover", "zone"),
    [
        ("23:00", "Asia/Shanghai"),
        ("00:00", "UTC"),
        ("02:30", "America/New_York"),  # a cut-over inside the hour DST skips or repeats
        ("12:00", "Europe/Berlin"),
        ("04:00", "Australia/Lord_Howe"),  # a half-hour DST shift
    ],
)
def test_the_cached_window_answers_what_business_date_of_answers(cutover: str, zone: str) -> None:
    """``BusinessDay.today`` answers from its cached window; at every instant, across the DST changes of
    spring and autumn, that is what ``specs.clearing.business_date_of`` (the clearing file's) says."""
    bd = BusinessDay(cutover, zone)
    for start, end in (
        (dt.datetime(2026, 3, 1, tzinfo=dt.UTC), dt.datetime(2026, 4, 12, tzinfo=dt.UTC)),
        (dt.datetime(2026, 9, 25, tzinfo=dt.UTC), dt.datetime(2026, 11, 8, tzinfo=dt.UTC)),
    ):
        t = start
        while t < end:
            assert bd.today(t) == business_date_of(t, cutover, zone), t
            older = t - dt.timedelta(days=2, minutes=13)
            assert bd.date_of(older) == business_date_of(older, cutover, zone), older
            t += dt.timedelta(minutes=7)
    # and exactly at a boundary: the cut-over instant opens the next date
    sh = BusinessDay("23:00", "Asia/Shanghai")
    assert sh.today(shanghai("2026-12-01 22:59:59")) == dt.date(2026, 12, 1)
    assert sh.today(shanghai("2026-12-01 23:00:00")) == dt.date(2026, 12, 2)
    assert sh.today(shanghai("2026-12-02 22:59:59.999999")) == dt.date(2026, 12, 2)


# -- the posting engine against the database --------------------------------------------------------
def test_daily_limits_roll_over_at_the_local_cutover(db_url: str) -> None:
    """Cut-over 23:00 Asia/Shanghai: the day's limit spent at 22:59:59 local, a purchase at 23:00 is on the
    next business date (the same UTC day: 15:00Z) and approved; at 22:59 local the next day (another UTC
    day) it is still that business date, and the limit spent since 23:00 the day before still holds."""

    async def body(conn: Any) -> None:
        (pan,) = await programme(conn, code="BDAY", cards=1, daily_amount_limit=1_000, daily_count_limit=3)
        ledger = Ledger(business_day=BusinessDay("23:00", "Asia/Shanghai"))
        assert await at(conn, ledger, shanghai("2026-12-01 12:00:00"), req(Txn.TOPUP, pan, 10_000)) == ["00"]

        before = shanghai("2026-12-01 22:59:59")
        two = (req(Txn.PURCHASE, pan, 600), req(Txn.PURCHASE, pan, 400))
        assert await at(conn, ledger, before, *two) == ["00", "00"]
        assert await at(conn, ledger, before, req(Txn.PURCHASE, pan, 1)) == ["61"]  # the day is spent
        assert await counters(conn, pan) == (dt.date(2026, 12, 1), 1_000, 2)

        after = shanghai("2026-12-01 23:00:00")
        assert after.date() == before.date()  # one UTC day: the UTC rule would decline this 61
        assert await at(conn, ledger, after, req(Txn.PURCHASE, pan, 1_000)) == ["00"]
        assert await counters(conn, pan) == (dt.date(2026, 12, 2), 1_000, 1)

        next_evening = shanghai("2026-12-02 22:59:00")
        assert next_evening.date() != after.date()  # another UTC day: the UTC rule would approve this
        assert await at(conn, ledger, next_evening, req(Txn.PURCHASE, pan, 1)) == ["61"]
        assert await at(conn, ledger, shanghai("2026-12-02 23:00:00"), req(Txn.PURCHASE, pan, 1)) == ["00"]
        assert await counters(conn, pan) == (dt.date(2026, 12, 3), 1, 1)

    on_db(db_url, body)


def test_daily_count_rolls_over_at_the_local_cutover(db_url: str) -> None:
    async def body(conn: Any) -> None:
        (pan,) = await programme(conn, code="BDAYN", cards=1, daily_count_limit=1)
        ledger = Ledger(business_day=BusinessDay("23:00", "Asia/Shanghai"))
        ledger.clock = lambda: shanghai("2026-12-01 22:59:59")  # the clock hook (post_batch's default)
        assert [d.code for d in await ledger.post_batch(conn, [req(Txn.TOPUP, pan, 1_000)])] == ["00"]
        assert [d.code for d in await ledger.post_batch(conn, [req(Txn.PURCHASE, pan, 1)])] == ["00"]
        assert [d.code for d in await ledger.post_batch(conn, [req(Txn.PURCHASE, pan, 1)])] == ["65"]
        ledger.clock = lambda: shanghai("2026-12-01 23:00:01")
        assert [d.code for d in await ledger.post_batch(conn, [req(Txn.PURCHASE, pan, 1)])] == ["00"]

    on_db(db_url, body)


def test_a_date_closed_early_rolls_the_limits_at_its_close(db_url: str) -> None:
    """`clearing close-day` closed 1 December at 15:00 local: from then on it is 2 December for the limits
    as for the clearing file, and the 23:00 cut-over of 1 December no longer rolls anything."""

    async def body(conn: Any) -> None:
        (pan,) = await programme(conn, code="BDCLOSE", cards=1, daily_amount_limit=1_000)
        closes = {dt.date(2026, 12, 1): shanghai("2026-12-01 15:00:00")}
        ledger = Ledger(business_day=BusinessDay("23:00", "Asia/Shanghai", closes))
        await at(conn, ledger, shanghai("2026-12-01 09:00:00"), req(Txn.TOPUP, pan, 10_000))
        before, close = shanghai("2026-12-01 14:59:59"), shanghai("2026-12-01 15:00:00")
        assert await at(conn, ledger, before, req(Txn.PURCHASE, pan, 1_000)) == ["00"]
        assert await at(conn, ledger, before, req(Txn.PURCHASE, pan, 1)) == ["61"]
        assert await at(conn, ledger, close, req(Txn.PURCHASE, pan, 1_000)) == ["00"]
        assert await counters(conn, pan) == (dt.date(2026, 12, 2), 1_000, 1)
        assert await at(conn, ledger, shanghai("2026-12-01 23:00:00"), req(Txn.PURCHASE, pan, 1)) == ["61"]
        assert await at(conn, ledger, shanghai("2026-12-02 23:00:00"), req(Txn.PURCHASE, pan, 1)) == ["00"]

    on_db(db_url, body)


# -- the running host over H2H -----------------------------------------------------------------------
def test_the_host_rolls_the_limit_at_the_cutover_and_answers_the_business_date(
    db_url: str, hsm_server: Any
) -> None:
    """The host's service (config: cut-over 23:00 Asia/Shanghai, the defaults) over a real socket, its
    ledger clock moved by the test: the limit rolls at 23:00 local, and DE15 (settlement date) is the
    business date, 1202 from 23:00 on 1 December."""

    async def main() -> None:
        async with harness.running_host(db_url, hsm_server) as h:
            assert (h.service.config.clearing.cutover, h.service.config.clearing.timezone) == (
                "23:00",
                "Asia/Shanghai",
            )
            # the link the harness declares with its first merchant (another test here made the merchant)
            zpk = await h.crypto.hsm.form_key("001", [harness.ZPK_CLEAR, "0" * 32], "U")
            await h.pool.run(
                catalog.set_link, harness.ACQ, "3des", None, zpk.under_lmk, zpk.check_value, None, True
            )
            (pan,) = await harness.programme(
                h, "BDH2H", cards=1, load=10_000, bin_prefix="621277", daily_amount_limit=1_000
            )
            clock = [shanghai("2026-12-01 22:59:59")]
            h.service.ledger.clock = lambda: clock[0]
            c = h.client
            first = await c.request(harness.message(c, pan, 1_000))
            assert (first["39"], first["15"]) == ("00", "1201")
            assert (await c.request(harness.message(c, pan, 1)))["39"] == "61"
            clock[0] = shanghai("2026-12-01 23:00:00")
            rolled = await c.request(harness.message(c, pan, 1_000))
            assert (rolled["39"], rolled["15"]) == ("00", "1202")
            clock[0] = shanghai("2026-12-02 22:59:00")
            late = await c.request(harness.message(c, pan, 1))
            assert (late["39"], late["15"]) == ("61", "1202")
            failed = [r for r in await h.pool.run(run_checks) if not r.ok]
            assert not failed, failed

    trio.run(main)


def test_the_host_reads_a_close_day_and_rolls_the_limit_there(db_url: str, hsm_server: Any) -> None:
    """A date closed early in the database (as `clearing close-day` records it) reaches the running host
    within its poll: the limit rolls at the close instant, and DE15 names the next date from there."""

    async def main() -> None:
        async with harness.running_host(db_url, hsm_server) as h:
            zpk = await h.crypto.hsm.form_key("001", [harness.ZPK_CLEAR, "0" * 32], "U")
            await h.pool.run(
                catalog.set_link, harness.ACQ, "3des", None, zpk.under_lmk, zpk.check_value, None, True
            )
            (pan,) = await harness.programme(
                h, "BDH2HC", cards=1, load=10_000, bin_prefix="621278", daily_amount_limit=1_000
            )
            clock = [shanghai("2026-11-20 14:59:59")]
            h.service.ledger.clock = lambda: clock[0]
            c = h.client
            assert (await c.request(harness.message(c, pan, 1_000)))["39"] == "00"
            await h.pool.run(_close, dt.date(2026, 11, 20), shanghai("2026-11-20 15:00:00"))
            with trio.fail_after(10):
                while dt.date(2026, 11, 20) not in h.service.ledger.business_day.closes:
                    await trio.sleep(0.05)
            assert (await c.request(harness.message(c, pan, 1)))["39"] == "61"  # 14:59:59: still the 20th
            clock[0] = shanghai("2026-11-20 15:00:00")
            rolled = await c.request(harness.message(c, pan, 1_000))
            assert (rolled["39"], rolled["15"]) == ("00", "1121")

    trio.run(main)


async def _close(conn: Any, day: dt.date, closed_at: dt.datetime) -> None:
    await conn.execute(
        "INSERT INTO closed_business_dates (business_date, closed_at, closed_by) VALUES ($1, $2, 'test')",
        day,
        closed_at,
    )


# -- what people see ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def env(db_url: str, hsm_server: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return cli_env(tmp_path_factory.mktemp("bday"), db_url, hsm_server.env)


def test_card_history_shows_local_time_with_the_offset(env: dict[str, str], db_url: str) -> None:
    async def setup(conn: Any) -> tuple[int, list[dt.datetime]]:
        (pan,) = await programme(conn, code="BDHIST", cards=1)
        ledger = Ledger(business_day=BusinessDay("23:00", "Asia/Shanghai"))
        await ledger.post_batch(conn, [req(Txn.TOPUP, pan, 5_000), req(Txn.PURCHASE, pan, 1_234)])
        card_id = await conn.fetchval("SELECT id FROM cards WHERE pan_hash = $1", fake_hash(pan))
        times = [
            r["received_at"]
            for r in await conn.fetch(
                "SELECT received_at FROM auth_requests WHERE card_id = $1 ORDER BY received_at DESC", card_id
            )
        ]
        return int(card_id), times

    box: list[tuple[int, list[dt.datetime]]] = []

    async def body(conn: Any) -> None:
        box.append(await setup(conn))

    on_db(db_url, body)
    card_id, times = box[0]
    rows = ok(env, "card", "history", str(card_id))
    assert [r["at"] for r in rows] == [iso_local(t, "Asia/Shanghai") for t in times]
    assert all(r["at"].endswith("+08:00") for r in rows)
    human = run(env, "card", "history", str(card_id))
    assert human.exit_code == 0, human.output
    shown = re.findall(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \+08:00) ", human.output, re.M)
    assert shown == [t.astimezone(SHANGHAI).strftime("%Y-%m-%d %H:%M:%S +08:00") for t in times]


def test_card_expire_today_is_the_business_date(env: dict[str, str]) -> None:
    """In UTC+14 with a 12:00 cut-over the business date is never the UTC date: `card expire` takes the
    business date as today (the UTC date would be one or two days behind)."""
    kiritimati = {
        **env, "PAYSWITCH_CLEARING_TIMEZONE": "Pacific/Kiritimati", "PAYSWITCH_CLEARING_CUTOVER": "12:00"
    }
    before = dt.datetime.now(dt.UTC)
    result = ok(kiritimati, "card", "expire", "--dry-run")
    after = dt.datetime.now(dt.UTC)
    expected = {business_date_of(t, "12:00", "Pacific/Kiritimati").isoformat() for t in (before, after)}
    assert result["as_of"] in expected
    assert result["as_of"] != before.date().isoformat()
