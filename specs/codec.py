"""The production codec: compiled once from the spec data in ``specs.dialects``.

Usage (the whole public API)::

    from specs.codec import codec_for
    from specs.errors import DecodeError, EncodeError

    c = codec_for("pos", "3des")          # dialect "pos" | "h2h", profile "3des" | "sm4"; cached
    raw: bytes = c.encode(msg)            # MTI + bitmap(s) + fields; no LEN/TPDU/header (specs.framing)
    msg = c.decode(raw)                   # raises only DecodeError for any bad input

    # MAC (POS DE64 / H2H DE128): encode with a placeholder, MAC the block, put the MAC in.
    raw = c.encode({**msg, "64": bytes(8)})
    raw = c.with_mac(raw, mac_over(c.mac_block(raw)))   # mac_block = MTI .. byte before the MAC
    # on receipt: verify mac_over(c.mac_block(raw)) against msg["64"]; c.has_mac(raw) says if DE64 is there

    c.fields                              # the dialect's field keys in wire order; c.spec = pyiso8583 spec

Messages are plain dicts like pyiso8583's: ``"t"`` is the MTI string, fields are keyed by their number
as a string ("2" .. "128"). Text fields (n, z, an, ans) are ``str``; binary fields (POS DE52/55/62/64,
H2H DE52/DE128) are ``bytes``. Tracks use ``=`` as the separator (the POS wire carries it as nibble D).
Bitmaps are computed from the keys present: keys "p" and "1" and keys whose value is None are ignored.
Fixed an/ans values shorter than the field are right-padded with spaces; every other value must have
a valid length and alphabet, else ``EncodeError`` names the field.

``decode`` validates everything the contract says (digits-only n fields, BCD lengths, maxima, known
MTIs, bitmap bits for fields the dialect has, pad nibbles, truncation, trailing bytes). The error
names the first bad field and the reason, and ``DecodeError.partial`` carries the readable,
non-secret fields (MTI, DE11, DE41, DE42, ...): a value error in one field (bad digit, length over
maximum) does not stop the decoder from reading the fields after it, so a format-error answer can
still echo them.
"""

from __future__ import annotations

import binascii
import functools
from collections.abc import Callable, Mapping
from typing import Any

from specs.dialects import KNOWN_MTIS, MAC_FIELD, FieldSpec, Spec, spec_for
from specs.errors import DecodeError, EncodeError

Message = dict[str, Any]
"""A decoded message: {"t": MTI, "2": PAN, ...}; values are str, or bytes for binary fields."""

__all__ = ["Codec", "Message", "codec_for"]


class _Bad(Exception):
    """Internal: a field is invalid. ``end`` is where the field ends when its extent is known (the
    decoder can go on to read later fields), None when parsing cannot continue."""

    __slots__ = ("end", "reason")

    def __init__(self, reason: str, end: int | None = None) -> None:
        self.reason = reason
        self.end = end


_Encoder = Callable[[Any], bytes]
_Decoder = Callable[[bytes, int], tuple[Any, int]]

_DIGITS = b"0123456789"
_ALLOWED: dict[str, bytes] = {
    "n": _DIGITS,
    "z": _DIGITS + b"=",
    "an": _DIGITS + b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz ",
    "ans": bytes(range(0x20, 0x7F)),
    "hex": b"0123456789ABCDEFabcdef",
}
_ALPHABET_NAME = {"n": "digits", "z": "digits and '='", "an": "letters, digits and space",
                  "ans": "printable ASCII", "hex": "hexadecimal"}


@functools.cache
def _len_table(enc: str, width: int) -> dict[bytes, int]:
    """Wire length prefix -> length, for every valid prefix ("bcd": width bytes, "ascii": width chars)."""
    if enc == "bcd":
        return {bytes.fromhex(f"{i:0{2 * width}d}"): i for i in range(10 ** (2 * width))}
    return {f"{i:0{width}d}".encode(): i for i in range(10**width)}


def _prefixes(fs: FieldSpec) -> list[bytes]:
    """Length -> wire prefix, for 0..max_len."""
    width = fs["len_type"]
    if fs["len_enc"] == "bcd":
        return [bytes.fromhex(f"{i:0{2 * width}d}") for i in range(fs["max_len"] + 1)]
    return [f"{i:0{width}d}".encode() for i in range(fs["max_len"] + 1)]


