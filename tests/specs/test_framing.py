"""Framing: the sans-IO splitter, POS TPDU/header handling, and the trio wrappers on real streams."""

from __future__ import annotations

import pytest
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

from specs.codec import codec_for
from specs.errors import DecodeError, FrameError, FrameTimeout
from specs.framing import (
    KEEPALIVE,
    FrameReader,
    FrameSplitter,
    PosFrame,
    decode_pos,
    frame,
    h2h_splitter,
    pos_frame,
    pos_splitter,
    response_header,
    swap_tpdu,
    write_frame,
    write_frames,
)


def test_splitter_returns_every_complete_frame_at_once() -> None:
    s = pos_splitter()
    wire = frame(b"abc") + frame(b"d") + frame(b"efgh")[:3]
    assert s.feed(wire) == [b"abc", b"d"]
    assert s.pending == 3
    assert s.feed(b"fgh") == [b"efgh"]
    assert s.pending == 0


@given(st.lists(st.binary(min_size=1, max_size=300), max_size=8), st.data())
def test_splitter_any_chunking(bodies: list[bytes], data: st.DataObject) -> None:
    wire = b"".join(frame(b) for b in bodies)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(wire)), max_size=10)))
    s = pos_splitter()
    out: list[bytes] = []
    prev = 0
    for cut in [*cuts, len(wire)]:
        out += s.feed(wire[prev:cut])
        prev = cut
    assert out == bodies
    assert s.pending == 0


def test_pos_zero_length_and_oversize_are_errors() -> None:
    with pytest.raises(FrameError, match="zero-length"):
        pos_splitter().feed(b"\x00\x00")
    with pytest.raises(FrameError, match="2049 over maximum 2048"):
        pos_splitter().feed(b"\x08\x01")
    assert pos_splitter().feed(b"\x08\x00") == []  # exactly the maximum is fine


def test_error_after_good_frames_is_deferred() -> None:
    s = pos_splitter()
    assert s.feed(frame(b"ok") + b"\x00\x00") == [b"ok"]
    with pytest.raises(FrameError):
        s.check()
    with pytest.raises(FrameError):
        s.feed(b"more")


def test_h2h_keepalives_are_skipped() -> None:
    s = h2h_splitter()
    assert s.feed(KEEPALIVE + frame(b"x") + KEEPALIVE + KEEPALIVE) == [b"x"]
    assert s.keepalives == 3
    with pytest.raises(FrameError):
        h2h_splitter().feed(b"\x20\x01")


def test_splitter_rejects_bad_max() -> None:
    with pytest.raises(ValueError):
        FrameSplitter(0, keepalive=False)


def test_pos_frame_parts_and_response() -> None:
    body = bytes.fromhex("6000010002" "603100123456") + b"MSG"
    pf = PosFrame.parse(body)
    assert (pf.tpdu, pf.header, pf.message) == (body[:5], body[5:11], b"MSG")
    assert swap_tpdu(pf.tpdu) == bytes.fromhex("6000020001")
    assert response_header(pf.header, 3) == bytes.fromhex("603103123456")
    assert PosFrame.parse(pf.respond(b"R")[2:]).requirement == 0
    assert pos_frame(b"M") == frame(bytes.fromhex("6000010000603100000000") + b"M")


def test_pos_bad_tpdu_still_reports_readable_fields() -> None:
    c = codec_for("pos", "3des")
    msg = c.encode({"t": "0200", "3": "000000", "11": "000123", "41": "T0000001", "42": "M" * 15})
    with pytest.raises(DecodeError) as info:
        decode_pos(c, bytes.fromhex("6100010000603100000000") + msg)
    assert info.value.field == "TPDU"
    assert (info.value.mti, info.value.stan, info.value.terminal_id) == ("0200", "000123", "T0000001")
    with pytest.raises(DecodeError, match="shorter than TPDU"):
        decode_pos(c, b"\x60\x00")


def test_reader_on_memory_stream_batches_and_eof() -> None:
    async def main() -> None:
        left, right = trio.testing.memory_stream_pair()
        reader = FrameReader(right, pos_splitter(), timeout=5)
        await write_frames(left, [b"one", b"two"])
        assert await reader.receive_batch() == [b"one", b"two"]
        await write_frame(left, b"three")
        await left.send_all(frame(b"four")[:3])
        assert await reader.receive() == b"three"
        await left.send_all(frame(b"four")[3:])
        assert await reader.receive() == b"four"
        await left.aclose()
        assert await reader.receive() is None

    trio.run(main)


def test_reader_eof_inside_frame_and_timeout() -> None:
    async def main() -> None:
        left, right = trio.testing.memory_stream_pair()
        reader = FrameReader(right, pos_splitter(), timeout=1)
        await left.send_all(b"\x00\x05ab")
        with pytest.raises(FrameTimeout) as info:
            await reader.receive()
        assert info.value.partial
        await left.aclose()
        with pytest.raises(FrameError, match="inside a frame"):
            await reader.receive()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_reader_keepalive_restarts_timeout() -> None:
    async def main() -> None:
        left, right = trio.testing.memory_stream_pair()
        reader = FrameReader(right, h2h_splitter(), timeout=10)

        async def peer() -> None:
            for _ in range(3):
                await trio.sleep(8)
                await left.send_all(KEEPALIVE)
            await trio.sleep(8)
            await write_frame(left, b"late")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(peer)
            start = trio.current_time()
            assert await reader.receive() == b"late"
            assert trio.current_time() - start == pytest.approx(32)

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_reader_over_real_tcp_socket() -> None:
    c = codec_for("pos", "3des")
    request = c.encode({"t": "0820", "11": "000009", "41": "T0000001", "42": "898330160120001",
                        "60": "00000001301"})

    async def main() -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        port = listeners[0].socket.getsockname()[1]

        async def serve_one(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
            task_status.started()
            stream = await listeners[0].accept()
            async with stream:
                reader = FrameReader(stream, pos_splitter(), timeout=5)
                while (body := await reader.receive()) is not None:
                    pf, msg = decode_pos(c, body)
                    reply = {"t": "0830", "11": msg["11"], "39": "00", "41": msg["41"], "42": msg["42"],
                             "60": msg["60"]}
                    await stream.send_all(pf.respond(c.encode(reply)))
            await listeners[0].aclose()

        async with trio.open_nursery() as nursery:
            await nursery.start(serve_one)
            client = await trio.open_tcp_stream("127.0.0.1", port)
            async with client:
                # two requests in one segment: both answered
                await client.send_all(pos_frame(request) * 2)
                reader = FrameReader(client, pos_splitter(), timeout=5)
                answers = [await reader.receive(), await reader.receive()]
                for body in answers:
                    assert body is not None
                    pf, msg = decode_pos(c, body)
                    assert pf.tpdu == bytes.fromhex("6000000001")
                    assert msg["t"] == "0830" and msg["39"] == "00" and msg["11"] == "000009"

    trio.run(main)


@given(st.binary(max_size=3000), st.booleans())
def test_splitter_arbitrary_bytes_raise_only_frame_error(data: bytes, keepalive: bool) -> None:
    s = FrameSplitter(2048, keepalive=keepalive)
    try:
        frames = s.feed(data)
    except FrameError:
        return
    assert all(0 < len(f) <= 2048 for f in frames)
    assert sum(len(f) + 2 for f in frames) + s.pending + 2 * s.keepalives <= len(data)
