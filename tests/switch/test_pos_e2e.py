"""End to end through the real switch process: terminals (test clients) -> switch -> H2H issuer.

Real PostgreSQL, the real HSM process and the real switch process. Upstream is a small H2H issuer in
the test process (tests/switch/fake_host.py) so each test can see exactly what went upstream and make
it stop answering; tests with the real authorization host are in test_host_e2e.py.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import asyncpg
import pytest
import trio

from tests.fixtures.hsm import HsmServer
from tests.fixtures.pg import query
from tests.fixtures.services import ServiceProcess, base_env, run_cli, start_switch
from tests.switch.fake_host import FakeHost
from tests.switch.terminal import TMK_HEX, Terminal

ZPK3_HEX = "89ABCDEF01234567FEDCBA9876543210"
ZPK4_HEX = "00112233445566778899AABBCCDDEEFF"
PAN3 = "6212345678901234567"  # routed to the 3des issuer link
PAN4 = "6212445678901234565"  # routed to the sm4 issuer link
MERCHANT = "898330160120001"


@dataclass
class World:
    switch: ServiceProcess
    host3: FakeHost
    host4: FakeHost
    db_url: str
    env: dict[str, str]

    def terminal(self, scheme: str, terminal_id: str | None = None) -> Terminal:
        t = Terminal(scheme, terminal_id or ("T3DES001" if scheme == "3des" else "TSM40001"), MERCHANT)
        t.connect(self.switch.ports[scheme])
        return t

    def query(self, sql: str, *args: Any) -> list[Any]:
        return query(self.db_url, sql, *args)


def _keys(hsm: HsmServer) -> dict[str, str]:
    async def main() -> dict[str, str]:
        async with hsm.client() as h:
            return {
                "tmk3": (await h.form_key("002", [TMK_HEX, "0" * 32])).under_lmk,
                "tmk4": (await h.form_sm4_key("002", [TMK_HEX, "0" * 32])).under_lmk,
                "zpk3": (await h.form_key("001", [ZPK3_HEX, "0" * 32])).under_lmk,
                "zpk4": (await h.form_sm4_key("001", [ZPK4_HEX, "0" * 32])).under_lmk,
            }

    return trio.run(main)


async def _register_terminals(db_url: str, keys: dict[str, str]) -> None:
    await register_terminals(
        db_url,
        [
            ("T3DES001", "3des", keys["tmk3"]),
            ("TSM40001", "sm4", keys["tmk4"]),
            ("T3DES002", "3des", keys["tmk3"]),
            ("TNOSIGN1", "3des", keys["tmk3"]),
        ],
    )


async def register_terminals(
    db_url: str, terminals: list[tuple[str, str, str]], name: str = "Campus Canteen"
) -> None:
    """The merchant MERCHANT and its terminals (id, scheme, TMK under the LMK), as the host has them."""
    conn = await asyncpg.connect(db_url)
    try:
        mid = await conn.fetchval(
            "INSERT INTO merchants (merchant_id, name, mcc) VALUES ($1, $2, '5812') RETURNING id",
            MERCHANT,
            name,
        )
        for tid, scheme, tmk in terminals:
            await conn.execute(
                "INSERT INTO terminals (terminal_id, merchant_id, scheme, tmk, tmk_check) "
                "VALUES ($1, $2, $3, $4, '')",
                tid,
                mid,
                scheme,
                tmk,
            )
    finally:
        await conn.close()


def wait_until(predicate: Any, timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def world(db_url: str, hsm_server: HsmServer) -> Iterator[World]:
    keys = _keys(hsm_server)
    asyncio.run(_register_terminals(db_url, keys))
    host3 = FakeHost("3des", bytes.fromhex(ZPK3_HEX)).start()
    host4 = FakeHost("sm4", bytes.fromhex(ZPK4_HEX)).start()
    env = base_env(db_url, hsm_server)
    for args in (
        [
            "switch",
            "link",
            "add",
            "issuer3",
            "--host",
            "127.0.0.1",
            "--port",
            str(host3.port),
            "--scheme",
            "3des",
            "--zpk",
            keys["zpk3"],
            "--connections",
            "2",
        ],
        [
            "switch",
            "link",
            "add",
            "issuer4",
            "--host",
            "127.0.0.1",
            "--port",
            str(host4.port),
            "--scheme",
            "sm4",
            "--zpk",
            keys["zpk4"],
            "--connections",
            "1",
        ],
        ["switch", "route", "add", "621234", "--link", "issuer3"],
        ["switch", "route", "add", "621244", "--link", "issuer4"],
    ):
        result = run_cli(args, env)
        assert result.returncode == 0, result.stderr
    switch = start_switch(db_url, hsm_server, request_timeout_ms=1500, saf_retry_s=1)
    try:
        wait_until(lambda: len(host3.seen("0800")) >= 2 and len(host4.seen("0800")) >= 1, what="link sign-on")
        yield World(switch, host3, host4, db_url, env)
    finally:
        code = switch.stop()
        host3.stop()
        host4.stop()
        assert code == 0, switch.log()[-3000:]


@pytest.fixture
def t3(world: World) -> Iterator[Terminal]:
    t = world.terminal("3des")
    assert t.sign_on().code == "00"
    yield t
    t.close()


@pytest.fixture
def t4(world: World) -> Iterator[Terminal]:
    t = world.terminal("sm4")
    assert t.sign_on().code == "00"
    yield t
    t.close()


def test_sign_on_returns_working_keys_with_check_values(world: World) -> None:
    for scheme in ("3des", "sm4"):
        t = world.terminal(scheme)
        r = t.sign_on()  # take_keys checks every key against its check value
        assert r.code == "00" and len(r.msg["62"]) == 60
        assert r.msg["60"][:2] == "00" and r.msg["60"][8:11] == ("004" if scheme == "3des" else "005")
        assert r.tpdu == bytes.fromhex("6000020001")  # source and destination swapped
        t.close()
    rows = world.query("SELECT terminal_id, scheme, pik FROM switch_sessions ORDER BY terminal_id")
    assert {(r[0], r[1]) for r in rows} >= {("T3DES001", "3des"), ("TSM40001", "sm4")}
    assert all(r[2][0] in "US" for r in rows)  # stored under the LMK only


def test_purchase_with_pin_3des(world: World, t3: Terminal) -> None:
    before = len(world.host3.seen("0200"))
    r = t3.exchange(t3.purchase_msg(PAN3, 12345, pin="123456"))
    assert r.code == "00", r.msg
    assert t3.verify_mac(r)
    assert len(r.msg["37"]) == 12 and r.msg["38"] == "A12345" and r.msg["4"] == "000000012345"
    upstream = world.host3.seen("0200")[before:]
    assert len(upstream) == 1 and upstream[0]["18"] == "5812" and upstream[0]["37"] == r.msg["37"]
    row = world.query(
        "SELECT pan_masked, response_code, us_total, us_hsm FROM switch_journal WHERE rrn = $1", r.msg["37"]
    )[0]
    assert row[0] == "621234*********4567" and row[1] == "00" and row[2] > 0 and row[3] > 0


def test_purchase_with_pin_sm4_terminal_on_both_links(world: World, t4: Terminal) -> None:
    r = t4.exchange(t4.purchase_msg(PAN4, 500, pin="123456"))  # SM4 PIK -> SM4 ZPK (W8)
    assert r.code == "00" and t4.verify_mac(r)
    r = t4.exchange(t4.purchase_msg(PAN3, 700, pin="123456"))  # SM4 PIK -> 3DES ZPK (W8 across)
    assert r.code == "00" and t4.verify_mac(r)


def test_3des_terminal_to_sm4_link(world: World, t3: Terminal) -> None:
    r = t3.exchange(t3.purchase_msg(PAN4, 800, pin="123456"))
    assert r.code == "00" and t3.verify_mac(r)


def test_wrong_pin_is_declined_by_the_issuer(world: World, t3: Terminal) -> None:
    r = t3.exchange(t3.purchase_msg(PAN3, 100, pin="999999"))
    assert r.code == "55" and t3.verify_mac(r)


def test_wrong_mac_answers_a0_with_sign_on_flag_and_sends_nothing(world: World, t3: Terminal) -> None:
    before = len(world.host3.requests)
    r = t3.exchange(t3.purchase_msg(PAN3, 100, pin="123456"), bad_mac=True)
    assert r.code == "A0" and r.resign and "64" not in r.msg
    assert len(world.host3.requests) == before


def test_duplicate_returns_the_first_answer_and_nothing_goes_upstream_twice(
    world: World, t3: Terminal
) -> None:
    msg = t3.purchase_msg(PAN3, 4200, pin="123456")
    before = len(world.host3.seen("0200"))
    first = t3.exchange(msg)
    second = t3.exchange(msg)
    assert first.code == "00" and second.code == "00"
    assert (first.msg["37"], first.msg["38"], first.msg["11"]) == (
        second.msg["37"],
        second.msg["38"],
        second.msg["11"],
    )
    assert t3.verify_mac(second)
    assert len(world.host3.seen("0200")) == before + 1


def test_unknown_terminal_97_and_not_signed_on_a0(world: World) -> None:
    stranger = world.terminal("3des", "NOBODY01")
    r = stranger.exchange(stranger.sign_on_msg(), mac=False)
    assert r.code == "97"
    stranger.close()
    idle = world.terminal("3des", "TNOSIGN1")
    idle.mak = bytes(8)
    r = idle.exchange(idle.purchase_msg(PAN3, 100))
    assert r.code == "A0" and r.resign
    idle.close()


def test_no_route_answers_91_no_route_not_14_and_the_journal_shows_why(world: World, t3: Terminal) -> None:
    """Issue 15 item 7: no issuer for the BIN is not "14 invalid card number" (the contract has neither
    15 nor 92: 91, and the journal row says no_route); `switch journal show` shows code and reason."""
    msg = t3.purchase_msg("6999000000000000001", 100)
    r = t3.exchange(msg)
    assert r.code == "91" and t3.verify_mac(r)
    rows = world.query(
        "SELECT response_code, reason FROM switch_journal WHERE terminal_id = $1 AND stan = $2",
        t3.terminal_id,
        msg["11"],
    )
    assert [tuple(row) for row in rows] == [("91", "no_route")]
    wrong = t3.exchange(t3.purchase_msg(PAN3, 100, pin="999999"))  # declined by the issuer: no reason here
    assert wrong.code == "55"
    out = run_cli(["switch", "journal", "show", "--terminal", t3.terminal_id, "--limit", "2"], world.env)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert "reason" in lines[0] and "issuer: incorrect PIN" in lines[1], out.stdout
    assert "no route for the card's BIN" in lines[2] and "1.00 CNY" in lines[2], out.stdout
    js = run_cli(["--json", "switch", "journal", "show", "--rc", "91", "--card-last4", "0001"], world.env)
    assert js.returncode == 0, js.stderr
    first = json.loads(js.stdout)[0]
    assert first["reason"] == "no_route" and first["response_code"] == "91"
    assert first["amount_minor"] == 100 and first["currency"] == "CNY" and "+" in first["created_at"]
    page = run_cli(
        ["--json", "switch", "journal", "show", "--after", str(first["id"]), "--rc", "91"], world.env
    )
    assert all(row["id"] < first["id"] for row in json.loads(page.stdout))
    bad = run_cli(["switch", "journal", "show", "--card-last4", "12"], world.env)
    assert bad.returncode == 1 and "--card-last4" in bad.stderr and "Traceback" not in bad.stderr


def test_malformed_frames(world: World, t3: Terminal) -> None:
    good = t3.frame(t3.purchase_msg(PAN3, 100, pin="123456"))
    # DE4 with a non-BCD nibble: MTI, DE11, DE41 are readable -> 30 without MAC
    body = bytearray(good[2:])
    raw = t3.codec.encode(t3.purchase_msg(PAN3, 100))
    offset = 2 + 11 + raw.index(bytes.fromhex("000000000100"))
    body[offset - 2 + 5] = 0xAB
    t3.send_raw(len(body).to_bytes(2, "big") + bytes(body))
    r = t3.recv()
    assert r is not None and r.code == "30" and "64" not in r.msg and r.msg["41"] == "T3DES001"
    # the connection still works
    assert t3.exchange(t3.purchase_msg(PAN3, 100, pin="123456")).code == "00"
    # unreadable garbage: that connection is closed, others are not affected
    other = world.terminal("3des")
    other.send_raw(b"\x00\x0c" + bytes(12))
    assert other.recv() is None
    other.close()
    zero = world.terminal("3des")
    zero.send_raw(b"\x00\x00")
    assert zero.recv() is None
    zero.close()
    assert t3.exchange(t3.purchase_msg(PAN3, 100, pin="123456")).code == "00"


def test_timeout_answers_98_and_reversal_advice_reaches_the_issuer(world: World, t3: Terminal) -> None:
    world.host3.drop_financial = True
    try:
        r = t3.exchange(t3.purchase_msg(PAN3, 777, pin="123456"))
    finally:
        world.host3.drop_financial = False
    assert r.code == "98" and t3.verify_mac(r)
    lost = world.host3.seen("0200")[-1]
    wait_until(
        lambda: any(m.get("90", "")[4:10] == lost["11"] for m in world.host3.seen("0420")),
        what="0420 upstream",
    )
    wait_until(
        lambda: world.query("SELECT count(*) FROM switch_saf WHERE done_at IS NULL")[0][0] == 0,
        what="SAF queue drained",
    )


def test_terminal_reversal_goes_upstream_with_original_data(world: World, t3: Terminal) -> None:
    msg = t3.purchase_msg(PAN3, 1500, pin="123456")
    r = t3.exchange(msg)
    assert r.code == "00"
    original = world.host3.seen("0200")[-1]
    rev = t3.exchange(t3.reversal_msg(msg))
    assert rev.msg["t"] == "0410" and rev.code == "00" and t3.verify_mac(rev)
    up = world.host3.seen("0400")[-1]
    assert up["90"][:20] == "0200" + original["11"] + original["7"]
    # a second reversal of the same purchase is answered from the journal, nothing more upstream
    count = len(world.host3.seen("0400"))
    assert t3.exchange(t3.reversal_msg(msg)).code == "00"
    assert len(world.host3.seen("0400")) == count


def test_batch_settlement_balanced_and_unbalanced(world: World) -> None:
    t = world.terminal("3des", "T3DES002")
    assert t.sign_on().code == "00"
    batch = t.batch
    amounts = [1000, 2500]
    for a in amounts:
        assert t.exchange(t.purchase_msg(PAN3, a, pin="123456")).code == "00"
    wrong = f"{999:012d}{1:03d}{0:012d}{0:03d}0" + "0" * 31
    r = t.exchange(
        {
            "t": "0500",
            "11": t.next_stan(),
            "41": t.terminal_id,
            "42": t.merchant_id,
            "48": wrong,
            "49": "156",
            "60": f"00{batch:06d}201",
        },
        mac=False,
    )
    assert r.code == "00" and r.msg["48"][30] == "2"
    upload = f"{len(amounts):02d}" + "".join(
        f"00{i + 1:06d}{PAN3.rjust(20, '0')}{a:012d}" for i, a in enumerate(amounts)
    )
    r = t.exchange(
        {
            "t": "0320",
            "11": t.next_stan(),
            "41": t.terminal_id,
            "42": t.merchant_id,
            "48": upload,
            "60": f"00{batch:06d}202",
        },
        mac=False,
    )
    assert r.code == "00" and int(r.msg["60"][2:8]) == batch + 1
    t.batch = batch + 1
    assert t.exchange(t.purchase_msg(PAN3, 300, pin="123456")).code == "00"
    right = f"{300:012d}{1:03d}{0:012d}{0:03d}0" + "0" * 31
    r = t.exchange(
        {
            "t": "0500",
            "11": t.next_stan(),
            "41": t.terminal_id,
            "42": t.merchant_id,
            "48": right,
            "49": "156",
            "60": f"00{t.batch:06d}201",
        },
        mac=False,
    )
    assert r.code == "00" and r.msg["48"][30] == "1" and int(r.msg["60"][2:8]) == batch + 2
    rows = world.query(
        "SELECT batch_no, result, closed_at IS NOT NULL FROM switch_batches "
        "WHERE terminal_id = 'T3DES002' ORDER BY batch_no"
    )
    assert [(r[0], r[1], r[2]) for r in rows] == [
        (batch, 2, True),
        (batch + 1, 1, True),
        (batch + 2, None, False),
    ]
    # a request with the old batch number is told to sign on again
    old = t.purchase_msg(PAN3, 100, pin="123456")
    old["60"] = f"22{batch:06d}000"
    r = t.exchange(old)
    assert r.code == "77" and r.resign
    t.close()


def test_approval_whose_answer_cannot_be_maced_is_reversed_upstream(
    world: World, t3: Terminal, hsm_server: HsmServer
) -> None:
    """The issuer approves, then the HSM stops answering before the answer's MAC is made: the terminal
    gets 96, and as a terminal does not reverse a decline, the switch sends the issuer a 0420 for the
    approval; a retransmission gets the 96 again. (Last in the module: it freezes the shared HSM.)"""
    amount = 4_321
    msg = t3.purchase_msg(PAN3, amount, pin="123456")
    result: dict[str, Any] = {}
    buyer = threading.Thread(target=lambda: result.setdefault("r", t3.exchange(msg)))
    world.host3.delay = 0.8  # the answer comes back after the HSM is frozen, within the link timeout
    buyer.start()
    try:
        wait_until(
            lambda: any(m.get("4") == f"{amount:012d}" for m in world.host3.seen("0200")),
            what="the purchase upstream",
        )
        os.kill(hsm_server.process.pid, signal.SIGSTOP)
        buyer.join(20)
    finally:
        os.kill(hsm_server.process.pid, signal.SIGCONT)
        world.host3.delay = 0.0
    assert result["r"].code == "96"
    sent = [m for m in world.host3.seen("0200") if m.get("4") == f"{amount:012d}"][-1]
    wait_until(
        lambda: any(m.get("90", "")[4:10] == sent["11"] for m in world.host3.seen("0420")),
        what="the 0420 of the approval upstream",
    )
    again = t3.exchange(msg)
    assert again.code == "96"
    assert len([m for m in world.host3.seen("0200") if m.get("4") == f"{amount:012d}"]) == 1


def test_a_response_sent_to_the_switch_is_answered_30_on_its_own_mti(world: World, t3: Terminal) -> None:
    """0410, 0830, 0510 ... sent as requests: request + 10 is not a POS MTI, so the answer was never
    encoded and the connection was dropped; the answer is 30 on the exchange's response MTI."""
    for mti in ("0410", "0830", "0230"):
        msg = {**t3.purchase_msg(PAN3, 100), "t": mti, "39": "00"}
        r = t3.exchange(msg, mac=False)
        assert r.msg["t"] == mti and r.code == "30" and r.msg["11"] == msg["11"], r.msg
    assert t3.exchange(t3.purchase_msg(PAN3, 100, pin="123456")).code == "00"  # the same connection
