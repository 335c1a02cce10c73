"""SM2 public-key encryption (GB/T 32918.1 and .4, curve sm2p256v1), pure Python on integers.

What the HSM needs and nothing more: key pairs, encryption and decryption. SM3 (GB/T 32905) comes from
``cryptography``. Layouts (GB/T 32918):

- public key: ``04 ‖ x ‖ y`` (65 bytes, the uncompressed point; 130H on the wire);
- ciphertext: ``C1 ‖ C3 ‖ C2`` (the 2012 standard's order, gmssl's ``CryptSM2(mode=1)``):
  C1 = k·G as ``04 ‖ x1 ‖ y1`` (65 bytes), C3 = SM3(x2 ‖ M ‖ y2) (32 bytes), C2 = M ⊕ KDF(x2 ‖ y2, |M|).
  gmssl writes and reads C1 without the ``04`` byte: add or drop it at that boundary.
- KDF: SM3(Z ‖ ct) for a 32-bit big-endian counter ct = 1, 2, ..., concatenated and cut to klen.

Care on decryption: C1 must be a point on the curve (coordinates below p, the curve equation holds; an
off-curve point would leak the private key to an invalid-curve attack), and C3 is compared in constant
time; any failure raises before any part of M leaves this module. Scalar multiplication is a Montgomery
ladder (the same add and double for every bit of a fixed 256-bit scalar), which avoids the gross
timing differences of double-and-add; Python integers are not constant-time, which is acceptable for
this software HSM and would not be for a hardware one.
"""

from __future__ import annotations

import hmac
import secrets

from cryptography.hazmat.primitives import hashes

P = 0xFFFFFFFEFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF00000000FFFFFFFFFFFFFFFF
A = P - 3
B = 0x28E9FA9E9D9F5E344D5A9E4BCF6509A7F39789F515AB8F92DDBCBD414D940E93
N = 0xFFFFFFFEFFFFFFFFFFFFFFFFFFFFFFFF7203DF6B21C6052B53BBF40939D54123
GX = 0x32C4AE2C1F1981195F9904466A39C9948FE30BBFF2660BE1715A4589334C74C7
GY = 0xBC3736A2F4F6779C59BDCEE36B692153D0A9877CC62A474002DF32E52139F0A0

POINT_BYTES = 65  # 04 ‖ x ‖ y
HASH_BYTES = 32
MIN_CIPHERTEXT = POINT_BYTES + HASH_BYTES + 1

_Jacobian = tuple[int, int, int]
_INFINITY: _Jacobian = (1, 1, 0)


class Sm2Error(ValueError):
    """Base of the errors below."""


class MalformedCiphertext(Sm2Error):
    """Too short, or C1 is not an uncompressed point on the curve."""


class DecryptionFailed(Sm2Error):
    """C3 does not match (wrong key or altered ciphertext), or the KDF gave all zeros."""


class InvalidKey(Sm2Error):
    """A private key out of [1, n-2] or a public key that is not a point on the curve."""


def sm3(data: bytes) -> bytes:
    h = hashes.Hash(hashes.SM3())
    h.update(data)
    return h.finalize()


def kdf(z: bytes, klen: int) -> bytes:
    """GB/T 32918.4 5.4.3: klen bytes of SM3(z ‖ ct), ct = 1, 2, ... (32-bit big-endian)."""
    out = bytearray()
    ct = 1
    while len(out) < klen:
        out += sm3(z + ct.to_bytes(4, "big"))
        ct += 1
    return bytes(out[:klen])


# -- curve arithmetic (Jacobian coordinates, a = -3) ---------------------------------------------
def _double(p1: _Jacobian) -> _Jacobian:
    x1, y1, z1 = p1
    if z1 == 0 or y1 == 0:
        return _INFINITY
    delta = z1 * z1 % P
    gamma = y1 * y1 % P
    beta = x1 * gamma % P
    alpha = 3 * (x1 - delta) * (x1 + delta) % P
    x3 = (alpha * alpha - 8 * beta) % P
    z3 = ((y1 + z1) ** 2 - gamma - delta) % P
    y3 = (alpha * (4 * beta - x3) - 8 * gamma * gamma) % P
    return x3, y3, z3


def _add(p1: _Jacobian, p2: _Jacobian) -> _Jacobian:
    if p1[2] == 0:
        return p2
    if p2[2] == 0:
        return p1
    x1, y1, z1 = p1
    x2, y2, z2 = p2
    z1z1 = z1 * z1 % P
    z2z2 = z2 * z2 % P
    u1 = x1 * z2z2 % P
    u2 = x2 * z1z1 % P
    s1 = y1 * z2 * z2z2 % P
    s2 = y2 * z1 * z1z1 % P
    if u1 == u2:
        return _double(p1) if s1 == s2 else _INFINITY
    h = (u2 - u1) % P
    r = (s2 - s1) % P
    hh = h * h % P
    hhh = h * hh % P
    v = u1 * hh % P
    x3 = (r * r - hhh - 2 * v) % P
    y3 = (r * (v - x3) - s1 * hhh) % P
    z3 = h * z1 * z2 % P
    return x3, y3, z3


