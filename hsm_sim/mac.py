"""MAC algorithms: ISO 9797-1 algorithm 1, ANSI X9.19 (ISO 9797-1 alg 3), the UnionPay POS "ECB" MAC.

All use zero padding (``crypto.zero_pad``). CBC-MACs run on the key's long-lived CBC context
(``BlockCipher.cbc_encrypt``).
"""

from __future__ import annotations

import operator
from functools import reduce

from hsm_sim.crypto import BlockCipher, des, xor, zero_pad


def cbc_mac(cipher: BlockCipher, data: bytes) -> bytes:
    """ISO 9797-1 MAC algorithm 1: the last CBC block (IV zero) of the zero-padded data."""
    bs = cipher.block_size
    return cipher.cbc_encrypt(zero_pad(data, bs), bytes(bs))[-bs:]


def retail_mac(key: bytes, data: bytes) -> bytes:
    """ANSI X9.19 with a double- or triple-length key: single-DES CBC with K1, then the last block
    decrypted with K2 and encrypted with K1 (three-key: encrypted with K3)."""
    k1 = des(key[:8])
    data = zero_pad(data, 8)
    r = cbc_mac(k1, data[:-8]) if len(data) > 8 else bytes(8)
    last = xor(r, data[-8:])
    # E_K1(D_K2(E_K1(x))) is one 3DES encryption with the full key (K1K2K1 or K1K2K3).
    return des(key).encrypt(last)


def cup_ecb_mac(cipher: BlockCipher, data: bytes) -> bytes:
    """UnionPay POS "ECB" MAC (pos-dialect.md "MAC"): the 8 ASCII MAC characters.

    XOR all zero-padded blocks into R; H = upper-case hex of R; T = E(H[0:bs]) XOR H[bs:2bs];
    MAC = first 8 characters of upper-case hex(E(T)). bs = 8 (DES/3DES) or 16 (SM4).
    """
    bs = cipher.block_size
    h = xor_blocks(data, bs).hex().upper().encode("ascii")
    t = xor(cipher.encrypt(h[:bs]), h[bs:])
    return cipher.encrypt(t).hex().upper()[:8].encode("ascii")


def xor_blocks(data: bytes, bs: int) -> bytes:
    """XOR of the ``bs``-byte blocks (8 or 16) of ``data`` zero-padded (``zero_pad``) to whole blocks."""
    # Word by word in C: 8-byte words (any byte order will do for XOR); a 16-byte block is two words,
    # the even and the odd ones.
    words = memoryview(zero_pad(data, bs)).cast("Q")
    if bs == 8:
        return reduce(operator.xor, words, 0).to_bytes(8, "little")
    return reduce(operator.xor, words[0::2], 0).to_bytes(8, "little") + reduce(
        operator.xor, words[1::2], 0
    ).to_bytes(8, "little")
