"""Each command's layout and error codes, against the in-process engine (test LMK)."""

from __future__ import annotations

import pytest

from hsm_sim import crypto, pin
from hsm_sim.lmk import Lmk, key_type
from tests.hsm_sim.helpers import TMK, ZERO32, Hsm, ecb, gm_sm4

ACCOUNT = "567890123456"
PIK = "1023456789ABCDEF0123456789ABCDE0"
EVEN = "0023456789ABCDEFFEDCBA9876543210"  # first byte 00: even parity


@pytest.fixture(scope="module")
def hsm() -> Hsm:
    return Hsm()


@pytest.fixture(scope="module")
def k(hsm: Hsm) -> dict[str, str]:
    """Keys under the test LMK, from known clear values."""
    lmk = Lmk.test_set()
    bad_tpk = "U" + lmk.encrypt_des_key(key_type("002"), "U", bytes.fromhex(EVEN)).hex().upper()
    bad_zpk = "U" + lmk.encrypt_des_key(key_type("001"), "U", bytes.fromhex(EVEN)).hex().upper()
    return {
        "zmk": hsm.form("000", TMK),
        "tmk": hsm.form("002", TMK),
        "tpk": hsm.form("002", PIK),
        "zpk": hsm.form("001", TMK),
        "zpk2": hsm.form("001", PIK),
        "tak": hsm.form("003", TMK),
        "zak": hsm.form("008", TMK),
        "dk": hsm.form("00A", TMK),
        "pvk": hsm.form("002", PIK),
        "tmk_t": hsm.form("002", TMK + "89ABCDEF01234567"),
        "s_zmk": hsm.form_sm4("000", TMK),
        "s_tmk": hsm.form_sm4("002", TMK),
        "s_zpk": hsm.form_sm4("001", TMK),
        "s_tpk": hsm.form_sm4("002", PIK),
        "s_mak": hsm.form_sm4("003", TMK),
        "s_dk": hsm.form_sm4("00A", TMK),
        "mak_z": hsm.import_z("003", hsm.form("002", TMK), "289EC8E772237F20"),
        "bad_tpk": bad_tpk,
        "bad_zpk": bad_zpk,
    }


def err(hsm: Hsm, request: str | bytes) -> str:
    answer = hsm(request)
    if answer.error != "00":
        assert answer.fields == "", answer  # nothing follows an error code
    return answer.error


# -- framing ------------------------------------------------------------------------------------------
def test_response_codes(hsm: Hsm) -> None:
    assert hsm("NC").code == "ND"
    assert hsm("A0").code == "A1"
    assert hsm("WI").code == "WJ"
    assert hsm("CA").code == "CB"
    assert hsm("??") == hsm("ZZ")
    assert hsm("??").code == "ZZ" and hsm("??").error == "68"


def test_header_echoed_and_configurable() -> None:
    for length in (0, 4, 8):
        h = Hsm(length)
        assert h.raw(b"NC")[:4] == b"ND00"


def test_lower_case_hex_accepted_upper_case_out(hsm: Hsm, k: dict[str, str]) -> None:
    out = hsm.ok(f"A42002U{TMK.lower()}{ZERO32}")
    assert out == out.upper()
    assert hsm.ok(f"BU021{k['tmk'].lower().replace('u', 'U', 1)}") == "08D7B4FB629D0885"


def test_trailing_bytes_are_15(hsm: Hsm) -> None:
    assert err(hsm, "NCX") == "15"
    assert err(hsm, "B20002abc") == "15"
    assert err(hsm, "B20004abc") == "15"


# -- NC, B2 -------------------------------------------------------------------------------------------
def test_nc(hsm: Hsm) -> None:
    out = hsm.ok("NC")
    left, right = bytes.fromhex("0101010101010101"), bytes.fromhex("7902CD1FD36EF8BA")
    assert out[:16] == ecb((left + right).hex()).encrypt(bytes(8)).hex().upper()
    assert len(out) == 25


def test_b2(hsm: Hsm) -> None:
    assert hsm.ok("B2000Aabcdefghij") == "abcdefghij"
    assert hsm.ok("B20000") == ""
    assert err(hsm, "B2000G") == "15"
    assert err(hsm, "B2") == "15"


