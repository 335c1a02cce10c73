"""The real HSM process (``hsm_server`` fixture) through ``hsm_sim.client``: every convenience method,
pipelining and concurrency, fuzzed frames, bad LEN, and clean shutdown."""

from __future__ import annotations

import random
import socket
import struct
import time
from pathlib import Path

import pytest
import trio

from hsm_sim.client import HsmClient, HsmCommandError, HsmUnavailable, account_from_pan, h2h_mac_command
from tests.fixtures.hsm import HsmServer, start_hsm, stop_hsm
from tests.hsm_sim.helpers import TMK, ecb, gm_sm4

PAN = "6212345678901234567"
ACCOUNT = account_from_pan(PAN)


def run(server: HsmServer, fn, **client_kw):  # type: ignore[no-untyped-def]
    async def main():  # type: ignore[no-untyped-def]
        async with server.client(**client_kw) as hsm:
            return await fn(hsm)

    return trio.run(main)


def test_account_from_pan() -> None:
    assert ACCOUNT == "567890123456"
    assert account_from_pan("123456789") == "000012345678"


def test_diagnostics_and_echo(hsm_server: HsmServer) -> None:
    async def fn(hsm: HsmClient) -> None:
        d = await hsm.diagnostics()
        assert d.lmk_check_value == "7D22274C5745C5A1" and len(d.firmware) == 9
        assert await hsm.echo(b"\x00\xffhello") == b"\x00\xffhello"
        assert await hsm.echo(b"") == b""

    run(hsm_server, fn)


def test_sign_on_keys_3des(hsm_server: HsmServer) -> None:
    """What the switch does at a 3des sign-on: PIK, MAK (Z), TDK under the TMK; then MAC and PIN."""

    async def fn(hsm: HsmClient) -> None:
        tmk = await hsm.form_key("002", [TMK, "0" * 32])
        assert tmk.check_value.startswith("08D7B4")
        pik = await hsm.generate_key("002", "U", under=tmk.under_lmk, export_scheme="X")
        mak = await hsm.generate_key("003", "Z", under=tmk.under_lmk, export_scheme="Z")
        tdk = await hsm.generate_key("00A", "U", under=tmk.under_lmk, export_scheme="X")
        assert pik.under_kek is not None and pik.under_kek.startswith("X") and len(pik.under_kek) == 33
        assert mak.under_kek is not None and len(mak.under_kek) == 16 and len(mak.under_lmk) == 16
        assert tdk.under_lmk.startswith("U")
        # the terminal's view: decrypt under the TMK
        pik_clear = ecb(TMK).decrypt(bytes.fromhex(pik.under_kek[1:])).hex()
        mak_clear = ecb(TMK).decrypt(bytes.fromhex(mak.under_kek)).hex()
        assert ecb(pik_clear).encrypt(bytes(8)).hex().upper() == pik.check_value
        assert ecb(mak_clear).encrypt(bytes(8)).hex().upper() == mak.check_value
        assert await hsm.check_value(pik.under_lmk, "002") == pik.check_value
        assert await hsm.check_value(mak.under_lmk, "003") == mak.check_value

        mac = await hsm.pos_mac(mak.under_lmk, b"some message")
        assert len(mac) == 8
        assert await hsm.verify_pos_mac(mak.under_lmk, b"some message", mac)
        assert not await hsm.verify_pos_mac(mak.under_lmk, b"some messagf", mac)

        zpk = await hsm.form_key("001", [TMK, "0" * 32])
        from hsm_sim import pin

        block = ecb(pik_clear).encrypt(pin.encode("123456", ACCOUNT)).hex().upper()
        out = await hsm.translate_pin_tpk(pik.under_lmk, zpk.under_lmk, block, ACCOUNT)
        assert (out.pin_length, out.pin_block, out.format) == (6, "84615C0FB761528E", "01")

        # the switch's per-request pair: MAC and PIN translation together, same answers
        both = await hsm.pos_mac_and_translate_pin(
            mak.under_lmk, b"some message", pik.under_lmk, zpk.under_lmk, block, ACCOUNT
        )
        assert both == (mac, out)
        # a refused command comes back as a value; the other still answers
        bad_mac, bad_pin = await hsm.pos_mac_and_translate_pin(
            mak.under_lmk, b"some message", pik.under_lmk, zpk.under_lmk, "ZZ" + block[2:], ACCOUNT
        )
        assert bad_mac == mac
        assert isinstance(bad_pin, HsmCommandError) and bad_pin.command == "CA"

    run(hsm_server, fn)


