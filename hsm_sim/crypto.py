"""Block-cipher primitives on top of ``cryptography``: cached ECB ciphers, parity, check values.

Creating a ``Cipher`` costs ~12 µs while a reused ECB encryptor costs ~1 µs a block, so ECB
encryptor/decryptor pairs are cached per key (an HSM holds few distinct keys at a time). ECB objects
are never finalized: ``update`` on whole blocks returns its output immediately and keeps no state.
Clear key bytes live only in this process.
"""

from __future__ import annotations

import secrets
from functools import lru_cache
from typing import Any

from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

DES_BLOCK = 8
SM4_BLOCK = 16


class BlockCipher:
    """One key's ECB encryptor and decryptor; ``cbc_*`` build a CBC context per call."""

    __slots__ = ("_algorithm", "_dec", "_enc", "block_size")

    def __init__(self, algorithm: Any, block_size: int) -> None:
        self._algorithm = algorithm
        self.block_size = block_size
        cipher = Cipher(algorithm, modes.ECB())
        self._enc = cipher.encryptor()
        self._dec = cipher.decryptor()

    def encrypt(self, data: bytes) -> bytes:
        """ECB; ``data`` must be a whole number of blocks."""
        out: bytes = self._enc.update(data)
        return out

    def decrypt(self, data: bytes) -> bytes:
        out: bytes = self._dec.update(data)
        return out

    def cbc_encrypt(self, data: bytes, iv: bytes) -> bytes:
        ctx = Cipher(self._algorithm, modes.CBC(iv)).encryptor()
        out: bytes = ctx.update(data) + ctx.finalize()
        return out

    def cbc_decrypt(self, data: bytes, iv: bytes) -> bytes:
        ctx = Cipher(self._algorithm, modes.CBC(iv)).decryptor()
        out: bytes = ctx.update(data) + ctx.finalize()
        return out


@lru_cache(maxsize=8192)
def des(key: bytes) -> BlockCipher:
    """DES (8-byte key), two-key 3DES (16) or three-key 3DES (24), always run as 3DES K1K2K3."""
    if len(key) == 8:
        full = key * 3
    elif len(key) == 16:
        full = key + key[:8]
    elif len(key) == 24:
        full = key
    else:
        raise ValueError(f"DES key of {len(key)} bytes")
    return BlockCipher(TripleDES(full), DES_BLOCK)


@lru_cache(maxsize=8192)
def sm4(key: bytes) -> BlockCipher:
    if len(key) != 16:
        raise ValueError(f"SM4 key of {len(key)} bytes")
    return BlockCipher(algorithms.SM4(key), SM4_BLOCK)


def xor(a: bytes, b: bytes) -> bytes:
    return (int.from_bytes(a, "big") ^ int.from_bytes(b, "big")).to_bytes(len(a), "big")


_ODD = bytes(1 if bin(i).count("1") % 2 else 0 for i in range(256))
_FIX = bytes(i if _ODD[i] else i ^ 1 for i in range(256))


def has_odd_parity(key: bytes) -> bool:
    return all(_ODD[b] for b in key)


def set_odd_parity(key: bytes) -> bytes:
    return key.translate(_FIX)


def is_valid_des_key(key: bytes) -> bool:
    """Odd parity in every byte (which also rules out an all-zero key)."""
    return len(key) in (8, 16, 24) and has_odd_parity(key)


def is_valid_sm4_key(key: bytes) -> bool:
    return len(key) == 16 and any(key)


def random_des_key(length: int) -> bytes:
    """A random odd-parity DES key of 8, 16 or 24 bytes whose halves differ (never a single-DES 3DES)."""
    while True:
        key = set_odd_parity(secrets.token_bytes(length))
        if length == 8 or key[:8] != key[8:16]:
            return key


def random_sm4_key() -> bytes:
    while True:
        key = secrets.token_bytes(16)
        if any(key):
            return key


def des_check_value(key: bytes) -> bytes:
    """E(key, 0x00×8), 8 bytes."""
    return des(key).encrypt(bytes(8))


def sm4_check_value(key: bytes) -> bytes:
    """Leftmost 8 bytes of E(key, 0x00×16)."""
    return sm4(key).encrypt(bytes(16))[:8]


def zero_pad(data: bytes, block: int) -> bytes:
    """Zeros up to a multiple of ``block``; none when aligned; empty data becomes one zero block."""
    rem = len(data) % block
    if rem:
        return data + bytes(block - rem)
    return data if data else bytes(block)