# -- A0 -----------------------------------------------------------------------------------------------
def test_a0_layouts(hsm: Hsm, k: dict[str, str]) -> None:
    assert len(hsm.ok("A00002U")) == 33 + 16
    assert len(hsm.ok("A00002T")) == 49 + 16
    assert len(hsm.ok("A00003Z")) == 16 + 16
    out = hsm.ok(f"A01001U;0{k['zmk']}U")
    assert out[33] == "U" and len(out) == 33 + 33 + 16
    under_lmk, under_zmk = out[:33], out[33:66]
    assert hsm.ok(f"A6001{k['zmk']}{under_zmk}U")[:33] == under_lmk


def test_a0_errors(hsm: Hsm, k: dict[str, str]) -> None:
    assert err(hsm, "A00999U") == "04"
    assert err(hsm, "A00002S") == "26"
    assert err(hsm, "A00002X") == "26"
    assert err(hsm, "A02002U") == "15"
    assert err(hsm, f"A01002U{k['tmk']}X") == "15"  # no ';'
    assert err(hsm, f"A01002U;1{k['tmk']}S") == "26"
    assert err(hsm, f"A01002U;1{k['tmk']}Z") == "27"  # double key exported as single
    assert err(hsm, f"A01003Z;1{k['tmk']}X") == "27"
    assert err(hsm, f"A01002U;1{k['bad_tpk']}X") == "10"
    assert err(hsm, f"A01002U;1{k['s_tmk']}X") == "26"
    assert err(hsm, f"A01002U;2{k['tmk']}X") == "15"


def test_generated_keys_are_odd_parity_and_distinct(hsm: Hsm) -> None:
    lmk = Lmk.test_set()
    seen = set()
    for _ in range(20):
        token = hsm.ok("A00001U")[:33]
        clear = lmk.decrypt_des_key(key_type("001"), "U", bytes.fromhex(token[1:]))
        assert crypto.has_odd_parity(clear) and clear[:8] != clear[8:]
        seen.add(clear)
    assert len(seen) == 20


# -- A4 / A6 / A8 -------------------------------------------------------------------------------------
def test_a4(hsm: Hsm) -> None:
    c1 = "11111111111111111111111111111111"
    c2 = crypto.xor(bytes.fromhex(TMK), bytes.fromhex(c1)).hex().upper()
    c3 = ZERO32
    assert hsm.ok(f"A43002U{c1}{c2}{c3}")[33:] == "08D7B4FB629D0885"
    assert err(hsm, f"A41002U{TMK}") == "15"
    assert err(hsm, "A40002U") == "15"
    assert err(hsm, f"A42002U{TMK}") == "15"  # one component short
    assert err(hsm, f"A42002U{TMK}{TMK}") == "10"  # all zero
    assert err(hsm, f"A42002U{EVEN}{ZERO32}") == "10"
    assert err(hsm, f"A42002S{TMK}{ZERO32}") == "26"
    assert err(hsm, f"A42ZZZU{TMK}{ZERO32}") == "04"
    assert err(hsm, f"A42002U{TMK[:-1]}G{ZERO32}") == "15"


def test_a6_a8(hsm: Hsm, k: dict[str, str]) -> None:
    # X: plain ECB under the ZMK, as a terminal / other party computes it
    under = ecb(TMK).encrypt(bytes.fromhex(PIK)).hex().upper()
    out = hsm.ok(f"A6001{k['zmk']}X{under}U")
    assert out[:33] == k["zpk2"] and out[33:] == hsm.ok(f"BU011{k['zpk2']}")
    assert hsm.ok(f"A8001{k['zmk']}{k['zpk2']}X") == f"X{under}{out[33:]}"
    # U: variants on the ZMK; round trip, and differs from X
    u = hsm.ok(f"A8001{k['zmk']}{k['zpk2']}U")[:33]
    assert u != "X" + under and hsm.ok(f"A6001{k['zmk']}{u}U")[:33] == k["zpk2"]
    # T keys: T/Y under the ZMK
    t = hsm.ok("A00002T")[:49]
    y = hsm.ok(f"A8002{k['zmk']}{t}Y")[:49]
    assert hsm.ok(f"A6002{k['zmk']}{y}T")[:49] == t
    # errors
    assert err(hsm, f"A6001{k['zmk']}X{under}T") == "27"
    assert err(hsm, f"A6001{k['zmk']}X{under}Z") == "27"
    assert err(hsm, f"A6001{k['zmk']}X{under}S") == "26"
    bad = ecb(TMK).encrypt(bytes.fromhex(EVEN)).hex().upper()
    assert err(hsm, f"A6001{k['zmk']}X{bad}U") == "11"
    assert err(hsm, f"A6001{k['bad_tpk']}X{under}U;1") == "10"
    assert err(hsm, f"A6001{k['zmk']}S{under}U") == "26"
    assert err(hsm, f"A8001{k['zmk']}{k['bad_zpk']}X") == "11"
    assert err(hsm, f"A8001{k['zmk']}{k['zpk2']}Q") == "26"
    assert err(hsm, f"A8001{k['zmk']}{k['zpk2']}Z") == "27"
    assert err(hsm, f"A8001{k['zmk']}{k['zpk2']}") == "15"
    assert err(hsm, f"A8001{k['zmk']}{k['s_zpk']}X") == "26"


