"""PIN commands: CA, CC (translate), DG (PVV), EC (verify against PVV), BA (clear PIN in), JA (random PIN),
W8, WV (SM4), WC (PIN change: verify the old PIN, PVV and LMK form of the new one; 3DES or SM4).

PIN block format codes: 01 ISO 9564 format 0, 05 format 1, 47 format 3. The SM4 PIN block is the
format-0 block followed by 8 bytes FF, encrypted as one SM4 block. A PIN under LMK is ``L``+32H.
"""

from __future__ import annotations

import hmac

from hsm_sim import crypto, pin
from hsm_sim.errors import (
    DESTINATION_KEY_PARITY,
    INVALID_INPUT,
    KEY_FUNCTION_NOT_PERMITTED,
    PIN_LENGTH,
    SOURCE_KEY_PARITY,
    VERIFICATION_FAILURE,
    HsmFault,
)
from hsm_sim.fields import Reader
from hsm_sim.keys import KeyStore, hexu
from hsm_sim.lmk import key_type

ZPK, TPK_PVK = key_type("001"), key_type("002")


def _max_pin_length(r: Reader) -> int:
    n = r.number(2)
    if not 4 <= n <= 12:
        raise HsmFault(INVALID_INPUT)
    return n


def _format(r: Reader) -> str:
    code = r.digits(2)
    pin.check_format(code)
    return code


def _translate(ks: KeyStore, r: Reader, source_type: str) -> bytes:
    src = crypto.des(ks.des_key(key_type(source_type), r.lmk_key(), SOURCE_KEY_PARITY))
    dst = crypto.des(ks.des_key(ZPK, r.lmk_key(), DESTINATION_KEY_PARITY))
    max_len = _max_pin_length(r)
    block = r.hex(16)
    src_fmt = _format(r)
    dst_fmt = _format(r)
    account = r.digits(12)
    r.end()
    clear_pin = pin.decode(src.decrypt(block), account, src_fmt)
    if len(clear_pin) > max_len:
        raise HsmFault(PIN_LENGTH)
    out = dst.encrypt(pin.encode(clear_pin, account, dst_fmt))
    return b"%02d" % len(clear_pin) + hexu(out) + dst_fmt.encode()


def ca(ks: KeyStore, r: Reader) -> bytes:
    """Translate a PIN block from under a TPK to under a ZPK."""
    return _translate(ks, r, "002")


def cc(ks: KeyStore, r: Reader) -> bytes:
    """Translate a PIN block from under one ZPK to under another."""
    return _translate(ks, r, "001")


def _pvk(ks: KeyStore, r: Reader, parity_error: str) -> crypto.BlockCipher:
    return crypto.des(ks.des_key(TPK_PVK, r.lmk_key(), parity_error, schemes=("U",)))


def _lmk_pin(ks: KeyStore, r: Reader) -> str:
    if r.text(1) != "L":
        raise HsmFault(INVALID_INPUT)
    return pin.lmk_pin_decode(ks.lmk.decrypt_pin(r.hex(32)))


def dg(ks: KeyStore, r: Reader) -> bytes:
    """Visa PVV of a PIN under LMK."""
    pvk = _pvk(ks, r, SOURCE_KEY_PARITY)
    clear_pin = _lmk_pin(ks, r)
    account = r.digits(12)
    pvki = r.digits(1)
    r.end()
    return pin.visa_pvv(pvk, account, pvki, clear_pin).encode()


def _compare_pvv(pvk: crypto.BlockCipher, account: str, pvki: str, clear_pin: str, pvv: str) -> bytes:
    if not hmac.compare_digest(pin.visa_pvv(pvk, account, pvki, clear_pin), pvv):
        raise HsmFault(VERIFICATION_FAILURE)
    return b""


def ec(ks: KeyStore, r: Reader) -> bytes:
    """Verify a PIN block under a ZPK against a Visa PVV."""
    zpk = crypto.des(ks.des_key(ZPK, r.lmk_key(), SOURCE_KEY_PARITY))
    pvk = _pvk(ks, r, DESTINATION_KEY_PARITY)
    block = r.hex(16)
    fmt = _format(r)
    account = r.digits(12)
    pvki = r.digits(1)
    pvv = r.digits(4)
    r.end()
    clear_pin = pin.decode(zpk.decrypt(block), account, fmt)
    return _compare_pvv(pvk, account, pvki, clear_pin, pvv)


