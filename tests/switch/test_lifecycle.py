"""The switch process under load and across its life: 500 concurrent terminal connections, inbound
acquirer links, limits, SIGTERM with requests in flight, store-and-forward surviving a restart."""

from __future__ import annotations

import asyncio
import signal
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest
import trio

from hsm_sim.mac import retail_mac
from specs.codec import codec_for
from specs.framing import frame
from switch.links import split_frames
from tests.fixtures.hsm import HsmServer
from tests.fixtures.services import base_env, run_cli, start_switch
from tests.switch.fake_host import FakeHost
from tests.switch.terminal import Terminal, cipher
from tests.switch.test_pos_e2e import (
    PAN3,
    ZPK3_HEX,
    ZPK4_HEX,
    World,
    _keys,
    _register_terminals,
    wait_until,
)

ACQ_ZPK_HEX = "0123456789ABCDEF0123456789ABCDEF"
ACQ_ZAK_HEX = "FEDCBA98765432100123456789ABCDEF"
ACQUIRER = "12345678"
ISSUER_ZAK_HEX = "0123456789ABCDEFFEDCBA9876543210"
PAN_MACED = "6212355678901234566"


@pytest.fixture(scope="module")
def setup(db_url: str, hsm_server: HsmServer) -> Iterator[dict[str, Any]]:
    keys = _keys(hsm_server)

    async def acquirer_keys() -> dict[str, str]:
        async with hsm_server.client() as h:
            return {
                "zpk": (await h.form_key("001", [ACQ_ZPK_HEX, "0" * 32])).under_lmk,
                "zak": (await h.form_key("008", [ACQ_ZAK_HEX, "0" * 32])).under_lmk,
            }

    keys.update({f"acq_{k}": v for k, v in trio.run(acquirer_keys).items()})

    async def issuer_zak() -> str:
        async with hsm_server.client() as h:
            return (await h.form_key("008", [ISSUER_ZAK_HEX, "0" * 32])).under_lmk

    keys["zak3"] = trio.run(issuer_zak)
    asyncio.run(_register_terminals(db_url, keys))
    host3 = FakeHost("3des", bytes.fromhex(ZPK3_HEX)).start()
    host4 = FakeHost("sm4", bytes.fromhex(ZPK4_HEX)).start()
    maced = FakeHost("3des", bytes.fromhex(ZPK3_HEX), zak=bytes.fromhex(ISSUER_ZAK_HEX)).start()
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
            "acq1",
            "--direction",
            "in",
            "--institution-id",
            ACQUIRER,
            "--scheme",
            "3des",
            "--zpk",
            keys["acq_zpk"],
            "--zak",
            keys["acq_zak"],
        ],
        ["switch", "route", "add", "621234", "--link", "issuer3"],
        [
            "switch",
            "link",
            "add",
            "maced",
            "--host",
            "127.0.0.1",
            "--port",
            str(maced.port),
            "--scheme",
            "3des",
            "--zpk",
            keys["zpk3"],
            "--zak",
            keys["zak3"],
            "--connections",
            "1",
        ],
        ["switch", "route", "add", "621235", "--link", "maced"],
    ):
        result = run_cli(args, env)
        assert result.returncode == 0, result.stderr
    listing = run_cli(["switch", "link", "list"], env)
    assert "acq1" in listing.stdout and "issuer3" in listing.stdout and keys["zpk3"] not in listing.stdout
    try:
        yield {
            "db_url": db_url,
            "hsm": hsm_server,
            "host3": host3,
            "host4": host4,
            "maced": maced,
            "env": env,
        }
    finally:
        host3.stop()
        host4.stop()
        maced.stop()


@pytest.fixture(scope="module")
def world(setup: dict[str, Any]) -> Iterator[World]:
    # The upstream timeout is generous: 500 purchases arriving at once on a busy 2-core box can keep the
    # last one waiting past a second. Timeouts are tested with switches of their own.
    switch = start_switch(
        setup["db_url"], setup["hsm"], request_timeout_ms=5000, saf_retry_s=1, max_in_flight=8
    )
    host3: FakeHost = setup["host3"]
    wait_until(lambda: len(host3.seen("0800")) >= 2, what="link sign-on")
    try:
        yield World(switch, host3, setup["host4"], setup["db_url"], setup["env"])
    finally:
        assert switch.stop() == 0, switch.log()[-3000:]