def test_sign_on_keys_sm4(hsm_server: HsmServer) -> None:
    async def fn(hsm: HsmClient) -> None:
        tmk = await hsm.form_sm4_key("002", [TMK, "0" * 32])
        pik = await hsm.generate_sm4_key("002", under=tmk.under_lmk)
        mak = await hsm.generate_sm4_key("003", under=tmk.under_lmk)
        assert pik.under_kek is not None and mak.under_kek is not None
        pik_clear = gm_sm4(bytes.fromhex(TMK), bytes.fromhex(pik.under_kek), decrypt=True)
        assert gm_sm4(pik_clear, bytes(16))[:8].hex().upper() == pik.check_value
        assert await hsm.check_value(mak.under_lmk, "003") == mak.check_value
        mac = await hsm.pos_mac(mak.under_lmk, b"x" * 33)
        assert await hsm.verify_pos_mac(mak.under_lmk, b"x" * 33, mac)

        from hsm_sim import pin

        block = gm_sm4(pik_clear, pin.sm4_encode("123456", ACCOUNT)).hex().upper()
        zpk = await hsm.form_key("001", [TMK, "0" * 32])
        out = await hsm.translate_pin(pik.under_lmk, zpk.under_lmk, block, ACCOUNT)
        assert (out.pin_length, out.pin_block) == (6, "84615C0FB761528E")
        both = await hsm.pos_mac_and_translate_pin(
            mak.under_lmk, b"x" * 33, pik.under_lmk, zpk.under_lmk, block, ACCOUNT
        )
        assert both == (mac, out)

    run(hsm_server, fn)


def test_h2h_mac_command_in_one_exchange(hsm_server: HsmServer) -> None:
    """The fields ``h2h_mac_command`` builds (what the switch's link and the host's PIN group send in one
    ``request_many``) make and check the same MACs as the single calls: X9.19 16H and an 8H check with a
    3DES ZAK, SM4 with an ``S`` ZAK; a wrong MAC answers 01."""

    async def fn(hsm: HsmClient) -> None:
        zak = (await hsm.form_key("008", [TMK, "0" * 32])).under_lmk
        sm4_zak = (await hsm.generate_sm4_key("008")).under_lmk
        data = b"Now is the time for all "
        sm4_mac = await hsm.h2h_mac(sm4_zak, data)
        replies = await hsm.request_many([
            h2h_mac_command(zak, data),
            h2h_mac_command(zak, data, "A1C72E74EA3FA9B6"),
            h2h_mac_command(zak, data, "A1C72E74"),
            h2h_mac_command(zak, data, "A1C72E74EA3FA9B7"),
            h2h_mac_command(sm4_zak, data),
            h2h_mac_command(sm4_zak, data, sm4_mac),
            h2h_mac_command(sm4_zak, data + b"!", sm4_mac),
        ])
        assert [r.error for r in replies] == ["00", "00", "00", "01", "00", "00", "01"]
        assert replies[0].fields == b"A1C72E74EA3FA9B6"
        assert replies[4].fields.decode() == sm4_mac

    run(hsm_server, fn)