def _read_len(fs: FieldSpec) -> Callable[[bytes, int], tuple[int, int]]:
    """Decoder of a field's length prefix: (buf, pos) -> (length, start of data)."""
    width = fs["len_type"]
    table = _len_table(fs["len_enc"], width)
    kind = "BCD" if fs["len_enc"] == "bcd" else "ASCII digits"

    def read_len(buf: bytes, pos: int) -> tuple[int, int]:
        raw = buf[pos:pos + width]
        n = table.get(raw)
        if n is None:
            raise _Bad("truncated length" if len(raw) < width else f"length prefix is not {kind}")
        return n, pos + width

    return read_len


def _over_max(n: int, max_len: int, unit: str, end: int, buf: bytes) -> _Bad:
    return _Bad(f"length {n} {unit} over maximum {max_len}", end if end <= len(buf) else None)


# --- BCD digits (POS n and z) ---------------------------------------------------------------------------

def _bcd_fixed(fs: FieldSpec) -> tuple[_Encoder, _Decoder]:
    digits: int = fs["max_len"]
    nbytes = (digits + 1) // 2
    odd = digits % 2 == 1
    left = "left_pad" in fs  # right-aligned: the pad nibble is on the left
    nhex = 2 * nbytes
    fromhex = bytes.fromhex

    def enc(v: Any) -> bytes:
        if isinstance(v, str) and len(v) == digits and v.isascii() and v.isdigit():
            if not odd:
                return fromhex(v)
            return fromhex("0" + v) if left else fromhex(v + "0")
        raise _Bad(_str_problem(v, "n", digits, fixed=True))

    def dec(buf: bytes, pos: int) -> tuple[Any, int]:
        end = pos + nbytes
        s = buf[pos:end].hex()
        if len(s) == nhex and s.isdigit():
            if not odd:
                return s, end
            if left:
                if s[0] == "0":
                    return s[1:], end
            elif s[-1] == "0":
                return s[:-1], end
            raise _Bad("pad nibble is not 0", end)
        if len(s) != nhex:
            raise _Bad("truncated")
        raise _Bad("non-BCD nibble", end)

    return enc, dec


def _bcd_var(fs: FieldSpec) -> tuple[_Encoder, _Decoder]:
    max_digits: int = fs["max_len"]
    kind: str = fs["kind"]
    track = kind == "z"
    prefixes = _prefixes(fs)
    read_len = _read_len(fs)
    fromhex = bytes.fromhex

    def enc(v: Any) -> bytes:
        if isinstance(v, str) and len(v) <= max_digits and v.isascii():
            n = len(v)
            digits = v.replace("=", "D") if track else v
            body = v.replace("=", "") if track else v
            if body.isdigit() or not body:
                return prefixes[n] + fromhex(digits + "0" if n & 1 else digits)
        raise _Bad(_str_problem(v, kind, max_digits, fixed=False))

    def dec(buf: bytes, pos: int) -> tuple[Any, int]:
        n, start = read_len(buf, pos)
        end = start + (n + 1) // 2
        s = buf[start:end].hex()
        if n > max_digits:
            raise _over_max(n, max_digits, "digits", end, buf)
        if len(s) != 2 * (end - start):
            raise _Bad("truncated")
        value = s[:n]
        if n & 1 and s[-1] != "0":
            raise _Bad("pad nibble is not 0", end)
        if track:
            value = value.replace("d", "=")
            if value.replace("=", "").isdigit() or value.strip("=") == "":
                return value, end
        elif value.isdigit() or n == 0:
            return value, end
        raise _Bad("non-BCD nibble", end)

    return enc, dec


# --- raw bytes (POS b) ----------------------------------------------------------------------------------

def _bytes_fixed(fs: FieldSpec) -> tuple[_Encoder, _Decoder]:
    size: int = fs["max_len"]

    def enc(v: Any) -> bytes:
        if isinstance(v, bytes | bytearray) and len(v) == size:
            return bytes(v)
        raise _Bad(_bytes_problem(v, size, fixed=True))

    def dec(buf: bytes, pos: int) -> tuple[Any, int]:
        end = pos + size
        data = buf[pos:end]
        if len(data) == size:
            return data, end
        raise _Bad("truncated")

    return enc, dec


