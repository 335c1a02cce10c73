"""Spend controls (issue 16 item 8, host.controls): windows per day, week, month and lifetime (amount and
count) in the programme's business day, allowed hours in its time zone, merchant-group caps and per-card
overrides that only lower, all decided in the ledger batch; a void or reversal gives back what it took
from the windows it counted in. Against the real PostgreSQL (and, over H2H, the real host and HSM)."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from collections.abc import Awaitable, Callable
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg
import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from host import catalog, controls, rules
from host.business_day import BusinessDay, read_closes, utc_now
from host.catalog import CatalogError
from host.check import run_checks
from host.controls import Changes, ControlsError, GroupCap, parse_group_cap, parse_hours
from host.ledger import Ledger
from host.model import Decision, Request, Txn
from tests.host import harness
from tests.host.helpers import ACQ, MERCHANT, cli_env, fake_hash, ok, programme, req, reversal_of, run

SHANGHAI = ZoneInfo("Asia/Shanghai")
SNACKS = "898330160129999"  # a merchant in group "snacks"


def shanghai(local: str) -> dt.datetime:
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


def sh_ledger() -> Ledger:
    """The programme's business day: cut-over 23:00 Asia/Shanghai (the config defaults)."""
    return Ledger(business_day=BusinessDay("23:00", "Asia/Shanghai"))


async def at(conn: Any, ledger: Ledger, when: dt.datetime | None, *reqs: Request) -> list[tuple[str, str]]:
    decisions: list[Decision] = await ledger.post_batch(conn, list(reqs), when)
    return [(d.code, d.reason) for d in decisions]


async def product(
    conn: Any, code: str, changes: Changes | None = None, *, cards: int = 1, **spec: Any
) -> list[str]:
    pans = await programme(conn, code=code, cards=cards, **spec)
    if changes is not None:
        await controls.set_product_controls(conn, code, changes)
    return pans


async def card_id(conn: Any, pan: str) -> int:
    return int(await conn.fetchval("SELECT id FROM cards WHERE pan_hash = $1", fake_hash(pan)))


async def snacks_merchant(conn: Any) -> None:
    if not await conn.fetchval("SELECT 1 FROM merchants WHERE merchant_id = $1", SNACKS):
        await catalog.add_merchant(conn, SNACKS, "Snack bar", "5814", "snacks", acquirer_id=ACQ)


async def spend(conn: Any, pan: str) -> dict[str, Any]:
    row = await conn.fetchrow(
        "SELECT a.day, a.day_amount, a.day_count, a.week, a.week_amount, a.week_count, a.month,"
        " a.month_amount, a.month_count, a.life_amount, a.life_count"
        " FROM cards c JOIN accounts a ON a.id = c.account_id WHERE c.pan_hash = $1",
        fake_hash(pan),
    )
    return dict(row)


OK = ("00", "")


# -- parsing -----------------------------------------------------------------------------------------
def test_hours_and_group_caps_parse_and_say_what_is_wrong() -> None:
    hours = parse_hours("06:30-09:00, mon-fri@11:00-13:30,sat+sun@17:00-19:30,22:00-02:00")
    assert [str(h) for h in hours] == [
        "06:30-09:00",
        "mon-fri@11:00-13:30",
        "sat+sun@17:00-19:30",
        "22:00-02:00",
    ]
    assert hours[0].allows(6 * 60 + 30, 1) and not hours[0].allows(9 * 60, 1)
    assert hours[1].allows(12 * 60, 5) and not hours[1].allows(12 * 60, 6)
    assert hours[3].allows(23 * 60, 3) and hours[3].allows(60, 3) and not hours[3].allows(3 * 60, 3)
    assert parse_hours("00:00-24:00")[0].allows(0, 1) and parse_hours("17:00-24:00")[0].allows(
        23 * 60 + 59, 1
    )
    for text in (
        "00:00-24:00",
        "17:00-24:00",
        "22:00-02:00",
        "sat+sun@00:00-24:00",
        "mon-wed+fri@08:00-09:00",
    ):
        assert ",".join(str(h) for h in parse_hours(text)) == text  # stored as text, parsed again
    for bad, words in (
        ("6:30-9:00", "is not a time"),
        ("06:30", "is not a range"),
        ("09:00-09:00", "allows nothing"),
        ("funday@06:30-09:00", "weekdays"),
        ("06:30-09:00,", "empty range"),
    ):
        with pytest.raises(ControlsError, match=words):
            parse_hours(bad)
    assert parse_group_cap("snacks:day:30.00") == GroupCap("snacks", "day", 3_000, None)
    assert parse_group_cap("snacks:week:100:20") == GroupCap("snacks", "week", 10_000, 20)
    assert parse_group_cap("snacks:month::5") == GroupCap("snacks", "month", None, 5)
    for bad, words in (
        ("snacks:day", "GROUP:SPAN:AMOUNT"),
        ("snacks:year:30", "not a window"),
        ("snacks:day:abc", "not an amount"),
        ("snacks:day::0", "not a count"),
        ("snacks:day:", "caps nothing"),
        ("sn acks:day:1", "merchant group code"),
    ):
        with pytest.raises(ControlsError, match=words):
            parse_group_cap(bad)