def test_zmk_key_type_matters(hsm: Hsm, k: dict[str, str]) -> None:
    """A TMK (002) used where a ZMK (000) is expected decrypts to a different (here bad-parity) key."""
    assert err(hsm, f"A8001{k['tmk']}{k['zpk2']}X") == "10"


# -- BU -----------------------------------------------------------------------------------------------
def test_bu(hsm: Hsm, k: dict[str, str]) -> None:
    assert hsm.ok(f"BU021{k['tmk']}") == "08D7B4FB629D0885"
    assert hsm.ok(f"BUFF1{k['tmk']};002") == "08D7B4FB629D0885"
    assert hsm.ok(f"BU030{k['mak_z']}")[:8] == "92A3A5EE"
    assert hsm.ok(f"BU021{k['s_tmk']}") == gm_sm4(bytes.fromhex(TMK), bytes(16))[:8].hex().upper()
    cvk = hsm.form("402", TMK)
    assert hsm.ok(f"BUFF1{cvk};402") == "08D7B4FB629D0885"
    assert err(hsm, f"BU021{cvk}") == "10"  # variant 0 of pair 14-15 is not the 402 variant
    assert err(hsm, f"BU023{k['tmk']}") == "05"
    assert err(hsm, f"BU020{k['tmk']}") == "05"
    assert err(hsm, f"BU022{k['tmk']}") == "05"
    assert err(hsm, f"BUZZ1{k['tmk']}") == "04"
    assert err(hsm, f"BUFF1{k['tmk']}") == "15"
    assert err(hsm, f"BU021{k['bad_tpk']}") == "10"


# -- PIN ----------------------------------------------------------------------------------------------
def _blk(key_hex: str, p: str, fmt: str = "01") -> str:
    return ecb(key_hex).encrypt(pin.encode(p, ACCOUNT, fmt)).hex().upper()


def test_ca_formats(hsm: Hsm, k: dict[str, str]) -> None:
    for src in ("01", "05", "47"):
        for dst in ("01", "05", "47"):
            out = hsm.ok(f"CA{k['tpk']}{k['zpk']}12{_blk(PIK, '98765432', src)}{src}{dst}{ACCOUNT}")
            assert out[:2] == "08" and out[18:] == dst
            clear = ecb(TMK).decrypt(bytes.fromhex(out[2:18]))
            assert pin.decode(clear, ACCOUNT, dst) == "98765432"


def test_ca_cc_errors(hsm: Hsm, k: dict[str, str]) -> None:
    good = _blk(PIK, "1234")
    assert err(hsm, f"CA{k['tpk']}{k['zpk']}12{good}0201{ACCOUNT}") == "23"
    assert err(hsm, f"CA{k['tpk']}{k['zpk']}12{good}0102{ACCOUNT}") == "23"
    assert err(hsm, f"CA{k['bad_tpk']}{k['zpk']}12{good}0101{ACCOUNT}") == "10"
    assert err(hsm, f"CA{k['tpk']}{k['bad_zpk']}12{good}0101{ACCOUNT}") == "11"
    assert err(hsm, f"CA{k['tpk']}{k['zpk']}04{_blk(PIK, '12345')}0101{ACCOUNT}") == "24"
    assert err(hsm, f"CA{k['tpk']}{k['zpk']}12{good}0101{ACCOUNT[:-1]}") == "15"
    assert err(hsm, f"CA{k['tpk']}{k['zpk']}12{good}0101{ACCOUNT}X") == "15"
    assert err(hsm, f"CA{k['s_tpk']}{k['zpk']}12{good}0101{ACCOUNT}") == "26"
    # bad blocks: control nibble, non-digit PIN, bad fill, length 3 and 13
    for clear in (
        "141234FFFFFFFFFF",
        "041A34FFFFFFFFFF",
        "041234FFFFFFFFF0",
        "03123FFFFFFFFFFF",
        "0D1234567890123F",
    ):
        block = crypto.xor(bytes.fromhex(clear), pin.account_field(ACCOUNT))
        code = err(hsm, f"CA{k['tpk']}{k['zpk']}12{ecb(PIK).encrypt(block).hex()}0101{ACCOUNT}")
        assert code == ("24" if clear[1] in "3D" else "20"), clear
    out = hsm.ok(f"CC{k['zpk2']}{k['zpk']}12{good}0101{ACCOUNT}")
    assert out == f"04{_blk(TMK, '1234')}01"
    assert err(hsm, f"CC{k['bad_zpk']}{k['zpk']}12{good}0101{ACCOUNT}") == "10"
    assert err(hsm, f"CC{k['zpk']}{k['bad_zpk']}12{good}0101{ACCOUNT}") == "11"


