"""hsm_sim.emv against an independent implementation written here from the definitions of its docstring
(EMV Book 2 Annex A1: option A card keys, common session keys, ARQC MAC, ARPC method 1), with
pycryptodome's DES/3DES and gmssl's SM4, never hsm_sim's own crypto. Hypothesis: both agree for random
keys, PANs, sequence numbers, ATCs and data, both algorithms."""

from __future__ import annotations

from Crypto.Cipher import DES, DES3
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from hsm_sim import emv
from tests.hsm_sim.helpers import gm_sm4

FF8 = b"\xff" * 8


# -- the independent implementation -------------------------------------------------------------------
def ref_xor(a: bytes, b: bytes) -> bytes:
    return bytes(x ^ y for x, y in zip(a, b, strict=True))


def ref_odd_parity(key: bytes) -> bytes:
    """Each byte's low bit set so that the byte has an odd number of one bits."""
    out = bytearray()
    for byte in key:
        high = byte & 0xFE
        out.append(high | (0 if bin(high).count("1") % 2 else 1))
    return bytes(out)


def ref_tdes_ecb(key: bytes, block: bytes) -> bytes:
    out: bytes = DES3.new(key, DES3.MODE_ECB).encrypt(block)
    return out


def ref_y(pan: str, psn: str) -> bytes:
    """Option A: PAN ‖ PSN, the rightmost 16 digits, left-padded with zeros to 16 digits, as BCD."""
    digits = pan + psn
    digits = digits[-16:] if len(digits) >= 16 else "0" * (16 - len(digits)) + digits
    return bytes(int(digits[i : i + 2], 16) for i in range(0, 16, 2))


def ref_pad2(data: bytes, block: int) -> bytes:
    out = data + b"\x80"
    while len(out) % block:
        out += b"\x00"
    return out


def ref_tdes_mk(imk: bytes, pan: str, psn: str) -> bytes:
    y = ref_y(pan, psn)
    return ref_odd_parity(ref_tdes_ecb(imk, y) + ref_tdes_ecb(imk, ref_xor(y, FF8)))


def ref_tdes_sk(mk: bytes, atc: bytes) -> bytes:
    f1 = atc + b"\xf0\x00\x00\x00\x00\x00"
    f2 = atc + b"\x0f\x00\x00\x00\x00\x00"
    return ref_odd_parity(ref_tdes_ecb(mk, f1) + ref_tdes_ecb(mk, f2))


def ref_retail_mac(sk: bytes, data: bytes) -> bytes:
    """ISO 9797-1 MAC algorithm 3: single-DES CBC with K_L, then D(K_R), E(K_L) on the last block."""
    padded = ref_pad2(data, 8)
    last = DES.new(sk[:8], DES.MODE_CBC, iv=bytes(8)).encrypt(padded)[-8:]
    middle = DES.new(sk[8:], DES.MODE_ECB).decrypt(last)
    out: bytes = DES.new(sk[:8], DES.MODE_ECB).encrypt(middle)
    return out


def ref_tdes_arpc(sk: bytes, arqc: bytes, arc: bytes) -> bytes:
    return ref_tdes_ecb(sk, ref_xor(arqc, arc + bytes(6)))


def ref_sm4_mk(imk: bytes, pan: str, psn: str) -> bytes:
    y = ref_y(pan, psn)
    return gm_sm4(imk, y + ref_xor(y, FF8))


def ref_sm4_sk(mk: bytes, atc: bytes) -> bytes:
    return gm_sm4(mk, atc + b"\xf0" + bytes(13))


def ref_sm4_mac(sk: bytes, data: bytes) -> bytes:
    """ISO 9797-1 MAC algorithm 1 with SM4 (CBC, zero IV), leftmost 8 bytes."""
    padded = ref_pad2(data, 16)
    h = bytes(16)
    for i in range(0, len(padded), 16):
        h = gm_sm4(sk, ref_xor(h, padded[i : i + 16]))
    return h[:8]


def ref_sm4_arpc(sk: bytes, arqc: bytes, arc: bytes) -> bytes:
    return gm_sm4(sk, ref_xor(arqc, arc + bytes(6)) + bytes(8))[:8]


def ref_cryptograms(
    algorithm: str, imk: bytes, pan: str, psn: str, atc: bytes, data: bytes, arc: bytes
) -> tuple[bytes, bytes, bytes, bytes]:
    """(card master key, session key, ARQC, ARPC) by the independent implementation."""
    if algorithm == "3des":
        mk = ref_tdes_mk(imk, pan, psn)
        sk = ref_tdes_sk(mk, atc)
        cryptogram = ref_retail_mac(sk, data)
        return mk, sk, cryptogram, ref_tdes_arpc(sk, cryptogram, arc)
    mk = ref_sm4_mk(imk, pan, psn)
    sk = ref_sm4_sk(mk, atc)
    cryptogram = ref_sm4_mac(sk, data)
    return mk, sk, cryptogram, ref_sm4_arpc(sk, cryptogram, arc)