# -- windows, each with its roll-over at the business-day boundary ---------------------------------------
@pytest.mark.parametrize(
    ("span", "last_of_window", "first_of_next"),
    [
        # Sunday 6 December 2026 ends at 23:00 local: from then it is business date Monday 7 December
        ("week", "2026-12-06 22:59:59", "2026-12-06 23:00:00"),
        # business date 30 November ends at 23:00 local on the 30th: 1 December, a new month
        ("month", "2026-11-30 22:59:59", "2026-11-30 23:00:00"),
        ("lifetime", "2026-11-30 22:59:59", "2027-01-15 12:00:00"),  # never rolls
    ],
)
@pytest.mark.parametrize("measure", ["amount", "count"])
def test_each_window_declines_past_its_limit_and_rolls_at_the_business_day(
    db_url: str, span: str, measure: str, last_of_window: str, first_of_next: str
) -> None:
    async def body(conn: Any) -> None:
        key = f"{span}_{measure}"
        limit = 1_000 if measure == "amount" else 2
        code = f"W{span[:2].upper()}{measure[0].upper()}"
        (pan,) = await product(conn, code, Changes({key: limit}))
        ledger = sh_ledger()
        before = shanghai(last_of_window)
        assert await at(conn, ledger, before - dt.timedelta(days=1), req(Txn.TOPUP, pan, 50_000)) == [OK]
        # a day earlier in the same window, then the window's last second
        assert await at(conn, ledger, before - dt.timedelta(hours=20), req(Txn.PURCHASE, pan, 600)) == [OK]
        assert await at(conn, ledger, before, req(Txn.PURCHASE, pan, 400)) == [OK]
        reason = f"{span}_{measure}_limit"
        expect = ("61" if measure == "amount" else "65", reason)
        assert await at(conn, ledger, before, req(Txn.PURCHASE, pan, 1)) == [expect]
        assert reason in rules.REASONS  # its code and words for people
        after = await at(conn, ledger, shanghai(first_of_next), req(Txn.PURCHASE, pan, 1))
        assert after == ([expect] if span == "lifetime" else [OK])

    on_db(db_url, body)


