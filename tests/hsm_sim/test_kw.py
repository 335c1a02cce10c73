"""KW (verify an ARQC and/or generate an ARPC, project convention: specs/hsm-conventions.md, "Chip
cryptograms: KW"): the worked example frames byte for byte, every mode and error in-process, random
cases against the independent implementation of test_emv (pycryptodome 3DES, gmssl SM4), and the
client methods over the real HSM process. The IMK-AC under the test LMK is computed here too, from
the test LMK's pair 28-29 (key type 109: variant 1), never by hsm_sim."""

from __future__ import annotations

import re
import struct
from pathlib import Path
from typing import Any

import pytest
import trio
from Crypto.Cipher import DES3
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from hsm_sim.client import HsmCommandError, HsmRefused
from specs.tlv import arqc_data
from tests.hsm_sim.helpers import Hsm, gm_sm4
from tests.hsm_sim.test_emv import ref_cryptograms, ref_odd_parity, ref_y, two_key_ok

SPEC = Path(__file__).resolve().parents[2] / "specs" / "hsm-conventions.md"

# The worked example: an IMK-AC (both algorithms use the same 16 bytes), a card, one transaction.
IMK = "9E15204313F7318ACB79B90BD986AD29"
PAN, PSN, ATC = "6212345678901234567", "01", "001C"
CHIP: dict[str, bytes] = {
    "9F02": bytes.fromhex("000000012345"),  # amount 123.45
    "9F03": bytes(6),
    "9F1A": bytes.fromhex("0156"),  # China
    "95": bytes(5),
    "5F2A": bytes.fromhex("0156"),  # CNY
    "9A": bytes.fromhex("260101"),
    "9C": b"\x00",  # purchase
    "9F37": bytes.fromhex("1A2B3C4D"),
    "82": bytes.fromhex("7C00"),
    "9F36": bytes.fromhex(ATC),
    "9F10": bytes.fromhex("07010103A00000"),
}
DATA = arqc_data(CHIP)
ARC = b"00"  # the answer's DE39, approved, in ASCII

# Test LMK pair 28-29 (index 14 of the published set) and key type 109's variant.
PAIR_28_29 = (bytes.fromhex("1A1A1A1A1A1A1A1A"), bytes.fromhex("1C1C1C1C1C1C1C1C"))
VARIANT_1 = 0xA6
SCHEME_U = (0xA6, 0x5A)


def ref_u_token(clear: bytes) -> str:
    """``U``+32H of a 3DES key type 109 under the test LMK (hsm-commands.md "LMK and keys")."""
    left, right = PAIR_28_29
    left = bytes([left[0] ^ VARIANT_1]) + left[1:]
    out = b""
    for i, scheme_variant in enumerate(SCHEME_U):
        key = left + bytes([right[0] ^ scheme_variant]) + right[1:]
        out += DES3.new(key, DES3.MODE_ECB).encrypt(clear[8 * i : 8 * i + 8])
    return "U" + out.hex().upper()


def ref_s_token(clear: bytes) -> str:
    """``S``+32H of an SM4 key type 109 under the test LMK (the pair's 16 bytes, variant in byte 0)."""
    key = PAIR_28_29[0] + PAIR_28_29[1]
    return "S" + gm_sm4(bytes([key[0] ^ VARIANT_1]) + key[1:], clear).hex().upper()


def kw(
    mode: str, scheme: str, imk: str, y: str, atc: str, data: bytes | None, arqc: str, arc: str = ""
) -> bytes:
    """A KW request (after the header), field by field as the conventions file lists them."""
    out = f"KW{mode}{scheme}{imk}{y}{atc}".encode()
    if data is not None:
        out += b"%04X" % len(data) + data
    return out + arqc.encode() + arc.encode()


def frame(body: bytes) -> bytes:
    return struct.pack(">H", len(body)) + body


def wrapped(data: bytes, width: int = 96) -> str:
    text = data.hex().upper()
    return "\n".join(text[i : i + width] for i in range(0, len(text), width))