def test_h2h_mac_and_zpk_exchange(hsm_server: HsmServer) -> None:
    async def fn(hsm: HsmClient) -> None:
        zak = await hsm.form_key("008", [TMK, "0" * 32])
        data = b"Now is the time for all "
        assert await hsm.h2h_mac(zak.under_lmk, data) == "A1C72E74EA3FA9B6"
        assert await hsm.verify_h2h_mac(zak.under_lmk, data, "A1C72E74EA3FA9B6")
        assert not await hsm.verify_h2h_mac(zak.under_lmk, data, "A1C72E74EA3FA9B7")
        assert await hsm.generate_mac(zak.under_lmk, data, size=8) == "A1C72E74"
        sm4_zak = await hsm.generate_sm4_key("008")
        mac = await hsm.h2h_mac(sm4_zak.under_lmk, data)
        assert len(mac) == 16 and await hsm.verify_h2h_mac(sm4_zak.under_lmk, data, mac)
        assert not await hsm.verify_sm4_mac(sm4_zak.under_lmk, data + b"!", mac)
        # key change over a link: new ZPK under the link ZMK, imported by the other side
        zmk = await hsm.form_key("000", ["0123456789ABCDEF0123456789ABCDEF", "0" * 32])
        new = await hsm.generate_key("001", "U", under=zmk.under_lmk, under_tmk=False, export_scheme="U")
        assert new.under_kek is not None
        imported = await hsm.import_key("001", zmk.under_lmk, new.under_kek, "U")
        assert imported.check_value == new.check_value
        exported = await hsm.export_key("001", zmk.under_lmk, imported.under_lmk, "U")
        assert exported.under_kek == new.under_kek
        sm4_zmk = await hsm.generate_sm4_key("000")
        sm4_zpk = await hsm.generate_sm4_key("001")
        out = await hsm.export_sm4_key("001", sm4_zmk.under_lmk, sm4_zpk.under_lmk)
        back = await hsm.import_sm4_key("001", sm4_zmk.under_lmk, out.under_kek)
        assert back.under_lmk == sm4_zpk.under_lmk and back.check_value == sm4_zpk.check_value
        back = await hsm.import_sm4_key("001", sm4_zmk.under_lmk, "S" + out.under_kek)  # DE48 form
        assert back.under_lmk == sm4_zpk.under_lmk

    run(hsm_server, fn)


def test_pvv_and_pin_verification(hsm_server: HsmServer) -> None:
    async def fn(hsm: HsmClient) -> None:
        pvk = await hsm.generate_key("002", "U")
        pin_lmk = await hsm.random_pin(ACCOUNT, 6)
        assert pin_lmk.startswith("L") and len(pin_lmk) == 33
        pvv = await hsm.generate_pvv(pvk.under_lmk, pin_lmk, ACCOUNT, "1")
        assert len(pvv) == 4 and pvv.isdigit()
        # a ZPK whose clear value we know, so the test can build the customer's PIN block
        zpk = await hsm.form_key("001", [TMK, "0" * 32])
        sm4_zpk = await hsm.form_sm4_key("001", [TMK, "0" * 32])
        from hsm_sim import pin

        # A known PIN under the (test) LMK, so the test can build the matching customer PIN blocks.
        known = "123456"
        from hsm_sim.lmk import Lmk

        pin_under_lmk = "L" + Lmk.test_set().encrypt_pin(pin.lmk_pin_block(known)).hex().upper()
        pvv = await hsm.generate_pvv(pvk.under_lmk, pin_under_lmk, ACCOUNT, "1")
        block = ecb(TMK).encrypt(pin.encode(known, ACCOUNT)).hex().upper()
        assert await hsm.verify_pin(zpk.under_lmk, pvk.under_lmk, block, ACCOUNT, "1", pvv)
        wrong = ecb(TMK).encrypt(pin.encode("654321", ACCOUNT)).hex().upper()
        assert not await hsm.verify_pin(zpk.under_lmk, pvk.under_lmk, wrong, ACCOUNT, "1", pvv)
        sm4_block = gm_sm4(bytes.fromhex(TMK), pin.sm4_encode(known, ACCOUNT)).hex().upper()
        assert await hsm.verify_pin(sm4_zpk.under_lmk, pvk.under_lmk, sm4_block, ACCOUNT, "1", pvv)
        assert not await hsm.verify_pin(sm4_zpk.under_lmk, pvk.under_lmk, sm4_block, ACCOUNT, "2", pvv)

    run(hsm_server, fn)


