"""SM2 (hsm_sim.sm2) against gmssl as the independent implementation, both ways; the SK / SP commands
in-process and over the real HSM process; the worked example of specs/hsm-conventions.md."""

from __future__ import annotations

import re
import struct
from pathlib import Path
from typing import Any

import pytest
import trio
from gmssl import sm3 as gm_sm3
from gmssl.sm2 import CryptSM2, default_ecc_table
from hypothesis import given, settings
from hypothesis import strategies as st

from hsm_sim import pin, sm2
from hsm_sim.cmd_sm2 import private_token
from hsm_sim.lmk import Lmk, key_type
from tests.hsm_sim.helpers import Hsm, ecb, gm_sm4

ACCOUNT = "567890123456"
PVK_CLEAR = "1023456789ABCDEF0123456789ABCDE0"
SPEC = Path(__file__).resolve().parents[2] / "specs" / "hsm-conventions.md"
TEST_PAIR_34_35 = bytes.fromhex("2A2A2A2A2A2A2A2A2C2C2C2C2C2C2C2C")  # test LMK pair 34-35 (SM4 LMK)


def gm(d: int | None, public: bytes) -> CryptSM2:
    """gmssl in C1C3C2 mode. It takes the public key as x ‖ y hex (no 04) and its C1 without 04."""
    return CryptSM2(private_key=None if d is None else f"{d:064x}", public_key=public[1:].hex(), mode=1)


def keypair() -> tuple[int, bytes]:
    # gmssl's CryptSM2 lstrip("04")s a key starting "04": an x whose hex starts with 0 or 4 would be
    # cut short there. Keys it would mangle are drawn again (a gmssl quirk, not an SM2 property).
    while True:
        d, public = sm2.generate_keypair()
        if public[1:].hex()[0] not in "04":
            return d, public


KEYS = [keypair() for _ in range(3)]


def gm_public(d: int) -> bytes:
    g = CryptSM2(private_key=f"{d:064x}", public_key="00" * 64, mode=1)
    return b"\x04" + bytes.fromhex(g._kg(d, default_ecc_table["g"]))


# -- the primitive ---------------------------------------------------------------------------------
def test_sm3_and_public_key_match_gmssl() -> None:
    assert sm2.sm3(b"abc").hex() == gm_sm3.sm3_hash(list(b"abc"))
    for d, public in KEYS:
        assert gm_public(d) == public
        assert sm2.decode_point(public) is not None


@settings(max_examples=25, deadline=None)
@given(message=st.binary(min_size=1, max_size=80), which=st.integers(0, len(KEYS) - 1))
def test_gmssl_decrypts_ours(message: bytes, which: int) -> None:
    d, public = KEYS[which]
    ct = sm2.encrypt(public, message)
    assert ct[0] == 4 and len(ct) == 65 + 32 + len(message)
    assert gm(d, public).decrypt(ct[1:]) == message


@settings(max_examples=25, deadline=None)
@given(message=st.binary(min_size=1, max_size=80), which=st.integers(0, len(KEYS) - 1))
def test_we_decrypt_gmssl(message: bytes, which: int) -> None:
    d, public = KEYS[which]
    assert sm2.decrypt(d, b"\x04" + gm(None, public).encrypt(message)) == message


@settings(max_examples=20, deadline=None)
@given(message=st.binary(min_size=1, max_size=200), k=st.integers(1, sm2.N - 1))
def test_round_trip(message: bytes, k: int) -> None:
    d, public = KEYS[0]
    assert sm2.decrypt(d, sm2.encrypt(public, message, k)) == message


@settings(max_examples=20, deadline=None)
@given(position=st.integers(65, 65 + 32 + 16 - 1), bit=st.integers(0, 7))
def test_altered_c3_or_c2_is_refused(position: int, bit: int) -> None:
    d, public = KEYS[0]
    ct = bytearray(sm2.encrypt(public, bytes(16)))
    ct[position] ^= 1 << bit
    with pytest.raises(sm2.DecryptionFailed):
        sm2.decrypt(d, bytes(ct))


def test_c1_must_be_on_the_curve_and_the_key_right() -> None:
    d, public = KEYS[0]
    ct = sm2.encrypt(public, b"0123456789ABCDEF")
    off = bytearray(ct)
    off[64] ^= 1  # y changed: not on the curve
    for bad in (bytes(off), b"\x02" + ct[1:], ct[:97], b"\x04" + bytes(64) + ct[65:]):
        with pytest.raises(sm2.MalformedCiphertext):
            sm2.decrypt(d, bad)
    with pytest.raises(sm2.DecryptionFailed):
        sm2.decrypt(KEYS[1][0], ct)
    with pytest.raises(sm2.InvalidKey):
        sm2.public_key(sm2.N - 1)