def test_500_concurrent_terminal_connections(world: World) -> None:
    signer = world.terminal("3des")
    assert signer.sign_on().code == "00"
    signer.close()
    before = len(world.host3.seen("0200"))

    async def one(i: int, results: list[str]) -> None:
        t = Terminal(
            "3des", signer.terminal_id, signer.merchant_id, pik=signer.pik, mak=signer.mak, batch=signer.batch
        )
        stream = await trio.open_tcp_stream("127.0.0.1", world.switch.ports["3des"])
        async with stream:
            await stream.send_all(t.frame(t.purchase_msg(PAN3, 100 + i, pin="123456")))
            buf = bytearray()
            while not (frames := split_frames(buf, 4096)):
                data = await stream.receive_some(4096)
                assert data, "connection closed"
                buf += data
            msg = t.codec.decode(frames[0][11:])
            results.append(str(msg["39"]))

    async def main() -> list[str]:
        results: list[str] = []
        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                for i in range(500):
                    nursery.start_soon(one, i, results)
        return results

    results = trio.run(main)
    assert len(results) == 500 and set(results) == {"00"}
    assert len(world.host3.seen("0200")) == before + 500


def _acquirer_message(stan: str, pin: str | None = "123456") -> dict[str, Any]:
    msg: dict[str, Any] = {
        "t": "0200",
        "2": PAN3,
        "3": "000000",
        "4": "000000002000",
        "7": time.strftime("%m%d%H%M%S", time.gmtime()),
        "11": stan,
        "12": "101010",
        "13": "1125",
        "22": "011",
        "25": "00",
        "32": ACQUIRER,
        "37": f"5330100{stan[1:]}",
        "41": "ACQT0001",
        "42": "ACQMERCHANT0001",
        "49": "156",
    }
    if pin is not None:
        account = PAN3[:-1][-12:]
        from hsm_sim import pin as pinlib

        msg["52"] = cipher("3des", bytes.fromhex(ACQ_ZPK_HEX)).encrypt(pinlib.encode(pin, account))
    return msg


def _h2h_exchange(port: int, msg: dict[str, Any], *, mac_ok: bool = True) -> dict[str, Any]:
    codec = codec_for("h2h", "3des")
    raw = codec.encode({**msg, "128": bytes(8)})
    mac = retail_mac(bytes.fromhex(ACQ_ZAK_HEX), codec.mac_block(raw))
    raw = codec.with_mac(raw, mac if mac_ok else bytes(8))
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(frame(raw))
        buf = bytearray()
        while not (frames := split_frames(buf, 8192)):
            data = s.recv(8192)
            assert data
            buf += data
    answer = codec.decode(frames[0])
    if "128" in answer:
        assert retail_mac(bytes.fromhex(ACQ_ZAK_HEX), codec.mac_block(frames[0])) == answer["128"]
    return answer


