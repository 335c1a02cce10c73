"""TCP listeners for terminals and acquirers: framing, limits, per-connection concurrency, draining.

Each connection has a reader that waits for its socket, then takes every complete frame out of the
receive buffer per wake-up and hands each to a handler task (up to ``max_in_flight`` at once; beyond
that it stops reading, so a fast sender is slowed down instead of queueing without bound): a task that
answered its frame waits for the connection's next one, so a terminal sending one request at a time
is served by one task, not a task started per request. Answers are coalesced: the first
answer queued in a scheduler pass makes its task yield once, and then that task sends every answer
queued meanwhile on every connection of the listener, one non-blocking ``send`` per connection (a
send on loopback costs the sender far more than the bytes; one per answer was the switch's largest
cost). Only when the kernel buffer is full does a connection get a task of its own to finish. A
frame over ``max_frame`` (or a zero-length frame where the dialect forbids it) closes that connection
only.

Who may stay connected is the listener's :class:`ops.guard.ConnectionGuard` (switch/README.md,
"Connections under a flood"): caps per listener and per source address, an idle timeout that only a
complete frame (an H2H keep-alive included) or an answer resets, a time limit for a frame once its first
byte is buffered; when full, the connection open longest without a complete frame is evicted for the
newcomer. The reader stores a time in the connection's slot; one sweeping task closes what is overdue.

``drain()`` stops accepting and reading; requests already read are finished and answered, then the
connections close.
"""

from __future__ import annotations

import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import outcome
import trio

from ops.guard import ConnectionGuard, GuardLimits, Slot, source_of
from ops.listening import cannot_listen
from ops.logs import bind_peer, get_logger
from switch import metrics
from switch.links import frame, split_frames

log = get_logger(__name__)

# A handler gets the frame body and the connection it came on (the same object for every frame of one
# connection, closed once the connection ended: terminal sessions are tied to it), and returns the
# answer body, b"" to send nothing, or None to close the connection.
Handler = Callable[[bytes, trio.SocketStream], Awaitable[bytes | None]]


@dataclass(frozen=True)
class Limits:
    max_connections: int
    max_in_flight: int
    idle_timeout: float
    max_frame: int
    zero_length_closes: bool  # POS: a LEN of 0 closes; H2H: a keep-alive
    max_per_source: int = 1_000_000
    frame_timeout: float = 3600.0

    def guard(self) -> GuardLimits:
        return GuardLimits(self.max_connections, self.max_per_source, self.idle_timeout, self.frame_timeout)


class _Client:
    def __init__(self, stream: trio.SocketStream, nursery: trio.Nursery, slot: Slot) -> None:
        self.stream = stream
        self.slot_ = slot  # the guard's record of this connection (deadlines)
        # The stdlib socket under trio's (non-blocking): sent to directly by the flush, which must not
        # yield once per connection.
        self.sock: socket.socket = stream.socket._sock  # type: ignore[attr-defined]
        self.nursery = nursery
        self.out: list[bytes] = []
        self.queued = False  # in the listener's list of connections with answers to send
        self.sending = False  # a task is finishing a send the kernel could not take at once
        self.broken = False
        self.in_flight = 0
        self.slot = trio.Event()
        self.read_scope = trio.CancelScope()
        # A handler task that finished its frame and waits for the next one of this connection (the
        # reader hands it over instead of starting a task per frame); None once reading ended.
        self.parked: trio.lowlevel.Task | None = None
        self.reading = True

    def stop_reading(self) -> None:
        """No more frames: the parked handler task ends."""
        self.reading = False
        task, self.parked = self.parked, None
        if task is not None:
            trio.lowlevel.reschedule(task, outcome.Value(None))

    def fail(self) -> None:
        self.broken = True
        self.out.clear()
        self.read_scope.cancel()

    def send_now(self) -> None:
        """Send everything queued with one non-blocking send; a task finishes what does not fit."""
        if self.broken or not self.out:
            self.out.clear()
            return
        data = b"".join(self.out) if len(self.out) > 1 else self.out[0]
        self.out.clear()
        try:
            sent = self.sock.send(data)
        except BlockingIOError:
            sent = 0
        except OSError:
            self.fail()
            return
        if sent < len(data):
            self.sending = True
            self.nursery.start_soon(self._send_rest, data[sent:])

    async def _send_rest(self, data: bytes) -> None:
        try:
            while data:
                await self.stream.send_all(data)
                data = b"".join(self.out)
                self.out.clear()
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            self.fail()
        finally:
            self.sending = False

    async def finish(self) -> None:
        """Send what is still queued (the connection is about to close)."""
        if self.out and not self.broken and not self.sending:
            data = b"".join(self.out)
            self.out.clear()
            try:
                await self.stream.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                self.fail()


