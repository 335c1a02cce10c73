from __future__ import annotations

import json
from typing import Any

import pytest
import structlog
from hypothesis import given
from hypothesis import strategies as st

from ops import logs

PAN = "6212345678901234567"
TRACK2 = "6212345678901234567=30121010000012345"


def _render(capsys: pytest.CaptureFixture[str], **event: object) -> str:
    logs.configure(format="json", level="debug", service="test")
    structlog.get_logger("t").info("authorised", **event)
    return capsys.readouterr().err


def test_json_line_masks_pan_and_drops_every_secret(capsys: pytest.CaptureFixture[str]) -> None:
    out = _render(
        capsys,
        pan=PAN,
        pin_block="2BD127874D206D2E",
        pinBlock=b"\x2b\xd1\x27\x87\x4d\x20\x6d\x2e",
        clear_key="0123456789ABCDEFFEDCBA9876543210",
        tmk="0123456789ABCDEFFEDCBA9876543210",
        key="U1234",
        track2=TRACK2,
        de35=TRACK2,
        note=f"card {PAN} swiped with track {TRACK2} done",
        message={"2": PAN, "52": b"\x00" * 8, "nested": [PAN]},
        raw=b"\x01\x02\x03",
    )
    line = json.loads(out.strip().splitlines()[-1])
    text = out
    assert PAN not in text
    assert "2BD127874D206D2E" not in text
    assert "0123456789ABCDEFFEDCBA9876543210" not in text
    assert "30121010000012345" not in text
    assert line["pan"] == "621234*********4567"
    for secret in ("pin_block", "pinBlock", "clear_key", "tmk", "key", "track2", "de35"):
        assert line[secret] == "[redacted]"
    assert line["note"] == "card 621234*********4567 swiped with track 621234*********4567 done"
    assert line["message"]["2"] == "621234*********4567"
    assert line["message"]["nested"] == ["621234*********4567"]
    assert line["raw"] == "<3 bytes>"
    assert line["service"] == "test" and line["level"] == "info"


def test_console_format_is_redacted_too(capsys: pytest.CaptureFixture[str]) -> None:
    logs.configure(format="console", level="info")
    structlog.get_logger().warning("x", pan=PAN, pin="1234")
    out = capsys.readouterr().err
    assert PAN not in out and "1234" not in out.replace("621234", "")


def test_mask_pan() -> None:
    assert logs.mask_pan("6212345678901234") == "621234******1234"
    assert logs.mask_pan("1234") == "****"


@given(st.text(alphabet="0123456789", min_size=13, max_size=19), st.text(max_size=20))
def test_no_pan_survives_in_text(pan: str, around: str) -> None:
    text = logs.redact_text(f"{around} {pan} {around}")
    assert pan not in text


def test_a_closed_stderr_never_breaks_the_caller(monkeypatch: pytest.MonkeyPatch) -> None:
    import io
    import sys

    logs.configure(format="json", level="info")
    closed = io.StringIO()
    closed.close()
    monkeypatch.setattr(sys, "stderr", closed)
    structlog.get_logger().error("still fine", pan=PAN)  # must not raise


def _suppressed(event: str) -> float:
    from prometheus_client import REGISTRY

    return REGISTRY.get_sample_value("payswitch_log_suppressed_total", {"event": event}) or 0.0


def test_a_flood_of_one_event_from_one_source_is_rate_limited(capsys: pytest.CaptureFixture[str]) -> None:
    now = [1000.0]
    limit = logs.RateLimit(burst=5, interval=10, clock=lambda: now[0])
    logs.configure(format="json", level="info", rate_limit=limit)
    log = structlog.get_logger("t")
    before = _suppressed("bad frame")
    for _ in range(1000):
        log.warning("bad frame", peer="203.0.113.9:4000", listener="pos-3des")
    log.warning("bad frame", peer="198.51.100.7:5000", listener="pos-3des")  # another source: its own budget
    lines = [json.loads(x) for x in capsys.readouterr().err.splitlines()]
    assert len(lines) == 6 and lines[-1]["peer"] == "198.51.100.7:5000"
    assert _suppressed("bad frame") - before == 995
    now[0] += 10  # the next window: one line says how many were not written
    log.warning("bad frame", peer="203.0.113.9:4000", listener="pos-3des")
    (summary,) = [json.loads(x) for x in capsys.readouterr().err.splitlines()]
    assert summary["suppressed"] == 995 and summary["peer"] == "203.0.113.9:4000"


def test_stdlib_tracebacks_are_one_json_event(capsys: pytest.CaptureFixture[str]) -> None:
    import asyncio
    import logging

    logs.configure(format="json", level="info", service="host")
    try:
        raise ConnectionResetError(f"connection lost while sending card {PAN}")
    except ConnectionResetError:
        logging.getLogger("asyncpg.pool").error("connection failed", exc_info=True)
    loop = asyncio.new_event_loop()
    try:
        loop.set_exception_handler(logs.asyncio_exception_handler)
        loop.call_exception_handler({"message": "Future exception was never retrieved",
                                     "exception": OSError("server closed the connection")})
    finally:
        loop.close()
    logging.getLogger("asyncio").error("Task was destroyed", exc_info=(ValueError, ValueError("x"), None))
    out = capsys.readouterr().err
    events = [json.loads(x) for x in out.splitlines()]  # every line is one JSON event
    assert len(events) == 3, out
    assert events[0]["event"] == "connection failed" and events[0]["logger"] == "asyncpg.pool"
    assert "Traceback" in events[0]["exception"] and events[0]["service"] == "host"
    assert PAN not in out  # redacted like every other event
    assert events[1]["event"] == "asyncio_exception" and "OSError" in events[1]["exception"]
    assert events[2]["level"] == "error"


def test_bind_peer_names_the_source_of_a_connection_and_its_tasks(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A listener binds its connection's source once; events of that task and of the request tasks it
    starts carry ``peer`` (so RateLimit keys them per source); another connection's do not."""
    import trio

    logs.configure(format="json", level="info")
    log = structlog.get_logger("t")

    async def connection(source: str | None) -> None:
        if source is not None:
            logs.bind_peer(source)
        async with trio.open_nursery() as requests:
            requests.start_soon(lambda: _log_bad_frame(log))

    async def main() -> None:
        async with trio.open_nursery() as n:
            n.start_soon(connection, "203.0.113.9:4000")
            n.start_soon(connection, None)

    trio.run(main)
    peers = sorted(str(json.loads(x).get("peer")) for x in capsys.readouterr().err.splitlines())
    assert peers == ["203.0.113.9:4000", "None"]


async def _log_bad_frame(log: Any) -> None:
    log.warning("bad frame")
