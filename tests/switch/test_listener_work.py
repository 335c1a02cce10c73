"""The listener's handler tasks (switch/listener.py): a task that answered a frame waits for the
connection's next one instead of a task being started per frame; requests one at a time, pipelined
and slow ones are all answered, in the connection's order for sequential ones, and a connection that
closes, breaks or is drained while its task waits ends without leaving a task behind."""

from __future__ import annotations

import struct

import trio

from specs.framing import frame
from switch.links import split_frames
from switch.listener import Limits, Listener


def _limits() -> Limits:
    return Limits(
        max_connections=100,
        max_in_flight=32,
        idle_timeout=30.0,
        max_frame=8192,
        zero_length_closes=True,
    )


class _Echo:
    """A handler answering each frame with itself; a frame starting b"slow" takes 50 ms; it counts the
    handler tasks it ran in."""

    def __init__(self) -> None:
        self.tasks: set[int] = set()
        self.seen = 0

    async def __call__(self, body: bytes, conn: trio.SocketStream) -> bytes | None:
        self.tasks.add(id(trio.lowlevel.current_task()))
        self.seen += 1
        if body.startswith(b"slow"):
            await trio.sleep(0.05)
        else:
            await trio.sleep(0)
        return body


async def _read_frames(stream: trio.SocketStream, n: int) -> list[bytes]:
    buf = bytearray()
    out: list[bytes] = []
    while len(out) < n:
        data = await stream.receive_some(65536)
        assert data, "listener closed the connection"
        buf += data
        out += split_frames(buf, 65535)
    return out


def test_one_task_per_connection_for_requests_one_at_a_time_and_all_answers_for_pipelined() -> None:
    async def main() -> None:
        echo = _Echo()
        listener = Listener("test", echo, _limits())
        async with trio.open_nursery() as nursery:
            port = await nursery.start(listener.serve, "127.0.0.1", 0)
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            async with stream:
                for i in range(50):  # a terminal: the next request after the answer
                    await stream.send_all(frame(b"request %d" % i))
                    assert await _read_frames(stream, 1) == [b"request %d" % i]
                assert len(echo.tasks) == 1
                # a concentrator: many at once, some slow; every one answered
                bodies = [(b"slow %d" if i % 5 == 0 else b"fast %d") % i for i in range(40)]
                await stream.send_all(b"".join(frame(b) for b in bodies))
                assert sorted(await _read_frames(stream, 40)) == sorted(bodies)
                for i in range(5):  # and one at a time again
                    await stream.send_all(frame(b"again %d" % i))
                    assert await _read_frames(stream, 1) == [b"again %d" % i]
            with trio.fail_after(5):
                while listener.connections:
                    await trio.sleep(0.01)
            assert listener.in_flight == 0 and echo.seen == 95
            nursery.cancel_scope.cancel()

    trio.run(main)


def test_connections_that_close_break_or_drain_while_their_task_waits_end() -> None:
    async def main() -> None:
        echo = _Echo()
        listener = Listener("test", echo, _limits())
        async with trio.open_nursery() as nursery:
            port = await nursery.start(listener.serve, "127.0.0.1", 0)
            closing = await trio.open_tcp_stream("127.0.0.1", port)
            breaking = await trio.open_tcp_stream("127.0.0.1", port)
            draining = await trio.open_tcp_stream("127.0.0.1", port)
            for stream in (closing, breaking, draining):
                await stream.send_all(frame(b"hello"))
                assert await _read_frames(stream, 1) == [b"hello"]
            await closing.aclose()  # EOF while its task waits for a next frame
            breaking.socket.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_LINGER, struct.pack("ii", 1, 0))
            await breaking.aclose()  # a reset
            with trio.fail_after(5):
                while listener.connections > 1:
                    await trio.sleep(0.01)
            # a slow request in flight when the listener drains is still answered
            await draining.send_all(frame(b"slow last"))
            await trio.sleep(0.01)
            listener.drain()
            assert await _read_frames(draining, 1) == [b"slow last"]
            with trio.fail_after(5):
                while listener.connections:
                    await trio.sleep(0.01)
            await draining.aclose()
            nursery.cancel_scope.cancel()

    trio.run(main)
