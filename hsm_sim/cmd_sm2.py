"""SM2 commands [project convention, specs/hsm-conventions.md]: SK (generate an SM2 key pair for PIN
encryption) and SP (a PIN encrypted under the SM2 public key → Visa PVV and PIN under LMK).

Codes: the contract puts this project's SM-algorithm key commands in the ``S`` family (SV/ST, SM4);
``SK`` (SM2 Key pair, the role of payShield's EI) and ``SP`` (SM2 PIN) join it. Neither they nor their
responses ``SL`` / ``SQ`` are a code of the contract or of this HSM.

SM2 private key under LMK: ``P``+96H = SM4-ECB under the SM4 LMK of pair 34-35 (key type 00C, variant
0; the pair payShield keeps for private keys) of ``d`` (32 bytes, big-endian) followed by the leftmost 16
bytes of SM3(public key). The second part lets the HSM tell a token that is not one of its keys (error
10, as a key under LMK that fails its parity check): a random 96H would otherwise decrypt to some
usable scalar.

SP's plaintext (16 bytes, what the app encrypts): the ISO 9564 format-0 PIN block bound to the account
(8 bytes) then a freshness stamp, the app's UTC time in seconds since 1970 as 8 bytes big-endian. The
HSM returns the stamp; the host accepts it only when recent and newer than the last one it accepted for
the card (host.pins), so a ciphertext seen on the way cannot be replayed to put a PIN back.
"""

from __future__ import annotations

import hmac
from functools import lru_cache

from hsm_sim import crypto, pin, sm2
from hsm_sim.errors import (
    DESTINATION_KEY_PARITY,
    INVALID_INPUT,
    KEY_FUNCTION_NOT_PERMITTED,
    SOURCE_KEY_PARITY,
    VERIFICATION_FAILURE,
    HsmFault,
)
from hsm_sim.fields import Reader
from hsm_sim.keys import KeyStore, hexu
from hsm_sim.lmk import key_type

SM2_PRIVATE = key_type("00C")  # LMK pair 34-35, variant 0
PVK = key_type("002")
KEY_USE_PIN = "1"
PRIVATE_PREFIX = "P"
PRIVATE_TOKEN_HEX = 96  # (32 + 16 bytes) as hex
PLAINTEXT_BYTES = 16  # format-0 block + stamp
CIPHERTEXT_BYTES = sm2.POINT_BYTES + sm2.HASH_BYTES + PLAINTEXT_BYTES
_TAG = 16


def private_token(ks: KeyStore, d: int, public: bytes) -> bytes:
    """The wire form ``P``+96H of private key d (whose public key is ``public``)."""
    clear = d.to_bytes(32, "big") + sm2.sm3(public)[:_TAG]
    return PRIVATE_PREFIX.encode() + hexu(ks.lmk.encrypt_sm4_key(SM2_PRIVATE, clear))


@lru_cache(maxsize=256)
def _checked(clear: bytes) -> int | None:
    """d when the token's tag matches the public key of d; cached, as the check costs a scalar
    multiplication (keys are few: the issuer's one or two)."""
    d = int.from_bytes(clear[:32], "big")
    try:
        public = sm2.public_key(d)
    except sm2.InvalidKey:
        return None
    return d if hmac.compare_digest(sm2.sm3(public)[:_TAG], clear[32:]) else None


def _private_key(ks: KeyStore, r: Reader) -> int:
    if r.text(1) != PRIVATE_PREFIX:
        raise HsmFault(INVALID_INPUT)
    d = _checked(ks.lmk.decrypt_sm4_key(SM2_PRIVATE, r.hex(PRIVATE_TOKEN_HEX)))
    if d is None:
        raise HsmFault(SOURCE_KEY_PARITY)
    return d


def sk(ks: KeyStore, r: Reader) -> bytes:
    """Generate an SM2 key pair: key use 1N (``1`` PIN encryption, the only one) →
    private key ``P``+96H, public key 130H (04 ‖ x ‖ y), check value 16H (SM3 of the public key)."""
    use = r.digits(1)
    r.end()
    if use != KEY_USE_PIN:
        raise HsmFault(KEY_FUNCTION_NOT_PERMITTED)
    d, public = sm2.generate_keypair()
    return private_token(ks, d, public) + hexu(public) + hexu(sm2.key_check_value(public))


def sp(ks: KeyStore, r: Reader) -> bytes:
    """PIN under SM2 → PVV: private key ``P``+96H, PVK ``U``+32H, ciphertext length 4H (hex characters),
    ciphertext C1 ‖ C3 ‖ C2 (hex), account 12N, PVKI 1N → PVV 4N, PIN under LMK ``L``+32H, stamp 16H."""
    d = _private_key(ks, r)
    pvk = crypto.des(ks.des_key(PVK, r.lmk_key(), DESTINATION_KEY_PARITY, schemes=("U",)))
    length = r.hex_length()
    if length != 2 * CIPHERTEXT_BYTES:
        raise HsmFault(INVALID_INPUT)
    ciphertext = r.hex(length)
    account = r.digits(12)
    pvki = r.digits(1)
    r.end()
    try:
        plain = sm2.decrypt(d, ciphertext)
    except sm2.MalformedCiphertext:
        raise HsmFault(INVALID_INPUT) from None
    except sm2.DecryptionFailed:
        raise HsmFault(VERIFICATION_FAILURE) from None
    clear_pin = pin.decode(plain[:8], account, pin.FORMAT_ISO0)  # 20 / 24 on a bad block
    pvv = pin.visa_pvv(pvk, account, pvki, clear_pin)
    under_lmk = b"L" + hexu(ks.lmk.encrypt_pin(pin.lmk_pin_block(clear_pin)))
    return pvv.encode() + under_lmk + hexu(plain[8:])