def _affine(p1: _Jacobian) -> tuple[int, int] | None:
    x, y, z = p1
    if z == 0:
        return None
    zi = pow(z, -1, P)
    zi2 = zi * zi % P
    return x * zi2 % P, y * zi2 * zi % P


def multiply(k: int, point: tuple[int, int]) -> tuple[int, int] | None:
    """k·point (None for the point at infinity), by a Montgomery ladder over 256 bits."""
    r0, r1 = _INFINITY, (point[0], point[1], 1)
    for i in range(255, -1, -1):
        if (k >> i) & 1:
            r0, r1 = _add(r0, r1), _double(r1)
        else:
            r0, r1 = _double(r0), _add(r0, r1)
    return _affine(r0)


def on_curve(x: int, y: int) -> bool:
    return 0 <= x < P and 0 <= y < P and (y * y - (x * x * x + A * x + B)) % P == 0


def encode_point(x: int, y: int) -> bytes:
    return b"\x04" + x.to_bytes(32, "big") + y.to_bytes(32, "big")


def decode_point(data: bytes) -> tuple[int, int] | None:
    """The point in an uncompressed encoding, or None when it is not one on the curve."""
    if len(data) != POINT_BYTES or data[0] != 4:
        return None
    x, y = int.from_bytes(data[1:33], "big"), int.from_bytes(data[33:], "big")
    return (x, y) if on_curve(x, y) else None


# -- keys -----------------------------------------------------------------------------------------
def public_key(d: int) -> bytes:
    """The public key 04 ‖ x ‖ y of private key d (1 <= d <= n-2, GB/T 32918.1 6.1)."""
    if not 1 <= d <= N - 2:
        raise InvalidKey("private key out of range")
    q = multiply(d, (GX, GY))
    assert q is not None  # d < n: never the point at infinity
    return encode_point(*q)


def generate_keypair() -> tuple[int, bytes]:
    """(private key d, public key 04 ‖ x ‖ y)."""
    d = 1 + secrets.randbelow(N - 2)
    return d, public_key(d)


def key_check_value(public: bytes) -> bytes:
    """The project's check value of an SM2 public key: the leftmost 8 bytes of SM3(04 ‖ x ‖ y)."""
    return sm3(public)[:8]


# -- encryption -----------------------------------------------------------------------------------
def encrypt(public: bytes, message: bytes, k: int | None = None) -> bytes:
    """C1 ‖ C3 ‖ C2 of ``message`` under ``public``. ``k`` (the ephemeral scalar) only for worked
    examples and tests; otherwise drawn at random, and drawn again in the (negligible) case of an
    all-zero KDF output."""
    if not message:
        raise Sm2Error("nothing to encrypt")
    q = decode_point(public)
    if q is None:
        raise InvalidKey("public key is not a point on the curve")
    while True:
        kk = k if k is not None else 1 + secrets.randbelow(N - 1)
        if not 1 <= kk <= N - 1:
            raise Sm2Error("ephemeral scalar out of range")
        c1 = multiply(kk, (GX, GY))
        shared = multiply(kk, q)
        assert c1 is not None and shared is not None  # kk < n and q has order n (h = 1)
        x2, y2 = shared[0].to_bytes(32, "big"), shared[1].to_bytes(32, "big")
        t = kdf(x2 + y2, len(message))
        if any(t):
            break
        if k is not None:
            raise Sm2Error("this ephemeral scalar gives an all-zero key stream")
    c2 = bytes(m ^ s for m, s in zip(message, t, strict=True))
    c3 = sm3(x2 + message + y2)
    return encode_point(*c1) + c3 + c2


def decrypt(d: int, ciphertext: bytes) -> bytes:
    """M from C1 ‖ C3 ‖ C2 under private key d; MalformedCiphertext or DecryptionFailed, never a part
    of a message that did not check."""
    if len(ciphertext) < MIN_CIPHERTEXT:
        raise MalformedCiphertext("ciphertext too short")
    c1 = decode_point(ciphertext[:POINT_BYTES])
    if c1 is None:
        raise MalformedCiphertext("C1 is not a point on the curve")
    c3 = ciphertext[POINT_BYTES : POINT_BYTES + HASH_BYTES]
    c2 = ciphertext[POINT_BYTES + HASH_BYTES :]
    # h = 1 for sm2p256v1, so S = h·C1 is C1 itself: not the point at infinity, being affine.
    shared = multiply(d, c1)
    if shared is None:
        raise DecryptionFailed("d·C1 is the point at infinity")
    x2, y2 = shared[0].to_bytes(32, "big"), shared[1].to_bytes(32, "big")
    t = kdf(x2 + y2, len(c2))
    if not any(t):
        raise DecryptionFailed("all-zero key stream")
    message = bytes(c ^ s for c, s in zip(c2, t, strict=True))
    if not hmac.compare_digest(sm3(x2 + message + y2), c3):
        raise DecryptionFailed("C3 does not match")
    return message
