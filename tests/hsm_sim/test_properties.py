"""Property tests: round trips through the commands, and primitives cross-checked against independent
implementations (pycryptodome for DES/3DES, gmssl's pure-Python SM4)."""

from __future__ import annotations

from Crypto.Cipher import DES, DES3
from hypothesis import given
from hypothesis import strategies as st

from hsm_sim import crypto, mac, pin
from hsm_sim.lmk import Lmk, key_type
from tests.hsm_sim.helpers import Hsm, ecb, gm_sm4

HSM = Hsm()
LMK = Lmk.test_set()

pins = st.text("0123456789", min_size=4, max_size=12)
accounts = st.text("0123456789", min_size=12, max_size=12)
des_keys = st.binary(min_size=16, max_size=16).map(crypto.set_odd_parity).filter(lambda k: k[:8] != k[8:])
sm4_keys = st.binary(min_size=16, max_size=16).filter(any)
key_types = st.sampled_from(["000", "001", "002", "003", "008", "00A", "402"])


def _form(key_type_code: str, clear: bytes) -> str:
    return HSM.form(key_type_code, clear.hex().upper())


# -- cross-checks of the primitives ------------------------------------------------------------------
def blocks(size: int) -> st.SearchStrategy[bytes]:
    return st.integers(1, 6).flatmap(lambda n: st.binary(min_size=n * size, max_size=n * size))


@given(st.binary(min_size=24, max_size=24), blocks(8))
def test_3des_matches_pycryptodome(key: bytes, data: bytes) -> None:
    key = crypto.set_odd_parity(key)
    if key[:8] == key[8:16] or key[8:16] == key[16:]:
        return  # pycryptodome refuses degenerate 3DES keys
    assert crypto.des(key).encrypt(data) == DES3.new(key, DES3.MODE_ECB).encrypt(data)
    assert crypto.des(key[:16]).decrypt(data) == DES3.new(key[:16], DES3.MODE_ECB).decrypt(data)
    assert crypto.des(key[:8]).encrypt(data) == DES.new(key[:8], DES.MODE_ECB).encrypt(data)


@given(st.binary(min_size=16, max_size=16), blocks(16))
def test_sm4_matches_gmssl(key: bytes, data: bytes) -> None:
    assert crypto.sm4(key).encrypt(data) == gm_sm4(key, data)
    assert crypto.sm4(key).decrypt(data) == gm_sm4(key, data, decrypt=True)


@given(des_keys, st.binary(max_size=100))
def test_x919_matches_reference(key: bytes, data: bytes) -> None:
    padded = crypto.zero_pad(data, 8)
    k1 = DES.new(key[:8], DES.MODE_CBC, iv=bytes(8))
    r = k1.encrypt(padded)[-8:]
    r = DES.new(key[:8], DES.MODE_ECB).encrypt(DES.new(key[8:], DES.MODE_ECB).decrypt(r))
    assert mac.retail_mac(key, data) == r
    full = DES3.new(key, DES3.MODE_CBC, iv=bytes(8)).encrypt(padded)[-8:]
    assert mac.cbc_mac(crypto.des(key), data) == full


@given(sm4_keys, st.binary(max_size=300))
def test_sm4_cbc_mac_matches_gmssl(key: bytes, data: bytes) -> None:
    padded = crypto.zero_pad(data, 16)
    r = bytes(16)
    for i in range(0, len(padded), 16):
        r = gm_sm4(key, crypto.xor(r, padded[i : i + 16]))
    assert mac.cbc_mac(crypto.sm4(key), data) == r


@given(des_keys, st.binary(max_size=200))
def test_cup_mac_matches_reference(key: bytes, data: bytes) -> None:
    padded = crypto.zero_pad(data, 8)
    r = bytes(8)
    for i in range(0, len(padded), 8):
        r = crypto.xor(r, padded[i : i + 8])
    h = r.hex().upper().encode()
    e = DES3.new(key, DES3.MODE_ECB)
    t = crypto.xor(e.encrypt(h[:8]), h[8:])
    assert mac.cup_ecb_mac(crypto.des(key), data) == e.encrypt(t).hex().upper()[:8].encode()


@given(st.binary(max_size=300), st.sampled_from([8, 16]))
def test_xor_blocks_matches_bytewise_definition(data: bytes, bs: int) -> None:
    padded = data + bytes(-len(data) % bs)
    want = bytearray(bs)
    for i, b in enumerate(padded):
        want[i % bs] ^= b
    assert mac.xor_blocks(data, bs) == bytes(want)


@given(pins, accounts, st.sampled_from(pin.FORMATS))
def test_pin_block_round_trip(p: str, account: str, fmt: str) -> None:
    assert pin.decode(pin.encode(p, account, fmt), account, fmt) == p
    assert pin.sm4_decode(pin.sm4_encode(p, account), account) == p
    assert pin.lmk_pin_decode(pin.lmk_pin_block(p)) == p


# -- round trips through the commands -----------------------------------------------------------------
@given(key_types, st.sampled_from(["U", "X"]))
def test_generate_export_import_same_check_value(kt: str, scheme: str) -> None:
    zmk = HSM.ok("A00000U")[:33]
    gen = HSM.ok(f"A01{kt}U;0{zmk}{scheme}")
    under_lmk, under_zmk, cv = gen[:33], gen[33:66], gen[66:]
    imported = HSM.ok(f"A6{kt}{zmk}{under_zmk}U")
    assert imported == under_lmk + cv
    exported = HSM.ok(f"A8{kt}{zmk}{under_lmk}{scheme}")
    assert exported == under_zmk + cv
    code = f"{kt[1:]}1{under_lmk}" if kt[0] == "0" else f"FF1{under_lmk};{kt}"
    assert HSM.ok(f"BU{code}") == cv