class Listener:
    def __init__(self, name: str, handler: Handler, limits: Limits) -> None:
        self.name = name
        self.handler = handler
        self.limits = limits
        self.connections = 0
        self.in_flight = 0
        self._clients: set[_Client] = set()
        self._unsent: list[_Client] = []  # connections with answers queued, sent at the next flush
        self._accept_scope: trio.CancelScope | None = None
        self._draining = False
        self.port = 0
        self.guard = ConnectionGuard(name, limits.guard())
        metrics.CONNECTIONS.labels(listener=name).set(0)

    async def serve(
        self, host: str, port: int, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED
    ) -> None:
        try:
            listeners = await trio.open_tcp_listeners(port, host=host, backlog=4096)
        except OSError as exc:  # one line naming the address and the key, not a traceback
            key = {"pos-3des": "switch.pos_3des_port", "pos-sm4": "switch.pos_sm4_port"}.get(self.name)
            raise cannot_listen("switch", host, port, key or "switch.h2h_port", exc) from None
        self.port = listeners[0].socket.getsockname()[1]
        # Connections live in their own nursery, outside the accept loop's cancel scope: drain() stops
        # accepting without cancelling the requests being answered.
        async with trio.open_nursery() as connections:
            with trio.CancelScope() as scope:
                self._accept_scope = scope
                task_status.started(self.port)
                async with trio.open_nursery() as acceptors:
                    acceptors.start_soon(self.guard.run)  # idle and frame deadlines
                    for listener in listeners:
                        acceptors.start_soon(self._accept, listener, connections)
            for listener in listeners:
                await listener.aclose()

    async def _accept(self, listener: trio.SocketListener, connections: trio.Nursery) -> None:
        while True:
            try:
                stream = await listener.accept()
            except OSError as exc:  # EMFILE and friends: wait a little rather than spin
                log.error("accept failed", listener=self.name, error=str(exc))
                await trio.sleep(0.1)
                continue
            connections.start_soon(self._serve_client, stream)

    def drain(self) -> None:
        """Stop accepting and reading; in-flight requests still get their answers."""
        self._draining = True
        if self._accept_scope is not None:
            self._accept_scope.cancel()
        for client in list(self._clients):
            client.read_scope.cancel()

    async def _serve_client(self, stream: trio.SocketStream) -> None:
        # The close callable and the busy test find the client once it exists (it needs the nursery).
        holder: list[_Client] = []
        slot = None
        if not self._draining:
            try:
                source = source_of(stream.socket.getpeername())
            except OSError:  # reset before we got to it
                source = "?"
            bind_peer(source)
            slot = self.guard.admit(
                source,
                trio.current_time(),
                lambda: holder[0].read_scope.cancel() if holder else None,
                lambda: bool(holder) and holder[0].in_flight > 0,
            )
        if slot is None:
            metrics.REFUSED.labels(listener=self.name).inc()
            await stream.aclose()
            return
        self.connections += 1
        metrics.CONNECTIONS.labels(listener=self.name).inc()
        client: _Client | None = None
        try:
            async with trio.open_nursery() as nursery:
                client = _Client(stream, nursery, slot)
                holder.append(client)
                if slot.closing:  # evicted before it started
                    client.read_scope.cancel()
                self._clients.add(client)
                await self._reader(client, nursery)
                client.stop_reading()
                while client.in_flight:  # answer what was read, then close
                    await client.slot.wait()
                    client.slot = trio.Event()
                if client.queued:
                    self._unsent.remove(client)
                    client.queued = False
                await client.finish()
        except Exception as exc:  # a broken client connection (errors arrive in exception groups)
            log.debug("client connection ended", listener=self.name, error=repr(exc))
        finally:
            self.guard.release(slot)
            if client is not None:
                self._clients.discard(client)
                if client.queued:
                    self._unsent.remove(client)
                    client.queued = False
            self.connections -= 1
            metrics.CONNECTIONS.labels(listener=self.name).dec()
            with trio.CancelScope(shield=True):
                await stream.aclose()

    async def _reader(self, client: _Client, nursery: trio.Nursery) -> None:
        buf = bytearray()
        limits = self.limits
        slot = client.slot_
        with client.read_scope:
            if self._draining:
                return
            sock = client.sock
            while True:
                # No cancel scope per read (~15 µs each): the guard's sweep ends overdue connections.
                # Wait first, then read the plain socket: a terminal sends its next request only
                # after its answer, so a read right after the last one finds nothing (trio's
                # receive_some tries first: a failed recv, an exception and two context managers per
                # request); when bytes are already there the wait costs one yield, as a successful
                # receive_some does too.
                await trio.lowlevel.wait_readable(sock)
                try:
                    data = sock.recv(65536)
                except BlockingIOError:
                    continue
                if not data:
                    return
                before = len(buf) + len(data)
                buf += data
                if limits.zero_length_closes and _has_zero_length(buf):
                    log.warning("zero-length frame; closing", listener=self.name)
                    return
                try:
                    frames = split_frames(buf, limits.max_frame)
                except ValueError as exc:
                    metrics.BAD_FRAMES.labels(listener=self.name, action="closed").inc()
                    log.warning("frame length out of range; closing", listener=self.name, error=str(exc))
                    return
                # Only a complete frame (an H2H keep-alive too: bytes were consumed) resets the idle
                # clock; bytes of an unfinished frame start the frame clock.
                if len(buf) < before:
                    slot.framed(trio.current_time(), bool(buf))
                else:
                    slot.partial(trio.current_time(), True)
                for body in frames:
                    while client.in_flight >= limits.max_in_flight:
                        await client.slot.wait()
                        client.slot = trio.Event()
                    client.in_flight += 1
                    self.in_flight += 1
                    worker, client.parked = client.parked, None
                    if worker is not None:
                        trio.lowlevel.reschedule(worker, outcome.Value(body))
                    else:
                        nursery.start_soon(self._work, client, body)

    async def _work(self, client: _Client, body: bytes | None) -> None:
        """Handle ``body``, then wait for the connection's next frame (waking a waiting task costs
        less than starting one per frame), unless another task of this connection already waits."""
        while body is not None:
            await self._handle(client, body)
            if client.parked is not None or not client.reading:
                return
            client.parked = trio.lowlevel.current_task()

            def abort(_raise_cancel: Any) -> trio.lowlevel.Abort:
                client.parked = None  # cancelled (the connection broke): the reader starts a task
                return trio.lowlevel.Abort.SUCCEEDED

            body = await trio.lowlevel.wait_task_rescheduled(abort)

    async def _handle(self, client: _Client, body: bytes) -> None:
        try:
            answer = await self.handler(body, client.stream)
            if answer is None:
                client.read_scope.cancel()  # the frame could not be answered: close this connection
            elif answer and not client.broken:  # (an empty answer means: drop the frame, send nothing)
                client.out.append(frame(answer))
                if not client.queued and not client.sending:
                    client.queued = True
                    self._unsent.append(client)
                    if len(self._unsent) == 1:
                        await self._flush()
            client.slot_.last_frame = trio.current_time()  # an answer: not idle either
        finally:
            client.in_flight -= 1
            self.in_flight -= 1
            client.slot.set()

    async def _flush(self) -> None:
        """Yield once, so that the other tasks of this scheduler pass queue their answers, then send
        every connection's queued answers (one send each)."""
        try:
            await trio.lowlevel.cancel_shielded_checkpoint()
        finally:
            unsent, self._unsent = self._unsent, []
            for client in unsent:
                client.queued = False
                client.send_now()


def _has_zero_length(buf: bytearray) -> bool:
    """Whether the next frame in ``buf`` announces a length of 0 (walks complete frames)."""
    pos = 0
    while len(buf) - pos >= 2:
        n = (buf[pos] << 8) | buf[pos + 1]
        if n == 0:
            return True
        pos += 2 + n
    return False
