"""Client transport behaviour: timeouts, late answers, reconnect, header 0, out-of-order answers.

A small in-process trio server plays the HSM so the test controls when (and whether) it answers.
"""

from __future__ import annotations

import contextlib
import struct
from collections.abc import Awaitable, Callable
from functools import partial

import pytest
import trio

from hsm_sim.client import HsmClient, HsmError, HsmTimeout, HsmUnavailable
from tests.fixtures.hsm import HsmServer, start_hsm, stop_hsm


async def _frames(stream: trio.SocketStream, buf: bytearray) -> list[bytes]:
    while True:
        out = []
        while len(buf) >= 2 and len(buf) - 2 >= struct.unpack(">H", buf[:2])[0]:
            n = struct.unpack(">H", buf[:2])[0]
            out.append(bytes(buf[2 : 2 + n]))
            del buf[: 2 + n]
        if out:
            return out
        data = await stream.receive_some(65536)
        if not data:
            raise EOFError
        buf += data


def _answer(body: bytes, h: int = 4) -> bytes:
    cmd = body[h : h + 2]
    resp = body[:h] + cmd[:1] + bytes([cmd[1] + 1]) + b"00" + body[h + 6 :]
    return struct.pack(">H", len(resp)) + resp


async def _with_fake(
    behaviour: Callable[[trio.SocketStream], Awaitable[None]], test: Callable[[int], Awaitable[None]]
) -> None:
    async def handler(stream: trio.SocketStream) -> None:
        with contextlib.suppress(EOFError, trio.BrokenResourceError, trio.ClosedResourceError):
            await behaviour(stream)

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, handler, 0, host="127.0.0.1"))
        port = listeners[0].socket.getsockname()[1]
        await test(port)
        nursery.cancel_scope.cancel()


def test_timeout_and_late_answer_is_not_misdelivered() -> None:
    """First request answered late (after its timeout): the next caller must get its own answer."""

    async def behaviour(stream: trio.SocketStream) -> None:
        buf = bytearray()
        held: list[bytes] = []
        while True:
            for body in await _frames(stream, buf):
                if body[6:].startswith(b"0004slow"):
                    held.append(body)
                    continue
                for late in held:  # answer the slow one first, then this one
                    await stream.send_all(_answer(late))
                held.clear()
                await stream.send_all(_answer(body))

    async def test(port: int) -> None:
        async with HsmClient("127.0.0.1", port, timeout=0.3, connections=1) as hsm:
            with pytest.raises(HsmTimeout):
                await hsm.echo(b"slow")
            assert await hsm.echo(b"fast") == b"fast"
            assert await hsm.echo(b"next") == b"next"
            # the caller's own cancellation abandons the request the same way
            with trio.move_on_after(0.05) as scope:
                await hsm.echo(b"slow")
            assert scope.cancelled_caught
            assert await hsm.echo(b"more") == b"more"

    trio.run(_with_fake, behaviour, test)


def test_out_of_order_answers() -> None:
    async def behaviour(stream: trio.SocketStream) -> None:
        buf = bytearray()
        pending: list[bytes] = []
        while True:
            pending += await _frames(stream, buf)
            if len(pending) >= 10:
                for body in reversed(pending):
                    await stream.send_all(_answer(body))
                pending.clear()

    async def test(port: int) -> None:
        async with HsmClient("127.0.0.1", port, timeout=5, connections=1) as hsm:
            results: dict[int, bytes] = {}

            async def one(i: int) -> None:
                results[i] = await hsm.echo(b"%d" % i)

            async with trio.open_nursery() as nursery:
                for i in range(10):
                    nursery.start_soon(one, i)
            assert results == {i: b"%d" % i for i in range(10)}

    trio.run(_with_fake, behaviour, test)


def test_request_many_answers_in_any_order_and_times_out_as_one() -> None:
    async def behaviour(stream: trio.SocketStream) -> None:
        buf = bytearray()
        while True:
            for body in reversed(await _frames(stream, buf)):
                if b"slow" not in body:
                    await stream.send_all(_answer(body))

    async def test(port: int) -> None:
        async with HsmClient("127.0.0.1", port, timeout=0.3, connections=1) as hsm:
            replies = await hsm.request_many([("B2", b"0001a"), ("B2", "0001b"), ("B2", b"0001c")])
            assert [(r.error, r.fields) for r in replies] == [("00", b"a"), ("00", b"b"), ("00", b"c")]
            with pytest.raises(HsmTimeout):
                await hsm.request_many([("B2", b"0001d"), ("B2", b"0004slow")])
            with trio.move_on_after(0.05) as scope:
                await hsm.request_many([("B2", b"0004slow"), ("B2", b"0001e")])
            assert scope.cancelled_caught
            assert await hsm.echo(b"next") == b"next"

    trio.run(_with_fake, behaviour, test)


def test_connection_closed_mid_request() -> None:
    async def behaviour(stream: trio.SocketStream) -> None:
        await _frames(stream, bytearray())
        await stream.aclose()

    async def test(port: int) -> None:
        async with HsmClient("127.0.0.1", port, timeout=5, connections=1) as hsm:
            with pytest.raises(HsmUnavailable):
                await hsm.echo(b"x")

    trio.run(_with_fake, behaviour, test)


def test_wrong_response_code_is_an_error() -> None:
    async def behaviour(stream: trio.SocketStream) -> None:
        buf = bytearray()
        while True:
            for body in await _frames(stream, buf):
                resp = body[:4] + b"XX00"
                await stream.send_all(struct.pack(">H", len(resp)) + resp)

    async def test(port: int) -> None:
        async with HsmClient("127.0.0.1", port, timeout=5) as hsm:
            with pytest.raises(HsmError):
                await hsm.echo(b"x")

    trio.run(_with_fake, behaviour, test)


def test_reconnects_after_server_restart() -> None:
    server = start_hsm()
    port = server.port

    async def main() -> None:
        nonlocal server
        async with HsmClient("127.0.0.1", port, timeout=3, connections=2) as hsm:
            assert await hsm.echo(b"1") == b"1"
            assert await hsm.echo(b"2") == b"2"
            stop_hsm(server.process)
            with pytest.raises(HsmUnavailable):
                await hsm.echo(b"3")
            server = start_hsm_on(port)
            assert await hsm.echo(b"4") == b"4"
            assert await hsm.echo(b"5") == b"5"

    try:
        trio.run(main)
    finally:
        stop_hsm(server.process)


def start_hsm_on(port: int) -> HsmServer:
    return start_hsm(port=port)


def test_header_length_zero() -> None:
    server = start_hsm(header_length=0)
    try:

        async def main() -> None:
            async with HsmClient("127.0.0.1", server.port, header_length=0, timeout=5) as hsm:
                results = []

                async def one(i: int) -> None:
                    results.append(await hsm.echo(b"%d" % i) == b"%d" % i)

                async with trio.open_nursery() as nursery:
                    for i in range(50):
                        nursery.start_soon(one, i)
                assert results == [True] * 50
                assert (await hsm.diagnostics()).lmk_check_value == "7D22274C5745C5A1"

        trio.run(main)
    finally:
        stop_hsm(server.process)


def test_not_entered() -> None:
    async def main() -> None:
        with pytest.raises(RuntimeError):
            await HsmClient("127.0.0.1", 1).echo(b"x")

    trio.run(main)