# -- SK / SP in-process ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def hsm() -> Hsm:
    return Hsm()


@pytest.fixture(scope="module")
def pvk(hsm: Hsm) -> str:
    return hsm.form("002", PVK_CLEAR)


def _reference_pvv(pin_digits: str, pvki: str = "1") -> str:
    out = ecb(PVK_CLEAR).encrypt(bytes.fromhex(ACCOUNT[-11:] + pvki + pin_digits[:4])).hex().upper()
    digits = [c for c in out if c.isdigit()] + [str(int(c, 16) - 10) for c in out if not c.isdigit()]
    return "".join(digits[:4])


def _reference_lmk_pin(pin_digits: str) -> str:
    pair = bytes.fromhex("20202020202020203131313131313131")  # test LMK pair 02-03
    enc: bytes = ecb(pair.hex()).encrypt(bytes.fromhex(pin_digits.ljust(32, "F")))
    return "L" + enc.hex().upper()


def _plain(pin_digits: str, stamp: int, account: str = ACCOUNT) -> bytes:
    return pin.encode(pin_digits, account) + stamp.to_bytes(8, "big")


def _sp(private: str, pvk: str, ct: bytes, account: str = ACCOUNT, pvki: str = "1") -> str:
    return f"SP{private}{pvk}{2 * len(ct):04X}{ct.hex().upper()}{account}{pvki}"


def test_sk_layout(hsm: Hsm) -> None:
    out = hsm.ok("SK1")
    assert len(out) == 97 + 130 + 16 and out[0] == "P" and out[97:99] == "04"
    public = bytes.fromhex(out[97:227])
    assert sm2.decode_point(public) is not None
    assert out[227:] == sm2.sm3(public)[:8].hex().upper()
    clear = gm_sm4(TEST_PAIR_34_35, bytes.fromhex(out[1:97]), decrypt=True)
    assert gm_public(int.from_bytes(clear[:32], "big")) == public
    assert hsm("SK2").error == "29" and hsm("SK").error == "15" and hsm("SK1X").error == "15"


def test_sp_gmssl_ciphertext_to_pvv(hsm: Hsm, pvk: str) -> None:
    out = hsm.ok("SK1")
    private, public = out[:97], bytes.fromhex(out[97:227])
    if public[1:].hex()[0] in "04":  # the gmssl quirk of keypair()
        public_ct = sm2.encrypt(public, _plain("9876", 1_700_000_000))
    else:
        public_ct = b"\x04" + gm(None, public).encrypt(_plain("9876", 1_700_000_000))
    answer = hsm.ok(_sp(private, pvk, public_ct))
    assert answer[:4] == _reference_pvv("9876")
    assert answer[4:37] == _reference_lmk_pin("9876")
    assert int(answer[37:], 16) == 1_700_000_000
    # the PIN under LMK is one DG accepts: the same PVV again
    assert hsm.ok(f"DG{pvk}{answer[4:37]}{ACCOUNT}1") == answer[:4]


def test_sp_errors(hsm: Hsm, pvk: str) -> None:
    lmk = Lmk.test_set()
    d, public = KEYS[0]
    private = private_token(hsm.engine.keys, d, public).decode()
    good = sm2.encrypt(public, _plain("1234", 1))
    assert hsm(_sp(private, pvk, good)).error == "00"
    altered = bytearray(good)
    altered[70] ^= 0x01  # C3
    assert hsm(_sp(private, pvk, bytes(altered))).error == "01"
    off_curve = bytearray(good)
    off_curve[64] ^= 0x01
    assert hsm(_sp(private, pvk, bytes(off_curve))).error == "15"
    assert hsm(_sp(private, pvk, sm2.encrypt(public, _plain("1234", 1) + b"x"))).error == "15"  # length
    assert hsm(_sp(private, pvk, sm2.encrypt(KEYS[1][1], _plain("1234", 1)))).error == "01"  # other key
    assert hsm(_sp(private, pvk, sm2.encrypt(public, b"\xff" * 16))).error == "20"  # not format 0
    long_pin = bytes.fromhex("0D1234567890123F")  # 13 digits
    long_block = bytes(a ^ b for a, b in zip(long_pin, pin.account_field(ACCOUNT), strict=True))
    assert hsm(_sp(private, pvk, sm2.encrypt(public, long_block + bytes(8)))).error == "24"
    # a block made for another account does not decode for this one
    other = sm2.encrypt(public, _plain("1234", 1, account="111111111111"))
    assert hsm(_sp(private, pvk, other)).error == "20"
    forged = "P" + lmk.encrypt_sm4_key(key_type("00C"), bytes(range(1, 49))).hex().upper()
    assert hsm(_sp(forged, pvk, good)).error == "10"
    assert hsm(_sp(private, "U" + "0" * 32, good)).error == "11"
    assert hsm(_sp(private, pvk[1:17], good)).error == "27"
    assert hsm(_sp(private[1:], pvk, good)).error == "15"
    assert hsm(_sp(private, pvk, good, account=ACCOUNT[:-1])).error == "15"
    assert hsm(_sp(private, pvk, good) + "0").error == "15"
    assert hsm(f"SP{private}{pvk}00E2ZZ").error == "15"