def test_pvv_dg_ec(hsm: Hsm, k: dict[str, str]) -> None:
    lmk = Lmk.test_set()
    pin_lmk = "L" + lmk.encrypt_pin(pin.lmk_pin_block("1234")).hex().upper()
    pvv = hsm.ok(f"DG{k['pvk']}{pin_lmk}{ACCOUNT}1")
    assert pvv == _reference_pvv(PIK, ACCOUNT, "1", "1234")
    assert err(hsm, f"EC{k['zpk']}{k['pvk']}{_blk(TMK, '1234')}01{ACCOUNT}1{pvv}") == "00"
    assert err(hsm, f"EC{k['zpk']}{k['pvk']}{_blk(TMK, '4321')}01{ACCOUNT}1{pvv}") == "01"
    assert err(hsm, f"EC{k['zpk']}{k['pvk']}{_blk(TMK, '1234', '47')}47{ACCOUNT}1{pvv}") == "00"
    assert err(hsm, f"EC{k['zpk']}{k['pvk']}{_blk(TMK, '1234')}99{ACCOUNT}1{pvv}") == "23"
    assert err(hsm, f"EC{k['zpk']}{k['tak']}{_blk(TMK, '1234')}01{ACCOUNT}1{pvv}") == "11"
    assert err(hsm, f"DG{k['mak_z']}{pin_lmk}{ACCOUNT}1") == "27"
    assert err(hsm, f"DG{k['pvk']}{pin_lmk[1:]}{ACCOUNT}1") == "15"
    assert err(hsm, f"DG{k['pvk']}L{'F' * 32}{ACCOUNT}1") == "20"


def _reference_pvv(pvk_hex: str, account: str, pvki: str, p: str) -> str:
    """Visa PVV computed independently with pycryptodome."""
    out = ecb(pvk_hex).encrypt(bytes.fromhex(account[1:] + pvki + p[:4])).hex().upper()
    digits = [c for c in out if c.isdigit()] + [str("ABCDEF".index(c)) for c in out if not c.isdigit()]
    return "".join(digits[:4])


def test_ja(hsm: Hsm) -> None:
    lmk = Lmk.test_set()
    for n in (4, 6, 12):
        out = hsm.ok(f"JA{ACCOUNT}{n:02d}")
        assert out[0] == "L" and len(out) == 33
        assert len(pin.lmk_pin_decode(lmk.decrypt_pin(bytes.fromhex(out[1:])))) == n
    assert err(hsm, f"JA{ACCOUNT}03") == "24"
    assert err(hsm, f"JA{ACCOUNT}13") == "24"
    assert err(hsm, f"JA{ACCOUNT}6") == "15"


def test_ba_encrypts_a_chosen_pin_under_the_lmk(hsm: Hsm) -> None:
    lmk = Lmk.test_set()
    for p in ("1234", "123456", "123456789012"):
        out = hsm.ok(f"BA{p.ljust(13, 'F')}{ACCOUNT}")
        assert out[0] == "L" and pin.lmk_pin_decode(lmk.decrypt_pin(bytes.fromhex(out[1:]))) == p
    assert err(hsm, f"BA123FFFFFFFFFF{ACCOUNT}") == "24"  # 3 digits
    assert err(hsm, f"BA1234F5FFFFFFF{ACCOUNT}") == "15"  # a digit after the padding
    assert err(hsm, f"BA1234FFFFFFFFF{ACCOUNT[:-1]}") == "15"