def test_a_card_lowers_the_daily_limit_and_a_higher_override_is_refused(db_url: str) -> None:
    """A parent lowers a child's daily limit (amount and count) and per-transaction limit; an override
    above the product's, or a group cap above the product's, is refused and changes nothing."""

    async def body(conn: Any) -> None:
        await snacks_merchant(conn)
        (pan,) = await product(
            conn,
            "CHILD",
            Changes({"week_amount": 20_000}, groups=(GroupCap("snacks", "day", 3_000, None),)),
            daily_amount_limit=10_000,
            per_txn_limit=5_000,
        )
        cid = await card_id(conn, pan)
        today = BusinessDay().today(utc_now())
        view = await controls.set_card_limits(
            conn, cid, Changes({"day_amount": 1_000, "day_count": 2, "per_txn": 800}), today
        )
        by_key = {r["limit"]: r for r in view["limits"]}
        assert by_key["day_amount"]["value"] == 1_000 and by_key["day_amount"]["source"] == "card"
        assert by_key["week_amount"]["source"] == "product"
        for changes, words in (
            (Changes({"day_amount": 10_001}), "daily limit 100.01 CNY is above the product's 100.00 CNY"),
            (Changes({"per_txn": 5_001}), "per-transaction limit"),
            (Changes({"week_amount": 20_001}), "weekly limit"),
            (Changes(groups=(GroupCap("snacks", "day", 3_001, None),)), "snacks day amount cap"),
            (Changes(groups=(GroupCap("snacks", "day", None, 3),)), "snacks day amount cap none"),
            (Changes(groups=(GroupCap("nosuch", "day", 1, None),)), "no merchant group 'nosuch'"),
        ):
            with pytest.raises(CatalogError, match=words):
                await controls.set_card_limits(conn, cid, changes, today)
        assert (
            await conn.fetchval("SELECT controls->'limits'->>'day_amount' FROM cards WHERE id = $1", cid)
            == "1000"
        )

        ledger = Ledger()
        assert await at(conn, ledger, None, req(Txn.TOPUP, pan, 50_000)) == [OK]
        assert await at(conn, ledger, None, req(Txn.PURCHASE, pan, 801)) == [("61", "per_txn_limit")]
        assert await at(conn, ledger, None, req(Txn.PURCHASE, pan, 800), req(Txn.PURCHASE, pan, 201)) == [
            OK,
            ("61", "daily_amount_limit"),
        ]
        assert await at(conn, ledger, None, req(Txn.PURCHASE, pan, 100), req(Txn.PURCHASE, pan, 1)) == [
            OK,
            ("65", "daily_count_limit"),
        ]
        # the product lowered below the card's override: the lower one binds
        await conn.execute("UPDATE products SET per_txn_limit = 500 WHERE code = 'CHILD'")
        await controls.set_card_limits(conn, cid, Changes(clear=frozenset({"all"})), today)
        assert await at(conn, ledger, None, req(Txn.PURCHASE, pan, 501)) == [("61", "per_txn_limit")]

    on_db(db_url, body)


# -- hours -----------------------------------------------------------------------------------------------
def test_allowed_hours_at_their_edges_in_the_programme_zone(db_url: str) -> None:
    """A canteen card buys at meal times only (Asia/Shanghai wall clock, whatever the UTC time); a card's
    own weekday hours narrow its product's; top-ups are not limited by hours."""

    async def body(conn: Any) -> None:
        pan, kid = await product(
            conn, "MEALS", Changes(hours=parse_hours("06:30-09:00,11:00-13:30,17:00-19:30")), cards=2
        )
        today = BusinessDay().today(utc_now())
        await controls.set_card_limits(
            conn, await card_id(conn, kid), Changes(hours=parse_hours("mon-fri@11:00-13:30")), today
        )
        ledger = sh_ledger()
        night = shanghai("2026-12-04 03:00:00")
        assert await at(conn, ledger, night, req(Txn.TOPUP, pan, 50_000), req(Txn.TOPUP, kid, 50_000)) == [
            OK,
            OK,
        ]
        outside = ("57", "outside_allowed_hours")
        for local, expect in (
            ("2026-12-04 06:29:59", outside),
            ("2026-12-04 06:30:00", OK),
            ("2026-12-04 08:59:59", OK),
            ("2026-12-04 09:00:00", outside),
            ("2026-12-04 13:29:59", OK),
            ("2026-12-04 13:30:00", outside),
            ("2026-12-04 19:29:00", OK),
            ("2026-12-04 19:30:00", outside),
            ("2026-12-04 23:30:00", outside),
        ):
            assert await at(conn, ledger, shanghai(local), req(Txn.PURCHASE, pan, 100)) == [expect], local
        # the child's card: lunch on weekdays only (Friday 4 / Saturday 5 December 2026), product's hours too
        assert await at(conn, ledger, shanghai("2026-12-04 12:00:00"), req(Txn.PURCHASE, kid, 100)) == [OK]
        assert await at(conn, ledger, shanghai("2026-12-04 07:00:00"), req(Txn.PURCHASE, kid, 100)) == [
            outside
        ]
        assert await at(conn, ledger, shanghai("2026-12-05 12:00:00"), req(Txn.PURCHASE, kid, 100)) == [
            outside
        ]

    on_db(db_url, body)


