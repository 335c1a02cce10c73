"""Reference MAC algorithms from the contracts, used only to check golden vectors (slow and simple)."""

from __future__ import annotations

from Crypto.Cipher import DES
from gmssl.sm4 import SM4_ENCRYPT, CryptSM4


def _xor(a: bytes, b: bytes) -> bytes:
    return bytes(x ^ y for x, y in zip(a, b, strict=True))


def _fold(block: bytes, n: int) -> bytes:
    block += bytes(-len(block) % n)
    r = bytes(n)
    for i in range(0, len(block), n):
        r = _xor(r, block[i:i + n])
    return r


def pos_mac_3des(mak: bytes, block: bytes) -> bytes:
    """CUP "ECB" MAC with a single-length DES MAK (contract: POS dialect, 3DES profile)."""
    des = DES.new(mak, DES.MODE_ECB)
    h = _fold(block, 8).hex().upper().encode()
    t = _xor(des.encrypt(h[:8]), h[8:16])
    return des.encrypt(t).hex().upper()[:8].encode()


def pos_mac_sm4(mak: bytes, block: bytes) -> bytes:
    """The same with 16-byte blocks and SM4 (contract: POS dialect, SM4 profile)."""
    sm4 = CryptSM4()
    sm4.set_key(mak, SM4_ENCRYPT)

    def enc(data: bytes) -> bytes:
        return bytes(sm4.crypt_ecb(data))[:16]

    h = _fold(block, 16).hex().upper().encode()
    t = _xor(enc(h[:16]), h[16:32])
    return enc(t).hex().upper()[:8].encode()


def x919_mac(key: bytes, block: bytes) -> bytes:
    """ANSI X9.19 (retail MAC) with a double-length key, zero padding (contract: H2H DE128, 3DES)."""
    k1, k2 = DES.new(key[:8], DES.MODE_ECB), DES.new(key[8:16], DES.MODE_ECB)
    block += bytes(-len(block) % 8)
    r = bytes(8)
    for i in range(0, len(block), 8):
        r = k1.encrypt(_xor(r, block[i:i + 8]))
    return k1.encrypt(k2.decrypt(r))