def test_w8_wv(hsm: Hsm, k: dict[str, str]) -> None:
    sblk = gm_sm4(bytes.fromhex(PIK), pin.sm4_encode("123456", ACCOUNT)).hex().upper()
    out = hsm.ok(f"W82002{k['s_tpk']}1{k['zpk']}{sblk}{ACCOUNT}")
    assert out == "06" + _blk(TMK, "123456")
    out = hsm.ok(f"W81001{k['zpk']}2{k['s_zpk']}{out[2:]}{ACCOUNT}")
    assert out == "06" + gm_sm4(bytes.fromhex(TMK), pin.sm4_encode("123456", ACCOUNT)).hex().upper()
    bad_pad = gm_sm4(bytes.fromhex(PIK), pin.encode("123456", ACCOUNT) + bytes(8)).hex()
    assert err(hsm, f"W82002{k['s_tpk']}1{k['zpk']}{bad_pad}{ACCOUNT}") == "20"
    assert err(hsm, f"W82003{k['s_tpk']}1{k['zpk']}{sblk}{ACCOUNT}") == "29"
    assert err(hsm, f"W82002{k['tpk']}1{k['zpk']}{sblk}{ACCOUNT}") == "26"
    assert err(hsm, f"W81002{k['tpk']}1{k['zpk']}{sblk}{ACCOUNT}") == "15"  # 32H where 16H expected
    assert err(hsm, f"W83002{k['tpk']}1{k['zpk']}{sblk}{ACCOUNT}") == "15"
    lmk = Lmk.test_set()
    pvv = hsm.ok(f"DG{k['pvk']}L{lmk.encrypt_pin(pin.lmk_pin_block('123456')).hex()}{ACCOUNT}3")
    sblk_zpk = gm_sm4(bytes.fromhex(TMK), pin.sm4_encode("123456", ACCOUNT)).hex().upper()
    assert err(hsm, f"WV{k['s_zpk']}{k['pvk']}{sblk_zpk}{ACCOUNT}3{pvv}") == "00"
    assert err(hsm, f"WV{k['s_zpk']}{k['pvk']}{sblk_zpk}{ACCOUNT}4{pvv}") in ("00", "01")
    wrong = gm_sm4(bytes.fromhex(TMK), pin.sm4_encode("999999", ACCOUNT)).hex().upper()
    assert err(hsm, f"WV{k['s_zpk']}{k['pvk']}{wrong}{ACCOUNT}3{pvv}") == "01"
    assert err(hsm, f"WV{k['zpk']}{k['pvk']}{sblk_zpk}{ACCOUNT}3{pvv}") == "26"


# -- MAC ----------------------------------------------------------------------------------------------
def test_m6_m8(hsm: Hsm, k: dict[str, str]) -> None:
    data = b"Now is the time for all "
    body = k["zak"].encode() + b"%04X" % len(data) + data
    assert hsm.ok(b"M600131008" + body) == "A1C72E74EA3FA9B6"
    assert hsm.ok(b"M600131003" + k["tak"].encode() + b"%04X" % len(data) + data) == "A1C72E74EA3FA9B6"
    # hex input
    hexdata = data.hex().encode()
    assert hsm.ok(b"M601131008" + k["zak"].encode() + b"%04X" % len(hexdata) + hexdata) == "A1C72E74EA3FA9B6"
    # algorithm 1: full 3DES CBC-MAC, and single DES with a Z key
    cbc = ecb(TMK)
    r = bytes(8)
    for i in range(0, 24, 8):
        r = cbc.encrypt(crypto.xor(r, data[i : i + 8]))
    assert hsm.ok(b"M600111008" + body) == r.hex().upper()
    assert hsm(b"M800111008" + body + r.hex().encode()).error == "00"
    assert hsm(b"M800011008" + body + r.hex()[:8].encode()).error == "00"
    assert hsm(b"M800011008" + body + b"00000000").error == "01"
    assert err(hsm, b"M600131003" + k["mak_z"].encode() + b"%04X" % len(data) + data) == "27"
    assert len(hsm.ok(b"M600111003" + k["mak_z"].encode() + b"%04X" % len(data) + data)) == 16
    assert err(hsm, b"M600131001" + body) == "29"
    assert err(hsm, b"M600131999" + body) == "04"
    assert err(hsm, b"M600121008" + body) == "15"
    assert err(hsm, b"M600132008" + body) == "15"
    assert err(hsm, b"M600131008" + k["zak"].encode() + b"0019" + data) == "15"
    assert err(hsm, b"M601131008" + k["zak"].encode() + b"0003abc") == "80"
    assert err(hsm, b"M600131008" + k["s_mak"].encode() + b"0001x") == "26"


