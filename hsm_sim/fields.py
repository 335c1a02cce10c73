"""Reading request fields: a cursor over the bytes after the command code.

Every read that does not parse (a non-hex character in an H field, a non-digit in an N field, a length
running past the frame) raises ``HsmFault("15")``. Hex is accepted in either case and returned as bytes.
"""

from __future__ import annotations

import binascii
from dataclasses import dataclass

from hsm_sim.errors import INVALID_INPUT, INVALID_KEY_SCHEME, HsmFault

_HEX = b"0123456789ABCDEFabcdef"
_PRINTABLE = bytes(range(0x21, 0x7F))

# Key schemes a key under the LMK may carry, and the hex characters that follow each.
LMK_SCHEME_LENGTH = {"U": 32, "T": 48, "S": 32}


@dataclass(frozen=True, slots=True)
class KeyToken:
    """A key as sent on the wire: its scheme (``Z`` when it had no prefix) and its encrypted bytes."""

    scheme: str
    data: bytes

    @property
    def wire(self) -> str:
        prefix = "" if self.scheme == "Z" else self.scheme
        return prefix + self.data.hex().upper()


class Reader:
    __slots__ = ("buf", "pos")

    def __init__(self, buf: bytes, pos: int = 0) -> None:
        self.buf = buf
        self.pos = pos

    def remaining(self) -> int:
        return len(self.buf) - self.pos

    def at_end(self) -> bool:
        return self.pos >= len(self.buf)

    def end(self) -> None:
        """Nothing may follow the last field."""
        if self.pos != len(self.buf):
            raise HsmFault(INVALID_INPUT)

    def raw(self, n: int) -> bytes:
        end = self.pos + n
        if n < 0 or end > len(self.buf):
            raise HsmFault(INVALID_INPUT)
        out = self.buf[self.pos : end]
        self.pos = end
        return out

    def peek(self) -> str:
        if self.pos >= len(self.buf):
            raise HsmFault(INVALID_INPUT)
        return chr(self.buf[self.pos])

    def optional(self, marker: bytes) -> bool:
        """Consume ``marker`` when it comes next (``;`` before optional fields)."""
        if self.buf.startswith(marker, self.pos):
            self.pos += len(marker)
            return True
        return False

    def text(self, n: int) -> str:
        """n characters that must be printable ASCII (codes, flags)."""
        data = self.raw(n)
        if data.translate(None, _PRINTABLE):
            raise HsmFault(INVALID_INPUT)
        return data.decode("ascii")

    def choice(self, n: int, allowed: tuple[str, ...]) -> str:
        value = self.text(n)
        if value not in allowed:
            raise HsmFault(INVALID_INPUT)
        return value

    def digits(self, n: int) -> str:
        data = self.raw(n)
        if not data.isdigit() and n:  # bytes.isdigit: ASCII 0-9 only
            raise HsmFault(INVALID_INPUT)
        return data.decode("ascii")

    def number(self, n: int) -> int:
        return int(self.digits(n))

    def hex(self, n: int) -> bytes:
        """n hex characters → n/2 bytes (n even)."""
        try:
            return binascii.unhexlify(self.raw(n))  # either case; anything else is an error
        except binascii.Error:
            raise HsmFault(INVALID_INPUT) from None

    def hex_length(self) -> int:
        """A 4H length field."""
        data = self.raw(4)
        if data.translate(None, _HEX):
            raise HsmFault(INVALID_INPUT)
        return int(data, 16)

    def lmk_key(self) -> KeyToken:
        """A key under the LMK: ``U``+32H, ``T``+48H, ``S``+32H, or 16H without prefix (scheme Z)."""
        c = self.peek()
        if c in LMK_SCHEME_LENGTH:
            self.pos += 1
            return KeyToken(c, self.hex(LMK_SCHEME_LENGTH[c]))
        if c in "0123456789ABCDEFabcdef":
            return KeyToken("Z", self.hex(16))
        if c in "XY":  # schemes that exist, but only under a ZMK/TMK
            raise HsmFault(INVALID_KEY_SCHEME)
        raise HsmFault(INVALID_INPUT)

    def zmk_key(self) -> KeyToken:
        """A 3DES key under a ZMK/TMK: ``U``+32H, ``X``+32H, ``T``/``Y``+48H, or 16H (single length)."""
        c = self.peek()
        if c in "UX":
            self.pos += 1
            return KeyToken(c, self.hex(32))
        if c in "TY":
            self.pos += 1
            return KeyToken(c, self.hex(48))
        if c in "0123456789ABCDEFabcdef":
            return KeyToken("Z", self.hex(16))
        if c == "S":
            raise HsmFault(INVALID_KEY_SCHEME)
        raise HsmFault(INVALID_INPUT)