def _bytes_var(fs: FieldSpec) -> tuple[_Encoder, _Decoder]:
    max_len: int = fs["max_len"]
    prefixes = _prefixes(fs)
    read_len = _read_len(fs)

    def enc(v: Any) -> bytes:
        if isinstance(v, bytes | bytearray) and len(v) <= max_len:
            return prefixes[len(v)] + v
        raise _Bad(_bytes_problem(v, max_len, fixed=False))

    def dec(buf: bytes, pos: int) -> tuple[Any, int]:
        n, start = read_len(buf, pos)
        end = start + n
        if n > max_len:
            raise _over_max(n, max_len, "bytes", end, buf)
        data = buf[start:end]
        if len(data) == n:
            return data, end
        raise _Bad("truncated")

    return enc, dec


# --- ASCII text (H2H everything, POS an/ans) ------------------------------------------------------------

def _text_fixed(fs: FieldSpec) -> tuple[_Encoder, _Decoder]:
    size: int = fs["max_len"]
    kind: str = fs["kind"]
    allowed = _ALLOWED[kind]
    pad: str = fs.get("pad", "")
    numeric = kind == "n"
    reason = f"not {_ALPHABET_NAME[kind]}"

    def enc(v: Any) -> bytes:
        if isinstance(v, str) and v.isascii():
            if len(v) < size and pad:
                v = v.ljust(size, pad)
            if len(v) == size:
                data: bytes = v.encode("ascii")
                if not data.translate(None, allowed):
                    return data
        raise _Bad(_str_problem(v, kind, size, fixed=True))

    def dec(buf: bytes, pos: int) -> tuple[Any, int]:
        end = pos + size
        data = buf[pos:end]
        if len(data) == size and (data.isdigit() if numeric else not data.translate(None, allowed)):
            return data.decode("ascii"), end
        if len(data) != size:
            raise _Bad("truncated")
        raise _Bad(reason, end)

    return enc, dec


def _text_var(fs: FieldSpec) -> tuple[_Encoder, _Decoder]:
    max_len: int = fs["max_len"]
    kind: str = fs["kind"]
    allowed = _ALLOWED[kind]
    prefixes = _prefixes(fs)
    read_len = _read_len(fs)
    reason = f"not {_ALPHABET_NAME[kind]}"

    def enc(v: Any) -> bytes:
        if isinstance(v, str) and len(v) <= max_len and v.isascii():
            data = v.encode("ascii")
            if not data.translate(None, allowed):
                return prefixes[len(data)] + data
        raise _Bad(_str_problem(v, kind, max_len, fixed=False))

    def dec(buf: bytes, pos: int) -> tuple[Any, int]:
        n, start = read_len(buf, pos)
        end = start + n
        if n > max_len:
            raise _over_max(n, max_len, "characters", end, buf)
        data = buf[start:end]
        if len(data) != n:
            raise _Bad("truncated")
        if data.translate(None, allowed):
            raise _Bad(reason, end)
        return data.decode("ascii"), end

    return enc, dec


def _hex_fixed(fs: FieldSpec) -> tuple[_Encoder, _Decoder]:
    chars: int = fs["max_len"]
    size = chars // 2
    allowed = _ALLOWED["hex"]
    unhex = binascii.a2b_hex

    def enc(v: Any) -> bytes:
        if isinstance(v, bytes | bytearray) and len(v) == size:
            return v.hex().upper().encode("ascii")
        raise _Bad(_bytes_problem(v, size, fixed=True))

    def dec(buf: bytes, pos: int) -> tuple[Any, int]:
        end = pos + chars
        data = buf[pos:end]
        if len(data) != chars:
            raise _Bad("truncated")
        if data.translate(None, allowed):
            raise _Bad("not hexadecimal", end)
        return unhex(data), end

    return enc, dec


def _str_problem(v: Any, kind: str, size: int, *, fixed: bool) -> str:
    if not isinstance(v, str):
        return f"expected str, got {type(v).__name__}"
    if not v.isascii() or v.encode("ascii").translate(None, _ALLOWED[kind]):
        return f"not {_ALPHABET_NAME[kind]}"
    if fixed and len(v) != size:
        return f"length {len(v)}, expected {size}"
    return f"length {len(v)} over maximum {size}"


def _bytes_problem(v: Any, size: int, *, fixed: bool) -> str:
    if not isinstance(v, bytes | bytearray):
        return f"expected bytes, got {type(v).__name__}"
    if fixed:
        return f"length {len(v)} bytes, expected {size}"
    return f"length {len(v)} bytes over maximum {size}"