def test_empty_data_mac_is_one_zero_block(hsm: Hsm, k: dict[str, str]) -> None:
    assert hsm.ok(b"M600111008" + k["zak"].encode() + b"0000") == ecb(TMK).encrypt(bytes(8)).hex().upper()


def test_mu(hsm: Hsm, k: dict[str, str]) -> None:
    mac3 = hsm.ok(b"MU1003" + k["tak"].encode() + b"0005hello")
    assert len(mac3) == 8
    assert hsm.ok(b"MU1008" + k["zak"].encode() + b"0005hello") == mac3
    assert err(hsm, b"MU2003" + k["tak"].encode() + b"0005hello") == "26"
    assert err(hsm, b"MU1003" + k["s_mak"].encode() + b"0005hello") == "26"
    assert err(hsm, b"MU1003" + hsm.ok("A00003T")[:49].encode() + b"0005hello") == "27"
    assert err(hsm, b"MU1001" + k["zpk"].encode() + b"0005hello") == "29"
    assert err(hsm, b"MU3003" + k["tak"].encode() + b"0005hello") == "15"
    assert err(hsm, b"MU1003" + k["tak"].encode() + b"0006hello") == "15"


def test_wm(hsm: Hsm, k: dict[str, str]) -> None:
    data = b"0200" + bytes(range(40))
    mac = hsm.ok(b"WM11003" + k["s_mak"].encode() + b"%04X" % len(data) + data)
    padded = data + bytes(-len(data) % 16)
    r = bytes(16)
    for i in range(0, len(padded), 16):
        r = gm_sm4(bytes.fromhex(TMK), crypto.xor(r, padded[i : i + 16]))
    assert mac == r[:8].hex().upper()
    body = b"WM21003" + k["s_mak"].encode() + b"%04X" % len(data) + data
    assert err(hsm, body + mac.encode()) == "00"
    assert err(hsm, body + mac.lower().encode()) == "00"
    assert err(hsm, body + b"0" * 16) == "01"
    assert err(hsm, body) == "15"
    assert err(hsm, b"WM11003" + k["tak"].encode() + b"0001x") == "26"
    assert err(hsm, b"WM1100A" + k["s_dk"].encode() + b"0001x") == "29"
    assert err(hsm, b"WM12003" + k["s_mak"].encode() + b"0001x") == "15"


# -- M0 / M2 ------------------------------------------------------------------------------------------
def test_m0_m2(hsm: Hsm, k: dict[str, str]) -> None:
    data = bytes(range(32))
    out = hsm.raw(b"M0000000A" + k["dk"].encode() + b"0020" + data)
    assert out[:8] == b"M1000020"
    assert out[8:] == ecb(TMK).encrypt(data)
    # CBC, hex out: IV out is the last ciphertext block
    iv = "0011223344556677"
    out = hsm.ok(b"M0010100A" + k["dk"].encode() + iv.encode() + b"0020" + data)
    from Crypto.Cipher import DES3

    expected = DES3.new(bytes.fromhex(TMK), DES3.MODE_CBC, iv=bytes.fromhex(iv)).encrypt(data).hex().upper()
    assert out == expected[-16:] + "0040" + expected
    back = hsm.ok(f"M2011100A{k['dk']}{iv}0040{expected}")
    assert back == expected[-16:] + "0040" + data.hex().upper()
    # SM4
    sm4_out = hsm.ok(f"M0001100A{k['s_dk']}0020{TMK}")
    assert sm4_out == "0020681EDF34D206965E86B3E94F536E4246"
    assert hsm.ok(f"M2001100A{k['s_dk']}0020681edf34d206965e86b3e94f536e4246") == f"0020{TMK}"
    siv = "00112233445566778899AABBCCDDEEFF"
    enc = hsm.ok(f"M0011100A{k['s_dk']}{siv}0040{TMK}{TMK}")
    assert hsm.ok(f"M2011100A{k['s_dk']}{siv}0040{enc[36:]}") == f"{enc[:32]}0040{TMK}{TMK}"


