"""BER-TLV, as chip data (POS DE55) carries it: a codec, and the EMV tag dictionary as data.

A chip request's DE55 is a flat sequence of data objects (EMV Book 3 Annex B): tag (1-3 bytes; the
low five bits of the first byte all set means another byte follows, and so on while a subsequent byte
has its high bit set), length (one byte below 128; ``81 xx`` or ``82 xx xx`` above), value. Tags are
written here as upper-case hex strings ("9F26"). Unknown tags are kept as they came, in order, so a
message re-encodes byte for byte; a constructed tag's value (bit 6 of its first byte, e.g. ``70``) is
kept as bytes too. Anything that does not parse raises ``TlvError`` (the caller answers 30). Lengths are
written in the shortest form; a longer form received (``81 05``) is read, and re-encodes shorter.

``describe`` / ``views`` render data objects for people (``payswitch iso decode``, ``pos --trace``): the
tag, its dictionary name and its value by format, with ``SECRET_TAGS`` (track equivalents, names) as a
length only and the PAN (5A) masked; constructed objects are shown with their contents indented.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal, NamedTuple

from ops.logs import mask_pan

TagFormat = Literal["n", "b", "an", "cn"]


class TlvError(ValueError):
    """Chip data that is not well-formed BER-TLV (or lacks a tag that is needed)."""


class TagInfo(NamedTuple):
    name: str
    format: TagFormat  # n: BCD digits; cn: compressed numeric (F-padded); an: ASCII; b: binary
    length: int | None  # fixed length in bytes; None: variable


# The tags a payment terminal sends in DE55 and an issuer returns (EMV Book 3 Annex A; PBOC 3.0).
TAGS: dict[str, TagInfo] = {
    "4F": TagInfo("Application identifier (AID), card", "b", None),
    "50": TagInfo("Application label", "an", None),
    "56": TagInfo("Track 1 data (contactless)", "b", None),
    "57": TagInfo("Track 2 equivalent data", "b", None),
    "5A": TagInfo("Application PAN", "cn", None),
    "5F20": TagInfo("Cardholder name", "an", None),
    "5F24": TagInfo("Application expiration date YYMMDD", "n", 3),
    "5F25": TagInfo("Application effective date YYMMDD", "n", 3),
    "5F28": TagInfo("Issuer country code", "n", 2),
    "5F2A": TagInfo("Transaction currency code", "n", 2),
    "5F34": TagInfo("PAN sequence number", "n", 1),
    "70": TagInfo("Record template", "b", None),
    "71": TagInfo("Issuer script template 1", "b", None),
    "72": TagInfo("Issuer script template 2", "b", None),
    "77": TagInfo("Response message template format 2", "b", None),
    "82": TagInfo("Application interchange profile (AIP)", "b", 2),
    "84": TagInfo("Dedicated file name (AID)", "b", None),
    "8A": TagInfo("Authorisation response code", "an", 2),
    "91": TagInfo("Issuer authentication data (ARPC + ARC)", "b", None),
    "95": TagInfo("Terminal verification results (TVR)", "b", 5),
    "9A": TagInfo("Transaction date YYMMDD", "n", 3),
    "9B": TagInfo("Transaction status information", "b", 2),
    "9C": TagInfo("Transaction type", "n", 1),
    "9F02": TagInfo("Amount, authorised", "n", 6),
    "9F03": TagInfo("Amount, other", "n", 6),
    "9F06": TagInfo("Application identifier (AID), terminal", "b", None),
    "9F07": TagInfo("Application usage control", "b", 2),
    "9F09": TagInfo("Application version number, terminal", "b", 2),
    "9F0B": TagInfo("Cardholder name extended", "an", None),
    "9F10": TagInfo("Issuer application data (IAD)", "b", None),
    "9F1A": TagInfo("Terminal country code", "n", 2),
    "9F1E": TagInfo("Interface device serial number", "an", 8),
    "9F1F": TagInfo("Track 1 discretionary data", "an", None),
    "9F20": TagInfo("Track 2 discretionary data", "cn", None),
    "9F21": TagInfo("Transaction time HHMMSS", "n", 3),
    "9F26": TagInfo("Application cryptogram (ARQC / TC / AAC)", "b", 8),
    "9F27": TagInfo("Cryptogram information data (CID)", "b", 1),
    "9F33": TagInfo("Terminal capabilities", "b", 3),
    "9F34": TagInfo("Cardholder verification method results", "b", 3),
    "9F35": TagInfo("Terminal type", "n", 1),
    "9F36": TagInfo("Application transaction counter (ATC)", "b", 2),
    "9F37": TagInfo("Unpredictable number", "b", 4),
    "9F41": TagInfo("Transaction sequence counter", "n", None),
    "9F53": TagInfo("Transaction category code", "an", 1),
    "9F5D": TagInfo("Available offline spending amount", "n", 6),
    "9F63": TagInfo("Card product identification information", "b", 16),
    "9F66": TagInfo("Terminal transaction qualifiers (TTQ, contactless)", "b", 4),
    "9F6B": TagInfo("Track 2 data (contactless)", "b", None),
    "9F6C": TagInfo("Card transaction qualifiers (CTQ, contactless)", "b", 2),
    "9F74": TagInfo("Electronic cash issuer authorisation code (PBOC)", "an", 6),
    "9F79": TagInfo("Electronic cash balance (PBOC)", "n", 6),
    "DF31": TagInfo("Issuer script results", "b", None),
}

# The values the ARQC is computed over, concatenated in this order (EMV Book 2's recommended minimum
# set, then the ATC and the whole issuer application data) [project convention, specs/README.md
# "Chip data"]: the card and the issuer must agree on it byte for byte.
ARQC_TAGS: tuple[str, ...] = ("9F02", "9F03", "9F1A", "95", "5F2A", "9A", "9C", "9F37", "82", "9F36", "9F10")


@dataclass(frozen=True, slots=True)
class Tlv:
    tag: str  # upper-case hex, e.g. "9F26"
    value: bytes


def _read_tag(data: bytes, i: int) -> tuple[str, int]:
    start = i
    if i >= len(data):
        raise TlvError("truncated tag")
    first = data[i]
    i += 1
    if first & 0x1F == 0x1F:
        while True:
            if i >= len(data):
                raise TlvError(f"truncated tag at byte {start}")
            b = data[i]
            i += 1
            if i - start > 3:  # EMV tags are at most 3 bytes; a longer one is not ours to guess at
                raise TlvError(f"tag longer than 3 bytes at byte {start}")
            if not b & 0x80:
                break
    return data[start:i].hex().upper(), i


def _read_length(data: bytes, i: int) -> tuple[int, int]:
    if i >= len(data):
        raise TlvError("truncated length")
    first = data[i]
    i += 1
    if first < 0x80:
        return first, i
    count = first & 0x7F
    if count == 0 or count > 2:
        raise TlvError(f"length form {first:02X} not supported")
    if i + count > len(data):
        raise TlvError("truncated length")
    return int.from_bytes(data[i : i + count], "big"), i + count


def decode(data: bytes) -> list[Tlv]:
    """The data objects of ``data`` in order (padding bytes ``00`` between objects are skipped)."""
    out: list[Tlv] = []
    i = 0
    while i < len(data):
        if data[i] == 0x00:  # EMV allows 00 padding between objects
            i += 1
            continue
        tag, i = _read_tag(data, i)
        length, i = _read_length(data, i)
        if i + length > len(data):
            raise TlvError(f"tag {tag}: value of {length} bytes runs past the end")
        out.append(Tlv(tag, data[i : i + length]))
        i += length
    return out


def _length(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    if n <= 0xFF:
        return bytes([0x81, n])
    if n <= 0xFFFF:
        return bytes([0x82]) + n.to_bytes(2, "big")
    raise TlvError(f"value of {n} bytes is too long")


def encode(items: Iterable[Tlv] | Mapping[str, bytes]) -> bytes:
    """BER-TLV of ``items`` in their order (a mapping: tag -> value, in insertion order)."""
    pairs = items.items() if isinstance(items, Mapping) else ((t.tag, t.value) for t in items)
    out = bytearray()
    for tag, value in pairs:
        try:
            raw = bytes.fromhex(tag)
        except ValueError:
            raise TlvError(f"tag {tag!r} is not hex") from None
        if not raw or raw[0] == 0x00 or _read_tag(raw, 0) != (tag.upper(), len(raw)):
            # 00 is padding to decode, never a tag: encoding it would not read back
            raise TlvError(f"tag {tag!r} is not one BER tag")
        out += raw + _length(len(value)) + value
    return bytes(out)


def as_dict(items: Iterable[Tlv]) -> dict[str, bytes]:
    """Tag -> value (the first occurrence of a tag wins)."""
    out: dict[str, bytes] = {}
    for t in items:
        out.setdefault(t.tag, t.value)
    return out


def arqc_data(values: Mapping[str, bytes]) -> bytes:
    """The bytes the ARQC covers (``ARQC_TAGS``' values, concatenated); a missing tag is a TlvError."""
    missing = [tag for tag in ARQC_TAGS if tag not in values]
    if missing:
        raise TlvError(f"chip data lacks {', '.join(missing)}")
    return b"".join(values[tag] for tag in ARQC_TAGS)


# --- showing chip data to people (iso decode, --trace) ------------------------------------------------

# Tags whose values are card secrets or personal data, and how a tool shows them: a track equivalent or
# a name as its length only, the PAN masked (first 6, last 4) as everywhere else (ops.logs.mask_pan).
SECRET_TAGS: dict[str, Literal["pan", "track", "name"]] = {
    "56": "track",
    "57": "track",
    "5A": "pan",
    "5F20": "name",
    "9F0B": "name",
    "9F1F": "track",
    "9F20": "track",
    "9F6B": "track",
}


class TagView(NamedTuple):
    """One data object as a tool shows it: ``depth`` > 0 inside a constructed object."""

    tag: str
    name: str
    shown: str
    depth: int = 0


def constructed(tag: str) -> bool:
    """Bit 6 of the tag's first byte: the value is itself a sequence of data objects (e.g. 70, 71)."""
    try:
        return bool(bytes.fromhex(tag[:2])[0] & 0x20)
    except (ValueError, IndexError):  # not a tag at all: nothing to look inside
        return False


def show(tag: str, value: bytes) -> str:
    """One primitive value, fit to show: n and cn as digits, an as text, b as hex; secrets hidden."""
    secret = SECRET_TAGS.get(tag)
    info = TAGS.get(tag)
    if secret == "pan":
        digits = value.hex().upper().rstrip("F")
        return mask_pan(digits) if digits.isdigit() else f"<{len(value)} bytes, not shown>"
    if secret is not None:
        return f"<{secret} data, {len(value)} bytes, not shown>"
    if info is None:
        return value.hex().upper()  # the name column already says "unknown tag"
    text = _formatted(info.format, value)
    if info.length is not None and len(value) != info.length:
        text += f" (expected {info.length} bytes, got {len(value)})"
    return text


def _formatted(fmt: TagFormat, value: bytes) -> str:
    raw = value.hex().upper()
    if fmt == "n":
        return raw if raw.isdigit() else f"{raw} (not BCD)"
    if fmt == "cn":
        digits = raw.rstrip("F")
        return digits if digits.isdigit() else f"{raw} (not compressed numeric)"
    if fmt == "an":
        if all(0x20 <= c < 0x7F for c in value):
            return repr(value.decode("ascii"))
        return f"{raw} (not text)"
    return raw


def views(items: Iterable[Tlv], depth: int = 0) -> list[TagView]:
    """Every data object in order, constructed ones followed by their contents (one level deeper)."""
    out: list[TagView] = []
    for item in items:
        info = TAGS.get(item.tag)
        name = info.name if info is not None else "unknown tag"
        if constructed(item.tag) and item.tag not in SECRET_TAGS:
            try:
                inner = decode(item.value)
            except TlvError:
                # Not readable as data objects: its bytes could hold anything (a track), so no hex.
                shown = f"<constructed, {len(item.value)} bytes, not parsed>"
                out.append(TagView(item.tag, name, shown, depth))
                continue
            out.append(TagView(item.tag, name, f"<constructed, {len(item.value)} bytes>", depth))
            out.extend(views(inner, depth + 1))
            continue
        out.append(TagView(item.tag, name, show(item.tag, item.value), depth))
    return out


def describe(items: Iterable[Tlv] | bytes) -> list[str]:
    """One line per data object: ``9F26 Application cryptogram (ARQC / TC / AAC): 1A2B...``; bytes
    that are not BER-TLV give one line saying so (never their content)."""
    if isinstance(items, bytes | bytearray):
        try:
            items = decode(bytes(items))
        except TlvError as exc:
            return [f"not BER-TLV ({exc}), {len(items)} bytes, not shown"]
    return [f"{'  ' * v.depth}{v.tag:<4} {v.name}: {v.shown}" for v in views(items)]
