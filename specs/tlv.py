"""BER-TLV, as chip data (POS DE55) carries it: a codec, and the EMV tag dictionary as data.

A chip request's DE55 is a flat sequence of data objects (EMV Book 3 Annex B): tag (1-3 bytes; the
low five bits of the first byte all set means another byte follows, and so on while a subsequent byte
has its high bit set), length (one byte below 128; ``81 xx`` or ``82 xx xx`` above), value. Tags are
written here as upper-case hex strings ("9F26"). Unknown tags are kept as they came, in order, so a
message re-encodes byte for byte; a constructed tag's value (bit 6 of its first byte, e.g. ``70``) is
kept as bytes too. Anything that does not parse raises ``TlvError`` (the caller answers 30).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal, NamedTuple

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
    "57": TagInfo("Track 2 equivalent data", "b", None),
    "5A": TagInfo("Application PAN", "cn", None),
    "5F24": TagInfo("Application expiration date YYMMDD", "n", 3),
    "5F2A": TagInfo("Transaction currency code", "n", 2),
    "5F34": TagInfo("PAN sequence number", "n", 1),
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
    "9F09": TagInfo("Application version number, terminal", "b", 2),
    "9F10": TagInfo("Issuer application data (IAD)", "b", None),
    "9F1A": TagInfo("Terminal country code", "n", 2),
    "9F1E": TagInfo("Interface device serial number", "an", 8),
    "9F26": TagInfo("Application cryptogram (ARQC / TC / AAC)", "b", 8),
    "9F27": TagInfo("Cryptogram information data (CID)", "b", 1),
    "9F33": TagInfo("Terminal capabilities", "b", 3),
    "9F34": TagInfo("Cardholder verification method results", "b", 3),
    "9F35": TagInfo("Terminal type", "n", 1),
    "9F36": TagInfo("Application transaction counter (ATC)", "b", 2),
    "9F37": TagInfo("Unpredictable number", "b", 4),
    "9F41": TagInfo("Transaction sequence counter", "n", None),
    "9F63": TagInfo("Card product identification information", "b", 16),
    "9F74": TagInfo("Electronic cash issuer authorisation code (PBOC)", "an", 6),
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
            if not b & 0x80:
                break
            if i - start > 3:
                raise TlvError(f"tag longer than 3 bytes at byte {start}")
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
        if not raw or _read_tag(raw, 0) != (tag.upper(), len(raw)):
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