def example_frames() -> dict[str, bytes]:
    """The worked example's frames (header ``0000``), from the independent implementation."""
    imk = bytes.fromhex(IMK)
    y = ref_y(PAN, PSN).hex()
    frames: dict[str, bytes] = {}
    for name, scheme, alg, token in (
        ("tdes", "1", "3des", ref_u_token(imk)),
        ("sm", "2", "sm4", ref_s_token(imk)),
    ):
        _, _, arqc, arpc = ref_cryptograms(alg, imk, PAN, PSN, bytes.fromhex(ATC), DATA, ARC)
        good = arqc.hex().upper()
        bad = (arqc[:7] + bytes([arqc[7] ^ 0x01])).hex().upper()  # one bit off: a cloned card
        frames[f"kw-{name}-request"] = frame(b"0000" + kw("1", scheme, token, y, ATC, DATA, good, ARC.hex()))
        frames[f"kw-{name}-response"] = frame(b"0000KX00" + arpc.hex().upper().encode())
        frames[f"kw-{name}-bad-request"] = frame(
            b"0000" + kw("1", scheme, token, y, ATC, DATA, bad, ARC.hex())
        )
        frames[f"kw-{name}-bad-response"] = frame(b"0000KX01")
    return frames


def spec_frames() -> dict[str, bytes]:
    text = SPEC.read_text()
    found = re.findall(r"```frame (kw-[a-z-]+)\n([0-9A-F\n]+)```", text)
    return {name: bytes.fromhex(hex_text.replace("\n", "")) for name, hex_text in found}


@pytest.fixture(scope="module")
def hsm() -> Hsm:
    return Hsm()


@pytest.fixture(scope="module")
def tokens(hsm: Hsm) -> dict[str, str]:
    return {"U": hsm.form("109", IMK), "S": hsm.form_sm4("109", IMK)}


# -- the worked example ---------------------------------------------------------------------------------
def test_the_imk_ac_under_the_test_lmk_matches_the_reference(tokens: dict[str, str]) -> None:
    imk = bytes.fromhex(IMK)
    assert ref_odd_parity(imk) == imk
    assert tokens == {"U": ref_u_token(imk), "S": ref_s_token(imk)}
    assert tokens == {"U": "UA67981CE67F36A4BD2DE46BA17D6F596", "S": "SA7F31991E264CB518EC838FEA0EAC6F5"}


def test_worked_example_frames_are_in_the_conventions_file_and_answered_exactly() -> None:
    expected = example_frames()
    assert spec_frames() == expected
    hsm = Hsm()
    for name in ("tdes", "sm", "tdes-bad", "sm-bad"):
        request, response = expected[f"kw-{name}-request"], expected[f"kw-{name}-response"]
        out, label, _error = hsm.engine.execute(request[2:])
        assert (label, out) == ("KW", response[2:]), name


def test_worked_example_values() -> None:
    """The values the conventions file quotes in its prose."""
    imk = bytes.fromhex(IMK)
    assert (
        DATA.hex().upper()
        == "000000012345000000000000015600000000000156260101001A2B3C4D7C00001C07010103A00000"
    )
    tdes = ref_cryptograms("3des", imk, PAN, PSN, bytes.fromhex(ATC), DATA, ARC)
    sm = ref_cryptograms("sm4", imk, PAN, PSN, bytes.fromhex(ATC), DATA, ARC)
    assert [v.hex().upper() for v in tdes] == [
        "B02CEFAB02A1CB436DE6856120BFC47F",
        "62A7BF62E3A1585475E054854C948A80",
        "60EA0CE814615806",
        "153AB59B1AD184F4",
    ]
    assert [v.hex().upper() for v in sm] == [
        "9E699959A6F1FD7C6379E2FD3DE321BA",
        "8D8252677BC0FB017BAC517551EF5D55",
        "027CF01D6305A0B1",
        "72A42AE96B57DC98",
    ]


# -- modes and errors, in-process -------------------------------------------------------------------
Y = ref_y(PAN, PSN).hex()
GOOD = {"U": "60EA0CE814615806", "S": "027CF01D6305A0B1"}
ARPC = {"U": "153AB59B1AD184F4", "S": "72A42AE96B57DC98"}
SCHEME = {"U": "1", "S": "2"}