# -- merchant-group caps -----------------------------------------------------------------------------------
def test_group_caps_amount_and_count_per_window(db_url: str) -> None:
    """At most 30 yuan a day and 3 purchases a week at `snacks`; the canteen (no group) is not capped; a
    new business day gives the day's cap back, not the week's."""

    async def body(conn: Any) -> None:
        await snacks_merchant(conn)
        caps = (GroupCap("snacks", "day", 3_000, None), GroupCap("snacks", "week", None, 3))
        (pan,) = await product(conn, "SNACK", Changes(groups=caps))
        ledger = sh_ledger()
        mon = shanghai("2026-12-07 12:00:00")
        assert await at(conn, ledger, mon, req(Txn.TOPUP, pan, 50_000)) == [OK]
        snack = [req(Txn.PURCHASE, pan, a, merchant_id=SNACKS) for a in (2_000, 1_000, 1)]
        assert await at(conn, ledger, mon, *snack) == [OK, OK, ("61", "group_amount_limit")]
        assert await at(conn, ledger, mon, req(Txn.PURCHASE, pan, 10_000)) == [OK]  # the canteen
        tue = shanghai("2026-12-08 12:00:00")
        assert await at(conn, ledger, tue, req(Txn.PURCHASE, pan, 500, merchant_id=SNACKS)) == [OK]
        assert await at(conn, ledger, tue, req(Txn.PURCHASE, pan, 1, merchant_id=SNACKS)) == [
            ("65", "group_count_limit")
        ]
        rows = await conn.fetch(
            "SELECT span, period, amount, count FROM card_group_usage u"
            " JOIN cards c ON c.account_id = u.account_id WHERE c.pan_hash = $1 ORDER BY span",
            fake_hash(pan),
        )
        assert [tuple(r) for r in rows] == [
            ("day", dt.date(2026, 12, 8), 500, 1),
            ("week", dt.date(2026, 12, 7), 3_500, 3),
        ]
        next_mon = shanghai("2026-12-14 12:00:00")
        assert await at(conn, ledger, next_mon, req(Txn.PURCHASE, pan, 3_000, merchant_id=SNACKS)) == [OK]

    on_db(db_url, body)


# -- void and reversal give back ----------------------------------------------------------------------------
def test_void_and_reversal_give_the_windows_back_only_in_the_window_they_counted(db_url: str) -> None:
    async def body(conn: Any) -> None:
        await snacks_merchant(conn)
        (pan,) = await product(
            conn,
            "GIVE",
            Changes(
                {"week_amount": 1_000, "month_count": 5, "lifetime_amount": 5_000},
                groups=(GroupCap("snacks", "day", 1_000, 1),),
            ),
        )
        ledger = Ledger()  # the real clock: an original read back is dated by when it was received
        assert await at(conn, ledger, None, req(Txn.TOPUP, pan, 50_000)) == [OK]
        buy = req(Txn.PURCHASE, pan, 1_000, merchant_id=SNACKS)
        assert await at(conn, ledger, None, buy) == [OK]
        assert await at(conn, ledger, None, req(Txn.PURCHASE, pan, 1)) == [("61", "week_amount_limit")]
        assert await at(
            conn, ledger, None, req(Txn.VOID, pan, 1_000, original_rrn=buy.rrn, merchant_id=SNACKS)
        ) == [OK]
        s = await spend(conn, pan)
        assert (s["week_amount"], s["month_count"], s["life_amount"], s["life_count"]) == (0, 0, 0, 0)
        again = req(Txn.PURCHASE, pan, 1_000, merchant_id=SNACKS)
        assert await at(conn, ledger, None, again) == [OK]  # the group's day cap was given back too
        assert await at(conn, ledger, None, reversal_of(again)) == [OK]
        assert (
            await conn.fetchval(
                "SELECT u.amount + u.count FROM card_group_usage u"
                " JOIN cards c ON c.account_id = u.account_id WHERE c.pan_hash = $1",
                fake_hash(pan),
            )
            == 0
        )
        # partly reversed: the amount undone comes back, the use stays counted
        third = req(Txn.PURCHASE, pan, 1_000)
        assert await at(conn, ledger, None, third) == [OK]
        assert await at(conn, ledger, None, reversal_of(third, actual_amount=700)) == [OK]
        s = await spend(conn, pan)
        assert (s["week_amount"], s["week_count"], s["life_amount"], s["life_count"]) == (700, 1, 700, 1)

        # counted last week, voided this week: this week's sum keeps what it counted; the lifetime's
        # gives it back
        later = Ledger(clock=lambda: utc_now() + dt.timedelta(days=7))
        old = req(Txn.PURCHASE, pan, 300)
        assert await at(conn, ledger, None, old) == [OK]
        assert await at(conn, later, None, req(Txn.PURCHASE, pan, 1_000)) == [OK]
        assert await at(conn, later, None, req(Txn.VOID, pan, 300, original_rrn=old.rrn)) == [OK]
        assert await at(conn, later, None, req(Txn.PURCHASE, pan, 1)) == [("61", "week_amount_limit")]
        s = await spend(conn, pan)
        assert (s["week_amount"], s["life_amount"]) == (1_000, 1_700)

    on_db(db_url, body)