def ba(ks: KeyStore, r: Reader) -> bytes:
    """Encrypt a clear PIN under the LMK (payShield BA, LN = 12): PIN 13A = the digits then ``F``s,
    account 12N. What a card issued with a chosen PIN (demos, tests) needs now that the LMK is not
    public; a clear PIN goes in and only the PIN under LMK comes out."""
    field = r.text(13)
    r.digits(12)  # account: part of the layout; the LMK PIN form does not bind it
    r.end()
    digits = field.rstrip("F")
    if not digits.isdigit() or field[len(digits) :] != "F" * (13 - len(digits)):
        raise HsmFault(INVALID_INPUT)
    if not 4 <= len(digits) <= 12:
        raise HsmFault(PIN_LENGTH)
    return b"L" + hexu(ks.lmk.encrypt_pin(pin.lmk_pin_block(digits)))


def ja(ks: KeyStore, r: Reader) -> bytes:
    """A random PIN, returned under the LMK."""
    r.digits(12)  # account: part of the layout; the LMK PIN form does not bind it
    length = r.number(2)
    r.end()
    return b"L" + hexu(ks.lmk.encrypt_pin(pin.lmk_pin_block(pin.random_pin(length))))


def w8(ks: KeyStore, r: Reader) -> bytes:
    """Translate a PIN between 3DES and SM4 protection (format 0 / SM4 format 0 + FF)."""
    src_alg = r.choice(1, ("1", "2"))
    src_kt = key_type(r.text(3))
    if src_kt.code not in ("001", "002"):
        raise HsmFault(KEY_FUNCTION_NOT_PERMITTED)
    src_token = r.lmk_key()
    dst_alg = r.choice(1, ("1", "2"))
    dst_token = r.lmk_key()
    block = r.hex(16 if src_alg == "1" else 32)
    account = r.digits(12)
    r.end()
    if src_alg == "1":
        src = crypto.des(ks.des_key(src_kt, src_token, SOURCE_KEY_PARITY))
        clear_pin = pin.decode(src.decrypt(block), account)
    else:
        src = crypto.sm4(ks.sm4_key(src_kt, src_token, SOURCE_KEY_PARITY))
        clear_pin = pin.sm4_decode(src.decrypt(block), account)
    if dst_alg == "1":
        out = crypto.des(ks.des_key(ZPK, dst_token, DESTINATION_KEY_PARITY)).encrypt(
            pin.encode(clear_pin, account)
        )
    else:
        out = crypto.sm4(ks.sm4_key(ZPK, dst_token, DESTINATION_KEY_PARITY)).encrypt(
            pin.sm4_encode(clear_pin, account)
        )
    return b"%02d" % len(clear_pin) + hexu(out)


def wv(ks: KeyStore, r: Reader) -> bytes:
    """Verify an SM4-protected PIN block against a Visa PVV."""
    zpk = crypto.sm4(ks.sm4_key(ZPK, r.lmk_key(), SOURCE_KEY_PARITY))
    pvk = _pvk(ks, r, DESTINATION_KEY_PARITY)
    block = r.hex(32)
    account = r.digits(12)
    pvki = r.digits(1)
    pvv = r.digits(4)
    r.end()
    clear_pin = pin.sm4_decode(zpk.decrypt(block), account)
    return _compare_pvv(pvk, account, pvki, clear_pin, pvv)


def wc(ks: KeyStore, r: Reader) -> bytes:
    """Change a PIN [project convention, specs/hsm-conventions.md]: verify the current PIN (ZPK
    block) against its Visa PVV and, only when it matches, return the new PIN's PVV and the new PIN
    under the LMK. payShield's CU does this for a TPK; this is its ZPK form, for 3DES (format 0) and
    SM4 (format 0 + FF) blocks, the algorithm chosen as W8 chooses it."""
    alg = r.choice(1, ("1", "2"))
    token = r.lmk_key()
    if alg == "1":
        zpk: crypto.BlockCipher = crypto.des(ks.des_key(ZPK, token, SOURCE_KEY_PARITY))
    else:
        zpk = crypto.sm4(ks.sm4_key(ZPK, token, SOURCE_KEY_PARITY))
    pvk = _pvk(ks, r, DESTINATION_KEY_PARITY)
    size = 16 if alg == "1" else 32
    old_block = r.hex(size)
    new_block = r.hex(size)
    account = r.digits(12)
    pvki = r.digits(1)
    pvv = r.digits(4)
    r.end()
    decode = pin.decode if alg == "1" else pin.sm4_decode
    # Both blocks are decoded first: a malformed new block is refused (20/24) before any verification,
    # so a terminal's bad block never costs the cardholder a PIN try.
    old_pin = decode(zpk.decrypt(old_block), account)
    new_pin = decode(zpk.decrypt(new_block), account)
    _compare_pvv(pvk, account, pvki, old_pin, pvv)
    new_pvv = pin.visa_pvv(pvk, account, pvki, new_pin)
    return new_pvv.encode() + b"L" + hexu(ks.lmk.encrypt_pin(pin.lmk_pin_block(new_pin)))