def test_inbound_acquirer_link(world: World) -> None:
    port = world.switch.ports["h2h"]
    before = len(world.host3.seen("0200"))
    msg = _acquirer_message("700001")
    answer = _h2h_exchange(port, msg)
    assert answer["39"] == "00" and answer["11"] == "700001" and answer["32"] == ACQUIRER and "128" in answer
    forwarded = world.host3.seen("0200")[-1]
    assert forwarded["32"] == ACQUIRER and forwarded["33"] == "48880000" and forwarded["11"] != "700001"
    # duplicate: same answer, nothing upstream again
    again = _h2h_exchange(port, msg)
    assert again["39"] == "00" and again.get("38") == answer.get("38")
    assert len(world.host3.seen("0200")) == before + 1
    # wrong PIN reaches the issuer (translated ZPK -> ZPK) and is declined
    assert _h2h_exchange(port, _acquirer_message("700002", pin="000000"))["39"] == "55"
    # wrong MAC: 30, nothing forwarded
    count = len(world.host3.seen("0200"))
    assert _h2h_exchange(port, _acquirer_message("700003"), mac_ok=False)["39"] == "30"
    assert len(world.host3.seen("0200")) == count
    # the issuer does not answer: the acquirer gets 91 and a reversal advice goes upstream
    world.host3.drop_financial = True
    try:
        lost_msg = _acquirer_message("700006")
        assert _h2h_exchange(port, lost_msg)["39"] == "91"
    finally:
        world.host3.drop_financial = False
    lost = world.host3.seen("0200")[-1]
    wait_until(
        lambda: any(m.get("90", "")[4:10] == lost["11"] for m in world.host3.seen("0420")),
        what="0420 for the acquirer's lost request",
    )
    # unknown acquirer
    stranger = {**_acquirer_message("700004"), "32": "99999999"}
    assert _h2h_exchange(port, stranger)["39"] == "03"
    # reversal of the approved one goes upstream with the switch's original data
    rev = {k: v for k, v in msg.items() if k not in ("2", "52", "12", "13", "22")}
    rev.update(
        {
            "t": "0400",
            "7": time.strftime("%m%d%H%M%S", time.gmtime()),
            "11": "700005",
            "90": f"0200{msg['11']}{msg['7']}{ACQUIRER.rjust(11, '0')}{'0' * 11}",
        }
    )
    assert _h2h_exchange(port, rev)["39"] == "00"
    up = world.host3.seen("0400")[-1]
    assert up["90"][4:10] == forwarded["11"] and up["90"][10:20] == forwarded["7"]


def test_clients_resetting_connections_mid_request_do_not_hurt_the_switch(world: World) -> None:
    import struct

    signer = world.terminal("3des")
    assert signer.sign_on().code == "00"
    world.host3.delay = 0.2
    try:
        for _ in range(5):
            t = world.terminal("3des")
            t.pik, t.mak, t.batch = signer.pik, signer.mak, signer.batch
            t.send_raw(t.frame(t.purchase_msg(PAN3, 100, pin="123456")))
            assert t.sock is not None
            t.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            t.close()  # RST with the request in flight
        time.sleep(0.5)
    finally:
        world.host3.delay = 0.0
    assert signer.exchange(signer.purchase_msg(PAN3, 100, pin="123456")).code == "00"
    assert world.switch.process.poll() is None
    signer.close()


def test_limits_max_in_flight_is_backpressure_not_failure(world: World) -> None:
    # 40 requests pipelined on one connection with max_in_flight = 8: all answered
    t = world.terminal("3des")
    assert t.sign_on().code == "00"
    world.host3.delay = 0.05
    try:
        assert t.sock is not None
        t.sock.sendall(b"".join(t.frame(t.purchase_msg(PAN3, 10 + i, pin="123456")) for i in range(40)))
        codes = [t.recv() for _ in range(40)]
    finally:
        world.host3.delay = 0.0
    assert all(r is not None and r.code == "00" for r in codes)
    t.close()