# -- the property ------------------------------------------------------------------------------------------
WEEK, MONTH_COUNT, LIFE, SNACK_DAY = 5_000, 8, 12_000, 1_500
step = st.one_of(
    st.tuples(st.just("buy"), st.integers(1, 3_000), st.booleans()),
    st.tuples(st.just("void"), st.integers(0, 20), st.booleans()),
    st.tuples(st.just("reverse"), st.integers(0, 20), st.booleans()),
)


@settings(max_examples=25)
@given(steps=st.lists(step, min_size=1, max_size=14))
def test_random_purchases_and_undos_never_exceed_a_window(
    db_url: str, steps: list[tuple[str, int, bool]]
) -> None:
    """Whatever purchases, voids and reversals arrive, the purchases still standing never exceed a
    window, and the card's sums are exactly what stands (a fresh card per example)."""

    async def body(conn: Any) -> None:
        await snacks_merchant(conn)
        if not await conn.fetchval("SELECT 1 FROM products WHERE code = 'PROP'"):
            await product(
                conn,
                "PROP",
                Changes(
                    {"week_amount": WEEK, "month_count": MONTH_COUNT, "lifetime_amount": LIFE},
                    groups=(GroupCap("snacks", "day", SNACK_DAY, None),),
                ),
            )
        n = await conn.fetchval("SELECT count(*) FROM cards") + 1
        pan = f"629999{n:013d}"
        parts = await catalog.partitions(conn)
        await catalog.insert_cards(
            conn,
            "PROP",
            [
                catalog.NewCard(
                    fake_hash(pan),
                    "ENC" + fake_hash(pan),
                    pan[:6] + "*" * 9 + pan[-4:],
                    "1234",
                    int(fake_hash(pan), 16) % parts,
                )
            ],
            state="active",
        )
        ledger = Ledger()
        assert await at(conn, ledger, None, req(Txn.TOPUP, pan, 100_000)) == [OK]
        standing: list[tuple[Request, bool]] = []  # approved purchases not undone: (request, at snacks)
        approved: list[tuple[Request, bool]] = []
        for kind, value, snacks in steps:
            if kind == "buy":
                r = req(Txn.PURCHASE, pan, value, merchant_id=SNACKS if snacks else MERCHANT)
                ((code, _),) = await at(conn, ledger, None, r)
                if code == "00":
                    standing.append((r, snacks))
                    approved.append((r, snacks))
            elif approved:
                r, at_snacks = approved[value % len(approved)]
                undo = (
                    req(Txn.VOID, pan, r.amount, original_rrn=r.rrn, merchant_id=r.merchant_id)
                    if kind == "void"
                    else reversal_of(r)
                )
                ((code, _),) = await at(conn, ledger, None, undo)
                if (r, at_snacks) in standing:
                    assert code == "00"
                    standing.remove((r, at_snacks))
            total = sum(r.amount for r, _ in standing)
            assert total <= WEEK and total <= LIFE and len(standing) <= MONTH_COUNT
            assert sum(r.amount for r, g in standing if g) <= SNACK_DAY
            s = await spend(conn, pan)
            assert (s["week_amount"], s["month_count"], s["life_amount"]) == (total, len(standing), total)

    on_db(db_url, body)


