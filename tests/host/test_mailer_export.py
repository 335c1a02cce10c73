"""The PIN-mailer key for a card producer: ZMK from components, export (A8 / ST), the producer's side.

The issuer registers a producer's ZMK from known test components and issues cards with ``--producer``;
then the test plays the producer: it forms the same ZMK from the same components in "its" HSM (the same
HSM process stands in for it), imports the exported key (A6 / SV), checks the check value, decrypts the
PAN fields of the mailer file (M2) and gets back the PANs `card issue` printed. The same is done with the
pure crypto (hsm_sim.crypto), so the key's wire form under the ZMK is checked independently too.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import trio

from hsm_sim import crypto
from tests.host.helpers import cli_env, ok, run

# Test components only. 3DES: the contract's worked-example key XOR 11..11 (each 0x11 byte has even
# parity, so the XOR keeps the key's odd parity): the ZMK is 1032547698BADCFEEFCDAB8967452301.
DES_COMPONENTS = ["0123456789ABCDEFFEDCBA9876543210", "11" * 16]
SM4_COMPONENTS = ["0123456789ABCDEFFEDCBA9876543210", "00112233445566778899AABBCCDDEEFF"]
PIN = "135790"


@pytest.fixture(scope="module")
def env(db_url: str, hsm_server: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return cli_env(tmp_path_factory.mktemp("mailerexport"), db_url, hsm_server.env)


def _xor(parts: list[str]) -> bytes:
    out = bytes(16)
    for p in parts:
        out = crypto.xor(out, bytes.fromhex(p))
    return out


def _read_mailer(path: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    lines = [json.loads(line) for line in Path(path).read_text().splitlines()]
    assert lines[0]["record"] == "header"
    return lines[0], lines[1:]


def _clear_pan(clear: bytes) -> str:
    return clear.rstrip(b"\0").decode()


async def _hsm_pans(hsm: Any, key_lmk: str, rows: list[dict[str, Any]]) -> list[str]:
    """The producer's HSM decrypting each row's PAN (M2) under the imported mailer key."""
    out = []
    for r in rows:
        iv, ct = r["pan_under_mailer_key"].split(":")
        out.append(_clear_pan(await hsm.decrypt_data(key_lmk, bytes.fromhex(ct), iv=bytes.fromhex(iv))))
    return out


def test_producer_decrypts_the_mailer_pans(env: dict[str, str], hsm_server: Any) -> None:
    ok(env, "product", "add", "MAIL", "--kind", "reloadable", "--bin", "621260", "--pan-length", "16")
    add = ("host", "producer", "add", "BUREAU1", "--zmk-components", "2")
    components = "\n".join(DES_COMPONENTS) + "\n"
    added = ok(env, *add, input=components)
    zmk_clear = _xor(DES_COMPONENTS)
    assert added["zmk_check_value"] == crypto.des_check_value(zmk_clear).hex().upper()[:6]
    again = run(env, *add, input=components)
    assert again.exit_code == 1 and "already exists" in again.output and "Traceback" not in again.output
    # a component is never echoed and never printed back
    assert all(c not in again.output for c in DES_COMPONENTS)

    issued = ok(
        env, "card", "issue", "--product", "MAIL", "--count", "2", "--pin", PIN, "--producer", "BUREAU1"
    )
    pans = [c["pan"] for c in issued["cards"]]
    text = Path(issued["mailer"]).read_text()
    assert all(p not in text for p in pans) and PIN not in text
    assert all(c not in text.upper() for c in DES_COMPONENTS) and zmk_clear.hex().upper() not in text.upper()
    header, rows = _read_mailer(issued["mailer"])
    assert header["producer"] == "BUREAU1" and header["scheme"] == "3des" and header["cards"] == 2
    assert [r["card_id"] for r in rows] == [c["card_id"] for c in issued["cards"]]

    exported = ok(env, "host", "producer", "export-mailer-key", "BUREAU1")
    assert exported["mailer_key_under_zmk"] == header["mailer_key_under_zmk"]
    assert exported["mailer_key_check_value"] == header["mailer_key_check_value"]
    assert exported["zmk_check_value"] == added["zmk_check_value"] == header["zmk_check_value"]

    # The producer with its own HSM: A4 the same components into its ZMK, A6 the key, M2 the PANs.
    async def producer_hsm() -> list[str]:
        async with hsm_server.client() as hsm:
            zmk = await hsm.form_key("000", DES_COMPONENTS, "U")
            key = await hsm.import_key("00A", zmk.under_lmk, header["mailer_key_under_zmk"], "U")
            assert key.check_value[:6] == header["mailer_key_check_value"]
            return await _hsm_pans(hsm, key.under_lmk, rows)

    assert trio.run(producer_hsm) == pans

    # The same with the pure crypto: scheme U = the ZMK with variants A6, 5A on its right key's first byte.
    under = bytes.fromhex(header["mailer_key_under_zmk"][1:])
    assert header["mailer_key_under_zmk"][0] == "U"
    halves = []
    for i, variant in enumerate((0xA6, 0x5A)):
        kek = zmk_clear[:8] + bytes([zmk_clear[8] ^ variant]) + zmk_clear[9:]
        halves.append(crypto.des(kek).decrypt(under[8 * i : 8 * i + 8]))
    mailer_key = b"".join(halves)
    assert crypto.des_check_value(mailer_key).hex().upper()[:6] == header["mailer_key_check_value"]
    for r, pan in zip(rows, pans, strict=True):
        iv, ct = r["pan_under_mailer_key"].split(":")
        assert _clear_pan(crypto.des(mailer_key).cbc_decrypt(bytes.fromhex(ct), bytes.fromhex(iv))) == pan

    listed = ok(env, "host", "producer", "list")
    assert listed == [{"name": "BUREAU1", "scheme": "3des", "zmk_check_value": added["zmk_check_value"]}]


def test_sm4_producer(env: dict[str, str], hsm_server: Any) -> None:
    ok(env, "product", "add", "MAILS", "--kind", "reloadable", "--bin", "621261")
    ok(
        env,
        "host",
        "producer",
        "add",
        "BUREAU2",
        "--scheme",
        "sm4",
        "--zmk-components",
        "2",
        input="\n".join(SM4_COMPONENTS) + "\n",
    )
    issued = ok(env, "card", "issue", "--product", "MAILS", "--count", "2", "--producer", "BUREAU2")
    pans = [c["pan"] for c in issued["cards"]]
    header, rows = _read_mailer(issued["mailer"])
    assert header["scheme"] == "sm4" and len(header["mailer_key_under_zmk"]) == 32

    async def producer_hsm() -> list[str]:
        async with hsm_server.client() as hsm:
            zmk = await hsm.form_sm4_key("000", SM4_COMPONENTS)
            key = await hsm.import_sm4_key("00A", zmk.under_lmk, header["mailer_key_under_zmk"])
            assert key.check_value[:6] == header["mailer_key_check_value"]
            return await _hsm_pans(hsm, key.under_lmk, rows)

    assert trio.run(producer_hsm) == pans
    mailer_key = crypto.sm4(_xor(SM4_COMPONENTS)).decrypt(bytes.fromhex(header["mailer_key_under_zmk"]))
    for r, pan in zip(rows, pans, strict=True):
        iv, ct = r["pan_under_mailer_key"].split(":")
        assert _clear_pan(crypto.sm4(mailer_key).cbc_decrypt(bytes.fromhex(ct), bytes.fromhex(iv))) == pan


def test_operator_mistakes(env: dict[str, str]) -> None:
    bad = run(env, "host", "producer", "add", "BAD", "--zmk-components", "2", input="00\n11\n")
    assert bad.exit_code == 1 and "32 hexadecimal" in bad.output
    parity = run(
        env, "host", "producer", "add", "BAD", "--zmk-components", "2", input=f"{'00' * 16}\n{'11' * 16}\n"
    )
    assert parity.exit_code == 1 and "parity" in parity.output
    unknown = run(env, "host", "producer", "export-mailer-key", "NOBODY")
    assert unknown.exit_code == 1 and "no producer NOBODY" in unknown.output
    issue = run(env, "card", "issue", "--product", "MAILS", "--producer", "NOBODY")
    assert issue.exit_code == 1 and "no producer NOBODY" in issue.output