def test_sigterm_finishes_in_flight_and_saf_survives_restart(setup: dict[str, Any]) -> None:
    host3: FakeHost = setup["host3"]
    switch = start_switch(setup["db_url"], setup["hsm"], request_timeout_ms=600, saf_retry_s=1)
    try:
        wait_until(lambda: len(host3.seen("0800")) >= 2, what="link sign-on")
        t = Terminal("3des", "T3DES001", "898330160120001")
        t.connect(switch.ports["3des"])
        assert t.sign_on().code == "00"
        # 1. SIGTERM with a request in flight: it is still answered, then the process exits 0
        host3.delay = 0.4
        first_msg = t.purchase_msg(PAN3, 4321, pin="123456")
        t.send_raw(t.frame(first_msg))
        time.sleep(0.1)
        switch.process.send_signal(signal.SIGTERM)
        first = t.recv()
        assert first is not None and first.code == "00", switch.log()[-5000:]
        assert switch.process.wait(timeout=20) == 0
        t.close()
    finally:
        host3.delay = 0.0
        switch.kill()
    # 2. a timeout whose reversal cannot be delivered before the switch stops is delivered after restart
    host3.drop_financial = True
    switch = start_switch(setup["db_url"], setup["hsm"], request_timeout_ms=500, saf_retry_s=60)
    try:
        wait_until(lambda: len(host3.seen("0800")) >= 4, what="link sign-on")
        t = Terminal("3des", "T3DES001", "898330160120001")
        t.connect(switch.ports["3des"])
        assert t.sign_on().code == "00"
        with _saf_blocked(host3):
            r = t.exchange(t.purchase_msg(PAN3, 999, pin="123456"))
            assert r.code == "98"
            lost = host3.seen("0200")[-1]
            time.sleep(0.3)
            assert switch.stop() == 0
        t.close()
    finally:
        host3.drop_financial = False
        switch.kill()
    world = World(switch, host3, setup["host4"], setup["db_url"], setup["env"])
    waiting = world.query("SELECT message->>'90' FROM switch_saf WHERE done_at IS NULL")
    assert any(w[0][4:10] == lost["11"] for w in waiting)
    switch = start_switch(setup["db_url"], setup["hsm"], request_timeout_ms=500, saf_retry_s=1)
    try:
        wait_until(
            lambda: any(m.get("90", "")[4:10] == lost["11"] for m in host3.seen("0420") + host3.seen("0421")),
            what="reversal advice after restart",
        )
        wait_until(
            lambda: not world.query("SELECT 1 FROM switch_saf WHERE done_at IS NULL"), what="queue empty"
        )
        listing = run_cli(["switch", "saf", "list", "--all"], setup["env"])
        assert listing.returncode == 0 and "done 00" in listing.stdout
        # 3. after the restarts, a retransmission of the first purchase (same session keys, kept in
        #    the database) gets the first answer from the journal and nothing goes upstream
        count = len(host3.seen("0200"))
        t = Terminal("3des", "T3DES001", "898330160120001", pik=t.pik, mak=t.mak, batch=t.batch)
        t.connect(switch.ports["3des"])
        again = t.exchange(first_msg)
        assert again.code == "00" and again.msg["37"] == first.msg["37"] and t.verify_mac(again)
        assert len(host3.seen("0200")) == count
        t.close()
    finally:
        assert switch.stop() == 0


class _saf_blocked:
    """Make the fake issuer swallow reversal advices while active."""

    def __init__(self, host: FakeHost) -> None:
        self.host = host

    def __enter__(self) -> None:
        self.host.drop_advices = True

    def __exit__(self, *exc: object) -> None:
        self.host.drop_advices = False


def test_cli_journal_and_routes(world: World) -> None:
    shown = run_cli(["switch", "journal", "show", "--limit", "5"], world.env)
    assert shown.returncode == 0 and "621234*********4567" in shown.stdout and PAN3 not in shown.stdout
    routes = run_cli(["--json", "switch", "route", "list"], world.env)
    assert routes.returncode == 0 and '"621234"' in routes.stdout
    bad = run_cli(["switch", "route", "add", "12", "1", "--link", "issuer3"], world.env)
    assert bad.returncode == 1 and "Error" in bad.stderr and "Traceback" not in bad.stderr


def test_connection_limits_idle_timeout_frame_size_and_metrics(setup: dict[str, Any]) -> None:
    import urllib.request

    from tests.fixtures.services import free_port

    metrics_port = free_port()
    switch = start_switch(
        setup["db_url"],
        setup["hsm"],
        max_connections=3,
        idle_timeout_s=1,
        metrics_port=metrics_port,
        link_echo_s=1,
    )
    host3: FakeHost = setup["host3"]
    try:
        echoes = len([m for m in host3.seen("0800") if m.get("70") == "301"])
        t = Terminal("3des", "T3DES001", "898330160120001")
        t.connect(switch.ports["3des"])
        assert t.sign_on().code == "00"
        # over max_connections: closed at once
        extra = [socket.create_connection(("127.0.0.1", switch.ports["3des"]), timeout=5) for _ in range(3)]
        assert extra[-1].recv(10) == b""
        for s in extra:
            s.close()
        # a frame over 2,048 bytes closes the connection without reading it
        big = Terminal("3des", "T3DES001", "898330160120001")
        big.connect(switch.ports["3des"])
        big.send_raw(b"\x08\x01")
        assert big.recv() is None
        big.close()
        # idle: a silent connection is closed after idle_timeout_s
        time.sleep(1.6)
        assert t.sock is not None and t.sock.recv(10) == b""
        t.close()
        # the link echoes (0800/301) when quiet
        wait_until(
            lambda: len([m for m in host3.seen("0800") if m.get("70") == "301"]) > echoes, what="link echo"
        )
        body = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
        assert 'payswitch_switch_requests_total{channel="pos-3des",code="00",type="sign-on"}' in body
        assert 'payswitch_switch_link_up{link="issuer3"} 1.0' in body
        for name in (
            "payswitch_switch_latency_seconds_bucket",
            "payswitch_switch_connections",
            "payswitch_switch_in_flight",
            "payswitch_switch_saf_depth",
            "payswitch_switch_connections_refused_total",
            "payswitch_switch_bad_frames_total",
        ):
            assert name in body, name
    finally:
        assert switch.stop() == 0


