"""specs.tlv: the BER-TLV codec (hypothesis round trips, hostile bytes), the tag dictionary as a table,
the ARQC data convention, and ``describe`` (secrets never shown)."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from specs import tlv
from specs.tlv import ARQC_TAGS, SECRET_TAGS, TAGS, Tlv, TlvError

# --- strategies ---------------------------------------------------------------------------------------


@st.composite
def tags(draw: st.DrawFn) -> str:
    """Any BER tag of 1-3 bytes (never starting 00, which is padding)."""
    size = draw(st.sampled_from((1, 2, 3)))
    if size == 1:
        first = draw(st.integers(1, 0xFF).filter(lambda b: b & 0x1F != 0x1F))
        return f"{first:02X}"
    first = draw(st.integers(0, 7)) << 5 | 0x1F
    if size == 2:
        return f"{first:02X}{draw(st.integers(0, 0x7F)):02X}"
    return f"{first:02X}{draw(st.integers(0x80, 0xFF)):02X}{draw(st.integers(0, 0x7F)):02X}"


# values long enough for the 81 (128-255) and 82 (256+) length forms
values = st.one_of(st.binary(max_size=8), st.binary(min_size=120, max_size=300))
items = st.lists(st.builds(Tlv, tags(), values), max_size=8)


# --- codec --------------------------------------------------------------------------------------------


@settings(max_examples=400)
@given(items)
def test_round_trip(objects: list[Tlv]) -> None:
    raw = tlv.encode(objects)
    assert tlv.decode(raw) == objects  # unknown tags and repeats kept, in order
    assert tlv.encode(tlv.decode(raw)) == raw


@given(items)
def test_mapping_form_encodes_in_insertion_order(objects: list[Tlv]) -> None:
    mapping: dict[str, bytes] = {}
    for o in objects:
        mapping.setdefault(o.tag, o.value)
    assert tlv.encode(mapping) == tlv.encode([Tlv(t, v) for t, v in mapping.items()])
    assert tlv.as_dict(tlv.decode(tlv.encode(objects))) == mapping


@settings(max_examples=1000)
@given(st.binary(max_size=64))
def test_random_bytes_raise_only_tlv_error(data: bytes) -> None:
    try:
        out = tlv.decode(data)
    except TlvError:
        return
    assert all(isinstance(o, Tlv) for o in out)
    tlv.describe(out)  # whatever decodes can be shown


@given(items, st.data())
def test_truncated_or_mutated_frames_raise_only_tlv_error(objects: list[Tlv], data: st.DataObject) -> None:
    raw = tlv.encode(objects)
    if not raw:
        return
    cut = data.draw(st.integers(0, len(raw) - 1))
    flip = data.draw(st.integers(0, len(raw) - 1))
    for sample in (raw[:cut], raw[:flip] + bytes([raw[flip] ^ 0xFF]) + raw[flip + 1 :]):
        with contextlib.suppress(TlvError):
            tlv.decode(sample)


@pytest.mark.parametrize(
    ("size", "prefix"),
    [(0, "00"), (127, "7F"), (128, "8180"), (255, "81FF"), (256, "820100"), (65535, "82FFFF")],
)
def test_length_forms(size: int, prefix: str) -> None:
    raw = tlv.encode([Tlv("DF31", bytes(size))])
    assert raw[:2].hex().upper() == "DF31" and raw[2:].hex().upper().startswith(prefix)
    assert tlv.decode(raw) == [Tlv("DF31", bytes(size))]


def test_longer_length_form_is_read() -> None:
    assert tlv.decode(bytes.fromhex("9F3681020001")) == [Tlv("9F36", b"\x00\x01")]


def test_padding_between_objects_is_skipped() -> None:
    assert tlv.decode(bytes.fromhex("00009A032511250000")) == [Tlv("9A", bytes.fromhex("251125"))]


@pytest.mark.parametrize(
    ("hex_bytes", "reason"),
    [
        ("9F", "truncated tag"),
        ("9F81818101" "00", "longer than 3 bytes"),
        ("9F26", "truncated length"),
        ("9F2683000001", "length form 83"),
        ("9F2680", "length form 80"),
        ("9F26081122", "runs past the end"),
        ("9F268110" "00", "runs past the end"),
    ],
)
def test_malformed(hex_bytes: str, reason: str) -> None:
    with pytest.raises(TlvError, match=reason):
        tlv.decode(bytes.fromhex(hex_bytes))


@pytest.mark.parametrize("tag", ["", "00", "9F", "9F8181", "9F81818101", "ZZ", "9F2"])
def test_encode_refuses_what_is_not_one_tag(tag: str) -> None:
    with pytest.raises(TlvError):
        tlv.encode([Tlv(tag, b"")])


def test_encode_refuses_values_beyond_the_82_form() -> None:
    with pytest.raises(TlvError, match="too long"):
        tlv.encode({"DF31": bytes(65536)})


def test_lower_case_tag_encodes_as_upper() -> None:
    assert tlv.decode(tlv.encode({"9f26": bytes(8)})) == [Tlv("9F26", bytes(8))]


# --- the tag dictionary -------------------------------------------------------------------------------

# (tag, format, fixed length) of every tag issue 19 names, and the issuer's answer tags
DICTIONARY = [
    ("9F26", "b", 8),
    ("9F27", "b", 1),
    ("9F10", "b", None),
    ("9F37", "b", 4),
    ("9F36", "b", 2),
    ("95", "b", 5),
    ("9A", "n", 3),
    ("9C", "n", 1),
    ("9F02", "n", 6),
    ("9F03", "n", 6),
    ("5F2A", "n", 2),
    ("82", "b", 2),
    ("9F1A", "n", 2),
    ("84", "b", None),
    ("9F33", "b", 3),
    ("9F34", "b", 3),
    ("9F35", "n", 1),
    ("9F09", "b", 2),
    ("5F34", "n", 1),
    ("5A", "cn", None),
    ("57", "b", None),
    ("91", "b", None),
    ("8A", "an", 2),
]


@pytest.mark.parametrize(("tag", "fmt", "length"), DICTIONARY)
def test_dictionary(tag: str, fmt: str, length: int | None) -> None:
    info = TAGS[tag]
    assert (info.format, info.length) == (fmt, length)
    assert info.name


@pytest.mark.parametrize("tag", sorted(TAGS))
def test_every_dictionary_tag_is_one_ber_tag(tag: str) -> None:
    assert tag == tag.upper()
    assert tlv.decode(tlv.encode({tag: b""})) == [Tlv(tag, b"")]
    assert TAGS[tag].format in ("n", "b", "an", "cn")


def test_secret_tags_are_in_the_dictionary_and_cover_tracks_and_pan() -> None:
    assert set(SECRET_TAGS) <= set(TAGS)
    assert SECRET_TAGS["57"] == "track" and SECRET_TAGS["5A"] == "pan"


def test_arqc_data_order_and_missing_tags() -> None:
    assert ARQC_TAGS == ("9F02", "9F03", "9F1A", "95", "5F2A", "9A", "9C", "9F37", "82", "9F36", "9F10")
    values = {tag: bytes([i]) * 2 for i, tag in enumerate(reversed(ARQC_TAGS))}
    assert tlv.arqc_data(values) == b"".join(values[t] for t in ARQC_TAGS)
    del values["9F37"]
    with pytest.raises(TlvError, match="9F37"):
        tlv.arqc_data(values)


# --- describe -----------------------------------------------------------------------------------------

PAN = "6212345678901234567"


@pytest.mark.parametrize(
    ("tag", "value", "line"),
    [
        ("9F02", "000000002500", "9F02 Amount, authorised: 000000002500"),
        ("9F26", "1A2B3C4D5E6F7081", "9F26 Application cryptogram (ARQC / TC / AAC): 1A2B3C4D5E6F7081"),
        ("50", "50424F43", "50   Application label: 'PBOC'"),
        ("5A", PAN + "F", "5A   Application PAN: 621234*********4567"),
        ("57", PAN + "D30122010000000000F", "57   Track 2 equivalent data: <track data, 19 bytes, not shown>"),  # noqa: E501
        ("5F20", "5A48414E47", "5F20 Cardholder name: <name data, 5 bytes, not shown>"),
        ("9F20", "1234", "9F20 Track 2 discretionary data: <track data, 2 bytes, not shown>"),
        ("DF7F", "ABCD", "DF7F unknown tag: ABCD"),
        ("9F36", "01", "9F36 Application transaction counter (ATC): 01 (expected 2 bytes, got 1)"),
        ("9A", "25AB25", "9A   Transaction date YYMMDD: 25AB25 (not BCD)"),
        ("8A", "3030", "8A   Authorisation response code: '00'"),
        ("8A", "00FF", "8A   Authorisation response code: 00FF (not text)"),
        ("5F34", "01", "5F34 PAN sequence number: 01"),
    ],
)
def test_describe_one_tag(tag: str, value: str, line: str) -> None:
    assert tlv.describe(tlv.encode({tag: bytes.fromhex(value)})) == [line]


def test_describe_constructed_indents_and_hides_inner_secrets() -> None:
    inner = tlv.encode({"57": bytes.fromhex(PAN + "D3012"), "5F34": b"\x01"})
    lines = tlv.describe(tlv.encode({"70": inner, "9F27": b"\x80"}))
    assert lines == [
        f"70   Record template: <constructed, {len(inner)} bytes>",
        "  57   Track 2 equivalent data: <track data, 12 bytes, not shown>",
        "  5F34 PAN sequence number: 01",
        "9F27 Cryptogram information data (CID): 80",
    ]


def test_describe_unparsable_constructed_or_bytes_shows_no_content() -> None:
    secret = bytes.fromhex(PAN + "D3012")
    lines = tlv.describe(tlv.encode({"70": b"\x9f" + secret}))
    assert lines == [f"70   Record template: <constructed, {len(secret) + 1} bytes, not parsed>"]
    assert tlv.describe(b"\x5a\x0f" + secret) == [
        "not BER-TLV (tag 5A: value of 15 bytes runs past the end), 14 bytes, not shown"
    ]


@given(st.binary(min_size=6, max_size=40), st.booleans())
def test_describe_never_shows_a_track_or_pan(secret: bytes, nested: bool) -> None:
    data = tlv.encode({"57": secret, "5A": secret, "9F6B": secret, "56": secret})
    if nested:
        data = tlv.encode({"70": data})
    text = "\n".join(tlv.describe(data))
    assert secret.hex().upper() not in text
    assert secret.hex().upper().rstrip("F") not in text
