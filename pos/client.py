"""The terminal's async client core (trio): one connection, a request out, its answer back.

``Connection`` reads and writes POS frames (LEN 2 + TPDU 5 + header 6 + message) on one TCP stream.
``Session`` is a signed-on terminal on a connection: it MACs requests with the MAK, sends them, waits
for the answer with the same STAN with a timeout, checks the answer's MAC, and, as a real terminal
does, reverses a financial request that got no answer (0400, DE39 98; A0 when the answer's MAC is
wrong). A reversal that itself goes unanswered stays in the terminal state and is sent before the
next transaction. The load generator (pos.load) drives the same ``Session`` objects.
"""

from __future__ import annotations

import contextlib
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import trio

from pos import messages
from pos.crypto import KeyCipher
from pos.messages import Message
from pos.state import TerminalState
from specs.catalogue import response_mti
from specs.errors import FrameError
from specs.framing import REQUIREMENT_SIGN_ON, PosFrame, frame, pos_splitter


class Codec(Protocol):
    def encode(self, msg: Message) -> bytes: ...
    def decode(self, data: bytes) -> Message: ...


class TerminalError(Exception):
    """The exchange failed in a way the operator must see (no connection, broken frame); one line."""


class NoAnswer(TerminalError):
    """No answer within the timeout."""


class Unreachable(TerminalError):
    """The switch could not be reached at all (connection refused, no route, connect timed out): nothing
    was sent, so a purchase may be made offline (pos.offline)."""


class ReversalPending(TerminalError):
    """The last transaction's reversal is still unanswered: nothing else may be sent yet."""


Tracer = Callable[[str, Message], None]


def tpdu(dest: str, src: str) -> bytes:
    return b"\x60" + bytes.fromhex(dest) + bytes.fromhex(src)


def header(version: str) -> bytes:
    return bytes.fromhex("603100" + version)


class Transport(Protocol):
    """What a Session needs from its link to the switch: frames out, frames in."""

    async def send(self, data: bytes) -> None: ...
    async def receive(self) -> bytes: ...
    async def aclose(self) -> None: ...