@given(key_types)
def test_sm4_generate_export_import_same_check_value(kt: str) -> None:
    zmk = HSM.ok("WI0000")[:33]
    gen = HSM.ok(f"WI1{kt};0{zmk}")
    under_lmk, under_zmk, cv = gen[:33], gen[33:65], gen[65:]
    assert HSM.ok(f"SV{kt}{zmk}{under_zmk}") == under_lmk + cv
    assert HSM.ok(f"ST{kt}{zmk}{under_lmk}") == under_zmk + cv


@given(des_keys, key_types)
def test_lmk_encrypt_decrypt(clear: bytes, kt: str) -> None:
    t = key_type(kt)
    assert LMK.decrypt_des_key(t, "U", LMK.encrypt_des_key(t, "U", clear)) == clear
    token = _form(kt, clear)
    assert token == "U" + LMK.encrypt_des_key(t, "U", clear).hex().upper()


@given(pins, accounts, des_keys, des_keys, des_keys)
def test_pin_translate_tpk_zpk_zpk(p: str, account: str, tpk: bytes, zpk1: bytes, zpk2: bytes) -> None:
    tpk_lmk, zpk1_lmk, zpk2_lmk = _form("002", tpk), _form("001", zpk1), _form("001", zpk2)
    block = ecb(tpk.hex()).encrypt(pin.encode(p, account)).hex().upper()
    out1 = HSM.ok(f"CA{tpk_lmk}{zpk1_lmk}12{block}0147{account}")
    out2 = HSM.ok(f"CC{zpk1_lmk}{zpk2_lmk}12{out1[2:18]}4701{account}")
    assert out1[:2] == out2[:2] == f"{len(p):02d}"
    assert pin.decode(ecb(zpk2.hex()).decrypt(bytes.fromhex(out2[2:18])), account) == p


@given(pins, accounts, sm4_keys, des_keys, sm4_keys)
def test_pin_translate_across_algorithms(p: str, account: str, tpk: bytes, zpk: bytes, szpk: bytes) -> None:
    tpk_lmk = HSM.form_sm4("002", tpk.hex())
    zpk_lmk, szpk_lmk = _form("001", zpk), HSM.form_sm4("001", szpk.hex())
    block = gm_sm4(tpk, pin.sm4_encode(p, account)).hex().upper()
    out = HSM.ok(f"W82002{tpk_lmk}1{zpk_lmk}{block}{account}")
    back = HSM.ok(f"W81001{zpk_lmk}2{szpk_lmk}{out[2:]}{account}")
    assert pin.sm4_decode(gm_sm4(szpk, bytes.fromhex(back[2:]), decrypt=True), account) == p


@given(st.binary(min_size=1, max_size=300), st.booleans())
def test_data_round_trip(data: bytes, sm4: bool) -> None:
    key = HSM.ok("WI000A")[:33] if sm4 else HSM.ok("A0000AU")[:33]
    bs = 16 if sm4 else 8
    data = crypto.zero_pad(data, bs)
    enc = HSM.raw(b"M0000000A" + key.encode() + b"%04X" % len(data) + data)[8:]
    assert HSM.raw(b"M2000000A" + key.encode() + b"%04X" % len(enc) + enc)[8:] == data


_CODES = [
    b"NC",
    b"B2",
    b"A0",
    b"A4",
    b"A6",
    b"A8",
    b"BU",
    b"CA",
    b"CC",
    b"DG",
    b"EC",
    b"JA",
    b"M6",
    b"M8",
    b"MU",
    b"M0",
    b"M2",
    b"WI",
    b"WK",
    b"SV",
    b"ST",
    b"W8",
    b"WM",
    b"WV",
    b"ZZ",
    b"\xff\x00",
]


class _NoBugs:
    """Stands in for the engine's logger: an unexpected exception inside a handler is a bug."""

    def error(self, event: str, **kw: object) -> None:
        raise AssertionError(f"handler raised: {event} {kw}")


@given(
    st.sampled_from(_CODES),
    st.binary(max_size=200) | st.text("0123456789ABCDEFSUTXZL;", max_size=120).map(str.encode),
)
def test_any_request_gets_a_well_formed_answer(code: bytes, fields: bytes) -> None:
    import hsm_sim.engine

    saved, hsm_sim.engine.log = hsm_sim.engine.log, _NoBugs()
    try:
        out, label, error = HSM.engine.execute(b"HHHH" + code + fields)
    finally:
        hsm_sim.engine.log = saved
    assert out[:4] == b"HHHH"
    assert out[6:8] == error.encode() and error.isdigit()
    if error != "00":
        assert len(out) == 8
    if code not in (b"NC", b"B2") or error != "00":
        assert label in ("unknown", code.decode("latin-1"))


@given(
    st.lists(st.tuples(st.booleans(), st.binary(min_size=8, max_size=8), blocks(8)), min_size=1, max_size=8)
)
def test_long_lived_cbc_contexts_match_fresh_cbc(ops: list[tuple[bool, bytes, bytes]]) -> None:
    """Interleaved CBC encryptions and decryptions with different IVs on one cached key."""
    key = bytes.fromhex("0123456789ABCDEFFEDCBA9876543210")
    cipher = crypto.des(key)
    for encrypt, iv, data in ops:
        ref = DES3.new(key, DES3.MODE_CBC, iv=iv)
        if encrypt:
            assert cipher.cbc_encrypt(data, iv) == ref.encrypt(data)
        else:
            assert cipher.cbc_decrypt(data, iv) == ref.decrypt(data)
