"""Data encryption at rest: M0 (encrypt) and M2 (decrypt) with a data key (key type 00A).

Key ``U``/``T`` → 3DES (8-byte blocks, IV 16H), ``S`` → SM4 (16-byte blocks, IV 32H). Data that is
empty, not a whole number of blocks, or odd-length hex is ``80``. CBC returns as IV out the last
ciphertext block, so a long field can be processed in pieces.
"""

from __future__ import annotations

from hsm_sim import crypto
from hsm_sim.errors import (
    DATA_LENGTH,
    INVALID_KEY_SCHEME,
    KEY_FUNCTION_NOT_PERMITTED,
    SOURCE_KEY_PARITY,
    HsmFault,
)
from hsm_sim.fields import Reader
from hsm_sim.keys import KeyStore, hexu
from hsm_sim.lmk import key_type


def _crypt(ks: KeyStore, r: Reader, encrypt: bool) -> bytes:
    cbc = r.choice(2, ("00", "01")) == "01"
    hex_in = r.choice(1, ("0", "1")) == "1"
    hex_out = r.choice(1, ("0", "1")) == "1"
    kt = key_type(r.text(3))
    if kt.code != "00A":
        raise HsmFault(KEY_FUNCTION_NOT_PERMITTED)
    token = r.lmk_key()
    if token.scheme == "S":
        cipher = crypto.sm4(ks.sm4_key(kt, token, SOURCE_KEY_PARITY))
    elif token.scheme in ("U", "T"):
        cipher = crypto.des(ks.des_key(kt, token, SOURCE_KEY_PARITY))
    else:
        raise HsmFault(INVALID_KEY_SCHEME)
    bs = cipher.block_size
    iv = r.hex(2 * bs) if cbc else b""
    n = r.hex_length()
    raw = r.raw(n)
    r.end()
    if hex_in:
        if n % 2:
            raise HsmFault(DATA_LENGTH)
        data = Reader(raw).hex(n)
    else:
        data = raw
    if not data or len(data) % bs:
        raise HsmFault(DATA_LENGTH)
    last = b""
    if cbc:
        out = cipher.cbc_encrypt(data, iv) if encrypt else cipher.cbc_decrypt(data, iv)
        last = (out if encrypt else data)[-bs:]
    else:
        out = cipher.encrypt(data) if encrypt else cipher.decrypt(data)
    body = hexu(out) if hex_out else out
    if len(body) > 0xFFFF:
        raise HsmFault(DATA_LENGTH)
    head = hexu(last) if cbc else b""
    return head + b"%04X" % len(body) + body


def m0(ks: KeyStore, r: Reader) -> bytes:
    return _crypt(ks, r, encrypt=True)


def m2(ks: KeyStore, r: Reader) -> bytes:
    return _crypt(ks, r, encrypt=False)