class Connection:
    """One TCP connection to the switch, frames in and out."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self._splitter = pos_splitter()
        self._frames: list[bytes] = []

    @classmethod
    async def open(cls, host: str, port: int, timeout: float = 5.0) -> Connection:
        try:
            with trio.fail_after(timeout):
                stream = await trio.open_tcp_stream(host, port)
        except (OSError, trio.TooSlowError) as exc:
            raise Unreachable(f"cannot connect to the switch at {host}:{port} ({_why(exc)})") from None
        stream.setsockopt(6, 1, 1)  # TCP_NODELAY: one small frame per request
        return cls(stream)

    async def send(self, data: bytes) -> None:
        try:
            await self.stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            raise TerminalError(f"connection to the switch lost ({_why(exc)})") from None

    async def receive(self) -> bytes:
        """The next frame without its LEN prefix (TPDU + header + message)."""
        while not self._frames:
            try:
                chunk = await self.stream.receive_some(65536)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                raise TerminalError(f"connection to the switch lost ({_why(exc)})") from None
            if not chunk:
                raise TerminalError("the switch closed the connection")
            try:
                self._frames = self._splitter.feed(chunk)
            except FrameError as exc:
                raise TerminalError(f"the switch sent a broken frame ({exc})") from None
        return self._frames.pop(0)

    async def aclose(self) -> None:
        await self.stream.aclose()


@dataclass
class Answer:
    """A decoded answer with what the terminal checked."""

    msg: Message
    head: PosFrame
    mac_ok: bool | None  # None: the answer carries no MAC (08xx, 05xx, 03xx, or 30/A0)
    latency: float  # seconds from send to answer

    @property
    def code(self) -> str:
        return str(self.msg.get("39", "")).strip()

    @property
    def approved(self) -> bool:
        return self.code == "00"


class Session:
    """A terminal on one connection. Not safe for two concurrent exchanges (a terminal is serial)."""

    def __init__(
        self,
        state: TerminalState,
        codec: Codec,
        conn: Transport,
        *,
        timeout: float = 30.0,
        tracer: Tracer | None = None,
        checkpoint: Callable[[], object] | None = None,
    ) -> None:
        """``checkpoint`` is called when the state must reach disk before a request is sent."""
        self.state = state
        self.checkpoint = checkpoint
        self.codec = codec
        self.conn = conn
        self.timeout = timeout
        self.tracer = tracer
        self.prefix = tpdu(state.tpdu_dest, state.tpdu_src) + header(state.version)
        self._mak: KeyCipher | None = None
        self._pik: KeyCipher | None = None

    # -- keys ------------------------------------------------------------------------------------
    def refresh_keys(self) -> None:
        keys = self.state.working_keys()
        self._mak = KeyCipher(self.state.scheme, keys.mak)
        self._pik = KeyCipher(self.state.scheme, keys.pik)

    @property
    def mak(self) -> KeyCipher:
        if self._mak is None:
            self.refresh_keys()
        assert self._mak is not None
        return self._mak

    @property
    def pik(self) -> KeyCipher:
        if self._pik is None:
            self.refresh_keys()
        assert self._pik is not None
        return self._pik

    # -- one exchange ----------------------------------------------------------------------------
    def encode(self, msg: Message) -> bytes:
        """The message bytes (MTI onwards), MACed when it carries DE64."""
        body = self.codec.encode(msg)
        if "64" in msg:
            body = body[:-8] + self.mak.pos_mac(body[:-8])
        return body

    async def exchange(self, msg: Message, *, timeout: float | None = None) -> Answer:
        """Send ``msg`` and return its answer; raises NoAnswer after the timeout (no reversal here)."""
        body = self.encode(msg)
        if self.tracer:
            self.tracer(">>", msg)
        started = time.perf_counter()
        await self.conn.send(frame(self.prefix + body))
        want_mti = response_mti(str(msg["t"]))
        want_stan = msg.get("11")
        with trio.move_on_after(self.timeout if timeout is None else timeout):
            while True:
                data = await self.conn.receive()
                answer = self._decode(data, started)
                if answer.msg.get("t") == want_mti and answer.msg.get("11") == want_stan:
                    if self.tracer:
                        self.tracer("<<", answer.msg)
                    if answer.head.requirement == REQUIREMENT_SIGN_ON:
                        self.state.require_sign_on()
                    return answer
                # An answer to an earlier request that timed out: a real terminal discards it.
        raise NoAnswer(f"no answer from the switch within {self.timeout if timeout is None else timeout:g} s")

    def _decode(self, data: bytes, started: float) -> Answer:
        try:
            head = PosFrame.parse(data)
            body = head.message
            msg = self.codec.decode(body)
        except ValueError as exc:
            raise TerminalError(f"the switch's answer does not parse: {exc}") from None
        mac_ok: bool | None = None
        if "64" in msg:
            mac_ok = self._mak is not None and self.mak.pos_mac(body[:-8]) == bytes(msg["64"])
        return Answer(msg, head, mac_ok, time.perf_counter() - started)

    async def transact(self, msg: Message) -> Answer:
        """A financial request: the exchange plus a reversal when it goes unanswered or the MAC is bad.

        Raises NoAnswer when there was no answer (the reversal has been tried; if that was unanswered
        too, it stays pending in the state).
        """
        await self.flush_reversal()
        if self.state.pending_reversal is not None:
            # A terminal does not start a transaction while the last one's reversal is unanswered.
            stan = self.state.pending_reversal.get("11", "")
            raise ReversalPending(
                f"the reversal of trace {stan} is still unanswered: nothing else is sent until it is "
                "(try again)"
            )
        # As a real terminal does, the reversal is recorded before the request leaves: if the answer
        # never comes (timeout, lost connection, the terminal switched off), it goes out next time.
        # Without a checkpoint (the load generator: nothing to save) it is recorded only when needed.
        if self.checkpoint is not None:
            self.state.pending_reversal = self.state.storable(messages.reversal_of(msg, "98"))
            self.checkpoint()
        try:
            answer = await self.exchange(msg)
        except TerminalError as exc:
            if self.state.pending_reversal is None:
                self.state.pending_reversal = self.state.storable(messages.reversal_of(msg, "98"))
            if isinstance(exc, NoAnswer):  # the line is still up: try the reversal at once
                await self.flush_reversal()
            raise
        self.state.pending_reversal = None
        if answer.approved and answer.mac_ok is False:
            await self.reverse(msg, "A0")
        return answer

    async def reverse(self, original: Message, reason: str) -> Answer | None:
        rev = messages.reversal_of(original, reason)
        self.state.pending_reversal = self.state.storable(rev)
        return await self.flush_reversal()

    async def flush_reversal(self) -> Answer | None:
        """Send the pending reversal, if any; keep it pending unless the switch answers it."""
        pending = self.state.pending_reversal
        if pending is None:
            return None
        rev: Message = self.state.restore(pending)
        rev["64"] = messages.MAC_PLACEHOLDER
        try:
            answer = await self.exchange(rev)
        except NoAnswer:
            return None
        if answer.code in REVERSAL_SETTLED:
            self.state.pending_reversal = None
            self.state.mark_reversed(str(rev.get("11", "")))
        return answer


# The answers that settle a reversal for the terminal (specs/README.md, "Reversals at the terminal"):
# 00 done (the switch owns it from then on), 25 nothing to undo, 12 and 94 never acceptable as sent.
# Any other (96 and 91 not done: the HSM or the issuer was away; A0, 30, 97 ...) leaves it pending, to
# be sent again before the next transaction: a 96 taken as settled left a posted purchase unreversed
# that the terminal had seen unanswered (found by tests/faults.py).
REVERSAL_SETTLED = frozenset({"00", "25", "12", "94"})


def _why(exc: BaseException) -> str:
    if isinstance(exc, trio.TooSlowError):
        return "timed out"
    text = getattr(exc, "strerror", None) or str(exc) or exc.__class__.__name__
    return str(text)


class Multiplexer:
    """Several terminals on one TCP connection, as behind a terminal concentrator (NAC).

    Each terminal gets a ``Port`` (a Transport) with a source NII of its own, to put in its TPDU. Frames
    the terminals send during one scheduler pass leave in one ``send_all``; one reader hands every
    answer to the port whose NII is the answer's TPDU destination (the switch swaps the two NIIs, and
    checks neither: POS dialect, framing), as a NAC routes them, without decoding the message. Used by
    the load generator (``payswitch load --per-connection K``) to spend fewer system calls and less CPU
    per request on a machine it shares with the system under test.
    """

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self._outbox: list[bytes] = []
        self._wake = trio.Event()
        self._ports: dict[bytes, Port] = {}
        self._niis = itertools.count(1)  # never reused, even after a port closes
        self._failure: TerminalError | None = None

    def port(self) -> Port:
        """A new terminal's side of the connection; its NII goes into the terminal's state."""
        nii = f"{next(self._niis):04X}"
        port = Port(self, nii)
        self._ports[bytes.fromhex(nii)] = port
        return port

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._writer)
            await self._reader()
            nursery.cancel_scope.cancel()

    def _enqueue(self, data: bytes) -> None:
        if self._failure is not None:
            raise self._failure
        self._outbox.append(data)
        self._wake.set()

    async def _writer(self) -> None:
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            await trio.lowlevel.checkpoint()  # let every terminal runnable now add its frame first
            batch, self._outbox = self._outbox, []
            if batch:
                await self.conn.send(b"".join(batch))

    async def _reader(self) -> None:
        try:
            while True:
                data = await self.conn.receive()
                port = self._ports.get(data[1:3])  # TPDU: 0x60, destination NII, source NII
                if port is not None:
                    port.deliver(data)
                # else an answer no terminal here sent for: the Session's timeout deals with it
        except TerminalError as exc:
            self._failure = exc
            for port in self._ports.values():
                port.fail(exc)


class Port:
    """One terminal's side of a Multiplexer; ``nii`` is its TPDU source address (4 hex digits)."""

    def __init__(self, mux: Multiplexer, nii: str) -> None:
        self.mux = mux
        self.nii = nii
        self._send, self._recv = trio.open_memory_channel[bytes | TerminalError](1000)

    def deliver(self, data: bytes) -> None:
        # A terminal that stopped reading loses the answer, as it would on a full line.
        with contextlib.suppress(trio.WouldBlock):
            self._send.send_nowait(data)

    def fail(self, exc: TerminalError) -> None:
        with contextlib.suppress(trio.WouldBlock):
            self._send.send_nowait(exc)

    async def send(self, data: bytes) -> None:
        self.mux._enqueue(data)

    async def receive(self) -> bytes:
        item = await self._recv.receive()
        if isinstance(item, TerminalError):
            raise item
        return item

    async def aclose(self) -> None:
        self.mux._ports.pop(bytes.fromhex(self.nii), None)
