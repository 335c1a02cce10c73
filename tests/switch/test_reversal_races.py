"""Reversals that race their originals, and retransmission keys reused for other requests (issue 14,
defects 2, 3 and 6), on both channels: POS terminals and an inbound acquirer link.

The real switch process, PostgreSQL and HSM; upstream is the fake issuer of tests/switch/fake_host.py,
which is "paused" by making it answer financial requests late (``delay``).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import trio

from tests.fixtures.hsm import HsmServer
from tests.fixtures.services import base_env, run_cli, start_switch
from tests.switch.fake_host import FakeHost
from tests.switch.terminal import Response, Terminal
from tests.switch.test_lifecycle import ACQ_ZAK_HEX, ACQ_ZPK_HEX, ACQUIRER, _acquirer_message, _h2h_exchange
from tests.switch.test_pos_e2e import PAN3, ZPK3_HEX, World, _keys, _register_terminals, wait_until

MERCHANT = "898330160120001"
_STANS = iter(range(730001, 740000))


def _stan() -> str:
    return f"{next(_STANS):06d}"


@pytest.fixture(scope="module")
def world(db_url: str, hsm_server: HsmServer) -> Iterator[World]:
    keys = _keys(hsm_server)

    async def acquirer_keys() -> dict[str, str]:
        async with hsm_server.client() as h:
            return {
                "zpk": (await h.form_key("001", [ACQ_ZPK_HEX, "0" * 32])).under_lmk,
                "zak": (await h.form_key("008", [ACQ_ZAK_HEX, "0" * 32])).under_lmk,
            }

    acq = trio.run(acquirer_keys)
    asyncio.run(_register_terminals(db_url, keys))
    host3 = FakeHost("3des", bytes.fromhex(ZPK3_HEX)).start()
    env = base_env(db_url, hsm_server)
    for args in (
        ["switch", "link", "add", "issuer3", "--host", "127.0.0.1", "--port", str(host3.port),
         "--scheme", "3des", "--zpk", keys["zpk3"], "--connections", "2"],
        ["switch", "link", "add", "acq1", "--direction", "in", "--institution-id", ACQUIRER,
         "--scheme", "3des", "--zpk", acq["zpk"], "--zak", acq["zak"]],
        ["switch", "route", "add", "621234", "--link", "issuer3"],
    ):  # fmt: skip
        result = run_cli(args, env)
        assert result.returncode == 0, result.stderr
    w = World(
        start_switch(db_url, hsm_server, request_timeout_ms=4000, saf_retry_s=1), host3, host3, db_url, env
    )
    try:
        wait_until(lambda: len(host3.seen("0800")) >= 2, what="link sign-on")
        yield w
    finally:
        code = w.switch.stop()
        host3.stop()
        assert code == 0, w.switch.log()[-3000:]


@pytest.fixture
def t3(world: World) -> Iterator[Terminal]:
    t = world.terminal("3des")
    assert t.sign_on().code == "00"
    yield t
    t.close()


def _h2h_reversal(original: dict[str, Any]) -> dict[str, Any]:
    """The acquirer's 0400 for ``original`` (its own DE7 and STAN; DE90 names the original)."""
    rev = {k: v for k, v in original.items() if k not in ("2", "52", "12", "13", "22")}
    rev.update(
        {
            "t": "0400",
            "7": time.strftime("%m%d%H%M%S", time.gmtime()),
            "11": _stan(),
            "90": f"0200{original['11']}{original['7']}{ACQUIRER.rjust(11, '0')}{'0' * 11}",
        }
    )
    return rev


def _in_background(fn: Any, *args: Any) -> tuple[threading.Thread, list[Any]]:
    out: list[Any] = []
    thread = threading.Thread(target=lambda: out.append(fn(*args)), daemon=True)
    thread.start()
    return thread, out


