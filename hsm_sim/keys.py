"""Keys as commands use them: decrypt from under the LMK (cached), check, encrypt, export, import.

``KeyStore`` is what every command handler receives. Decrypted keys are cached by (key type, token),
so a MAC or PIN command with a key seen before costs no LMK decryption. The cache is bounded and holds
clear keys only in this process's memory.
"""

from __future__ import annotations

from hsm_sim import crypto
from hsm_sim.errors import (
    INCOMPATIBLE_KEY_LENGTH,
    INVALID_KEY_SCHEME,
    HsmFault,
)
from hsm_sim.fields import KeyToken
from hsm_sim.lmk import SCHEME_LENGTH, SCHEME_VARIANTS, KeyType, Lmk

_CACHE_MAX = 50_000
DES_SCHEMES = ("Z", "U", "T")
# Schemes of a 3DES key under a ZMK/TMK: the scheme variants applied to the KEK, or none.
_ZMK_VARIANTS: dict[str, tuple[int, ...]] = {
    "Z": (0,),
    "U": SCHEME_VARIANTS["U"],
    "X": (0, 0),
    "T": SCHEME_VARIANTS["T"],
    "Y": (0, 0, 0),
}
_ZMK_SCHEME_LENGTH = {"Z": 8, "U": 16, "X": 16, "T": 24, "Y": 24}


def hexu(data: bytes) -> bytes:
    """Upper-case hex as ASCII bytes (every H field of a response)."""
    return data.hex().upper().encode("ascii")


class KeyStore:
    def __init__(self, lmk: Lmk) -> None:
        self.lmk = lmk
        self._cache: dict[tuple[str, str, bytes], bytes] = {}

    def _remember(self, slot: tuple[str, str, bytes], clear: bytes) -> None:
        if len(self._cache) >= _CACHE_MAX:
            self._cache.clear()
        self._cache[slot] = clear

    # -- under LMK --------------------------------------------------------------------------------
    def des_key(
        self, kt: KeyType, token: KeyToken, parity_error: str, schemes: tuple[str, ...] = DES_SCHEMES
    ) -> bytes:
        """Clear 3DES/DES key from a token under the LMK; 26 wrong scheme, ``parity_error`` bad parity."""
        if token.scheme not in schemes:
            raise HsmFault(INVALID_KEY_SCHEME if token.scheme == "S" else INCOMPATIBLE_KEY_LENGTH)
        slot = (kt.code, token.scheme, token.data)
        clear = self._cache.get(slot)
        if clear is None:
            clear = self.lmk.decrypt_des_key(kt, token.scheme, token.data)
            if not crypto.has_odd_parity(clear):
                raise HsmFault(parity_error)
            self._remember(slot, clear)
        return clear

    def sm4_key(self, kt: KeyType, token: KeyToken, invalid_error: str) -> bytes:
        if token.scheme != "S":
            raise HsmFault(INVALID_KEY_SCHEME)
        slot = (kt.code, "S", token.data)
        clear = self._cache.get(slot)
        if clear is None:
            clear = self.lmk.decrypt_sm4_key(kt, token.data)
            if not crypto.is_valid_sm4_key(clear):
                raise HsmFault(invalid_error)
            self._remember(slot, clear)
        return clear

    def des_token(self, kt: KeyType, scheme: str, clear: bytes) -> bytes:
        """The wire form of a 3DES key under the LMK: ``U``/``T`` prefix, none for ``Z``."""
        enc = self.lmk.encrypt_des_key(kt, scheme, clear)
        return (b"" if scheme == "Z" else scheme.encode()) + hexu(enc)

    def sm4_token(self, kt: KeyType, clear: bytes) -> bytes:
        return b"S" + hexu(self.lmk.encrypt_sm4_key(kt, clear))

    # -- under a ZMK/TMK (3DES) -------------------------------------------------------------------
    @staticmethod
    def _kek_cipher(kek: bytes, variant: int) -> crypto.BlockCipher:
        if variant == 0:
            return crypto.des(kek)
        # The scheme variant goes into the first byte of the KEK's second key, as under the LMK.
        return crypto.des(kek[:8] + bytes([kek[8] ^ variant]) + kek[9:])

    def export_des(self, kek: bytes, scheme: str, clear: bytes) -> bytes:
        """Wire form of ``clear`` under ``kek`` in scheme Z (16H), U/X (+32H) or T/Y (+48H)."""
        if scheme not in _ZMK_SCHEME_LENGTH:
            raise HsmFault(INVALID_KEY_SCHEME)
        if _ZMK_SCHEME_LENGTH[scheme] != len(clear) or (scheme in "UT" and len(kek) == 8):
            raise HsmFault(INCOMPATIBLE_KEY_LENGTH)
        variants = _ZMK_VARIANTS[scheme]
        enc = b"".join(
            self._kek_cipher(kek, v).encrypt(clear[8 * i : 8 * i + 8]) for i, v in enumerate(variants)
        )
        return (b"" if scheme == "Z" else scheme.encode()) + hexu(enc)

    def import_des(self, kek: bytes, token: KeyToken, lmk_scheme: str, parity_error: str) -> bytes:
        """Clear key from under ``kek``; its length must suit ``lmk_scheme`` (else 27)."""
        if SCHEME_LENGTH[lmk_scheme] != _ZMK_SCHEME_LENGTH[token.scheme] or (
            token.scheme in "UT" and len(kek) == 8
        ):
            raise HsmFault(INCOMPATIBLE_KEY_LENGTH)
        variants = _ZMK_VARIANTS[token.scheme]
        clear = b"".join(
            self._kek_cipher(kek, v).decrypt(token.data[8 * i : 8 * i + 8]) for i, v in enumerate(variants)
        )
        if not crypto.has_odd_parity(clear):
            raise HsmFault(parity_error)
        return clear


def check_value(clear: bytes, sm4: bool = False) -> bytes:
    return hexu(crypto.sm4_check_value(clear) if sm4 else crypto.des_check_value(clear))
