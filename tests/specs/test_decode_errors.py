"""The contract's "does not parse" list, one case each, and what a DecodeError carries."""

from __future__ import annotations

from typing import Any

import pytest

from specs.codec import codec_for
from specs.errors import DecodeError, EncodeError

POS = codec_for("pos", "3des")
H2H = codec_for("h2h", "3des")
REQ: dict[str, Any] = {"t": "0200", "2": "6212345678901234567", "3": "000000", "4": "000000012345",
                       "11": "000777", "22": "011", "25": "00", "41": "T0000001", "42": "898330160120001",
                       "49": "156", "52": bytes(8), "60": "22000001000", "64": bytes(8)}


def error(codec: Any, raw: bytes | bytearray) -> DecodeError:
    with pytest.raises(DecodeError) as info:
        codec.decode(bytes(raw))
    return info.value


def test_unknown_and_truncated_mti() -> None:
    assert str(error(POS, b"\x09\x99" + bytes(8))) == "MTI: unknown MTI"
    assert error(POS, b"\x09\x99").mti is None
    assert str(error(POS, b"\x02")) == "MTI: truncated"
    assert str(error(H2H, b"0299" + b"0" * 16)) == "MTI: unknown MTI"


def test_bitmap_problems() -> None:
    raw = bytearray(POS.encode(REQ))
    raw[2] |= 0x80  # bit 1: no secondary bitmap on POS
    err = error(POS, raw)
    assert err.field == "p" and "bit 1" in err.reason and err.mti == "0200"
    raw = bytearray(POS.encode(REQ))
    raw[2] |= 0x08  # bit 5: not in the table
    assert str(error(POS, raw)) == "bitmap: bit 5 set for a field not in the dialect"
    assert str(error(POS, POS.encode(REQ)[:6])) == "bitmap: truncated"
    assert str(error(H2H, b"0800" + b"82200000000000G0")) == "bitmap: not hexadecimal"
    assert str(error(H2H, b"0800" + b"8220000000000000" + b"04")) == "secondary bitmap: truncated"
    assert str(error(H2H, b"0800" + b"8220000000000000" + b"840000000000000x")) == (
        "secondary bitmap: not hexadecimal")
    assert str(error(H2H, b"0800" + b"8220000000000000" + b"8400000000000000")) == (
        "secondary bitmap: bit 65 set for a field not in the dialect")


def test_value_error_keeps_reading_for_the_30_answer() -> None:
    raw = bytearray(POS.encode(REQ))
    raw[11] = 0x6A  # a non-BCD nibble inside the PAN (DE2 data starts at 11)
    err = error(POS, raw)
    assert str(err) == "DE2: non-BCD nibble"
    assert (err.mti, err.stan, err.terminal_id, err.merchant_id) == (
        "0200", "000777", "T0000001", "898330160120001")
    assert "2" not in err.partial and "52" not in err.partial  # never secrets
    assert "6212" not in str(err)


def test_length_over_maximum_with_bytes_present_keeps_reading() -> None:
    msg = {**REQ, "2": "6212345678901234567"}
    raw = bytearray(POS.encode(msg))
    raw[10] = 0x20  # DE2 length 20 > 19; the extra nibble is the former pad, present
    err = error(POS, raw)
    assert str(err) == "DE2: length 20 digits over maximum 19"
    assert err.stan == "000777" and err.terminal_id == "T0000001"


def test_truncation_stops_with_what_was_read() -> None:
    raw = POS.encode(REQ)
    err = error(POS, raw[: raw.index(b"T0000001") + 4])
    assert str(err) == "DE41: truncated"
    assert err.stan == "000777" and err.terminal_id is None


def test_trailing_bytes() -> None:
    err = error(POS, POS.encode(REQ) + b"\x00")
    assert str(err) == "message end: 1 extra bytes after the last field"
    assert err.terminal_id == "T0000001"


def test_text_alphabets() -> None:
    raw = bytearray(POS.encode({"t": "0210", "39": "00", "41": "T0000001"}))
    raw[10] = ord("#")  # an: no punctuation
    assert str(error(POS, raw)) == "DE39: not letters, digits and space"
    raw = bytearray(POS.encode({"t": "0210", "41": "T0000001"}))
    raw[10] = 0x7F
    assert str(error(POS, raw)) == "DE41: not printable ASCII"
    raw = bytearray(H2H.encode({"t": "0210", "11": "000001"}))
    raw[-1] = ord("x")
    assert str(error(H2H, raw)) == "DE11: not digits"
    raw = bytearray(H2H.encode({"t": "0200", "35": "6212=3012"}))
    raw[-5] = ord("D")  # H2H tracks use '=' itself
    assert str(error(H2H, raw)) == "DE35: not digits and '='"


def test_encode_errors_name_the_field() -> None:
    cases: list[tuple[dict[str, Any], str]] = [
        ({"3": "000000"}, "MTI: missing"),
        ({"t": "0999"}, "MTI: unknown MTI for this dialect"),
        ({"t": "0200", "5": "1"}, "DE5: not a field of this dialect"),
        ({"t": "0200", "2": "62123456789012345678"}, "DE2: length 20 over maximum 19"),
        ({"t": "0200", "4": 12345}, "DE4: expected str, got int"),
        ({"t": "0200", "52": "00" * 8}, "DE52: expected bytes, got str"),
        ({"t": "0200", "52": bytes(16)}, "DE52: length 16 bytes, expected 8"),
        ({"t": "0200", "55": bytes(256)}, "DE55: length 256 bytes over maximum 255"),
        ({"t": "0200", "3": "00000٣"}, "DE3: not digits"),
        ({"t": "0200", "41": "T00000012"}, "DE41: length 9, expected 8"),
        ({"t": "0200", "41": "T0000\u00e9"}, "DE41: not printable ASCII"),
    ]
    for msg, text in cases:
        with pytest.raises(EncodeError) as info:
            POS.encode(msg)
        assert str(info.value) == text


def test_encode_conveniences() -> None:
    raw = POS.encode({"t": "0210", "39": "00", "41": "T1", "38": None, "p": "ignored"})
    assert POS.decode(raw) == {"t": "0210", "39": "00", "41": "T1      "}
    assert H2H.encode({"t": "0200", "128": bytearray(8)}).endswith(b"0" * 16)
    assert H2H.decode(b"0800" + b"8220000000000000" + b"0000000000000000" + b"1125101010000001") == {
        "t": "0800", "7": "1125101010", "11": "000001"}  # an empty secondary bitmap is tolerated


def test_mac_helpers() -> None:
    assert not POS.has_mac(POS.encode({"t": "0200"})) and not POS.has_mac(b"")
    assert not H2H.has_mac(b"0200" + b"G" * 32)
    with pytest.raises(ValueError):
        POS.mac_block(POS.encode({"t": "0200"}))
    with pytest.raises(ValueError):
        POS.with_mac(POS.encode(REQ), b"123")
    h2h = H2H.encode({"t": "0200", "11": "000001", "128": bytes(8)})
    assert H2H.with_mac(h2h, bytes.fromhex("0123456789ABCDEF")).endswith(b"0123456789ABCDEF")
    assert H2H.mac_block(h2h) == h2h[:-16]
