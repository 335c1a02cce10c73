"""Switch-initiated key change on an outbound link (issue 6): `payswitch switch link rekey NAME` marks
the link, the running switch generates a new ZPK under the link ZMK (HSM A0 mode 1), sends 0800 DE70
101 with it and its check value, and on 0810 DE39 00 uses and stores the new key. Purchases with PINs
flow the whole time and every one is approved (a PIN block reaches the host under the key it holds).

The real processes: hsm_sim, the authorization host (it takes the new ZPK under its copy of the ZMK)
and the switch, on one PostgreSQL database.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import trio

from hsm_sim.crypto import sm4, sm4_check_value
from switch.hsm import HsmRefused, WorkingKey
from switch.upstream import KeyChangeGate
from tests.fixtures.hsm import HsmServer
from tests.fixtures.pg import query
from tests.fixtures.services import ServiceProcess, base_env, free_port, run_cli, start_service, start_switch
from tests.switch.fake_host import FakeHost
from tests.switch.terminal import TMK_HEX, Terminal

ZPK_HEX = "89ABCDEF01234567FEDCBA9876543210"
ZMK_HEX = "0123456789ABCDEF0123456789ABCDEF"
SM4_ZPK_HEX = "00112233445566778899AABBCCDDEEFF"
SM4_ZMK_HEX = "FFEEDDCCBBAA99887766554433221100"
MERCHANT = "898330160120001"
BIN = "621234"
TERMINALS = (("T3DES001", "3des"), ("T3DES002", "3des"), ("TSM40001", "sm4"))


@dataclass
class System:
    env: dict[str, str]
    db_url: str
    host: ServiceProcess
    switch: ServiceProcess
    pans: list[str]
    expiries: list[str]
    zpk: str
    zpk_check: str
    hsm: HsmServer

    def cli(self, *args: str) -> Any:
        result = run_cli(["--json", *args], self.env)
        assert result.returncode == 0, f"payswitch {' '.join(args)}: {result.stderr}"
        return json.loads(result.stdout) if result.stdout.strip() else None

    def query(self, sql: str, *args: Any) -> list[Any]:
        return query(self.db_url, sql, *args)

    def terminal(self, terminal_id: str, scheme: str) -> Terminal:
        t = Terminal(scheme, terminal_id, MERCHANT)
        t.connect(self.switch.ports[scheme])
        assert t.sign_on().code == "00"
        return t


def _keys(hsm: HsmServer) -> tuple[str, str, str]:
    async def main() -> tuple[str, str, str]:
        async with hsm.client() as h:
            zpk = await h.form_key("001", [ZPK_HEX, "0" * 32])
            zmk = await h.form_key("000", [ZMK_HEX, "0" * 32])
            return zpk.under_lmk, zpk.check_value, zmk.under_lmk

    return trio.run(main)


@pytest.fixture(scope="module")
def system(db_url: str, hsm_server: HsmServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    host_port = free_port()
    env = {
        **base_env(db_url, hsm_server),
        "PAYSWITCH_HOST_PORT": str(host_port),
        "PAYSWITCH_HOST_METRICS_PORT": "0",
        "PAYSWITCH_HOST_PROFILE": "3des",
        "PAYSWITCH_HOST_MAILER_DIR": str(tmp_path_factory.mktemp("mailers")),
    }
    zpk, zpk_check, zmk = _keys(hsm_server)
    s = System(env, db_url, None, None, [], [], zpk, zpk_check, hsm_server)  # type: ignore[arg-type]
    s.cli("host", "keys")
    s.cli(
        "product", "add", "CAMPUS", "--kind", "reloadable", "--bin", BIN, "--pin-scheme", "3des",
        "--daily-count-limit", "100000",
    )  # fmt: skip
    issued = s.cli("card", "issue", "--product", "CAMPUS", "--count", "3", "--pin", "123456", "--activate")
    s.pans = [c["pan"] for c in issued["cards"]]
    s.expiries = [str(c["expiry"]) for c in issued["cards"]]
    for c in issued["cards"]:
        s.cli("card", "load", str(c["card_id"]), "--amount", "500.00")
    s.cli("merchant", "add", MERCHANT, "--name", "Campus Canteen", "--mcc", "5812")
    for tid, scheme in TERMINALS:
        s.cli("terminal", "add", tid, "--merchant", MERCHANT, "--scheme", scheme, "--tmk", TMK_HEX)
    s.cli("host", "link", "48880000", "--profile", "3des", "--zpk", zpk, "--zmk", zmk, "--no-mac")
    s.cli(
        "switch", "link", "add", "issuer", "--host", "127.0.0.1", "--port", str(host_port),
        "--scheme", "3des", "--zpk", zpk, "--zmk", zmk, "--connections", "2",
    )  # fmt: skip
    s.cli("switch", "route", "add", BIN, "--link", "issuer")
    s.host = start_service("host", ["host", "serve"], env, host_port)
    s.switch = start_switch(db_url, hsm_server, request_timeout_ms=3000, config_poll_s=1)
    try:
        t = s.terminal("T3DES001", "3des")
        deadline = time.monotonic() + 15
        while t.exchange(t.purchase_msg(s.pans[0], 1, pin="123456", expiry=s.expiries[0])).code != "00":
            assert time.monotonic() < deadline, "the link to the host never came up"
            time.sleep(0.1)
        t.close()
        yield s
    finally:
        code = s.switch.stop()
        s.host.stop()
        assert code == 0, s.switch.log()[-3000:]
    check = run_cli(["ledger", "check"], env)
    assert check.returncode == 0, check.stdout + check.stderr


def _shop(system: System, index: int, stop: threading.Event, codes: list[tuple[float, str]]) -> None:
    """One terminal buying with its own card and PIN until ``stop``; (time, DE39) of every answer."""
    terminal_id, scheme = TERMINALS[index]
    t = system.terminal(terminal_id, scheme)
    try:
        while not stop.is_set():
            msg = t.purchase_msg(system.pans[index], 1, pin="123456", expiry=system.expiries[index])
            codes.append((time.monotonic(), t.exchange(msg).code))
    finally:
        t.close()


def test_rekey_while_purchases_flow_all_approve_and_the_stored_zpk_changes(system: System) -> None:
    stop = threading.Event()
    codes: list[list[tuple[float, str]]] = [[] for _ in TERMINALS]
    shoppers = [
        threading.Thread(target=_shop, args=(system, i, stop, codes[i]), daemon=True)
        for i in range(len(TERMINALS))
    ]
    for shopper in shoppers:
        shopper.start()
    try:
        time.sleep(0.5)
        system.cli("switch", "link", "rekey", "issuer")
        deadline = time.monotonic() + 15
        while not system.query("SELECT 1 FROM switch_links WHERE name = 'issuer' AND rekeyed_at IS NOT NULL"):
            assert time.monotonic() < deadline, system.switch.log()[-3000:]
            time.sleep(0.1)
        changed_at = time.monotonic()
        time.sleep(1.0)  # purchases go on under the new key
    finally:
        stop.set()
        for shopper in shoppers:
            shopper.join(15)
    answers = [code for per_terminal in codes for _, code in per_terminal]
    assert answers and set(answers) == {"00"}, answers
    assert all(any(at > changed_at for at, _ in per_terminal) for per_terminal in codes)

    row = system.query("SELECT zpk, zpk_check, rekey_requested_at FROM switch_links WHERE name = 'issuer'")[0]
    assert row["zpk"] != system.zpk and row["rekey_requested_at"] is None
    assert row["zpk_check"] and row["zpk_check"][:6] != system.zpk_check[:6]  # a new key (check value)
    host_row = system.query("SELECT zpk, zpk_check FROM links WHERE institution_id = '48880000'")[0]
    assert host_row["zpk_check"][:6] == row["zpk_check"][:6]  # the host took the same key
    log = system.switch.log()
    assert '"link ZPK changed"' in log and row["zpk"] not in log and system.zpk not in log

    # after a restart the switch uses the stored key
    system.switch.stop()
    system.switch = start_switch(system.db_url, system.hsm, request_timeout_ms=3000, config_poll_s=1)
    t = system.terminal("T3DES001", "3des")
    deadline = time.monotonic() + 15
    while (
        r := t.exchange(t.purchase_msg(system.pans[0], 1, pin="123456", expiry=system.expiries[0]))
    ).code != "00":
        assert r.code == "91" and time.monotonic() < deadline, r.msg
        time.sleep(0.1)
    t.close()


def test_rekey_refused_without_zmk_or_for_an_unknown_link(system: System) -> None:
    result = run_cli(["switch", "link", "rekey", "nosuchlink"], system.env)
    assert result.returncode == 1 and "no outbound link named nosuchlink" in result.stderr
    system.cli(
        "switch", "link", "add", "plain", "--host", "127.0.0.1", "--port", "9", "--scheme", "3des",
        "--zpk", system.zpk, "--connections", "1",
    )  # fmt: skip
    result = run_cli(["switch", "link", "rekey", "plain"], system.env)
    assert result.returncode == 1 and "has no ZMK" in result.stderr
    system.cli("switch", "link", "remove", "plain")


class KeyTakingHost(FakeHost):
    """The small H2H issuer, plus 0800 DE70 101 as the host does it: the new ZPK (DE48 `S`+32H under
    the clear link ZMK, then its check value) is checked and used from the 0810 on."""

    zmk: bytes  # set by the test
    changes: list[tuple[str, str]]  # (DE48 check value, check value of the decrypted key)

    async def _answer(self, stream: Any, lock: Any, codec: Any, msg: dict[str, Any]) -> None:
        if msg["t"] == "0800" and msg.get("70") == "101":
            de48 = str(msg["48"])
            key = sm4(self.zmk).decrypt(bytes.fromhex(de48[1:33]))
            self.changes.append((de48[33:49], sm4_check_value(key).hex().upper()[:16]))
            self.zpk = key
        await super()._answer(stream, lock, codec, msg)


def test_rekey_of_an_sm4_link_added_while_running(system: System) -> None:
    async def keys() -> tuple[str, str]:
        async with system.hsm.client() as h:
            zpk = await h.form_sm4_key("001", [SM4_ZPK_HEX, "0" * 32])
            zmk = await h.form_sm4_key("000", [SM4_ZMK_HEX, "0" * 32])
            return zpk.under_lmk, zmk.under_lmk

    zpk, zmk = trio.run(keys)
    host = KeyTakingHost("sm4", bytes.fromhex(SM4_ZPK_HEX))
    host.zmk = bytes.fromhex(SM4_ZMK_HEX)
    host.changes = []
    host.start()
    try:
        system.cli(
            "switch", "link", "add", "issuer4", "--host", "127.0.0.1", "--port", str(host.port),
            "--scheme", "sm4", "--zpk", zpk, "--zmk", zmk, "--connections", "1",
        )  # fmt: skip
        system.cli("switch", "route", "add", "621244", "--link", "issuer4")
        pan = "6212445678901234565"
        t = system.terminal("TSM40001", "sm4")

        def buy() -> str:
            return t.exchange(t.purchase_msg(pan, 100, pin="123456")).code

        deadline = time.monotonic() + 10
        while buy() != "00":
            assert time.monotonic() < deadline, "the sm4 link never served its BIN"
            time.sleep(0.2)
        system.cli("switch", "link", "rekey", "issuer4")
        deadline = time.monotonic() + 10
        while not system.query(
            "SELECT 1 FROM switch_links WHERE name = 'issuer4' AND rekeyed_at IS NOT NULL"
        ):
            assert time.monotonic() < deadline, system.switch.log()[-3000:]
            assert buy() == "00"
            time.sleep(0.05)
        assert buy() == "00"  # PIN blocks now under the new key, which the issuer took
        assert len(host.changes) == 1 and host.changes[0][0] == host.changes[0][1]
        row = system.query("SELECT zpk, zpk_check FROM switch_links WHERE name = 'issuer4'")[0]
        assert row["zpk"] != zpk and row["zpk"].startswith("S") and row["zpk_check"] == host.changes[0][0]
        t.close()
        system.cli("switch", "link", "remove", "issuer4", "--with-routes")
    finally:
        host.stop()


class _SlowHsm:
    """Enough of SwitchHsm for the gate: translations take ``delay`` and report the key they used."""

    def __init__(self) -> None:
        self.used: list[str] = []

    async def working_key(self, scheme: str, kind: str, tmk: str) -> WorkingKey:
        raise NotImplementedError

    async def pos_mac(self, scheme: str, mak: str, data: bytes) -> bytes:
        return b"MAC"

    async def translate_pin(
        self, src_scheme: str, src_key_type: str, src_key: str, dst_scheme: str, zpk: str, block: bytes,
        account: str,
    ) -> bytes:  # fmt: skip
        await trio.sleep(0.05)
        self.used.append(zpk)
        return zpk.encode()

    async def pos_mac_and_translate_pin(
        self, scheme: str, mak: str, data: bytes, pik: str, dst_scheme: str, zpk: str, block: bytes,
        account: str,
    ) -> tuple[bytes | HsmRefused, bytes | HsmRefused]:  # fmt: skip
        return b"MAC", await self.translate_pin(scheme, "002", pik, dst_scheme, zpk, block, account)

    async def link_mac(self, scheme: str, zak: str, data: bytes) -> bytes:
        return b"MAC"

    async def verify_link_mac(self, zak: str, data: bytes, mac: bytes) -> bool:
        return True

    async def link_macs(self, zak: str, data: list[bytes]) -> list[bytes | None]:
        return [b"MAC" for _ in data]

    async def verify_link_macs(self, zak: str, items: list[tuple[bytes, bytes]]) -> list[bool]:
        return [True for _ in items]


def test_gate_holds_translations_to_the_key_being_changed_and_sends_them_to_the_new_one() -> None:
    async def main() -> None:
        inner = _SlowHsm()
        gate = KeyChangeGate(inner)
        results: dict[str, bytes] = {}

        async def translate(name: str, zpk: str) -> None:
            results[name] = await gate.translate_pin("3des", "002", "P", "3des", zpk, b"", "0" * 12)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(translate, "before", "OLD")  # already in the HSM when the change starts
            await trio.sleep(0.01)
            assert not gate.key_changing("OLD")
            change = gate.begin("OLD")
            # a request that translated before the change and waited for its write-ahead commit sees it
            assert gate.key_changing("OLD") and not gate.key_changing("OTHER")
            nursery.start_soon(translate, "during", "OLD")  # held
            nursery.start_soon(translate, "other", "OTHER")  # another link's key: never held
            assert not await gate.idle("OLD", 0.001)  # "before" is still in the HSM
            assert await gate.idle("OLD", 1.0)
            await trio.sleep(0.1)
            assert results == {"before": b"OLD", "other": b"OTHER"}  # "during" still waits
            gate.end(change, "NEW")
        assert results["during"] == b"NEW" and inner.used.count("OLD") == 1
        assert not gate.key_changing("OLD")

        refused = gate.begin("NEW")  # a change the host refused: held ones go on under the old key
        gate.end(refused, "NEW")
        assert await gate.translate_pin("3des", "002", "P", "3des", "NEW", b"", "0" * 12) == b"NEW"

    trio.run(main)
