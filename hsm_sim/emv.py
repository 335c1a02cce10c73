"""EMV / PBOC chip cryptography, pure functions: card keys, session keys, ARQC and ARPC.

The HSM's KW command (specs/hsm-conventions.md, "Chip cryptograms") runs these on keys it holds under
its LMK; the pos simulator runs the same functions as the card does, on the card's own key (a card is
personalised with its derived master key, never the issuer's). Both algorithms follow EMV Book 2 Annex
A1 for their block size, 8 bytes for 3DES and 16 for SM4 (PBOC 3.0's SM4 card keys):

- **Card master key (EMV option A).** Y = the rightmost 16 digits of PAN ‖ PAN sequence number
  (2 digits), left-padded with ``0``, as 8 bytes. 3DES: MK = 3DES(IMK)[Y] ‖ 3DES(IMK)[Y ⊕ FF×8], odd
  parity. SM4 **[project convention]**: MK = SM4(IMK)[Y ‖ (Y ⊕ FF×8)], one 16-byte block.
- **Session key per ATC (EMV common session key derivation).** R = ATC ‖ 00…; F1 = R with byte 2 set
  to ``F0``, F2 = R with byte 2 set to ``0F``. 3DES: SK = 3DES(MK)[F1] ‖ 3DES(MK)[F2] (odd parity);
  SM4 (b = 16): SK = SM4(MK)[F1].
- **ARQC** over the transaction data (``specs.tlv.arqc_data``), ISO 9797-1 padding method 2 (``80``
  then zeros to the block). 3DES: MAC algorithm 3 (retail MAC, single-DES CBC with the left half, then
  decrypt with the right and encrypt with the left). SM4: MAC algorithm 1 (SM4-CBC), leftmost 8 bytes.
- **ARPC (EMV method 1).** X = ARQC ⊕ (ARC ‖ 00×6), ARC the 2-byte authorisation response code (the
  answer's DE39 in ASCII). 3DES: ARPC = 3DES(SK)[X]; SM4: ARPC = leftmost 8 bytes of SM4(SK)[X ‖ 00×8].
  Tag 91 (issuer authentication data) carries ARPC ‖ ARC, 10 bytes.
"""

from __future__ import annotations

from typing import Literal

from hsm_sim.crypto import des, set_odd_parity, sm4, xor

Algorithm = Literal["3des", "sm4"]
ALGORITHMS: tuple[Algorithm, ...] = ("3des", "sm4")
_FF8 = b"\xff" * 8


def pan_psn_block(pan: str, psn: str = "00") -> bytes:
    """Y: the rightmost 16 digits of PAN ‖ PSN (2 digits), left-padded with ``0``, as 8 bytes."""
    digits = (pan + psn.rjust(2, "0")[-2:])[-16:].rjust(16, "0")
    if not digits.isdigit():
        raise ValueError("PAN and PAN sequence number must be digits")
    return bytes.fromhex(digits)


def card_master_key(algorithm: Algorithm, imk: bytes, pan: str, psn: str = "00") -> bytes:
    """The card's master key for application cryptograms (MK-AC), derived from the issuer's IMK-AC."""
    y = pan_psn_block(pan, psn)
    if algorithm == "3des":
        cipher = des(imk)
        return set_odd_parity(cipher.encrypt(y) + cipher.encrypt(xor(y, _FF8)))
    return sm4(imk).encrypt(y + xor(y, _FF8))


def session_key(algorithm: Algorithm, mk: bytes, atc: bytes) -> bytes:
    """The session key of one transaction, from the card master key and its ATC (2 bytes)."""
    if len(atc) != 2:
        raise ValueError("the ATC is 2 bytes")
    if algorithm == "3des":
        cipher = des(mk)
        f1 = atc + b"\xf0" + bytes(5)
        f2 = atc + b"\x0f" + bytes(5)
        return set_odd_parity(cipher.encrypt(f1) + cipher.encrypt(f2))
    return sm4(mk).encrypt(atc + b"\xf0" + bytes(13))


def pad_method2(data: bytes, block: int) -> bytes:
    """ISO 9797-1 padding method 2: ``80`` then zeros up to a multiple of ``block``."""
    padded = data + b"\x80"
    return padded + bytes(-len(padded) % block)


def arqc(algorithm: Algorithm, sk: bytes, data: bytes) -> bytes:
    """The 8-byte application cryptogram of ``data`` under the session key."""
    if algorithm == "3des":
        left, right = des(sk[:8]), des(sk[8:16])
        h = bytes(8)
        padded = pad_method2(data, 8)
        for i in range(0, len(padded), 8):
            h = left.encrypt(xor(h, padded[i : i + 8]))
        return left.encrypt(right.decrypt(h))
    cipher = sm4(sk)
    h = bytes(16)
    padded = pad_method2(data, 16)
    for i in range(0, len(padded), 16):
        h = cipher.encrypt(xor(h, padded[i : i + 16]))
    return h[:8]


def arpc(algorithm: Algorithm, sk: bytes, cryptogram: bytes, arc: bytes) -> bytes:
    """The 8-byte ARPC (method 1) answering ``cryptogram`` with the 2-byte response code ``arc``."""
    if len(cryptogram) != 8 or len(arc) != 2:
        raise ValueError("the ARQC is 8 bytes and the ARC 2")
    x = xor(cryptogram, arc + bytes(6))
    if algorithm == "3des":
        return des(sk).encrypt(x)
    return sm4(sk).encrypt(x + bytes(8))[:8]
