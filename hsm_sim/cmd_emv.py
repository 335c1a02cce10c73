"""Chip cryptograms: KW (verify an ARQC and/or generate an ARPC) [project convention].

Modelled on payShield's KW (EMV 4.x ARQC verification / ARPC generation), with this project's field
styles: hex and digit fields, binary transaction data behind a 4H byte count, as MU and M6 take data.
The layout, the codes and a worked example are in specs/hsm-conventions.md, "Chip cryptograms: KW";
the algorithms are ``hsm_sim.emv`` (EMV option A card key, common session key, ARQC, ARPC method 1).

The issuer master key is always key type ``109`` (MK-AC, LMK pair 28-29 variant 1), so it has no
key-type field: a key of another type decrypts to other bytes and, under 3DES, fails its parity check
(``10``); an SM4 key carries no parity, so it simply does not verify (``01``).
"""

from __future__ import annotations

import hmac

from hsm_sim import emv
from hsm_sim.errors import DATA_LENGTH, SOURCE_KEY_PARITY, VERIFICATION_FAILURE, HsmFault
from hsm_sim.fields import Reader
from hsm_sim.keys import KeyStore, hexu
from hsm_sim.lmk import key_type

IMK_AC = key_type("109")
MAX_DATA = 255  # bytes: ARQC_TAGS with the longest 9F10 (32 bytes) need about 70
SCHEMES: dict[str, emv.Algorithm] = {"1": "3des", "2": "sm4"}
MODE_VERIFY, MODE_VERIFY_ARPC, MODE_ARPC = "0", "1", "2"


def kw(ks: KeyStore, r: Reader) -> bytes:
    """mode 1N, scheme 1N, IMK-AC, PAN/PSN block 16N, ATC 4H, [data length 4H + data: modes 0/1],
    ARQC 16H, [ARC 4H: modes 1/2] → nothing (mode 0) or the ARPC 16H; ``01`` when the ARQC fails."""
    mode = r.choice(1, (MODE_VERIFY, MODE_VERIFY_ARPC, MODE_ARPC))
    algorithm = SCHEMES[r.choice(1, tuple(SCHEMES))]
    token = r.lmk_key()
    y = r.digits(16)
    atc = r.hex(4)
    data = b""
    if mode != MODE_ARPC:
        data = r.raw(r.hex_length())
        if not 1 <= len(data) <= MAX_DATA:
            raise HsmFault(DATA_LENGTH)
    cryptogram = r.hex(16)
    arc = r.hex(4) if mode != MODE_VERIFY else b""
    r.end()
    if algorithm == "3des":
        imk = ks.des_key(IMK_AC, token, SOURCE_KEY_PARITY, schemes=("U",))
    else:
        imk = ks.sm4_key(IMK_AC, token, SOURCE_KEY_PARITY)
    # The PAN/PSN block is Y itself: pan_psn_block keeps the rightmost 16 digits, which are Y's own.
    mk = emv.card_master_key(algorithm, imk, y[:14], y[14:])
    sk = emv.session_key(algorithm, mk, atc)
    if mode != MODE_ARPC and not hmac.compare_digest(emv.arqc(algorithm, sk, data), cryptogram):
        raise HsmFault(VERIFICATION_FAILURE)
    if mode == MODE_VERIFY:
        return b""
    return hexu(emv.arpc(algorithm, sk, cryptogram, arc))