# -- over H2H: the running host, its clock moved -------------------------------------------------------------
def test_the_host_applies_hours_and_the_week_over_h2h(db_url: str, hsm_server: Any) -> None:
    """The host's service (cut-over 23:00 Asia/Shanghai): the hours' edges answer 57, the week's limit 61
    until the business date becomes Monday at 23:00 local on Sunday."""

    async def main() -> None:
        async with harness.running_host(db_url, hsm_server) as h:
            # the link the harness declares with its first merchant (another test here made the merchant)
            zpk = await h.crypto.hsm.form_key("001", [harness.ZPK_CLEAR, "0" * 32], "U")
            await h.pool.run(
                catalog.set_link, harness.ACQ, "3des", None, zpk.under_lmk, zpk.check_value, None, True
            )
            (pan,) = await harness.programme(h, "H2HCTL", cards=1, load=10_000, bin_prefix="621288")
            await h.pool.run(
                controls.set_product_controls,
                "H2HCTL",
                Changes({"week_amount": 1_000}, parse_hours("06:30-09:00,22:00-23:30")),
            )
            clock = [shanghai("2026-12-06 06:29:59")]  # a Sunday
            h.service.ledger.clock = lambda: clock[0]
            c = h.client
            for local, amount, rc in (
                ("2026-12-06 06:29:59", 600, "57"),
                ("2026-12-06 06:30:00", 600, "00"),
                ("2026-12-06 08:59:59", 400, "00"),
                ("2026-12-06 09:00:00", 1, "57"),
                ("2026-12-06 22:59:59", 1, "61"),  # inside the hours, the week spent
                ("2026-12-06 23:00:00", 1_000, "00"),  # business date Monday 7 December: a new week
            ):
                clock[0] = shanghai(local)
                assert (await c.request(harness.message(c, pan, amount)))["39"] == rc, local
            failed = [r for r in await h.pool.run(run_checks) if not r.ok]
            assert not failed, failed

    trio.run(main)


# -- the CLI -----------------------------------------------------------------------------------------------
def test_product_controls_and_card_limits_from_the_command_line(
    db_url: str, hsm_server: Any, tmp_path_factory: pytest.TempPathFactory
) -> None:
    env = cli_env(tmp_path_factory.mktemp("controls"), db_url, hsm_server.env)

    async def setup(conn: Any) -> int:
        await snacks_merchant(conn)
        (pan,) = await product(conn, "CLICTL", daily_amount_limit=30_000)
        await Ledger().post_batch(conn, [req(Txn.TOPUP, pan, 50_000)])
        pans.append(pan)
        return await card_id(conn, pan)

    async def snack(conn: Any) -> int:
        ledger = Ledger(business_day=BusinessDay("23:00", "Asia/Shanghai"))  # the config's business day
        (d,) = await ledger.post_batch(conn, [req(Txn.PURCHASE, pans[0], 1_250, merchant_id=SNACKS)])
        return 1 if d.code == "00" else 0

    pans: list[str] = []
    cid = asyncio.run(_with_conn(db_url, setup))
    shown = ok(
        env,
        "product",
        "controls",
        "CLICTL",
        "--week-amount",
        "500.00",
        "--month-count",
        "40",
        "--hours",
        "06:30-09:00,mon-fri@11:00-13:30",
        "--group-cap",
        "snacks:day:30.00:5",
    )
    assert shown["changed"] and shown["limits"] == {"week_amount_minor": 50_000, "month_count": 40}
    assert shown["hours"] == ["06:30-09:00", "mon-fri@11:00-13:30"]
    assert shown["group_caps"] == [{"group": "snacks", "span": "day", "amount_minor": 3_000, "count": 5}]
    cleared = ok(env, "product", "controls", "CLICTL", "--clear", "hours", "--clear", "month-count")
    assert cleared["hours"] == [] and cleared["limits"] == {"week_amount_minor": 50_000}
    assert ok(env, "product", "controls", "CLICTL") == {**cleared, "changed": False}
    assert asyncio.run(_with_conn(db_url, snack)) == 1

    limits = ok(env, "card", "limits", str(cid), "--daily", "200.00", "--week", "400")
    by = {r["limit"]: r for r in limits["limits"]}
    assert (by["day_amount"]["value_minor"], by["day_amount"]["source"]) == (20_000, "card")
    assert (by["day_amount"]["used_minor"], by["day_amount"]["remaining_minor"]) == (1_250, 18_750)
    assert (by["week_amount"]["value_minor"], by["week_amount"]["remaining_minor"]) == (40_000, 38_750)
    assert limits["group_caps"][0]["remaining_amount_minor"] == 1_750
    human = run(env, "card", "limits", str(cid))
    assert human.exit_code == 0 and "daily limit" in human.output and "187.50 CNY" in human.output
    assert "group snacks day" in human.output

    refused = run(env, "card", "limits", str(cid), "--daily", "300.01")
    assert refused.exit_code == 1
    assert refused.output.strip().splitlines()[-1] == (
        f"Error: card {cid}: daily limit 300.01 CNY is above the product's 300.00 CNY"
        " (an override may only lower it)"
    )
    assert run(env, "card", "limits", str(cid), "--hours", "7-9").exit_code == 2
    assert run(env, "product", "controls", "NOPE").exit_code == 1
    assert run(env, "product", "controls", "CLICTL", "--group-cap", "nosuch:day:1").exit_code == 1
    back = ok(env, "card", "limits", str(cid), "--clear")
    assert back["overrides"] == {"limits": {}, "hours": [], "group_caps": []}
    assert json.dumps(back)  # dates and amounts all serialisable


