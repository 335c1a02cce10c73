"""Property tests: the fast codec against the pyiso8583 oracle, round trips, and hostile input."""

from __future__ import annotations

import contextlib
from typing import Any

import iso8583
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from specs.codec import codec_for
from specs.dialects import DIALECTS, PROFILES, from_pyiso8583, to_pyiso8583
from specs.errors import DecodeError
from specs.framing import decode_pos
from tests.specs.strategies import field_values, messages

CODECS = [codec_for(d, p) for d in DIALECTS for p in PROFILES]
IDS = [f"{c.dialect}-{c.profile}" for c in CODECS]


@pytest.mark.parametrize("codec", CODECS, ids=IDS)
def test_every_field_roundtrips(codec: Any) -> None:
    @settings(max_examples=25)
    @given(st.data())
    def check(data: st.DataObject) -> None:
        for key in codec.fields:
            msg = {"t": "0200", key: data.draw(field_values(codec.spec[key]), label=key)}
            assert codec.decode(codec.encode(msg)) == msg

    check()


@pytest.mark.parametrize("codec", CODECS, ids=IDS)
def test_messages_match_oracle_and_roundtrip(codec: Any) -> None:
    @settings(max_examples=150)
    @given(messages(codec))
    def check(msg: dict[str, Any]) -> None:
        raw = codec.encode(msg)
        oracle, _ = iso8583.encode(to_pyiso8583(msg, codec.spec), codec.spec)
        assert raw == bytes(oracle)
        decoded = codec.decode(raw)
        assert decoded == msg
        doc, _ = iso8583.decode(raw, codec.spec)
        assert from_pyiso8583(doc, codec.spec) == decoded
        assert codec.encode(decoded) == raw

    check()


@pytest.mark.parametrize("codec", CODECS, ids=IDS)
def test_arbitrary_bytes_raise_only_decode_error(codec: Any) -> None:
    @settings(max_examples=300)
    @given(st.binary(max_size=400))
    def check(raw: bytes) -> None:
        try:
            codec.decode(raw)
        except DecodeError as exc:
            assert str(exc)

    check()


@pytest.mark.parametrize("codec", CODECS, ids=IDS)
def test_mutated_messages_raise_only_decode_error(codec: Any) -> None:
    """Valid messages with bytes flipped, cut or appended: they raise DecodeError, or decode to what
    pyiso8583 reads and re-encode to the same bytes."""

    @settings(max_examples=300)
    @given(messages(codec, min_fields=1), st.data())
    def check(msg: dict[str, Any], data: st.DataObject) -> None:
        raw = bytearray(codec.encode(msg))
        for _ in range(data.draw(st.integers(1, 3))):
            op = data.draw(st.sampled_from(["flip", "cut", "add"]))
            if op == "flip" and raw:
                i = data.draw(st.integers(0, len(raw) - 1))
                raw[i] = data.draw(st.integers(0, 255))
            elif op == "cut":
                del raw[data.draw(st.integers(0, len(raw))):]
            else:
                raw += data.draw(st.binary(min_size=1, max_size=4))
        try:
            decoded = codec.decode(bytes(raw))
        except DecodeError as exc:
            assert exc.field and exc.reason
            assert not {"2", "35", "36", "52", "55", "62"} & set(exc.partial)
        else:
            # never more lenient than the oracle: what we accept, pyiso8583 reads the same way
            doc, _ = iso8583.decode(bytes(raw), codec.spec)
            assert from_pyiso8583(doc, codec.spec) == decoded
            again = codec.encode(decoded)
            if codec.dialect == "pos":
                assert again == bytes(raw)
            else:  # H2H accepts lower-case hex on input and writes upper case
                assert codec.decode(again) == decoded

    check()


@given(st.binary(max_size=200))
def test_pos_frames_raise_only_decode_error(body: bytes) -> None:
    with contextlib.suppress(DecodeError):
        decode_pos(codec_for("pos", "3des"), b"\x60\x00\x01\x00\x00\x60\x31\x00\x00\x00\x00" + body)