def test_m0_errors(hsm: Hsm, k: dict[str, str]) -> None:
    dk = k["dk"].encode()
    assert err(hsm, b"M0000000A" + dk + b"0000") == "80"
    assert err(hsm, b"M0000000A" + dk + b"0007abcdefg") == "80"
    assert err(hsm, b"M0001000A" + dk + b"0007abcdefa") == "80"
    assert err(hsm, b"M0001000A" + dk + b"0010abcdefabcdefabcx") == "15"
    assert err(hsm, b"M0001000A" + dk + b"0010abcdefabcdefabc") == "15"
    assert err(hsm, b"M00000001" + k["zpk"].encode() + b"000812345678") == "29"
    assert err(hsm, b"M00000099" + dk + b"000812345678") == "04"
    assert err(hsm, b"M0020000A" + dk + b"000812345678") == "15"
    assert err(hsm, b"M0000000A" + k["mak_z"].encode() + b"000812345678") == "26"
    assert err(hsm, b"M0010000A" + dk + b"0011223344556677" + b"000812345678") == "00"
    assert err(hsm, b"M0010000A" + dk + b"00112233445566" + b"000812345678") == "15"
    assert err(hsm, b"M0000000A" + k["s_dk"].encode() + b"000812345678") == "80"


def test_m0_output_too_long_for_a_frame(hsm: Hsm, k: dict[str, str]) -> None:
    data = bytes(32768)
    assert err(hsm, b"M0000100A" + k["dk"].encode() + b"8000" + data) == "80"


# -- SM4 key management -------------------------------------------------------------------------------
def test_wi_wk_sv_st(hsm: Hsm, k: dict[str, str]) -> None:
    out = hsm.ok("WI0001")
    assert out[0] == "S" and len(out) == 49
    out = hsm.ok(f"WI1001;0{k['s_zmk']}")
    under_lmk, under_zmk, cv = out[:33], out[33:65], out[65:]
    assert hsm.ok(f"SV001{k['s_zmk']}{under_zmk}") == under_lmk + cv
    assert hsm.ok(f"ST001{k['s_zmk']}{under_lmk}") == under_zmk + cv
    clear = gm_sm4(bytes.fromhex(TMK), bytes.fromhex(under_zmk), decrypt=True)
    assert gm_sm4(clear, bytes(16))[:8].hex().upper() == cv
    assert err(hsm, f"WK2001{TMK}{TMK}") == "10"
    assert err(hsm, f"WK1001{TMK}") == "15"
    assert err(hsm, f"WK2001{TMK}") == "15"
    assert err(hsm, f"WI1001{k['s_zmk']}") == "15"
    assert err(hsm, f"WI1001;0{k['zmk']}") == "26"
    assert err(hsm, "WI0999") == "04"
    assert err(hsm, f"SV001{k['zmk']}{ZERO32}") == "26"
    zero_under = gm_sm4(bytes.fromhex(TMK), bytes(16)).hex()
    assert err(hsm, f"SV001{k['s_zmk']}{zero_under}") == "11"
    assert err(hsm, f"ST001{k['s_zmk']}{k['zpk']}") == "26"
    assert err(hsm, f"ST001{k['s_zmk']}{under_lmk};2") == "15"


def test_sm4_keys_under_lmk_follow_the_contract(hsm: Hsm) -> None:
    """S + SM4-ECB under the pair's SM4 LMK (test: left ‖ right) with the variant in its first byte."""
    token = hsm.form_sm4("402", TMK)  # pair 14-15 (index 7), variant 4 = DE
    lmk_key = bytearray(bytes.fromhex("E0E0010101010101F1F1010101010101"))
    lmk_key[0] ^= 0xDE
    assert token == "S" + gm_sm4(bytes(lmk_key), bytes.fromhex(TMK)).hex().upper()


def test_3des_keys_under_lmk_follow_the_contract(hsm: Hsm) -> None:
    """U: part i under 3DES(left ^ key-type variant, right ^ scheme variant i, left)."""
    token = hsm.form("402", TMK)  # pair 14-15, variant DE on the left key
    left = bytearray(bytes.fromhex("E0E0010101010101"))
    left[0] ^= 0xDE
    parts = []
    for i, v in enumerate((0xA6, 0x5A)):
        right = bytearray(bytes.fromhex("F1F1010101010101"))
        right[0] ^= v
        parts.append(ecb((bytes(left) + bytes(right)).hex()).encrypt(bytes.fromhex(TMK)[8 * i : 8 * i + 8]))
    assert token == "U" + b"".join(parts).hex().upper()
    # Z: no scheme variant
    z = hsm.import_z("003", hsm.form("002", TMK), "289EC8E772237F20")
    mak = ecb(TMK).decrypt(bytes.fromhex("289EC8E772237F20"))
    left8 = bytes.fromhex("1C587F1C13924FEF")  # key type 003 → pair 16-17, variant 0
    right8 = bytes.fromhex("0101010101010101")
    assert z == ecb((left8 + right8).hex()).encrypt(mak).hex().upper()