def test_data_encryption(hsm_server: HsmServer) -> None:
    async def fn(hsm: HsmClient) -> None:
        for key in (
            (await hsm.generate_key("00A", "U")).under_lmk,
            (await hsm.generate_sm4_key("00A")).under_lmk,
        ):
            data = b"6212345678901234567\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"
            enc = await hsm.encrypt_data(key, data)
            assert enc != data and len(enc) == len(data)
            assert await hsm.decrypt_data(key, enc) == data
            iv = bytes(range(16 if key.startswith("S") else 8))
            enc2 = await hsm.encrypt_data(key, data, iv=iv)
            assert enc2 != enc and await hsm.decrypt_data(key, enc2, iv=iv) == data
        with pytest.raises(HsmCommandError) as info:
            await hsm.encrypt_data(key, b"123")
        assert info.value.code == "80"
        zpk = await hsm.generate_key("001", "U")
        with pytest.raises(HsmCommandError) as info:
            await hsm.encrypt_data(zpk.under_lmk, bytes(8), key_type="001")
        assert info.value.code == "29"

    run(hsm_server, fn)


def test_error_codes_raise(hsm_server: HsmServer) -> None:
    async def fn(hsm: HsmClient) -> None:
        with pytest.raises(HsmCommandError) as info:
            await hsm.form_key("002", [TMK, TMK])  # all zero: parity
        assert info.value.code == "10" and "parity" in str(info.value)
        with pytest.raises(HsmCommandError) as info:
            await hsm.call("A0", "0999U")
        assert info.value.code == "04"
        reply = await hsm.request("QQ")
        assert reply.error == "68"

    run(hsm_server, fn)


# -- transport ----------------------------------------------------------------------------------------
def _frame(body: bytes) -> bytes:
    return struct.pack(">H", len(body)) + body


def _recv_frame(sock: socket.socket) -> bytes:
    head = _recv_exact(sock, 2)
    return _recv_exact(sock, struct.unpack(">H", head)[0])


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    out = b""
    while len(out) < n:
        chunk = sock.recv(n - len(out))
        if not chunk:
            raise ConnectionError("closed")
        out += chunk
    return out


def test_raw_frames(hsm_server: HsmServer) -> None:
    with socket.create_connection((hsm_server.host, hsm_server.port), timeout=5) as s:
        s.sendall(_frame(b"0001NC") + _frame(b"0002XX") + _frame(b"0003A0") + _frame(b"0004B2000"))
        assert _recv_frame(s)[:8] == b"0001ND00"
        assert _recv_frame(s) == b"0002ZZ68"
        assert _recv_frame(s) == b"0003A115"
        assert _recv_frame(s) == b"0004B315"
        s.sendall(_frame(b"0005b2"))  # command codes are case-sensitive
        assert _recv_frame(s) == b"0005ZZ68"


@pytest.mark.parametrize("bad", [b"\x00\x00", b"\x00\x01A", b"\x00\x05ABCDE"])
def test_bad_length_closes_only_that_connection(hsm_server: HsmServer, bad: bytes) -> None:
    with (
        socket.create_connection((hsm_server.host, hsm_server.port), timeout=5) as other,
        socket.create_connection((hsm_server.host, hsm_server.port), timeout=5) as s,
    ):
        s.sendall(_frame(b"0001NC") + bad)
        assert _recv_frame(s)[:8] == b"0001ND00"  # answers before the bad LEN still come
        assert s.recv(10) == b""  # then it is closed, nothing sent
        other.sendall(_frame(b"0002NC"))
        assert _recv_frame(other)[:8] == b"0002ND00"


