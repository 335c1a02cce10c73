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
    """One key's ECB encryptor and decryptor, and long-lived CBC contexts.

    Building a CBC context per call costs as much as a whole MAC, so one CBC encryptor and one
    decryptor live as long as the key, and each call undoes the chaining left by the previous one:
    the context's state is the last ciphertext block it saw (``_enc_prev``/``_dec_prev``), so XORing
    that block and the wanted IV into the first block (encrypt), or into the first output block
    (decrypt), gives exactly CBC with the wanted IV. Single-threaded use only (the service is trio).
    """

    __slots__ = ("_cbc_dec", "_cbc_enc", "_dec", "_dec_prev", "_enc", "_enc_prev", "block_size")

    def __init__(self, algorithm: Any, block_size: int) -> None:
        self.block_size = block_size
        zero = bytes(block_size)
        cipher = Cipher(algorithm, modes.ECB())
        self._enc = cipher.encryptor()
        self._dec = cipher.decryptor()
        self._cbc_enc = Cipher(algorithm, modes.CBC(zero)).encryptor()
        self._cbc_dec = Cipher(algorithm, modes.CBC(zero)).decryptor()
        self._enc_prev = zero
        self._dec_prev = zero

    def encrypt(self, data: bytes) -> bytes:
        """ECB; ``data`` must be a whole number of blocks."""
        out: bytes = self._enc.update(data)
        return out

    def decrypt(self, data: bytes) -> bytes:
        out: bytes = self._dec.update(data)
        return out

    def cbc_encrypt(self, data: bytes, iv: bytes) -> bytes:
        """CBC with ``iv``; ``data`` a non-empty whole number of blocks."""
        bs = self.block_size
        first = xor(xor(data[:bs], iv), self._enc_prev)
        out: bytes = self._cbc_enc.update(first + data[bs:])
        self._enc_prev = out[-bs:]
        return out

    def cbc_decrypt(self, data: bytes, iv: bytes) -> bytes:
        bs = self.block_size
        out: bytes = self._cbc_dec.update(data)
        fix = xor(self._dec_prev, iv)
        self._dec_prev = data[-bs:]
        return xor(out[:bs], fix) + out[bs:]


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