def compile_field(fs: FieldSpec) -> tuple[_Encoder, _Decoder]:
    """Encoder and decoder of one field spec (the combinations the dialects use)."""
    fixed = fs["len_type"] == 0
    kind = fs["kind"]
    if fs["data_enc"] == "b":
        if fs.get("len_count") == "nibbles" and kind in ("n", "z"):
            if fixed and kind == "n":
                return _bcd_fixed(fs)
            if not fixed:
                return _bcd_var(fs)
        elif kind == "b":
            return _bytes_fixed(fs) if fixed else _bytes_var(fs)
    elif fs["data_enc"] == "ascii":
        if kind == "hex" and fixed:
            return _hex_fixed(fs)
        if kind in _ALPHABET_NAME and kind != "hex":
            return _text_fixed(fs) if fixed else _text_var(fs)
    raise ValueError(f"field spec not supported by the fast codec: {fs}")


# --- the codec ------------------------------------------------------------------------------------------

_PLAN_CACHE_MAX = 4096
_Plan = tuple[tuple[str, _Decoder], ...]


class Codec:
    """Encoder/decoder of one dialect and key profile. Build with :func:`codec_for`."""

    def __init__(self, dialect: str, profile: str, spec: Spec) -> None:
        self.dialect = dialect
        self.profile = profile
        self.spec = spec
        self._wide = dialect == "h2h"  # ASCII MTI, hex bitmaps, secondary bitmap
        nbits = 128 if self._wide else 64
        self._nbits = nbits
        mtis = sorted(KNOWN_MTIS[dialect])
        if self._wide:
            self._mti_enc = {m: m.encode("ascii") for m in mtis}
        else:
            self._mti_enc = {m: bytes.fromhex(m) for m in mtis}
        self._mti_dec = {v: k for k, v in self._mti_enc.items()}
        self._by_key: dict[str, tuple[int, int, str, _Encoder]] = {}
        self._decoders: dict[int, tuple[str, _Decoder]] = {}
        for key, fs in spec.items():
            if not key.isdigit() or key == "1":
                continue
            num = int(key)
            enc, dec = compile_field(fs)
            self._by_key[key] = (num, 1 << (nbits - num), key, enc)
            self._decoders[num] = (key, dec)
        self._known_bits = sum(1 << (nbits - n) for n in self._decoders)
        self._plans: dict[bytes, _Plan] = {}
        self._mac_field = MAC_FIELD[dialect]
        self._mac_width = spec[self._mac_field]["max_len"]
        self.fields: tuple[str, ...] = tuple(str(n) for n in sorted(self._decoders))
        """The field keys of the dialect, in wire order."""

    def __repr__(self) -> str:
        return f"<Codec {self.dialect}/{self.profile}>"

    # -- encode

    def encode(self, msg: Mapping[str, Any]) -> bytes:
        """MTI + bitmap(s) + fields. Raises :class:`EncodeError` naming the field."""
        mti_raw = self._mti_enc.get(msg.get("t"))  # type: ignore[arg-type]
        if mti_raw is None:
            t = msg.get("t")
            raise EncodeError("t", "missing" if t is None else "unknown MTI for this dialect")
        by_key = self._by_key
        items = []
        for key, value in msg.items():
            entry = by_key.get(key)
            if entry is None:
                if key in ("t", "p", "1"):
                    continue
                raise EncodeError(key, "not a field of this dialect")
            if value is not None:
                items.append(entry)
        items.sort()
        bitmap = 0
        parts = [mti_raw, b""]
        append = parts.append
        for _num, mask, key, enc in items:
            bitmap |= mask
            try:
                append(enc(msg[key]))
            except _Bad as bad:
                raise EncodeError(key, bad.reason) from None
        if not self._wide:
            parts[1] = bitmap.to_bytes(8, "big")
        elif bitmap & 0xFFFFFFFFFFFFFFFF:
            parts[1] = b"%032X" % (bitmap | (1 << 127))
        else:
            parts[1] = b"%016X" % (bitmap >> 64)
        return b"".join(parts)

    # -- decode

    def decode(self, raw: bytes | bytearray | memoryview) -> Message:
        """Parse and validate one message; raises only :class:`DecodeError`."""
        buf = raw if type(raw) is bytes else bytes(raw)
        width = 4 if self._wide else 2
        mti = self._mti_dec.get(buf[:width])
        if mti is None:
            raise DecodeError("t", "truncated" if len(buf) < width else "unknown MTI")
        msg: Message = {"t": mti}
        if self._wide:
            plan, pos = self._h2h_plan(buf, msg)
        else:
            bitmap = buf[2:10]
            cached = self._plans.get(bitmap)
            plan = cached if cached is not None else self._plan(bitmap, int.from_bytes(bitmap), msg)
            pos = 10
        first: DecodeError | None = None
        for key, dec in plan:
            try:
                msg[key], pos = dec(buf, pos)
            except _Bad as bad:
                if first is None:
                    first = DecodeError(key, bad.reason)
                if bad.end is None:
                    raise DecodeError(first.field, first.reason, msg) from None
                pos = bad.end
        if first is not None:
            raise DecodeError(first.field, first.reason, msg)
        if pos != len(buf):
            raise DecodeError("end", f"{len(buf) - pos} extra bytes after the last field", msg)
        return msg

    def _h2h_plan(self, buf: bytes, msg: Message) -> tuple[_Plan, int]:
        primary = buf[4:20]
        secondary = bool(primary) and primary[0] in b"89ABCDEFabcdef"
        key = buf[4:36] if secondary else primary
        plan = self._plans.get(key)
        if plan is not None:
            return plan, len(key) + 4
        allowed = _ALLOWED["hex"]
        if len(primary) != 16:
            raise DecodeError("p", "truncated", msg)
        if primary.translate(None, allowed):
            raise DecodeError("p", "not hexadecimal", msg)
        bits = int(primary, 16) << 64
        if secondary:
            second = buf[20:36]
            if len(second) != 16:
                raise DecodeError("1", "truncated", msg)
            if second.translate(None, allowed):
                raise DecodeError("1", "not hexadecimal", msg)
            bits |= int(second, 16)
            bits &= ~(1 << 127)
        return self._plan(key, bits, msg), len(key) + 4

    def _plan(self, key: bytes, bits: int, msg: Message) -> _Plan:
        """The field decoders for a bitmap (cached per distinct bitmap)."""
        if not self._wide and len(key) != 8:
            raise DecodeError("p", "truncated", msg)
        unknown = bits & ~self._known_bits
        if unknown:
            num = self._nbits - unknown.bit_length() + 1
            where = "p" if num <= 64 else "1"
            reason = ("bit 1 set: this dialect has no secondary bitmap" if num == 1
                      else f"bit {num} set for a field not in the dialect")
            raise DecodeError(where, reason, msg)
        plan = tuple(dec for num, dec in sorted(self._decoders.items()) if bits & (1 << (self._nbits - num)))
        if len(self._plans) >= _PLAN_CACHE_MAX:  # hostile bitmap variety: start over, stay bounded
            self._plans.clear()
        self._plans[key] = plan
        return plan

    # -- MAC helpers

    def has_mac(self, raw: bytes) -> bool:
        """Whether the bitmap of an encoded message has the MAC field (POS DE64 / H2H DE128)."""
        try:
            if not self._wide:
                return len(raw) >= 10 and bool(raw[9] & 1)
            return len(raw) >= 36 and raw[4] in b"89ABCDEFabcdef" and bool(int(raw[35:36], 16) & 1)
        except ValueError:
            return False

    def mac_block(self, raw: bytes) -> bytes:
        """The bytes the MAC covers: from the first MTI byte to the byte before DE64 (POS) / DE128 (H2H).

        ``raw`` is an encoded message whose bitmap has the MAC field (the MAC is always the last field).
        """
        if not self.has_mac(raw):
            raise ValueError(f"message has no DE{self._mac_field}")
        return bytes(raw[: len(raw) - self._mac_width])

    def with_mac(self, raw: bytes, mac: bytes) -> bytes:
        """``raw`` with its MAC field replaced by ``mac`` (8 bytes in both dialects)."""
        if len(mac) != 8:
            raise ValueError("a MAC is 8 bytes")
        wire = mac.hex().upper().encode("ascii") if self._wide else bytes(mac)
        return self.mac_block(raw) + wire


@functools.cache
def codec_for(dialect: str, profile: str) -> Codec:
    """The codec of a dialect ("pos" or "h2h") and key profile ("3des" or "sm4"), built once."""
    return Codec(dialect, profile, spec_for(dialect, profile))
