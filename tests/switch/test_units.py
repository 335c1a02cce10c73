"""The switch's pure pieces: routing, dialect mapping, framing, journal coalescing, link matching."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
import structlog
import trio
from hypothesis import given
from hypothesis import strategies as st

from specs.codec import codec_for
from switch.journal import JournalWriter
from switch.links import LinkConfig, LinkDown, LinkTimeout, OutboundLink, frame, split_frames
from switch.mapping import (
    account12,
    original_data,
    pan_of,
    parse_de60,
    pos_balance,
    pos_response,
    pos_to_h2h,
    replayable,
    response_mti,
    txn_type,
)
from switch.routing import Route, RoutingTable
from switch.sessions import Entry, Terminal
from switch.store import TerminalRecord


def test_routing_prefers_the_most_specific_range() -> None:
    table = RoutingTable(
        [Route("62", "62", "wide"), Route("621234", "621299", "mid"), Route("62124400", "62124499", "narrow")]
    )
    assert table.lookup("6212345678901234567") == "mid"
    assert table.lookup("6212445000000000000") == "narrow"
    assert table.lookup("6299000000000000000") == "wide"
    assert table.lookup("4000000000000000") is None
    assert table.lookup("6212345678901234567") == "mid"  # cached answer is the same


def test_route_rejects_bad_bounds() -> None:
    for low, high in (("12", "1"), ("19", "12"), ("1a", "1b")):
        with pytest.raises(ValueError):
            Route(low, high, "x")


@given(
    st.lists(st.tuples(st.integers(0, 999), st.integers(0, 999)), min_size=1, max_size=8),
    st.from_regex(r"[0-9]{16}", fullmatch=True),
)
def test_routing_matches_a_linear_scan(bounds: list[tuple[int, int]], pan: str) -> None:
    routes = [Route(f"{min(a, b):03d}", f"{max(a, b):03d}", f"l{i}") for i, (a, b) in enumerate(bounds)]
    found = RoutingTable(routes).lookup(pan)
    matching = [r for r in routes if r.matches(pan)]
    if not matching:
        assert found is None
    else:
        best = min(matching, key=lambda r: (r.width, r.bin_low))
        assert found == best.link


def test_response_mti_and_helpers() -> None:
    assert [response_mti(m) for m in ("0200", "0100", "0220", "0400", "0421", "0800", "0500", "0320")] == [
        "0210",
        "0110",
        "0230",
        "0410",
        "0430",
        "0810",
        "0510",
        "0330",
    ]
    assert account12("6212345678901234567") == "567890123456"
    assert account12("12345") == "000000001234"
    assert pan_of({"35": "6212345678901234567=30121010000"}) == "6212345678901234567"
    d = parse_de60("22000123000")
    assert (d.type_code, d.batch_no, d.network_code) == ("22", 123, "000")
    assert original_data("0200", "000777", "1125101010", "48880000") == (
        "0200" + "000777" + "1125101010" + "00048880000" + "0" * 11
    )


def test_balance_mapping_takes_the_available_amount() -> None:
    h2h = "1001156C000000100000" + "1002156C000000098766"
    assert pos_balance(h2h) == "1002156C000000098766"
    assert pos_balance(None) is None


def test_txn_types() -> None:
    cases = {
        ("0200", "000000", "00"): "purchase",
        ("0200", "000000", "06"): "completion",
        ("0200", "310000", "00"): "balance",
        ("0200", "200000", "00"): "void",
        ("0220", "200000", "00"): "refund",
        ("0100", "030000", "06"): "pre-auth",
        ("0100", "200000", "06"): "pre-auth-void",
        ("0200", "210000", "00"): "top-up",
    }
    for (mti, pc, cond), kind in cases.items():
        assert txn_type({"t": mti, "3": pc, "25": cond}) == kind


def test_pos_to_h2h_round_trips_through_the_codecs() -> None:
    pos = codec_for("pos", "3des").decode(
        codec_for("pos", "3des").encode(
            {
                "t": "0200",
                "2": "6212345678901234567",
                "3": "200000",
                "4": "000000001000",
                "11": "000123",
                "14": "3012",
                "22": "021",
                "25": "00",
                "35": "6212345678901234567=30121010000",
                "37": "533010000777",
                "41": "T0000001",
                "42": "898330160120001",
                "49": "156",
                "60": "23000001000",
                "61": "000001000100",
            }
        )
    )
    h2h = pos_to_h2h(
        pos,
        stan=42,
        de7="1125101010",
        rrn_value="533010000042",
        acquirer_id="48880000",
        pin_block=bytes(8),
        mcc="5812",
        merchant_name="Canteen",
    )
    raw = codec_for("h2h", "3des").encode(h2h)
    back = codec_for("h2h", "3des").decode(raw)
    assert back["11"] == "000042" and back["35"] == "6212345678901234567=30121010000"
    assert back["102"] == "533010000777" and back["60"] == "23000001000/000001000100"
    answer = pos_response(pos, code="00", rrn_value="533010000042", auth_id="A1", acquirer_id="48880000")
    assert "2" in answer and "2" not in replayable(answer) and answer["63"] == "CUP"
    codec_for("pos", "3des").encode(answer)


def test_split_frames_keeps_partial_and_drops_keepalives() -> None:
    buf = bytearray(frame(b"abc") + b"\x00\x00" + frame(b"de") + b"\x00\x05xy")
    assert split_frames(buf, 100) == [b"abc", b"de"]
    assert bytes(buf) == b"\x00\x05xy"
    buf += b"zzz"
    assert split_frames(buf, 100) == [b"xyzzz"] and not buf
    with pytest.raises(ValueError):
        split_frames(bytearray(b"\x10\x00"), 100)
    buf = bytearray(frame(b"ok") + b"\x10\x00")
    assert split_frames(buf, 100) == [b"ok"]  # frames before a bad length are delivered first
    with pytest.raises(ValueError):
        split_frames(buf, 100)


def test_journal_writer_coalesces_rows_and_waits_for_commit() -> None:
    batches: list[int] = []

    async def insert(rows: Sequence[tuple[Any, ...]]) -> None:
        await trio.sleep(0.01)
        batches.append(len(rows))

    async def main() -> None:
        writer = JournalWriter(insert)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(writer.run)
            async with trio.open_nursery() as writers:
                for i in range(100):
                    writers.start_soon(writer.write, (i,))
            await writer.flush()
            nursery.cancel_scope.cancel()

    trio.run(main)
    assert sum(batches) == 100 and len(batches) <= 3


def test_journal_writer_retries_a_failing_database() -> None:
    # The writer logs each failure; other tests may have pointed structlog at a stream that is closed
    # by now (CLI runs in-process), so start from structlog's defaults.
    structlog.reset_defaults()
    calls = {"n": 0}

    async def insert(rows: Sequence[tuple[Any, ...]]) -> None:
        calls["n"] += 1
        if calls["n"] < 3:
            raise OSError("database down")

    async def main() -> None:
        writer = JournalWriter(insert)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(writer.run)
            await writer.write(("row",))
            nursery.cancel_scope.cancel()

    trio.run(main)
    assert calls["n"] == 3


def test_batch_totals_exclude_declines_reversals_and_voids() -> None:
    record = TerminalRecord("T1", "M1", "3des", "U" + "0" * 32, True, "5812", "x")
    t = Terminal(record=record, batch_no=1, session=None)
    for stan, kind, amount, code in (
        ("1", "purchase", 100, "00"),
        ("2", "purchase", 50, "51"),
        ("3", "completion", 30, "00"),
        ("4", "refund", 20, "00"),
        ("5", "purchase", 70, "00"),
        ("6", "void", 70, "00"),
    ):
        e = Entry(mti="0200" if kind != "refund" else "0220", stan=stan, kind=kind, amount=amount)
        e.finish(code, None)
        t.entries[(e.mti, stan)] = e
    t.entries[("0200", "5")].voided = True
    assert t.totals() == (130, 2, 20, 1)


def test_link_down_fails_at_once_and_unanswered_times_out() -> None:
    async def main() -> None:
        config = LinkConfig("x", "out", "127.0.0.1", 1, 1, "", "3des", "U" + "0" * 32, None)
        link = OutboundLink(config, codec_for("h2h", "3des"), "48880000")
        with pytest.raises(LinkDown):
            await link.request({"t": "0800"}, 1.0)
        # a listener that accepts and never answers
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        port = listeners[0].socket.getsockname()[1]
        config = LinkConfig("y", "out", "127.0.0.1", port, 1, "", "3des", "U" + "0" * 32, None)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.serve_listeners, _silent, listeners)
            link = OutboundLink(config, codec_for("h2h", "3des"), "48880000")
            conn = link._conns[0]
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            nursery.start_soon(conn._writer, stream)
            nursery.start_soon(conn._sweep)
            conn.up = True
            with pytest.raises(LinkTimeout):
                await link.request(link.network_message("301"), 0.2)
            assert not conn.pending
            nursery.cancel_scope.cancel()

    trio.run(main)


async def _silent(stream: trio.SocketStream) -> None:
    async with stream:
        while await stream.receive_some(4096):
            pass