def _reversed_upstream(host: FakeHost, sent: dict[str, Any]) -> bool:
    """Whether a 0400 or a reversal advice naming the upstream request ``sent`` reached the issuer."""
    names = f"{sent['t']}{sent['11']}{sent['7']}"
    return any(
        str(m.get("90", ""))[:20] == names for m in host.seen("0400") + host.seen("0420") + host.seen("0421")
    )


def _forwarded(host: FakeHost, before: int) -> dict[str, Any]:
    sent = host.seen("0200")
    assert len(sent) == before + 1, "the original did not reach the issuer once"
    return sent[-1]


# -- defect 2: a reversal arriving while its original is in flight upstream --------------------------
def test_acquirer_reversal_while_original_in_flight_goes_upstream(world: World) -> None:
    port = world.switch.ports["h2h"]
    msg = _acquirer_message(_stan())
    before = len(world.host3.seen("0200"))
    world.host3.delay = 1.5  # the issuer is paused: it answers the original 1.5 s late
    try:
        thread, out = _in_background(_h2h_exchange, port, msg)
        wait_until(lambda: len(world.host3.seen("0200")) == before + 1, what="original upstream")
        time.sleep(0.5)
        reversal = _h2h_exchange(port, _h2h_reversal(msg))  # a second connection
        thread.join(15)
    finally:
        world.host3.delay = 0.0
    assert out and out[0]["39"] == "00", "the issuer approved the original"
    assert reversal["39"] == "00"
    sent = _forwarded(world.host3, before)
    wait_until(lambda: _reversed_upstream(world.host3, sent), what="the approval reversed upstream")


def test_pos_reversal_while_original_in_flight_goes_upstream(world: World, t3: Terminal) -> None:
    msg = t3.purchase_msg(PAN3, 4100, pin="123456")
    before = len(world.host3.seen("0200"))
    world.host3.delay = 1.5
    try:
        t3.send_raw(t3.frame(msg))  # requests of one connection are served concurrently
        wait_until(lambda: len(world.host3.seen("0200")) == before + 1, what="original upstream")
        time.sleep(0.5)
        t3.send_raw(t3.frame(t3.reversal_msg(msg)))
        answers = {r.msg["t"]: r for r in (t3.recv(), t3.recv()) if r is not None}
    finally:
        world.host3.delay = 0.0
    assert answers["0210"].code == "00" and answers["0410"].code == "00"
    sent = _forwarded(world.host3, before)
    wait_until(lambda: _reversed_upstream(world.host3, sent), what="the approval reversed upstream")


# -- defect 3: a reversal before its original ---------------------------------------------------------
def test_acquirer_reversal_before_original_declines_it_05(world: World) -> None:
    port = world.switch.ports["h2h"]
    msg = _acquirer_message(_stan())
    before = len(world.host3.seen("0200"))
    assert _h2h_exchange(port, _h2h_reversal(msg))["39"] == "00"
    late = _h2h_exchange(port, msg)
    assert late["39"] == "05" and late["11"] == msg["11"]
    assert len(world.host3.seen("0200")) == before, "a reversed original went upstream"


def test_pos_reversal_before_original_declines_it_05(world: World, t3: Terminal) -> None:
    msg = t3.purchase_msg(PAN3, 4200, pin="123456")
    before = len(world.host3.seen("0200"))
    rev = t3.exchange(t3.reversal_msg(msg))
    assert rev.code == "00" and t3.verify_mac(rev)
    late = t3.exchange(msg)
    assert late.code == "05" and t3.verify_mac(late)
    assert len(world.host3.seen("0200")) == before, "a reversed original went upstream"


# -- defect 6: a retransmission key reused ----------------------------------------------------------
def test_same_stan_different_amount_answers_94(world: World, t3: Terminal) -> None:
    msg = t3.purchase_msg(PAN3, 4300, pin="123456")
    first = t3.exchange(msg)
    assert first.code == "00"
    other = t3.exchange({**msg, "4": f"{9999:012d}"})
    assert other.code == "94" and t3.verify_mac(other)
    assert t3.exchange({**msg, "3": "200000"}).code == "94"
    again = t3.exchange(msg)  # the true retransmission still gets the first answer
    assert again.code == "00" and again.msg["37"] == first.msg["37"]

    port = world.switch.ports["h2h"]
    h2h = _acquirer_message(_stan())
    answer = _h2h_exchange(port, h2h)
    assert answer["39"] == "00"
    count = len(world.host3.seen("0200"))
    assert _h2h_exchange(port, {**h2h, "4": "000000009999"})["39"] == "94"
    assert _h2h_exchange(port, h2h)["39"] == "00"
    assert len(world.host3.seen("0200")) == count