def two_key_ok(key: bytes) -> bool:
    """pycryptodome refuses a two-key 3DES key whose halves are equal once parity is ignored."""
    return ref_odd_parity(key[:8]) != ref_odd_parity(key[8:16])


# -- fixed cases ----------------------------------------------------------------------------------------
def test_pan_psn_block() -> None:
    assert emv.pan_psn_block("6212345678901234567", "01") == bytes.fromhex("4567890123456701")
    assert emv.pan_psn_block("4761739001010010", "00") == bytes.fromhex("6173900101001000")
    assert emv.pan_psn_block("5413339000001", "1") == bytes.fromhex("0541333900000101")  # PSN "1" is "01"
    assert emv.pan_psn_block("12345678901234", "07") == ref_y("12345678901234", "07")


def test_odd_parity_reference_agrees_with_pycryptodome() -> None:
    assert DES.new(ref_odd_parity(bytes(range(8))), DES.MODE_ECB) is not None
    assert ref_odd_parity(bytes.fromhex("0123456789ABCDEF")) == bytes.fromhex("0123456789ABCDEF")
    assert ref_odd_parity(bytes.fromhex("0022446688AACCEE")) == bytes.fromhex("0123456789ABCDEF")


def test_fixed_case_both_algorithms() -> None:
    imk = bytes.fromhex("0123456789ABCDEFFEDCBA9876543210")
    data = bytes(range(43))
    for alg in emv.ALGORITHMS:
        mk, sk, cryptogram, arpc = ref_cryptograms(
            alg, imk, "6212345678901234567", "01", b"\x00\x1c", data, b"00"
        )
        assert emv.card_master_key(alg, imk, "6212345678901234567", "01") == mk
        assert emv.session_key(alg, mk, b"\x00\x1c") == sk
        assert emv.arqc(alg, sk, data) == cryptogram
        assert emv.arpc(alg, sk, cryptogram, b"00") == arpc


# -- properties ---------------------------------------------------------------------------------------
pans = st.text(alphabet="0123456789", min_size=12, max_size=19)
psns = st.text(alphabet="0123456789", min_size=2, max_size=2)
keys = st.binary(min_size=16, max_size=16)
atcs = st.binary(min_size=2, max_size=2)
datas = st.binary(min_size=0, max_size=128)
arcs = st.sampled_from([b"00", b"51", b"55", b"05", b"Z3"]) | st.binary(min_size=2, max_size=2)


@settings(max_examples=150, deadline=None)
@given(imk=keys, pan=pans, psn=psns, atc=atcs, data=datas, arc=arcs)
def test_3des_matches_the_independent_implementation(
    imk: bytes, pan: str, psn: str, atc: bytes, data: bytes, arc: bytes
) -> None:
    assume(two_key_ok(imk))
    mk = ref_tdes_mk(imk, pan, psn)
    assume(two_key_ok(mk))
    sk = ref_tdes_sk(mk, atc)
    assume(two_key_ok(sk))
    _, _, cryptogram, arpc = ref_cryptograms("3des", imk, pan, psn, atc, data, arc)
    assert emv.card_master_key("3des", imk, pan, psn) == mk
    assert emv.session_key("3des", mk, atc) == sk
    assert emv.arqc("3des", sk, data) == cryptogram
    assert emv.arpc("3des", sk, cryptogram, arc) == arpc


@settings(max_examples=150, deadline=None)
@given(imk=keys, pan=pans, psn=psns, atc=atcs, data=datas, arc=arcs)
def test_sm4_matches_the_independent_implementation(
    imk: bytes, pan: str, psn: str, atc: bytes, data: bytes, arc: bytes
) -> None:
    mk, sk, cryptogram, arpc = ref_cryptograms("sm4", imk, pan, psn, atc, data, arc)
    assert emv.card_master_key("sm4", imk, pan, psn) == mk
    assert emv.session_key("sm4", mk, atc) == sk
    assert emv.arqc("sm4", sk, data) == cryptogram
    assert emv.arpc("sm4", sk, cryptogram, arc) == arpc


@settings(max_examples=100, deadline=None)
@given(alg=st.sampled_from(emv.ALGORITHMS), imk=keys, atc=atcs, data=datas, flip=st.integers(0, 63))
def test_any_changed_bit_of_the_arqc_changes_the_answer(
    alg: emv.Algorithm, imk: bytes, atc: bytes, data: bytes, flip: int
) -> None:
    """The card and the issuer compute the same ARQC; one bit changed is a different cryptogram."""
    assume(alg == "sm4" or two_key_ok(imk))
    sk = emv.session_key(alg, emv.card_master_key(alg, imk, "6212345678901234567", "01"), atc)
    good = emv.arqc(alg, sk, data)
    bad = (int.from_bytes(good, "big") ^ (1 << flip)).to_bytes(8, "big")
    assert emv.arpc(alg, sk, good, b"00") != emv.arpc(alg, sk, bad, b"00")
