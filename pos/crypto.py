"""Terminal-side cryptography of the POS dialect: what a real terminal's secure element does.

A terminal holds its keys in clear (the TMK injected at the key ceremony, the working keys it
decrypts from the sign-on answer), so everything here works on clear keys:

- ``KeyCipher``: one ECB encryptor/decryptor pair per key, built once and reused (a new
  ``cryptography`` Cipher costs ~12 µs, a reused ECB context ~1 µs per block: the load generator
  sends thousands of MACed requests per second);
- ``unwrap_working_keys``: DE62 of the 0810 decrypted under the TMK, check values verified;
- ``pin_block``: ISO 9564 format 0 (padded with ``FF`` to 16 bytes in the sm4 profile), encrypted
  under the PIK;
- ``KeyCipher.pos_mac``: the UnionPay POS "ECB" MAC (8-byte blocks for 3des, 16 for sm4).

Contract: ../shared/contract/pos-dialect.md, sections "Sign-on working keys", "MAC" and "PIN".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives.ciphers import Cipher, CipherContext, algorithms, modes

Scheme = Literal["3des", "sm4"]
SCHEMES: tuple[Scheme, ...] = ("3des", "sm4")


class TerminalCryptoError(Exception):
    """A key or crypto input is unusable (wrong length, check value mismatch); str() says which."""


def block_size(scheme: Scheme) -> int:
    return 8 if scheme == "3des" else 16


class KeyCipher:
    """ECB with one clear key, contexts cached for the key's lifetime. Never repr()s the key."""

    __slots__ = ("_dec", "_enc", "block", "scheme")

    def __init__(self, scheme: Scheme, key: bytes) -> None:
        self.scheme = scheme
        self.block = block_size(scheme)
        if scheme == "3des":
            if len(key) not in (8, 16, 24):
                raise TerminalCryptoError(f"a 3des key is 8, 16 or 24 bytes, not {len(key)}")
            # Expand to three-key form: same cipher, and no deprecation warning for 1- or 2-key 3DES.
            if len(key) == 8:
                key = key * 3
            elif len(key) == 16:
                key = key + key[:8]
            cipher = Cipher(TripleDES(key), modes.ECB())
        elif scheme == "sm4":
            if len(key) != 16:
                raise TerminalCryptoError(f"an sm4 key is 16 bytes, not {len(key)}")
            cipher = Cipher(algorithms.SM4(key), modes.ECB())
        else:
            raise TerminalCryptoError(f"unknown key scheme {scheme!r}")
        self._enc: CipherContext = cipher.encryptor()
        self._dec: CipherContext = cipher.decryptor()

    def __repr__(self) -> str:
        return f"KeyCipher({self.scheme}, <key>)"

    def encrypt(self, data: bytes) -> bytes:
        if len(data) % self.block:
            raise TerminalCryptoError(f"ECB data must be a multiple of {self.block} bytes")
        return self._enc.update(data)

    def decrypt(self, data: bytes) -> bytes:
        if len(data) % self.block:
            raise TerminalCryptoError(f"ECB data must be a multiple of {self.block} bytes")
        return self._dec.update(data)

    def check_value(self) -> bytes:
        """First 4 bytes of the key's encryption of one block of zeros."""
        return self._enc.update(bytes(self.block))[:4]

    def pos_mac(self, data: bytes) -> bytes:
        """The 8 ASCII hex characters of the UnionPay POS MAC of ``data`` (MTI through DE63)."""
        bs = self.block
        r = xor_blocks(data, bs)
        h = r.hex().upper().encode("ascii")
        frm = int.from_bytes
        t = (frm(self._enc.update(h[:bs]), "big") ^ frm(h[bs:], "big")).to_bytes(bs, "big")
        return self._enc.update(t).hex().upper()[:8].encode("ascii")


def xor_blocks(data: bytes, bs: int) -> bytes:
    """XOR of the ``bs``-byte blocks of ``data`` zero-padded to a multiple of ``bs``."""
    rem = len(data) % bs
    if rem:
        data = data + bytes(bs - rem)
    acc = 0
    frm = int.from_bytes
    for i in range(0, len(data), bs):
        acc ^= frm(data[i : i + bs], "big")
    return acc.to_bytes(bs, "big")


@dataclass(frozen=True)
class WorkingKeys:
    """Clear working keys from a sign-on. repr() hides them."""

    scheme: Scheme
    pik: bytes
    mak: bytes
    tdk: bytes

    def __repr__(self) -> str:
        return (
            f"WorkingKeys({self.scheme}, pik=<{len(self.pik)}>, mak=<{len(self.mak)}>, tdk=<{len(self.tdk)}>)"
        )

    def check_values(self) -> dict[str, str]:
        """Check values (not secret) of the three keys, hex upper case."""
        return {
            "pik": KeyCipher(self.scheme, self.pik).check_value().hex().upper(),
            "mak": KeyCipher(self.scheme, self.mak).check_value().hex().upper(),
            "tdk": KeyCipher(self.scheme, self.tdk).check_value().hex().upper(),
        }


def unwrap_working_keys(scheme: Scheme, tmk: bytes, de62: bytes) -> WorkingKeys:
    """Decrypt DE62 of an 0810 under the TMK and verify every check value.

    3des (60 bytes): PIK 16 | CV 4 | MAK 8 | 8 bytes 00 | CV 4 | TDK 16 | CV 4.
    sm4 (60 bytes):  PIK 16 | CV 4 | MAK 16 | CV 4 | TDK 16 | CV 4.
    """
    if len(de62) != 60:
        raise TerminalCryptoError(f"DE62 of the sign-on answer is {len(de62)} bytes, expected 60")
    tmk_cipher = KeyCipher(scheme, tmk)
    if scheme == "3des":
        if de62[28:36] != bytes(8):
            raise TerminalCryptoError("DE62: the 8 bytes after the single-length MAK are not zero")
        parts = ((de62[0:16], de62[16:20]), (de62[20:28], de62[36:40]), (de62[40:56], de62[56:60]))
    else:
        parts = ((de62[0:16], de62[16:20]), (de62[20:36], de62[36:40]), (de62[40:56], de62[56:60]))
    clear: list[bytes] = []
    for name, (enc, cv) in zip(("PIK", "MAK", "TDK"), parts, strict=True):
        key = tmk_cipher.decrypt(enc)
        if KeyCipher(scheme, key).check_value() != cv:
            raise TerminalCryptoError(f"DE62: {name} check value does not match (wrong TMK?)")
        clear.append(key)
    return WorkingKeys(scheme, clear[0], clear[1], clear[2])


def clear_pin_block(pin: str, pan: str) -> bytes:
    """ISO 9564 format 0 clear PIN block (8 bytes). Never log the result."""
    if not (4 <= len(pin) <= 12 and pin.isdigit()):
        raise TerminalCryptoError("a PIN is 4 to 12 digits")
    if not (pan.isdigit() and 2 <= len(pan) <= 19):
        raise TerminalCryptoError("the PAN must be digits")
    pin_field = bytes.fromhex(f"0{len(pin):X}{pin}".ljust(16, "F"))
    pan_field = bytes.fromhex("0000" + pan[:-1][-12:].rjust(12, "0"))
    return bytes(a ^ b for a, b in zip(pin_field, pan_field, strict=True))


def pin_block(pik: KeyCipher, pin: str, pan: str) -> bytes:
    """DE52: the format-0 block under the PIK (sm4: followed by 8 bytes FF, one 16-byte block)."""
    block = clear_pin_block(pin, pan)
    if pik.scheme == "sm4":
        block += b"\xff" * 8
    return pik.encrypt(block)
