"""Offline sales through the real switch (specs/README.md, "Offline sales" [project convention]).

Real PostgreSQL, the real HSM process and the real switch process; upstream is the scriptable H2H
issuer of tests/switch/fake_host.py, so each test sees exactly what went upstream and can make it stop
answering. The floor table of the sign-on comes from the host's bin_ranges and products, as the switch
reads them.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import asyncpg
import pytest

from specs.catalogue import (
    BatchTotals,
    FloorLimit,
    batch_totals_de48,
    parse_batch_totals,
    parse_floor_table,
)
from tests.fixtures.hsm import HsmServer
from tests.fixtures.pg import query
from tests.fixtures.services import ServiceProcess, base_env, run_cli, start_switch
from tests.switch.fake_host import FakeHost
from tests.switch.terminal import Terminal
from tests.switch.test_pos_e2e import (
    MERCHANT,
    PAN3,
    PAN4,
    ZPK3_HEX,
    ZPK4_HEX,
    _keys,
    register_terminals,
    wait_until,
)

SWITCH = {"request_timeout_ms": 1500, "saf_retry_s": 1}


@dataclass
class World:
    switch: ServiceProcess
    host3: FakeHost
    host4: FakeHost
    db_url: str
    hsm: HsmServer

    def terminal(self, scheme: str, terminal_id: str | None = None) -> Terminal:
        t = Terminal(scheme, terminal_id or ("TOFF3001" if scheme == "3des" else "TOFF4001"), MERCHANT)
        t.connect(self.switch.ports[scheme])
        return t

    def query(self, sql: str, *args: Any) -> list[Any]:
        return query(self.db_url, sql, *args)


async def _programme(db_url: str) -> None:
    """Two products: the canteen card (floor 500.00, no-CVM 300.00) on BIN 621234 with a sub-range
    62123499 that may never go offline (kept in the table: else its cards would take 621234's limits),
    and the gift card (both 0: left out) on BIN 621244."""
    conn = await asyncpg.connect(db_url)
    try:
        ids = []
        for code in ("CANTEEN", "GIFT", "NOOFFLINE"):
            ids.append(
                await conn.fetchval(
                    "INSERT INTO products (code, kind, currency, max_balance, per_txn_limit, "
                    "daily_amount_limit, daily_count_limit, validity_months) "
                    "VALUES ($1, 'reloadable', '156', 10000000, 1000000, 5000000, 50, 24) RETURNING id",
                    code,
                )
            )
        limits = ((50_000, 30_000), (0, 0), (0, 0))
        for product, (floor, no_cvm) in zip(ids, limits, strict=True):
            await conn.execute(
                "UPDATE products SET offline_floor_limit = $2, no_cvm_limit = $3 WHERE id = $1",
                product,
                floor,
                no_cvm,
            )
        for bin_, product in (("621234", ids[0]), ("621244", ids[1]), ("62123499", ids[2])):
            await conn.execute(
                "INSERT INTO bin_ranges (bin, pan_length, product_id) VALUES ($1, 19, $2)", bin_, product
            )
    finally:
        await conn.close()


@pytest.fixture(scope="module")
def world(db_url: str, hsm_server: HsmServer) -> Iterator[World]:
    keys = _keys(hsm_server)
    asyncio.run(
        register_terminals(
            db_url,
            [
                ("TOFF3001", "3des", keys["tmk3"]),
                ("TOFF4001", "sm4", keys["tmk4"]),
                ("TOFF3002", "3des", keys["tmk3"]),
                ("TOFF3003", "3des", keys["tmk3"]),
            ],
        )
    )
    asyncio.run(_programme(db_url))
    host3 = FakeHost("3des", bytes.fromhex(ZPK3_HEX)).start()
    host4 = FakeHost("sm4", bytes.fromhex(ZPK4_HEX)).start()
    env = base_env(db_url, hsm_server)
    for args in (
        ["switch", "link", "add", "issuer3", "--host", "127.0.0.1", "--port", str(host3.port),
         "--scheme", "3des", "--zpk", keys["zpk3"], "--connections", "1"],
        ["switch", "link", "add", "issuer4", "--host", "127.0.0.1", "--port", str(host4.port),
         "--scheme", "sm4", "--zpk", keys["zpk4"], "--connections", "1"],
        ["switch", "route", "add", "621234", "--link", "issuer3"],
        ["switch", "route", "add", "621244", "--link", "issuer4"],
    ):  # fmt: skip
        result = run_cli(args, env)
        assert result.returncode == 0, result.stderr
    w = World(start_switch(db_url, hsm_server, **SWITCH), host3, host4, db_url, hsm_server)
    try:
        _links_up(w, 0, 0)
        yield w
    finally:
        code = w.switch.stop()
        host3.stop()
        host4.stop()
        assert code == 0, w.switch.log()[-3000:]


def _links_up(w: World, n3: int, n4: int) -> None:
    """Both links signed on since the fake hosts had seen ``n3`` / ``n4`` 0800s."""
    wait_until(lambda: len(w.host3.seen("0800")) > n3 and len(w.host4.seen("0800")) > n4, what="link sign-on")


@pytest.fixture
def t3(world: World) -> Iterator[Terminal]:
    t = world.terminal("3des")
    assert t.sign_on().code == "00"
    yield t
    t.close()


def advice_msg(
    t: Terminal, pan: str, amount: int, *, stan: str | None = None, when: str = "0930151124"
) -> dict[str, Any]:
    """An offline advice as a terminal sends it (specs/README.md): 0220, DE3 000000, 60.1 36, DE61 =
    batch + the sale's own STAN + MMDD, DE12/13 the sale's local time (``when`` hhmmssMMDD), DE38 the
    terminal's offline approval code."""
    stan = stan or t.next_stan()
    return {
        "t": "0220",
        "2": pan,
        "3": "000000",
        "4": f"{amount:012d}",
        "11": stan,
        "12": when[:6],
        "13": when[6:],
        "14": "3012",
        "22": "012",
        "25": "00",
        "38": "Y1" + stan[-4:],
        "41": t.terminal_id,
        "42": t.merchant_id,
        "49": "156",
        "60": f"36{t.batch:06d}000",
        "61": f"{t.batch:06d}{stan}{when[6:]}",
    }


def test_sign_on_carries_the_floor_table(world: World) -> None:
    for scheme in ("3des", "sm4"):
        t = world.terminal(scheme)
        r = t.sign_on()
        assert r.code == "00"
        # ordered by BIN; the gift card's range (both limits 0) left out, 62123499 kept (longest prefix)
        assert parse_floor_table(r.msg["48"]) == [
            FloorLimit("621234", 50_000, 30_000),
            FloorLimit("62123499", 0, 0),
        ]
        t.close()


def test_advice_forwarded_once_with_the_sale_time_and_de60(world: World, t3: Terminal) -> None:
    msg = advice_msg(t3, PAN3, 12_345)
    before = len(world.host3.seen("0220"))
    r = t3.exchange(msg)
    assert r.code == "00" and t3.verify_mac(r)
    assert r.msg["t"] == "0230" and r.msg["61"] == msg["61"] and r.msg["60"] == msg["60"]
    up = world.host3.seen("0220")[before:]
    assert len(up) == 1
    sent = up[0]
    assert (sent["12"], sent["13"]) == ("093015", "1124")  # the sale's, not the switch's clock
    assert sent["38"] == msg["38"] and sent["60"] == f"{msg['60']}/{msg['61']}"
    assert (sent["2"], sent["3"], sent["4"], sent["22"]) == (PAN3, "000000", "000000012345", "012")
    assert (sent["41"], sent["42"], sent["49"]) == (t3.terminal_id, MERCHANT, "156")
    assert "52" not in sent and "90" not in sent
    rows = world.query(
        "SELECT txn_type, response_code, mti FROM switch_journal WHERE terminal_id = $1 AND stan = $2",
        t3.terminal_id,
        msg["11"],
    )
    assert [tuple(row) for row in rows] == [("offline", "00", "0220")]
    # retransmission: the first answer from the journal, nothing upstream again
    again = t3.exchange(msg)
    assert again.code == "00" and t3.verify_mac(again) and again.msg["37"] == r.msg["37"]
    assert len(world.host3.seen("0220")) == before + 1


def test_advice_on_the_sm4_profile_with_track2(world: World) -> None:
    t = world.terminal("sm4")
    assert t.sign_on().code == "00"
    msg = advice_msg(t, PAN4, 800)
    del msg["2"], msg["14"]
    msg["35"] = PAN4 + "=3012101"
    msg["22"] = "022"
    before = len(world.host4.seen("0220"))
    r = t.exchange(msg)
    assert r.code == "00" and t.verify_mac(r)
    up = world.host4.seen("0220")[before:]
    assert len(up) == 1 and up[0]["2"] == PAN4 and up[0]["60"] == f"{msg['60']}/{msg['61']}"
    t.close()


def test_bad_mac_answers_a0_and_sends_nothing(world: World, t3: Terminal) -> None:
    before = len(world.host3.requests)
    r = t3.exchange(advice_msg(t3, PAN3, 100), bad_mac=True)
    assert r.code == "A0" and r.resign and "64" not in r.msg
    assert len(world.host3.requests) == before


def test_an_advice_lacking_its_sale_fields_is_a_format_error(world: World, t3: Terminal) -> None:
    before = len(world.host3.requests)
    for drop in ("61", "12", "38"):
        msg = advice_msg(t3, PAN3, 100)
        del msg[drop]
        r = t3.exchange(msg)
        assert r.code == "30", drop
    short = advice_msg(t3, PAN3, 100)
    short["61"] = short["61"][:12]  # no MMDD: the sale does not name its day
    assert t3.exchange(short).code == "30"
    assert len(world.host3.requests) == before


def test_timed_out_advice_98_no_reversal_and_sent_again(world: World, t3: Terminal) -> None:
    msg = advice_msg(t3, PAN3, 4_200)
    saf_before = world.query("SELECT count(*) FROM switch_saf")[0][0]
    before = len(world.host3.seen("0220"))
    world.host3.drop_financial = True
    try:
        r = t3.exchange(msg)
    finally:
        world.host3.drop_financial = False
    assert r.code == "98" and t3.verify_mac(r)
    time.sleep(2.5)  # a reversal advice, were one queued, would have been sent by now (saf_retry_s 1)
    assert world.query("SELECT count(*) FROM switch_saf")[0][0] == saf_before
    assert world.host3.seen("0420") == [] or all(
        a.get("90", "")[4:10] != world.host3.seen("0220")[before]["11"] for a in world.host3.seen("0420")
    )
    rows = world.query(
        "SELECT response_code, reason FROM switch_journal WHERE terminal_id = $1 AND stan = $2",
        t3.terminal_id,
        msg["11"],
    )
    assert [tuple(row) for row in rows] == [("98", "advice_timeout")]
    # the terminal sends it again: upstream again (the host's natural key dedups), answered 00
    again = t3.exchange(msg)
    assert again.code == "00" and t3.verify_mac(again)
    up = world.host3.seen("0220")[before:]
    assert len(up) == 2 and up[0]["60"] == up[1]["60"] and up[0]["11"] != up[1]["11"]
    assert t3.exchange(msg).code == "00"  # now answered from the journal
    assert len(world.host3.seen("0220")) == before + 2


def test_a_reversal_of_an_advice_is_refused(world: World, t3: Terminal) -> None:
    msg = advice_msg(t3, PAN3, 300)
    assert t3.exchange(msg).code == "00"
    before = len(world.host3.requests)
    reversal = t3.reversal_msg(msg)
    r = t3.exchange(reversal)
    assert r.code == "12" and t3.verify_mac(r)
    time.sleep(0.5)
    assert len(world.host3.requests) == before
    assert t3.exchange(msg).code == "00"  # the advice itself stands, answered from the journal


def test_settlement_counts_offline_sales_as_debits(world: World) -> None:
    t = world.terminal("3des", "TOFF3002")
    assert t.sign_on().code == "00"
    assert t.exchange(t.purchase_msg(PAN3, 1_000)).code == "00"
    assert t.exchange(advice_msg(t, PAN3, 2_500)).code == "00"
    assert t.exchange(advice_msg(t, PAN3, 700)).code == "00"
    r = t.exchange(
        {
            "t": "0500",
            "11": t.next_stan(),
            "41": t.terminal_id,
            "42": t.merchant_id,
            "48": batch_totals_de48(BatchTotals(4_200, 3, 0, 0)),
            "49": "156",
            "60": f"00{t.batch:06d}201",
            "63": "01 ",
        },
        mac=False,
    )
    assert r.code == "00"
    domestic, _ = parse_batch_totals(r.msg["48"])
    assert domestic.result == "1", r.msg["48"]  # balanced: the two offline sales are debits
    t.close()


def test_switch_killed_with_an_advice_in_flight_queues_no_reversal(world: World) -> None:
    t = world.terminal("3des", "TOFF3003")
    assert t.sign_on().code == "00"
    msg = advice_msg(t, PAN3, 990)
    saf_before = world.query("SELECT count(*) FROM switch_saf")[0][0]
    world.host3.delay = 30.0
    try:
        t.send_raw(t.frame(msg))
        wait_until(
            lambda: bool(
                world.query(
                    "SELECT 1 FROM switch_write_ahead WHERE terminal_id = $1 AND stan = $2",
                    t.terminal_id,
                    msg["11"],
                )
            ),
            what="the advice written ahead",
        )
        world.switch.process.send_signal(signal.SIGKILL)
        world.switch.process.wait(10)
    finally:
        world.host3.delay = 0.0
    t.close()
    n3, n4 = len(world.host3.seen("0800")), len(world.host4.seen("0800"))
    world.switch = start_switch(world.db_url, world.hsm, **SWITCH)
    _links_up(world, n3, n4)
    assert world.query("SELECT count(*) FROM switch_saf")[0][0] == saf_before  # no 0420 for an advice
    rows = world.query(
        "SELECT response_code, reason FROM switch_journal WHERE terminal_id = $1 AND stan = $2",
        t.terminal_id,
        msg["11"],
    )
    assert [tuple(row) for row in rows] == [("98", "advice_recovered_after_restart")]
    t.connect(world.switch.ports["3des"])
    assert t.sign_on().code == "00"
    before = len(world.host3.seen("0220"))
    r = t.exchange(msg)  # sent again after the restart: upstream again, answered
    assert r.code == "00" and t.verify_mac(r)
    assert len(world.host3.seen("0220")) == before + 1
    t.close()