def _valid_requests(hsm_server: HsmServer) -> list[bytes]:
    """One well-formed request per command, with real keys, as seeds for mutation."""

    async def fn(hsm: HsmClient) -> list[bytes]:
        tmk = (await hsm.form_key("002", [TMK, "0" * 32])).under_lmk
        zmk = (await hsm.form_key("000", [TMK, "0" * 32])).under_lmk
        zpk = (await hsm.form_key("001", [TMK, "0" * 32])).under_lmk
        zak = (await hsm.form_key("008", [TMK, "0" * 32])).under_lmk
        mak = (await hsm.generate_key("003", "Z")).under_lmk
        dk = (await hsm.generate_key("00A", "U")).under_lmk
        s_tmk = (await hsm.form_sm4_key("002", [TMK, "0" * 32])).under_lmk
        s_zpk = (await hsm.form_sm4_key("001", [TMK, "0" * 32])).under_lmk
        s_mak = (await hsm.generate_sm4_key("003")).under_lmk
        s_dk = (await hsm.generate_sm4_key("00A")).under_lmk
        pin_lmk = await hsm.random_pin(ACCOUNT)
        blk = "84615C0FB761528E"
        sblk = "AB688B587E879B19A6275257400C226E"
        return [
            x.encode()
            for x in (
                "NC",
                "B20004abcd",
                "A00002U",
                f"A01002U;1{tmk}X",
                f"A01003Z;1{tmk}Z",
                f"A42002U{TMK}{'0' * 32}",
                f"A6001{zmk}X524FDC3021F3BA088FADC73C286EA1D4U",
                f"A8001{zmk}{zpk}X",
                f"BU021{zpk}",
                f"BUFF1{zpk};001",
                f"CA{tmk}{zpk}12{blk}0101{ACCOUNT}",
                f"CC{zpk}{zpk}12{blk}0147{ACCOUNT}",
                f"DG{tmk}{pin_lmk}{ACCOUNT}1",
                f"EC{zpk}{tmk}{blk}01{ACCOUNT}11234",
                f"JA{ACCOUNT}06",
                f"M600131008{zak}0008ABCDEFGH",
                f"M800131008{zak}0008ABCDEFGHA1C72E74EA3FA9B6",
                f"MU1003{mak}0005hello",
                f"MU2003{s_mak}0005hello",
                f"M0001100A{dk}0010{TMK[:16]}",
                f"M2011100A{s_dk}{TMK}0020{TMK}",
                "WI0001",
                f"WI1003;1{s_tmk}",
                f"WK2001{TMK}{'0' * 32}",
                f"SV001{s_tmk}{sblk};1",
                f"ST001{s_tmk}{s_zpk};1",
                f"W82001{s_zpk}1{zpk}{sblk}{ACCOUNT}",
                f"WM11008{s_mak}0003abc".replace("008", "003"),
                f"WV{s_zpk}{tmk}{sblk}{ACCOUNT}11234",
            )
        ]

    return run(hsm_server, fn)  # type: ignore[no-any-return]


def _mutate(rng: random.Random, req: bytes) -> bytes:
    data = bytearray(req)
    for _ in range(rng.randrange(1, 4)):
        op = rng.randrange(5)
        pos = rng.randrange(len(data) + 1)
        if op == 0 and len(data) > 2:
            del data[rng.randrange(2, len(data)) :]  # truncate
        elif op == 1 and pos < len(data):
            data[pos] = rng.randrange(256)  # random byte
        elif op == 2 and pos < len(data):
            data[pos] = rng.choice(b"0123456789ABCDEFUSTXZL;af")  # plausible character
        elif op == 3:
            data[pos:pos] = rng.randbytes(rng.randrange(1, 20))  # insert
        elif pos < len(data):
            del data[pos : pos + rng.randrange(1, 10)]  # delete
    return bytes(data)


def test_fuzz_random_frames(hsm_server: HsmServer) -> None:
    """Mutated valid requests and random bytes: each gets a well-formed answer; then a normal command."""
    rng = random.Random(4)
    seeds = _valid_requests(hsm_server)
    with socket.create_connection((hsm_server.host, hsm_server.port), timeout=10) as s:
        frames = []
        for i in range(3000):
            if i % 10 == 0:
                req = rng.choice(seeds)[:2] + rng.randbytes(rng.randrange(0, 100))
            else:
                req = _mutate(rng, rng.choice(seeds))
                if len(req) < 2:  # shorter than header + 2 closes the connection (tested above)
                    req = b"NC"
            frames.append(b"%04d" % i + req[:4000])
        s.sendall(b"".join(_frame(f) for f in frames))
        errors = set()
        for i in range(3000):
            out = _recv_frame(s)
            assert out[:4] == b"%04d" % i
            error = out[6:8]
            assert error.isdigit(), out
            errors.add(error)
            if error != b"00":
                assert len(out) == 8, out  # nothing after an error code
        assert {b"00", b"15"} <= errors and len(errors) > 4
        s.sendall(_frame(b"9999NC"))
        assert _recv_frame(s)[:8] == b"9999ND00"