@pytest.mark.parametrize("letter", ["U", "S"])
def test_modes(hsm: Hsm, tokens: dict[str, str], letter: str) -> None:
    key, scheme, good = tokens[letter], SCHEME[letter], GOOD[letter]
    answer = hsm(kw("0", scheme, key, Y, ATC, DATA, good))
    assert (answer.code, answer.error, answer.fields) == ("KX", "00", "")
    assert hsm.ok(kw("1", scheme, key, Y, ATC, DATA, good, "3030")) == ARPC[letter]
    assert hsm.ok(kw("2", scheme, key, Y, ATC, None, good, "3030")) == ARPC[letter]
    # mode 2 answers any cryptogram: it does not check it (a decline's ARPC for a failed one)
    assert len(hsm.ok(kw("2", scheme, key, Y, ATC, None, "0" * 16, "3035"))) == 16
    # lower-case hex is hex
    assert hsm.ok(kw("1", scheme, key, Y, ATC.lower(), DATA, good.lower(), "3030")) == ARPC[letter]
    # the ARQC fails: a changed byte of data, another ATC, another card, another key
    assert hsm(kw("0", scheme, key, Y, ATC, DATA[:-1] + b"\x01", good)).error == "01"
    assert hsm(kw("0", scheme, key, Y, "001D", DATA, good)).error == "01"
    assert hsm(kw("1", scheme, key, Y, "001D", DATA, good, "3030")).error == "01"
    assert hsm(kw("1", scheme, key, ref_y(PAN, "02").hex(), ATC, DATA, good, "3030")).error == "01"
    other = (
        hsm.form("109", "0123456789ABCDEFFEDCBA9876543210")
        if letter == "U"
        else hsm.form_sm4("109", "0123456789ABCDEFFEDCBA9876543210")
    )
    assert hsm(kw("0", scheme, other, Y, ATC, DATA, good)).error == "01"
    assert hsm(kw("1", scheme, key, Y, ATC, DATA, good[:-1] + "7", "3030")).fields == ""


def test_errors(hsm: Hsm, tokens: dict[str, str]) -> None:
    u, s, good = tokens["U"], tokens["S"], GOOD["U"]

    def err(request: bytes) -> str:
        answer = hsm(request)
        assert answer.code == "KX" and answer.fields == ""
        return answer.error

    # the scheme must match the key's letter; a 3DES IMK is double length (U) only
    assert err(kw("0", "2", u, Y, ATC, DATA, good)) == "26"
    assert err(kw("0", "1", s, Y, ATC, DATA, good)) == "26"
    t_key = hsm.ok("A42109T" + "0123456789ABCDEFFEDCBA9876543210" + "89ABCDEF01234567" + "0" * 48)[:49]
    assert err(kw("0", "1", t_key, Y, ATC, DATA, good)) == "27"
    assert err(kw("0", "1", "0123456789ABCDEF", Y, ATC, DATA, good)) == "27"
    # a 3DES key of another type decrypts to bytes without odd parity (10); an all-zero SM4 key too
    zpk = hsm.form("001", "0123456789ABCDEFFEDCBA9876543210")
    assert err(kw("0", "1", zpk, Y, ATC, DATA, good)) == "10"
    assert err(kw("0", "2", ref_s_token(bytes(16)), Y, ATC, DATA, GOOD["S"])) == "10"
    # data length: 1..255 bytes
    assert err(kw("0", "1", u, Y, ATC, b"", good)) == "80"
    assert err(kw("0", "1", u, Y, ATC, bytes(256), good)) == "80"
    assert err(kw("0", "1", u, Y, ATC, bytes(255), good)) == "01"
    # fields that do not parse
    assert err(kw("3", "1", u, Y, ATC, DATA, good)) == "15"
    assert err(kw("0", "0", u, Y, ATC, DATA, good)) == "15"
    assert err(kw("0", "1", u, "A" * 16, ATC, DATA, good)) == "15"
    assert err(kw("0", "1", u, Y, "00G1", DATA, good)) == "15"
    assert err(kw("0", "1", u, Y, ATC, DATA, good[:-1])) == "15"
    assert err(kw("0", "1", u, Y, ATC, DATA, good) + b"0") == "15"
    assert err(kw("1", "1", u, Y, ATC, DATA, good)) == "15"  # mode 1 needs the ARC
    assert err(kw("1", "1", u, Y, ATC, DATA, good, "30")) == "15"
    assert err(kw("2", "1", u, Y, ATC, DATA, good, "3030")) == "15"  # mode 2 carries no data
    assert err(kw("0", "1", u, Y, ATC, DATA, good, "3030")) == "15"  # mode 0 carries no ARC
    assert err(b"KW01" + u.encode() + Y.encode() + ATC.encode() + b"00FF" + DATA + good.encode()) == "15"
    assert err(b"KW") == "15"
    assert err(kw("0", "1", "X" + u[1:], Y, ATC, DATA, good)) == "26"


