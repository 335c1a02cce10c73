"""Key management commands: NC, B2, A0, A4, A6, A8, BU (3DES) and WI, WK, SV, ST (SM4).

Each handler reads its fields from a ``Reader`` and returns the response fields; an error is raised
as ``HsmFault``. Key types: a ZMK is 000, a TMK 002 (``;`` flag 0 / 1). A6, A8, SV and ST also take an
optional trailing ``;`` + flag (0 ZMK, the default; 1 TMK) **[project extension]** so keys can be moved
under a TMK as well.
"""

from __future__ import annotations

from functools import reduce

from hsm_sim import crypto
from hsm_sim.errors import (
    DESTINATION_KEY_PARITY,
    INVALID_INPUT,
    INVALID_KEY_LENGTH_FLAG,
    INVALID_KEY_SCHEME,
    SOURCE_KEY_PARITY,
    HsmFault,
)
from hsm_sim.fields import Reader
from hsm_sim.keys import KeyStore, check_value, hexu
from hsm_sim.lmk import SCHEME_LENGTH, KeyType, key_type, key_type_from_pair_code

FIRMWARE = b"PSW-01.00"  # 9A
ZMK, TMK = key_type("000"), key_type("002")


def _kek_type(r: Reader) -> KeyType:
    return ZMK if r.choice(1, ("0", "1")) == "0" else TMK


def _optional_kek_flag(r: Reader) -> KeyType:
    if r.optional(b";"):
        return _kek_type(r)
    return ZMK


def _xor_all(parts: list[bytes]) -> bytes:
    return reduce(crypto.xor, parts)


def nc(ks: KeyStore, r: Reader) -> bytes:
    r.end()
    return hexu(ks.lmk.check_value()) + FIRMWARE


def b2(ks: KeyStore, r: Reader) -> bytes:
    data = r.raw(r.hex_length())
    r.end()
    return data


def a0(ks: KeyStore, r: Reader) -> bytes:
    """Generate a 3DES key; mode 1 also exports it under a ZMK (flag 0) or TMK (flag 1)."""
    mode = r.choice(1, ("0", "1"))
    kt = key_type(r.text(3))
    scheme = r.text(1)
    if scheme not in ("Z", "U", "T"):
        raise HsmFault(INVALID_KEY_SCHEME)
    kek = None
    export_scheme = ""
    if mode == "1":
        if not r.optional(b";"):
            raise HsmFault(INVALID_INPUT)
        kek_type = _kek_type(r)
        kek = ks.des_key(kek_type, r.lmk_key(), SOURCE_KEY_PARITY)
        export_scheme = r.text(1)
        if export_scheme not in ("Z", "U", "X"):
            raise HsmFault(INVALID_KEY_SCHEME)
    r.end()
    clear = crypto.random_des_key(SCHEME_LENGTH[scheme])
    out = ks.des_token(kt, scheme, clear)
    if kek is not None:
        out += ks.export_des(kek, export_scheme, clear)
    return out + check_value(clear)


def a4(ks: KeyStore, r: Reader) -> bytes:
    """Form a 3DES key from 2-9 clear components (XORed) [project convention for custodian entry]."""
    n = r.number(1)
    if not 2 <= n <= 9:
        raise HsmFault(INVALID_INPUT)
    kt = key_type(r.text(3))
    scheme = r.text(1)
    if scheme not in ("U", "T"):
        raise HsmFault(INVALID_KEY_SCHEME)
    size = SCHEME_LENGTH[scheme]
    clear = _xor_all([r.hex(2 * size) for _ in range(n)])
    r.end()
    if not crypto.has_odd_parity(clear):
        raise HsmFault(SOURCE_KEY_PARITY)
    return ks.des_token(kt, scheme, clear) + check_value(clear)


def a6(ks: KeyStore, r: Reader) -> bytes:
    """Import a key from under a ZMK to under the LMK."""
    kt = key_type(r.text(3))
    kek_token = r.lmk_key()
    token = r.zmk_key()
    scheme = r.text(1)
    if scheme not in ("Z", "U", "T"):
        raise HsmFault(INVALID_KEY_SCHEME)
    kek_type = _optional_kek_flag(r)
    r.end()
    kek = ks.des_key(kek_type, kek_token, SOURCE_KEY_PARITY)
    clear = ks.import_des(kek, token, scheme, DESTINATION_KEY_PARITY)
    return ks.des_token(kt, scheme, clear) + check_value(clear)


