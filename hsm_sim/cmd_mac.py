"""MAC commands: M6/M8 (ISO 9797-1 alg 1 and X9.19, 3DES), MU (UnionPay POS MAC), WM (SM4 CBC-MAC).

Data is binary and its 4H length counts bytes, unless input format 1 (hex) is chosen in M6/M8, when the
length counts hex characters. MAC keys are TAK 003 or ZAK 008; any other key type is 29.
"""

from __future__ import annotations

import hmac

from hsm_sim import crypto, mac
from hsm_sim.errors import (
    DATA_LENGTH,
    INCOMPATIBLE_KEY_LENGTH,
    INVALID_KEY_SCHEME,
    KEY_FUNCTION_NOT_PERMITTED,
    SOURCE_KEY_PARITY,
    VERIFICATION_FAILURE,
    HsmFault,
)
from hsm_sim.fields import Reader
from hsm_sim.keys import KeyStore, hexu
from hsm_sim.lmk import KeyType, key_type

MAC_KEY_TYPES = ("003", "008")


def _mac_key_type(r: Reader) -> KeyType:
    kt = key_type(r.text(3))
    if kt.code not in MAC_KEY_TYPES:
        raise HsmFault(KEY_FUNCTION_NOT_PERMITTED)
    return kt


def _data(r: Reader, hex_input: bool) -> bytes:
    n = r.hex_length()
    if not hex_input:
        return r.raw(n)
    raw = r.raw(n)
    if n % 2:
        raise HsmFault(DATA_LENGTH)
    return Reader(raw).hex(n)


def _m6_fields(ks: KeyStore, r: Reader) -> tuple[bytes, int]:
    r.choice(1, ("0",))  # mode: only block
    hex_input = r.choice(1, ("0", "1")) == "1"
    size = 4 if r.choice(1, ("0", "1")) == "0" else 8
    algorithm = r.choice(1, ("1", "3"))
    r.choice(1, ("1",))  # padding: zeros
    kt = _mac_key_type(r)
    token = r.lmk_key()
    data = _data(r, hex_input)
    key = ks.des_key(kt, token, SOURCE_KEY_PARITY)
    if algorithm == "3":
        if len(key) == 8:
            raise HsmFault(INCOMPATIBLE_KEY_LENGTH)
        value = mac.retail_mac(key, data)
    else:
        value = mac.cbc_mac(crypto.des(key), data)
    return value, size


def m6(ks: KeyStore, r: Reader) -> bytes:
    value, size = _m6_fields(ks, r)
    r.end()
    return hexu(value[:size])


def m8(ks: KeyStore, r: Reader) -> bytes:
    value, size = _m6_fields(ks, r)
    given = r.hex(2 * size)
    r.end()
    if not hmac.compare_digest(value[:size], given):
        raise HsmFault(VERIFICATION_FAILURE)
    return b""


def mu(ks: KeyStore, r: Reader) -> bytes:
    """UnionPay POS "ECB" MAC: algorithm 1 DES (``Z`` key) / two-key 3DES (``U``), 2 SM4 (``S``)."""
    algorithm = r.choice(1, ("1", "2"))
    kt = _mac_key_type(r)
    token = r.lmk_key()
    data = r.raw(r.hex_length())
    r.end()
    if algorithm == "1":
        cipher = crypto.des(ks.des_key(kt, token, SOURCE_KEY_PARITY, schemes=("Z", "U")))
    else:
        if token.scheme != "S":
            raise HsmFault(INVALID_KEY_SCHEME)
        cipher = crypto.sm4(ks.sm4_key(kt, token, SOURCE_KEY_PARITY))
    return mac.cup_ecb_mac(cipher, data)


def wm(ks: KeyStore, r: Reader) -> bytes:
    """SM4 ISO 9797-1 alg 1 MAC (zero padding), leftmost 8 bytes; mode 1 generate, 2 verify."""
    mode = r.choice(1, ("1", "2"))
    r.choice(1, ("1",))  # algorithm
    kt = _mac_key_type(r)
    token = r.lmk_key()
    data = r.raw(r.hex_length())
    given = r.hex(16) if mode == "2" else b""
    r.end()
    value = mac.cbc_mac(crypto.sm4(ks.sm4_key(kt, token, SOURCE_KEY_PARITY)), data)[:8]
    if mode == "1":
        return hexu(value)
    if not hmac.compare_digest(value, given):
        raise HsmFault(VERIFICATION_FAILURE)
    return b""