def test_pin_under_lmk_layout(hsm: Hsm) -> None:
    """L + pair 02-03 3DES-ECB of the PIN digits then F (computed here independently)."""
    out = hsm.ok(f"JA{ACCOUNT}05")
    clear = ecb("20202020202020203131313131313131").decrypt(bytes.fromhex(out[1:])).hex().upper()
    assert clear[:5].isdigit() and clear[5:] == "F" * 27


def test_u_under_zmk_layout(hsm: Hsm, k: dict[str, str]) -> None:
    """U under a ZMK: part i under 3DES(ZMK left, ZMK right with scheme variant i in its first byte)."""
    out = hsm.ok(f"A8001{k['zmk']}{k['zpk2']}U")[:33]
    zmk = bytes.fromhex(TMK)
    parts = []
    for i, v in enumerate((0xA6, 0x5A)):
        variant = zmk[:8] + bytes([zmk[8] ^ v]) + zmk[9:]
        parts.append(ecb(variant.hex()).encrypt(bytes.fromhex(PIK)[8 * i : 8 * i + 8]))
    assert out == "U" + b"".join(parts).hex().upper()


def test_mutated_requests_never_hit_an_unexpected_exception(
    hsm: Hsm, k: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """20,000 mutations of valid requests: every answer well formed, no handler bug (logged exception)."""
    import random

    import hsm_sim.engine

    class NoBugs:
        def error(self, event: str, **kw: object) -> None:
            raise AssertionError(f"handler raised: {event} {kw}")

    monkeypatch.setattr(hsm_sim.engine, "log", NoBugs())
    lmk = Lmk.test_set()
    pin_lmk = "L" + lmk.encrypt_pin(pin.lmk_pin_block("1234")).hex().upper()
    blk, sblk = _blk(PIK, "1234"), gm_sm4(bytes.fromhex(PIK), pin.sm4_encode("1234", ACCOUNT)).hex()
    seeds = [
        s.encode()
        for s in (
            f"A01002U;1{k['tmk']}X",
            f"A42002U{TMK}{ZERO32}",
            f"A6001{k['zmk']}X{blk}{blk}U",
            f"A8001{k['zmk']}{k['zpk']}U",
            f"BUFF1{k['zpk']};001",
            f"CA{k['tpk']}{k['zpk']}12{blk}0147{ACCOUNT}",
            f"CC{k['zpk']}{k['zpk2']}12{blk}0105{ACCOUNT}",
            f"DG{k['pvk']}{pin_lmk}{ACCOUNT}1",
            f"EC{k['zpk']}{k['pvk']}{blk}01{ACCOUNT}11234",
            f"JA{ACCOUNT}06",
            f"M600131008{k['zak']}0003abc",
            f"M800011008{k['zak']}0003abc12345678",
            f"MU1003{k['mak_z']}0003abc",
            f"MU2003{k['s_mak']}0003abc",
            f"M0010100A{k['dk']}0011223344556677001000112233445566FF",
            f"M2001100A{k['s_dk']}0020{TMK}",
            f"WI1003;1{k['s_tmk']}",
            f"WK2001{TMK}{ZERO32}",
            f"SV001{k['s_zmk']}{TMK}",
            f"ST001{k['s_zmk']}{k['s_zpk']}",
            f"W82002{k['s_tpk']}1{k['zpk']}{sblk}{ACCOUNT}",
            f"W81001{k['zpk']}2{k['s_zpk']}{blk}{ACCOUNT}",
            f"WM21003{k['s_mak']}0003abc{ZERO32[:16]}",
            f"WV{k['s_zpk']}{k['pvk']}{sblk}{ACCOUNT}11234",
        )
    ]
    rng = random.Random(44)
    alphabet = b"0123456789ABCDEFSUTXYZL;"
    for _ in range(20_000):
        data = bytearray(rng.choice(seeds))
        for _ in range(rng.randrange(1, 3)):
            if len(data) <= 3:
                break
            pos = rng.randrange(2, len(data))
            op = rng.randrange(4)
            if op == 0:
                data[pos] = rng.choice(alphabet)
            elif op == 1:
                del data[pos : pos + rng.randrange(1, 6)]
            elif op == 2:
                data[pos:pos] = bytes(rng.choice(alphabet) for _ in range(rng.randrange(1, 6)))
            else:
                del data[pos:]
        answer = hsm(bytes(data))
        assert answer.error.isdigit()
        if answer.error != "00":
            assert answer.fields == ""