def test_hsm_down_answers_96_and_recovers(setup: dict[str, Any]) -> None:
    from tests.fixtures.hsm import HsmServer
    from tests.fixtures.services import free_port, start_service

    port = free_port()
    hsm_env = {
        "PAYSWITCH_HSM_LISTEN": "127.0.0.1",
        "PAYSWITCH_HSM_PORT": str(port),
        "PAYSWITCH_HSM_TEST_LMK": "true",
        "PAYSWITCH_HSM_METRICS_PORT": "0",
    }
    hsm = start_service("hsm", ["hsm", "serve"], hsm_env, port)
    own = HsmServer("127.0.0.1", port, 4, hsm.process)
    switch = start_switch(setup["db_url"], own, request_timeout_ms=700)
    host3: FakeHost = setup["host3"]
    try:
        t = Terminal("3des", "T3DES002", "898330160120001")
        t.connect(switch.ports["3des"])
        assert t.sign_on().code == "00"
        wait_until(lambda: t.exchange(t.purchase_msg(PAN3, 100, pin="123456")).code == "00", what="link up")
        count = len(host3.seen("0200"))
        hsm.kill()
        r = t.exchange(t.purchase_msg(PAN3, 100, pin="123456"))
        assert r.code == "96" and len(host3.seen("0200")) == count
        hsm = start_service("hsm", ["hsm", "serve"], hsm_env, port)
        wait_until(lambda: t.exchange(t.purchase_msg(PAN3, 100, pin="123456")).code == "00", what="HSM back")
        t.close()
    finally:
        assert switch.stop() == 0, switch.log()[-3000:]
        hsm.stop()


def test_a_request_the_hsm_cannot_sign_is_declined_and_journaled(world: World, setup: dict[str, Any]) -> None:
    """A MACed outbound link whose ZAK the HSM refuses (here: a ZPK, parity error 10), as when the HSM
    goes away between the write-ahead and the request's DE128 (fault schedule seed 2): the request never
    leaves, the terminal gets 96, and the journal row names the upstream request, so its write-ahead
    record is answered. Before, the HSM error escaped after the write-ahead: no journal row, and the
    record waited for a restart whose recovery reversed a request that was never sent."""
    issuer = FakeHost("3des", bytes.fromhex(ZPK3_HEX)).start()
    zpk = _keys(setup["hsm"])["zpk3"]
    env = setup["env"]
    for args in (
        ["switch", "link", "add", "unsignable", "--host", "127.0.0.1", "--port", str(issuer.port),
         "--scheme", "3des", "--zpk", zpk, "--zak", zpk, "--connections", "1"],
        ["switch", "route", "add", "621236", "--link", "unsignable"],
    ):
        result = run_cli(args, env)
        assert result.returncode == 0, result.stderr
    try:
        wait_until(lambda: len(issuer.seen("0800")) >= 1, what="link sign-on (08xx carry no DE128)")
        t = world.terminal("3des")
        assert t.sign_on().code == "00"
        def declined_and_journaled() -> bool:  # the route reaches the switch at its next config poll
            msg = t.purchase_msg("6212365678901234566", 100, pin="123456")
            if t.exchange(msg).code != "96":
                return False
            sql = "SELECT 1 FROM switch_journal WHERE link = 'unsignable' AND stan = $1"
            return bool(world.query(sql, msg["11"]))

        wait_until(declined_and_journaled, what="96 journaled with its link")
        assert issuer.seen("0200") == []
        orphans = world.query(
            """SELECT count(*) FROM switch_write_ahead w WHERE w.link = 'unsignable' AND NOT EXISTS (
                   SELECT 1 FROM switch_journal j
                   WHERE j.link = w.link AND j.link_de7 = w.link_de7 AND j.link_stan = w.link_stan)"""
        )
        assert orphans[0][0] == 0
        t.close()
    finally:
        route = world.query("SELECT id FROM switch_routes WHERE link = 'unsignable'")
        for (route_id,) in route:
            run_cli(["switch", "route", "remove", str(route_id), "--yes"], env)
        run_cli(["switch", "link", "remove", "unsignable"], env)
        issuer.stop()