def test_purchase_replayed_after_its_reversal_answers_94(world: World, t3: Terminal) -> None:
    msg = t3.purchase_msg(PAN3, 4400, pin="123456")
    assert t3.exchange(msg).code == "00"
    assert t3.exchange(t3.reversal_msg(msg)).code == "00"
    replay = t3.exchange(msg)
    assert replay.code == "94" and t3.verify_mac(replay)

    port = world.switch.ports["h2h"]
    h2h = _acquirer_message(_stan())
    assert _h2h_exchange(port, h2h)["39"] == "00"
    assert _h2h_exchange(port, _h2h_reversal(h2h))["39"] == "00"
    count = len(world.host3.seen("0200"))
    assert _h2h_exchange(port, h2h)["39"] == "94"
    assert len(world.host3.seen("0200")) == count


# -- defect 3 across a restart (last: it replaces the module's switch) ------------------------------
def test_reversal_before_original_is_remembered_across_a_restart(
    world: World, t3: Terminal, hsm_server: HsmServer
) -> None:
    port = world.switch.ports["h2h"]
    h2h = _acquirer_message(_stan())
    assert _h2h_exchange(port, _h2h_reversal(h2h))["39"] == "00"
    pos = t3.purchase_msg(PAN3, 4500, pin="123456")
    assert t3.exchange(t3.reversal_msg(pos)).code == "00"
    replay_h2h = _acquirer_message(_stan())
    assert _h2h_exchange(port, replay_h2h)["39"] == "00"
    assert _h2h_exchange(port, _h2h_reversal(replay_h2h))["39"] == "00"
    approved_before = _acquirer_message(_stan())  # approved now, reversed after the restart
    assert _h2h_exchange(port, approved_before)["39"] == "00"
    sent_before = world.host3.seen("0200")[-1]
    t3.close()

    signons = len(world.host3.seen("0800"))
    assert world.switch.stop() == 0, world.switch.log()[-3000:]
    world.switch = start_switch(world.db_url, hsm_server, request_timeout_ms=4000, saf_retry_s=1)
    wait_until(lambda: len(world.host3.seen("0800")) >= signons + 2, what="link sign-on after restart")

    before = len(world.host3.seen("0200"))
    assert _h2h_exchange(world.switch.ports["h2h"], h2h)["39"] == "05"
    t = Terminal("3des", t3.terminal_id, MERCHANT, pik=t3.pik, mak=t3.mak, batch=t3.batch)
    t.connect(world.switch.ports["3des"])
    try:
        late: Response = t.exchange(pos)
        assert late.code == "05" and t.verify_mac(late)
    finally:
        t.close()
    assert _h2h_exchange(world.switch.ports["h2h"], replay_h2h)["39"] == "94"
    assert len(world.host3.seen("0200")) == before, "a reversed original went upstream after the restart"
    # an approval forwarded before the restart is reversed upstream once, found in the journal
    reversal = _h2h_reversal(approved_before)
    assert _h2h_exchange(world.switch.ports["h2h"], reversal)["39"] == "00"
    wait_until(lambda: _reversed_upstream(world.host3, sent_before), what="the approval reversed upstream")
    assert _h2h_exchange(world.switch.ports["h2h"], {**reversal, "11": _stan()})["39"] == "00"
    time.sleep(0.5)
    names = f"0200{sent_before['11']}{sent_before['7']}"
    assert [str(m.get("90", ""))[:20] for m in world.host3.seen("0400")].count(names) == 1