# -- random cases against the independent implementation ---------------------------------------------
@settings(max_examples=60, deadline=None)
@given(
    letter=st.sampled_from(["U", "S"]),
    imk=st.binary(min_size=16, max_size=16),
    pan=st.text(alphabet="0123456789", min_size=12, max_size=19),
    psn=st.text(alphabet="0123456789", min_size=2, max_size=2),
    atc=st.binary(min_size=2, max_size=2),
    data=st.binary(min_size=1, max_size=255),
    arc=st.binary(min_size=2, max_size=2),
)
def test_kw_matches_the_independent_implementation(
    letter: str, imk: bytes, pan: str, psn: str, atc: bytes, data: bytes, arc: bytes
) -> None:
    hsm = HSM
    if letter == "U":
        imk = ref_odd_parity(imk)
        assume(two_key_ok(imk))
        mk, sk, arqc, arpc = ref_cryptograms("3des", imk, pan, psn, atc, data, arc)
        assume(two_key_ok(mk) and two_key_ok(sk))
        key = ref_u_token(imk)
    else:
        assume(any(imk))
        mk, sk, arqc, arpc = ref_cryptograms("sm4", imk, pan, psn, atc, data, arc)
        key = ref_s_token(imk)
    scheme, y = SCHEME[letter], ref_y(pan, psn).hex()
    assert hsm.ok(kw("1", scheme, key, y, atc.hex(), data, arqc.hex(), arc.hex())) == arpc.hex().upper()
    assert hsm.ok(kw("2", scheme, key, y, atc.hex(), None, arqc.hex(), arc.hex())) == arpc.hex().upper()
    wrong = bytes([arqc[0] ^ 0x80]) + arqc[1:]
    assert hsm(kw("0", scheme, key, y, atc.hex(), data, wrong.hex())).error == "01"


HSM = Hsm()


# -- the client over the real HSM process ------------------------------------------------------------
def test_client_methods_over_the_service(hsm_server: Any) -> None:
    imk = bytes.fromhex(IMK)

    async def main() -> None:
        async with hsm_server.client() as client:
            # custodian entry from clear components, both algorithms
            half = "0" * 32
            u = await client.form_key("109", [IMK, half])
            s = await client.form_sm4_key("109", [IMK, half])
            assert (u.under_lmk, s.under_lmk) == (ref_u_token(imk), ref_s_token(imk))
            for key, alg in ((u.under_lmk, "3des"), (s.under_lmk, "sm4")):
                _, _, arqc, arpc = ref_cryptograms(alg, imk, PAN, PSN, bytes.fromhex(ATC), DATA, ARC)
                atc = bytes.fromhex(ATC)
                assert await client.verify_arqc(key, PAN, PSN, atc, DATA, arqc) is None
                assert await client.verify_arqc(key, PAN, PSN, atc, DATA, arqc, ARC) == arpc
                assert await client.arpc(key, PAN, PSN, atc, arqc, ARC) == arpc
                declined = await client.arpc(key, PAN, PSN, atc, arqc, b"51")
                assert declined != arpc and len(declined) == 8
                with pytest.raises(HsmRefused) as refused:
                    await client.verify_arqc(key, PAN, PSN, atc, DATA, bytes(8), ARC)
                assert refused.value.code == "01" and isinstance(refused.value, HsmCommandError)
                with pytest.raises(HsmRefused):
                    await client.verify_arqc(key, PAN, "02", atc, DATA, arqc)
            # generated IMK-ACs work the same way (A0, WI), and a key of the other scheme is 26
            generated = await client.generate_key("109", "U")
            sm4_generated = await client.generate_sm4_key("109")
            for key in (generated.under_lmk, sm4_generated.under_lmk):
                with pytest.raises(HsmRefused):
                    await client.verify_arqc(key, PAN, PSN, b"\x00\x01", DATA, bytes(8))
                assert len(await client.arpc(key, PAN, PSN, b"\x00\x01", bytes(8), ARC)) == 8
            with pytest.raises(HsmCommandError) as wrong:
                await client.verify_arqc(
                    "T" + generated.under_lmk[1:] + "0" * 16, PAN, PSN, b"\x00\x01", DATA, bytes(8)
                )
            assert wrong.value.code == "27"
            with pytest.raises(HsmCommandError) as too_long:
                await client.verify_arqc(u.under_lmk, PAN, PSN, b"\x00\x01", bytes(256), bytes(8))
            assert too_long.value.code == "80"
            with pytest.raises(ValueError):
                await client.verify_arqc(u.under_lmk, PAN, PSN, b"\x01", DATA, bytes(8))
            with pytest.raises(ValueError):
                await client.arpc(u.under_lmk, PAN, PSN, b"\x00\x01", bytes(8), b"0")
            with pytest.raises(ValueError):
                await client.verify_arqc(u.under_lmk, "62123456789X", PSN, b"\x00\x01", DATA, bytes(8))

    trio.run(main)