# -- the worked example -----------------------------------------------------------------------------
def _frames() -> dict[str, bytes]:
    text = SPEC.read_text()
    found = re.findall(r"```frame ([a-z-]+)\n([0-9A-F\n]+)```", text)
    return {name: bytes.fromhex(hex_text.replace("\n", "")) for name, hex_text in found}


def _body(frame: bytes) -> bytes:
    (length,) = struct.unpack(">H", frame[:2])
    assert length == len(frame) - 2
    return frame[2:]


def test_worked_example() -> None:
    frames = _frames()
    assert set(frames) >= {"sk-request", "sk-response", "sp-request", "sp-response"}
    hsm = Hsm()
    assert _body(frames["sk-request"]) == b"0000SK1"
    sk = _body(frames["sk-response"]).decode()
    assert sk[:8] == "0000SL00"
    token, public_hex, check = sk[8:105], sk[105:235], sk[235:]
    clear = gm_sm4(TEST_PAIR_34_35, bytes.fromhex(token[1:]), decrypt=True)
    d = int.from_bytes(clear[:32], "big")
    public = gm_public(d)
    assert public.hex().upper() == public_hex
    assert check == gm_sm3.sm3_hash(list(public))[:16].upper()
    assert clear[32:].hex() == gm_sm3.sm3_hash(list(public))[:32]

    sp = _body(frames["sp-request"]).decode()
    assert sp[:6] == "0000SP" and sp[6:103] == token
    pvk, length = sp[103:136], int(sp[136:140], 16)
    ct = bytes.fromhex(sp[140 : 140 + length])
    account, pvki = sp[140 + length : 152 + length], sp[152 + length :]
    assert pvk == hsm.form("002", PVK_CLEAR) and (account, pvki) == (ACCOUNT, "1")
    m = CryptSM2(private_key=f"{d:064x}", public_key=public[1:].hex(), mode=1).decrypt(ct[1:])
    assert m == _plain("246810", 1767225600)

    expected = f"0000SQ00{_reference_pvv('246810')}{_reference_lmk_pin('246810')}{1767225600:016X}"
    assert _body(frames["sp-response"]).decode() == expected
    out, _label, error = hsm.engine.execute(_body(frames["sp-request"]))
    assert error == "00" and out == _body(frames["sp-response"])


# -- over the real HSM process ---------------------------------------------------------------------
def test_client_over_the_service(hsm_server: Any) -> None:
    async def main() -> None:
        async with hsm_server.client() as hsm:
            pair = await hsm.generate_sm2_key()
            public = bytes.fromhex(pair.public_key)
            assert pair.check_value == sm2.key_check_value(public).hex().upper()
            pvk = (await hsm.form_key("002", [PVK_CLEAR, "0" * 32], "U")).under_lmk
            ct = sm2.encrypt(public, _plain("864200", 1_800_000_000))
            got = await hsm.sm2_pin_to_pvv(pair.private_key, pvk, ct, ACCOUNT, "1")
            assert got.pvv == _reference_pvv("864200") and got.stamp == 1_800_000_000
            assert await hsm.generate_pvv(pvk, got.pin_under_lmk, ACCOUNT, "1") == got.pvv
            reply = await hsm.request("SP", _sp(pair.private_key, pvk, ct[:-1] + b"\x00")[2:])
            assert reply.error == "01"

    trio.run(main)