def a8(ks: KeyStore, r: Reader) -> bytes:
    """Export a key from under the LMK to under a ZMK."""
    kt = key_type(r.text(3))
    kek_token = r.lmk_key()
    token = r.lmk_key()
    export_scheme = r.text(1)
    kek_type = _optional_kek_flag(r)
    r.end()
    kek = ks.des_key(kek_type, kek_token, SOURCE_KEY_PARITY)
    clear = ks.des_key(kt, token, DESTINATION_KEY_PARITY)
    return ks.export_des(kek, export_scheme, clear) + check_value(clear)


def bu(ks: KeyStore, r: Reader) -> bytes:
    """Check value of a key under the LMK (an ``S`` key gives its SM4 check value) [S: extension]."""
    code2 = r.text(2).upper()
    kt = None if code2 == "FF" else key_type_from_pair_code(code2)
    flag = r.text(1)
    if flag not in ("0", "1", "2"):
        raise HsmFault(INVALID_KEY_LENGTH_FLAG)
    token = r.lmk_key()
    if kt is None:
        if not r.optional(b";"):
            raise HsmFault(INVALID_INPUT)
        kt = key_type(r.text(3))
    r.end()
    if {"Z": "0", "U": "1", "S": "1", "T": "2"}[token.scheme] != flag:
        raise HsmFault(INVALID_KEY_LENGTH_FLAG)
    if token.scheme == "S":
        return check_value(ks.sm4_key(kt, token, SOURCE_KEY_PARITY), sm4=True)
    return check_value(ks.des_key(kt, token, SOURCE_KEY_PARITY))


# -- SM4 ------------------------------------------------------------------------------------------
def wi(ks: KeyStore, r: Reader) -> bytes:
    """Generate an SM4 key; mode 1 also exports it under an SM4 ZMK (flag 0) or TMK (flag 1)."""
    mode = r.choice(1, ("0", "1"))
    kt = key_type(r.text(3))
    kek = None
    if mode == "1":
        if not r.optional(b";"):
            raise HsmFault(INVALID_INPUT)
        kek_type = _kek_type(r)
        kek = ks.sm4_key(kek_type, r.lmk_key(), SOURCE_KEY_PARITY)
    r.end()
    clear = crypto.random_sm4_key()
    out = ks.sm4_token(kt, clear)
    if kek is not None:
        out += hexu(crypto.sm4(kek).encrypt(clear))
    return out + check_value(clear, sm4=True)


def wk(ks: KeyStore, r: Reader) -> bytes:
    """Form an SM4 key from 2-9 clear components (XORed)."""
    n = r.number(1)
    if not 2 <= n <= 9:
        raise HsmFault(INVALID_INPUT)
    kt = key_type(r.text(3))
    clear = _xor_all([r.hex(32) for _ in range(n)])
    r.end()
    if not crypto.is_valid_sm4_key(clear):
        raise HsmFault(SOURCE_KEY_PARITY)
    return ks.sm4_token(kt, clear) + check_value(clear, sm4=True)


def sv(ks: KeyStore, r: Reader) -> bytes:
    """Import an SM4 key from under an SM4 ZMK (or TMK with ``;1``)."""
    kt = key_type(r.text(3))
    kek_token = r.lmk_key()
    under = r.hex(32)
    kek_type = _optional_kek_flag(r)
    r.end()
    kek = ks.sm4_key(kek_type, kek_token, SOURCE_KEY_PARITY)
    clear = crypto.sm4(kek).decrypt(under)
    if not crypto.is_valid_sm4_key(clear):
        raise HsmFault(DESTINATION_KEY_PARITY)
    return ks.sm4_token(kt, clear) + check_value(clear, sm4=True)


def st(ks: KeyStore, r: Reader) -> bytes:
    """Export an SM4 key to under an SM4 ZMK (or TMK with ``;1``)."""
    kt = key_type(r.text(3))
    kek_token = r.lmk_key()
    token = r.lmk_key()
    kek_type = _optional_kek_flag(r)
    r.end()
    kek = ks.sm4_key(kek_type, kek_token, SOURCE_KEY_PARITY)
    clear = ks.sm4_key(kt, token, DESTINATION_KEY_PARITY)
    return hexu(crypto.sm4(kek).encrypt(clear)) + check_value(clear, sm4=True)
