"""Terminal sessions against the real switch process (specs/README.md, "Terminal sessions").

08xx carry no MAC, and a terminal id and merchant id are printed on every receipt: a sign-on or
sign-off from a connection other than the terminal's live session must not end that session; new keys
become current only once a MAC'd request verifies under them; sign-ons per terminal are rate limited.
No issuer link is configured: a purchase to an unrouted PAN is answered 91 (no route) with a MAC once its
own MAC verified (A0 when it did not), which is all these tests need to see which keys the switch holds.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.fixtures.hsm import HsmServer
from tests.fixtures.pg import query
from tests.fixtures.services import ServiceProcess, start_switch
from tests.switch.terminal import Terminal
from tests.switch.test_pos_e2e import MERCHANT, _keys, register_terminals

UNROUTED = "6999000000000000001"
SIGNON_PER_MINUTE = 5
TERMINALS = ("TSESS001", "TSESS002", "TSESS003", "TSESS004", "TSESS005", "TSESS006", "TSESS007")


@dataclass
class World:
    switch: ServiceProcess
    db_url: str
    hsm: HsmServer

    def terminal(self, terminal_id: str, tmk: bytes | None = None) -> Terminal:
        t = Terminal("3des", terminal_id, MERCHANT)
        if tmk is not None:
            t.tmk = tmk
        t.connect(self.switch.ports["3des"])
        return t

    def restart(self) -> None:
        assert self.switch.stop() == 0, self.switch.log()[-3000:]
        self.switch = start_switch(self.db_url, self.hsm, signon_per_minute=SIGNON_PER_MINUTE)

    def query(self, sql: str, *args: Any) -> list[Any]:
        return query(self.db_url, sql, *args)


async def _register(db_url: str, tmk: str) -> None:
    await register_terminals(db_url, [(tid, "3des", tmk) for tid in TERMINALS], "Canteen")


@pytest.fixture(scope="module")
def world(db_url: str, hsm_server: HsmServer) -> Iterator[World]:
    asyncio.run(_register(db_url, _keys(hsm_server)["tmk3"]))
    w = World(start_switch(db_url, hsm_server, signon_per_minute=SIGNON_PER_MINUTE), db_url, hsm_server)
    try:
        yield w
    finally:
        assert w.switch.stop() == 0, w.switch.log()[-3000:]


def purchase(t: Terminal) -> str:
    """The answer code of a MAC'd purchase; 91 (no route) means the switch verified its MAC (and MACed
    the answer)."""
    r = t.exchange(t.purchase_msg(UNROUTED, 100))
    if r.code == "91":
        assert t.verify_mac(r)
    else:
        assert r.code == "A0" and r.resign, r.msg
    return r.code


def intruder(world: World, terminal_id: str) -> Terminal:
    """Another socket naming the terminal and its merchant (both on every receipt), without its TMK."""
    return world.terminal(terminal_id, tmk=bytes(16))


def sign_off_msg(t: Terminal) -> dict[str, Any]:
    return {"t": "0820", "11": t.next_stan(), "41": t.terminal_id, "42": t.merchant_id, "60": "00000001002"}


def test_another_sockets_sign_on_and_sign_off_leave_the_live_session_alone(world: World) -> None:
    live = world.terminal("TSESS001")
    assert live.sign_on().code == "00" and purchase(live) == "91"
    other = intruder(world, "TSESS001")
    assert other.exchange(other.sign_on_msg(), mac=False).code == "00"
    assert purchase(live) == "91"  # its working keys still hold
    assert other.exchange(sign_off_msg(other), mac=False).code == "00"
    assert purchase(live) == "91"
    assert world.query("SELECT signed_on FROM switch_sessions WHERE terminal_id = 'TSESS001'")[0][0]
    other.mak = bytes(8)  # whatever the intruder MACs with, the live session's keys are not it
    assert purchase(other) == "A0"
    assert purchase(live) == "91"
    other.close()
    live.close()


def test_another_sockets_sign_off_alone_does_not_end_the_live_session(world: World) -> None:
    live = world.terminal("TSESS007")
    assert live.sign_on().code == "00"
    other = intruder(world, "TSESS007")
    assert other.exchange(sign_off_msg(other), mac=False).code == "00"
    assert purchase(live) == "91"
    assert live.exchange(sign_off_msg(live), mac=False).code == "00"  # its own sign-off does end it
    assert purchase(live) == "A0"
    other.close()
    live.close()


def test_new_keys_take_over_after_their_first_verified_mac_and_the_old_are_refused(world: World) -> None:
    old = world.terminal("TSESS002")
    assert old.sign_on().code == "00"
    new = world.terminal("TSESS002")  # the same terminal (it holds the TMK) on a second connection
    assert new.sign_on().code == "00" and new.mak != old.mak
    assert purchase(old) == "91"  # until the new keys are proven both sets work, each on its connection
    pending = "SELECT pending_mak IS NOT NULL FROM switch_sessions WHERE terminal_id = 'TSESS002'"
    assert world.query(pending)[0][0]
    assert purchase(new) == "91"  # proven: current from now on
    assert purchase(old) == "A0"
    assert purchase(new) == "91"
    row = world.query("SELECT pending_mak FROM switch_sessions WHERE terminal_id = 'TSESS002'")[0]
    assert row[0] is None
    old.close()
    new.close()


def test_a_sign_on_flood_for_one_terminal_is_rate_limited(world: World) -> None:
    live = world.terminal("TSESS003")
    assert live.sign_on().code == "00"  # the first of the minute's SIGNON_PER_MINUTE
    flood = intruder(world, "TSESS003")
    codes = [flood.exchange(flood.sign_on_msg(), mac=False).code for _ in range(SIGNON_PER_MINUTE + 3)]
    assert codes == ["00"] * (SIGNON_PER_MINUTE - 1) + ["65"] * 4, codes
    assert purchase(live) == "91"
    assert live.sign_on().code == "00"  # its own live connection is never limited; its new keys work at once
    assert purchase(live) == "91"
    flood.close()
    live.close()


def test_re_sign_on_on_the_same_connection_and_after_a_reconnect_work_at_once(world: World) -> None:
    t = world.terminal("TSESS004")
    assert t.sign_on().code == "00" and purchase(t) == "91"
    first = t.mak
    assert t.sign_on().code == "00" and t.mak != first
    assert purchase(t) == "91"
    t.mak = first  # the keys replaced on its own connection are gone
    assert purchase(t) == "A0"
    t.close()
    again = world.terminal("TSESS004")  # its old connection is gone: no live session to protect
    assert again.sign_on().code == "00" and purchase(again) == "91"
    again.close()


def test_unproven_keys_and_the_live_keys_both_survive_a_restart(world: World) -> None:
    # TSESS005 signed on again from a new connection just before the restart (its old one looked alive).
    old5 = world.terminal("TSESS005")
    assert old5.sign_on().code == "00"
    new5 = world.terminal("TSESS005")
    assert new5.sign_on().code == "00"
    # TSESS006 is the live terminal and an intruder's sign-on is pending.
    live6 = world.terminal("TSESS006")
    assert live6.sign_on().code == "00"
    other = intruder(world, "TSESS006")
    assert other.exchange(other.sign_on_msg(), mac=False).code == "00"
    for t in (old5, new5, live6, other):
        t.close()
    world.restart()
    new5.connect(world.switch.ports["3des"])
    assert purchase(new5) == "91"  # its pending keys were kept and are proven now
    old5.connect(world.switch.ports["3des"])
    assert purchase(old5) == "A0"
    live6.connect(world.switch.ports["3des"])
    assert purchase(live6) == "91"  # the real terminal, back after the restart, proves its keys
    assert world.query("SELECT pending_mak FROM switch_sessions WHERE terminal_id = 'TSESS006'")[0][0] is None
    assert purchase(live6) == "91"
    for t in (new5, old5, live6):
        t.close()
