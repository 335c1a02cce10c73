"""Every field of every dialect and profile: a valid value round-trips (and matches the pyiso8583
oracle), invalid values are rejected on encode and on decode with the field named."""

from __future__ import annotations

from typing import Any

import iso8583
import pytest

from specs.codec import Codec, codec_for
from specs.dialects import DIALECTS, PROFILES, FieldSpec, from_pyiso8583, to_pyiso8583
from specs.errors import DecodeError, EncodeError

CASES = [(d, p, key) for d in DIALECTS for p in PROFILES for key in codec_for(d, p).fields]


def sample(fs: FieldSpec, length: int | None = None) -> Any:
    """A valid value; ``length`` defaults to the maximum (variable fields) or the size (fixed)."""
    n = fs["max_len"] if length is None else length
    kind = fs["kind"]
    if kind == "b":
        return bytes((i * 37 + 5) % 256 for i in range(n))
    if kind == "hex":
        return bytes((i * 37 + 5) % 256 for i in range(n // 2))
    alphabet = {"n": "1234567890", "z": "62123=45678", "an": "A1b2 C3d4", "ans": "T-0/#a 9~"}[kind]
    return (alphabet * (n // len(alphabet) + 1))[:n]


def data_offset(c: Codec, key: str) -> int:
    """Where the only field of a {"t", key} message starts (after MTI, bitmap(s), length prefix)."""
    head = 10 if c.dialect == "pos" else 36 if int(key) > 64 else 20
    return head + c.spec[key]["len_type"]


def roundtrip(c: Codec, msg: dict[str, Any]) -> bytes:
    raw = c.encode(msg)
    assert c.decode(raw) == msg
    oracle, _ = iso8583.encode(to_pyiso8583(msg, c.spec), c.spec)
    assert bytes(oracle) == raw
    doc, _ = iso8583.decode(raw, c.spec)
    assert from_pyiso8583(doc, c.spec) == msg
    return raw


def decode_error(c: Codec, raw: bytes | bytearray) -> DecodeError:
    with pytest.raises(DecodeError) as info:
        c.decode(bytes(raw))
    return info.value


@pytest.mark.parametrize(("dialect", "profile", "key"), CASES)
def test_field(dialect: str, profile: str, key: str) -> None:
    c = codec_for(dialect, profile)
    fs = c.spec[key]
    kind, size, fixed = fs["kind"], fs["max_len"], fs["len_type"] == 0

    # valid: full size; for variable fields also empty, one and an odd length
    lengths = [None] if fixed else [None, 0, 1, size - 1 if size % 2 == 0 else size - 2]
    for length in lengths:
        roundtrip(c, {"t": "0200", key: sample(fs, length)})
    raw = c.encode({"t": "0200", key: sample(fs)})
    start = data_offset(c, key)

    # encode rejects: too long, wrong type, wrong alphabet
    too_long = sample(fs, size + 2)
    for bad in (too_long, 12345, (b"" if kind not in ("b", "hex") else "text")):
        with pytest.raises(EncodeError) as enc_info:
            c.encode({"t": "0200", key: bad})
        assert enc_info.value.field == key
    if kind in ("n", "z", "an"):
        with pytest.raises(EncodeError, match=f"^{'DE' + key}: not "):
            c.encode({"t": "0200", key: "#" * (size if fixed else 1)})

    # decode rejects: truncation, trailing bytes, bad alphabet, bad pad nibble, length over maximum
    assert decode_error(c, raw[:-1]).field == key
    assert decode_error(c, raw + b"0").field == "end"
    if kind != "b":
        bad = bytearray(raw)
        bad[start] = 0xAA if fs["data_enc"] == "b" else (0x01 if kind != "hex" else ord("G"))
        err = decode_error(c, bad)
        assert err.field == key, err
        assert err.reason in ("non-BCD nibble", "not hexadecimal") or err.reason.startswith("not ")
    if fs["data_enc"] == "b" and kind in ("n", "z") and (size % 2 == 1 or not fixed):
        odd = size if size % 2 else size - 1
        raw_odd = bytearray(c.encode({"t": "0200", key: sample(fs, odd)}))
        if "left_pad" in fs:
            raw_odd[start] |= 0x10
        else:
            raw_odd[-1] |= 0x01
        assert str(decode_error(c, raw_odd)).endswith("pad nibble is not 0")
    if not fixed:
        width = fs["len_type"]
        over = size + 1
        if fs["len_enc"] == "bcd" and over < 10 ** (2 * width):
            prefix = bytes.fromhex(f"{over:0{2 * width}d}")
        elif fs["len_enc"] == "ascii" and over < 10**width:
            prefix = f"{over:0{width}d}".encode()
        else:
            prefix = b""
        if prefix:
            bad = bytearray(raw)
            bad[start - width:start] = prefix
            bad += b"0" * size  # enough bytes that only the maximum is wrong
            err = decode_error(c, bad)
            assert err.field == key and "over maximum" in err.reason
        bad = bytearray(raw)
        bad[start - width] = 0xFF if fs["len_enc"] == "bcd" else ord("x")
        assert decode_error(c, bad).field == key


@pytest.mark.parametrize("dialect", DIALECTS)
def test_field_tables_cover_the_contract(dialect: str) -> None:
    expected = {
        "pos": "2 3 4 11 12 13 14 15 22 23 25 26 32 35 36 37 38 39 41 42 44 48 49 52 53 54 55 60 61 62 63"
               " 64",
        "h2h": "2 3 4 7 11 12 13 14 15 18 22 25 32 33 35 37 38 39 41 42 43 48 49 52 54 60 70 90 95 100 102"
               " 128",
    }[dialect]
    assert " ".join(codec_for(dialect, "3des").fields) == expected


def test_profiles_differ_only_in_de52() -> None:
    for dialect in DIALECTS:
        a, b = codec_for(dialect, "3des").spec, codec_for(dialect, "sm4").spec
        assert [k for k in a if a[k] != b[k]] == ["52"]
    assert codec_for("pos", "sm4").spec["52"]["max_len"] == 16
    assert codec_for("h2h", "sm4").spec["52"]["max_len"] == 32