async def _with_conn(db_url: str, work: Callable[[Any], Awaitable[int]]) -> int:
    conn = await asyncpg.connect(db_url)
    try:
        return await work(conn)
    finally:
        await conn.close()


# -- replacement ------------------------------------------------------------------------------------------
def test_a_replacement_card_keeps_the_windows_used_and_the_overrides(
    db_url: str, hsm_server: Any, tmp_path: Any
) -> None:
    """`card replace` (host.replace): the new PAN starts with the old card's week / lifetime sums and its
    group sums, and with its overrides (rules.carry_usage, the replacement's card update)."""
    from host.replace import replace_card
    from tests.host.test_replace import _named

    async def main() -> None:
        async with harness.running_host(db_url, hsm_server) as h:
            zpk = await h.crypto.hsm.form_key("001", [harness.ZPK_CLEAR, "0" * 32], "U")
            await h.pool.run(
                catalog.set_link, harness.ACQ, "3des", None, zpk.under_lmk, zpk.check_value, None, True
            )
            (pan,) = await harness.programme(h, "RPLCTL", cards=1, load=10_000, bin_prefix="621289")
            await h.pool.run(controls.set_product_controls, "RPLCTL", Changes({"week_amount": 5_000}))
            old = int(await h.pool.run(catalog.card_by_hash, await h.crypto.pan_hash(pan)))
            await h.pool.run(_named, old)
            today = BusinessDay.of_config(h.service.config).today(utc_now())
            await h.pool.run(controls.set_card_limits, old, Changes({"lifetime_amount": 4_000}), today)
            c = h.client
            assert (await c.request(harness.message(c, pan, 3_000)))["39"] == "00"
            r = await replace_card(
                h.pool,
                h.crypto,
                old,
                "damaged",
                actor="test:operator",
                today=today,
                mailer_dir=tmp_path,
                timezone=h.service.config.clearing.timezone,
            )
            view = await h.pool.run(controls.card_limits, r.new_card_id, today)
            by = {x["limit"]: x for x in view["limits"]}
            assert (by["week_amount"]["used"], by["lifetime_amount"]["used"]) == (3_000, 3_000)
            assert (by["lifetime_amount"]["value"], by["lifetime_amount"]["source"]) == (4_000, "card")
            failed = [x for x in await h.pool.run(run_checks) if not x.ok]
            assert not failed, failed

    trio.run(main)


def test_card_show_and_limits_count_the_day_the_ledger_counts_after_an_early_close(
    db_url: str, hsm_server: Any, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """After `clearing close-day` the ledger counts in the next business date at once; `card show` and
    `card limits` compare the counters with that date (host.business_day.business_date_now), not with
    the date the cut-over alone gives, which would show today's use as nothing. Last in this module:
    the early close stays in its database."""
    env = cli_env(tmp_path_factory.mktemp("early"), db_url, hsm_server.env)

    async def body(conn: Any) -> int:
        (pan,) = await product(conn, "EARLY")
        await Ledger().post_batch(conn, [req(Txn.TOPUP, pan, 10_000)])
        bd = BusinessDay("23:00", "Asia/Shanghai")  # the configuration's (cli_env's) business day
        today = bd.today(utc_now())
        await conn.execute(
            "INSERT INTO closed_business_dates (business_date, closed_at, closed_by)"
            " VALUES ($1, now() - interval '1 second', 'test') ON CONFLICT DO NOTHING",
            today,
        )
        await read_closes(conn, bd)
        assert bd.today(utc_now()) == today + dt.timedelta(days=1)
        (d,) = await Ledger(business_day=bd).post_batch(conn, [req(Txn.PURCHASE, pan, 1_234)])
        assert d.code == "00"
        return await card_id(conn, pan)

    cid = asyncio.run(_with_conn(db_url, body))
    shown = ok(env, "card", "show", str(cid))
    assert (shown["today_amount_minor"], shown["today_count"]) == (1_234, 1)
    by = {r["limit"]: r for r in ok(env, "card", "limits", str(cid))["limits"]}
    assert (by["day_amount"]["used_minor"], by["day_count"]["used"]) == (1_234, 1)