def test_inbound_h2h_malformed_frames_keep_the_link_up(world: World) -> None:
    port = world.switch.ports["h2h"]
    codec = codec_for("h2h", "3des")
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        good = codec.encode({**_acquirer_message("710001", pin=None), "128": bytes(8)})
        # DE4 with a letter: MTI and DE11 readable -> answered 30
        bad = good.replace(b"000000002000", b"00000000200X", 1)
        s.sendall(frame(bad) + frame(b"garbage") + b"\x00\x00")  # unreadable: dropped; keep-alive
        buf = bytearray()
        while not (frames := split_frames(buf, 8192)):
            data = s.recv(8192)
            assert data
            buf += data
        answer = codec.decode(frames[0])
        assert answer["t"] == "0210" and answer["39"] == "30" and answer["11"] == "710001"
        # the same connection still serves a good request
        msg = _acquirer_message("710002")
        raw = codec.encode({**msg, "128": bytes(8)})
        raw = codec.with_mac(raw, retail_mac(bytes.fromhex(ACQ_ZAK_HEX), codec.mac_block(raw)))
        s.sendall(frame(raw))
        got: list[dict[str, Any]] = []
        while not got:
            for body in split_frames(buf, 8192):
                if body:
                    got.append(codec.decode(body))
            if not got:
                data = s.recv(8192)
                assert data
                buf += data
        assert got[-1]["11"] == "710002" and got[-1]["39"] == "00"


def test_outbound_link_with_mac(world: World, setup: dict[str, Any]) -> None:
    maced: FakeHost = setup["maced"]
    wait_until(lambda: len(maced.seen("0800")) >= 1, what="MACed link sign-on")
    t = world.terminal("3des")
    assert t.sign_on().code == "00"
    wait_until(lambda: t.exchange(t.purchase_msg(PAN_MACED, 100, pin="123456")).code == "00", what="link up")
    assert maced.mac_failures == 0 and all("128" in m for m in maced.seen("0200"))
    # an answer whose MAC does not verify is no answer: 98 and a reversal advice
    maced.bad_answer_mac = True
    try:
        r = t.exchange(t.purchase_msg(PAN_MACED, 200, pin="123456"))
        assert r.code == "98"
        lost = maced.seen("0200")[-1]
        wait_until(lambda: any(m.get("90", "")[4:10] == lost["11"] for m in maced.seen("0420")), what="0420")
    finally:
        maced.bad_answer_mac = False
    wait_until(
        lambda: not world.query("SELECT 1 FROM switch_saf WHERE done_at IS NULL AND link = 'maced'"),
        what="advice accepted once answers verify again",
    )
    assert maced.mac_failures == 0
    t.close()


def test_inbound_h2h_response_mti_is_answered_30_not_dropped(world: World) -> None:
    """A 0430 or 0810 sent to the acquirer port: its request + 10 (0440, 0820) is not an H2H MTI; the
    answer is 30 on 0430 / 0810 and the connection stays up."""
    port = world.switch.ports["h2h"]
    codec = codec_for("h2h", "3des")
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        buf = bytearray()
        for mti, stan in (("0430", "720001"), ("0810", "720002")):
            msg = {**_acquirer_message(stan, pin=None), "t": mti, "39": "00"}
            s.sendall(frame(codec.encode({**msg, "128": bytes(8)})))
            while not (frames := [b for b in split_frames(buf, 8192) if b]):
                data = s.recv(8192)
                assert data, f"{mti}: the switch closed the connection"
                buf += data
            answer = codec.decode(frames[0])
            assert answer["t"] == mti and answer["39"] == "30" and answer["11"] == stan, answer