def test_many_in_flight(hsm_server: HsmServer) -> None:
    """200 concurrent callers × 50 requests on 2 pipelined connections: every answer to its caller."""

    async def fn(hsm: HsmClient) -> None:
        async def worker(i: int) -> None:
            for j in range(50):
                data = b"%d-%d" % (i, j)
                assert await hsm.echo(data) == data

        async with trio.open_nursery() as nursery:
            for i in range(200):
                nursery.start_soon(worker, i)

    run(hsm_server, fn, connections=2)


def test_client_unavailable_and_reconnect() -> None:
    server = start_hsm()
    port = server.port

    async def main() -> None:
        async with HsmClient("127.0.0.1", port, timeout=2, connections=1) as hsm:
            assert await hsm.echo(b"a") == b"a"
            stop_hsm(server.process)
            with pytest.raises(HsmUnavailable):
                await hsm.echo(b"b")
        async with HsmClient("127.0.0.1", port, timeout=1) as hsm:
            with pytest.raises(HsmUnavailable):
                await hsm.echo(b"c")

    trio.run(main)


def test_sigterm_exits_zero() -> None:
    server = start_hsm()
    assert stop_hsm(server.process) == 0


def test_errors_leave_the_client_unwrapped(hsm_server: HsmServer) -> None:
    async def main() -> None:
        async with hsm_server.client() as hsm:
            await hsm.call("A0", "0999U")

    with pytest.raises(HsmCommandError):
        trio.run(main)


def test_sigint_exits_zero() -> None:
    import signal

    server = start_hsm()
    server.process.send_signal(signal.SIGINT)
    assert server.process.wait(timeout=10) == 0


def test_many_connections(hsm_server: HsmServer) -> None:
    """30 clients (one connection each) at once, each pipelining MACs: all answered, all correct."""

    async def main() -> None:
        async with hsm_server.client() as setup:
            mak = (await setup.generate_key("003", "Z")).under_lmk
            expected = await setup.pos_mac(mak, b"payload")

        async def one_client() -> None:
            async with hsm_server.client(connections=1) as hsm, trio.open_nursery() as nursery:
                for _ in range(20):
                    nursery.start_soon(check, hsm)

        async def check(hsm: HsmClient) -> None:
            for _ in range(10):
                assert await hsm.pos_mac(mak, b"payload") == expected

        async with trio.open_nursery() as nursery:
            for _ in range(30):
                nursery.start_soon(one_client)

    trio.run(main)


def test_no_clear_key_or_pin_in_the_log(tmp_path: Path) -> None:
    """Debug logging, bad and good requests with known clear keys and PINs: none of them is logged."""
    import os
    import subprocess
    import sys

    from hsm_sim import pin
    from ops.pgembed import free_port
    from tests.fixtures.hsm import _answers_nc

    port = free_port()
    log_path = tmp_path / "hsm.log"
    env = {
        **os.environ,
        "PAYSWITCH_HSM_PORT": str(port),
        "PAYSWITCH_HSM_TEST_LMK": "true",
        "PAYSWITCH_HSM_METRICS_PORT": "0",
        "PAYSWITCH_LOG_LEVEL": "debug",
        "PAYSWITCH_LOG_FORMAT": "json",
    }
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "ops", "hsm", "serve"], env=env, stderr=log)
    try:
        deadline = time.monotonic() + 20
        while not _answers_nc(port, 4):
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.05)

        async def main() -> None:
            async with HsmClient("127.0.0.1", port, timeout=5) as hsm:
                tpk = await hsm.form_key("002", [TMK, "0" * 32])
                zpk = await hsm.form_key("001", [TMK, "0" * 32])
                block = ecb(TMK).encrypt(pin.encode("987654", ACCOUNT)).hex().upper()
                await hsm.translate_pin_tpk(tpk.under_lmk, zpk.under_lmk, block, ACCOUNT)
                await hsm.request("A4", f"2002U{TMK}{TMK}")  # parity error
                await hsm.request("CA", f"{tpk.under_lmk}{zpk.under_lmk}12{block}0199{ACCOUNT}")

        trio.run(main)
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.sendall(b"\x00\x01X")  # bad LEN: logged
            s.recv(10)
    finally:
        assert stop_hsm(proc) == 0
    text = log_path.read_text()
    assert "bad_frame_length" in text and "hsm_listening" in text
    for secret in (TMK, TMK.lower(), "987654", "0123456789ABCDEF"):
        assert secret not in text
