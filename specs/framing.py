"""Framing of both dialects: the 2-byte big-endian length prefix, and the POS TPDU + header.

Sans-IO core (no I/O, usable from any loop or test)::

    splitter = pos_splitter()              # or h2h_splitter(); FrameSplitter(max_len, keepalive=...)
    for body in splitter.feed(data):       # every complete frame in the buffer, in order
        ...                                # body = the bytes after LEN
    wire = frame(body)                     # LEN + body

POS bodies are TPDU(5) + header(6) + message::

    pf = PosFrame.parse(body)              # DecodeError("TPDU", ...) when short or TPDU[0] != 0x60
    msg = codec.decode(pf.message)
    wire = pf.respond(codec.encode(reply), requirement=0)   # LEN + swapped TPDU + 60 31 0P + version
    pf, msg = decode_pos(codec, body)      # both in one call; a bad TPDU still reports DE11/DE41/DE42
    wire = pos_frame(message)              # terminal side: LEN + TPDU + request header + message

trio wrappers (thin, over the splitter)::

    reader = FrameReader(stream, pos_splitter(), timeout=30.0)
    frames = await reader.receive_batch()  # all complete frames now available (>= 1); [] at clean EOF
    body = await reader.receive()          # one frame, or None at clean EOF
    await write_frame(stream, body)        # or write_frames(stream, bodies): one send for many

Errors: :class:`specs.errors.FrameError` (LEN 0 on POS, LEN over the maximum, EOF inside a frame: close
the connection), :class:`specs.errors.FrameTimeout` (no complete frame within ``timeout`` seconds).
On H2H a zero-length frame is a keep-alive: it is skipped, and it restarts the reader's timeout.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import trio

from specs.errors import DecodeError, FrameError, FrameTimeout

if TYPE_CHECKING:
    from specs.codec import Codec, Message

POS_MAX_FRAME = 2048
H2H_MAX_FRAME = 8192
TPDU_ID = 0x60
TPDU_LEN = 5
HEADER_LEN = 6
POS_PREFIX_LEN = TPDU_LEN + HEADER_LEN
DEFAULT_TPDU = bytes.fromhex("6000010000")
DEFAULT_HEADER = bytes.fromhex("603100000000")

# Processing-requirement nibble of a POS response header.
REQUIREMENT_NONE = 0
REQUIREMENT_SIGN_ON = 3


class FrameSplitter:
    """Incremental splitter of length-prefixed frames.

    ``feed(data)`` returns every frame completed by ``data`` (bodies without the prefix). A length
    prefix of 0 is a keep-alive (skipped, counted in ``keepalives``) when ``keepalive`` is true and an
    error otherwise; a length over ``max_len`` is an error. Frames completed before a bad prefix are
    returned first and the error is raised by the next ``feed`` (or ``check``) call.
    """

    def __init__(self, max_len: int, *, keepalive: bool) -> None:
        if not 0 < max_len <= 0xFFFF:
            raise ValueError("max_len must be 1..65535")
        self.max_len = max_len
        self.keepalive = keepalive
        self.keepalives = 0
        self._buf = bytearray()
        self._error: FrameError | None = None

    @property
    def pending(self) -> int:
        """Bytes buffered towards a frame not yet complete."""
        return len(self._buf)

    def check(self) -> None:
        """Raise the error found by an earlier ``feed``, if any."""
        if self._error is not None:
            raise self._error

    def feed(self, data: bytes | bytearray | memoryview) -> list[bytes]:
        self.check()
        buf = self._buf
        buf += data
        frames: list[bytes] = []
        off = 0
        end = len(buf)
        max_len = self.max_len
        while end - off >= 2:
            n = (buf[off] << 8) | buf[off + 1]
            if n == 0 or n > max_len:
                if n == 0 and self.keepalive:
                    self.keepalives += 1
                    off += 2
                    continue
                self._error = FrameError(
                    "zero-length frame" if n == 0 else f"frame length {n} over maximum {max_len}"
                )
                del buf[:]
                if frames:
                    return frames
                raise self._error
            if end - off - 2 < n:
                break
            frames.append(bytes(buf[off + 2:off + 2 + n]))
            off += 2 + n
        if off:
            del buf[:off]
        return frames


def pos_splitter(max_len: int = POS_MAX_FRAME) -> FrameSplitter:
    """POS: maximum 2,048, a zero length closes the connection."""
    return FrameSplitter(max_len, keepalive=False)


def h2h_splitter(max_len: int = H2H_MAX_FRAME) -> FrameSplitter:
    """H2H: maximum 8,192, zero-length frames are keep-alives."""
    return FrameSplitter(max_len, keepalive=True)


def frame(body: bytes) -> bytes:
    """LEN (2 bytes big-endian, excluding itself) + body."""
    if len(body) > 0xFFFF:
        raise ValueError(f"frame body of {len(body)} bytes does not fit a 2-byte length")
    return len(body).to_bytes(2, "big") + body


KEEPALIVE = b"\x00\x00"
"""An H2H keep-alive frame (LEN 0)."""


# --- POS TPDU and header --------------------------------------------------------------------------------

def swap_tpdu(tpdu: bytes) -> bytes:
    """The response TPDU: destination (bytes 1-2) and source (bytes 3-4) swapped."""
    return tpdu[:1] + tpdu[3:5] + tpdu[1:3]


def response_header(request_header: bytes, requirement: int = REQUIREMENT_NONE) -> bytes:
    """``60 31 0P`` + the request's 3 software-version bytes, P = processing requirement (0 or 3)."""
    if not 0 <= requirement <= 9:
        raise ValueError("processing requirement is one BCD digit")
    return bytes((0x60, 0x31, requirement)) + request_header[3:6]


@dataclass(frozen=True, slots=True)
class PosFrame:
    """A POS frame body split into its parts (LEN already removed)."""

    tpdu: bytes
    header: bytes
    message: bytes

    @classmethod
    def parse(cls, body: bytes) -> PosFrame:
        if len(body) < POS_PREFIX_LEN:
            raise DecodeError("TPDU", f"frame of {len(body)} bytes is shorter than TPDU + header")
        tpdu = body[:TPDU_LEN]
        if tpdu[0] != TPDU_ID:
            raise DecodeError("TPDU", f"first byte is 0x{tpdu[0]:02X}, not 0x60")
        return cls(tpdu, body[TPDU_LEN:POS_PREFIX_LEN], body[POS_PREFIX_LEN:])

    @property
    def requirement(self) -> int:
        """The processing-requirement nibble of this frame's header (meaningful in responses)."""
        return self.header[2] & 0x0F

    def response_prefix(self, requirement: int = REQUIREMENT_NONE) -> bytes:
        """Swapped TPDU + response header, to put before a response message."""
        return swap_tpdu(self.tpdu) + response_header(self.header, requirement)

    def respond(self, message: bytes, requirement: int = REQUIREMENT_NONE) -> bytes:
        """The complete response frame (LEN included) carrying ``message``."""
        return frame(self.response_prefix(requirement) + message)


def pos_frame(message: bytes, tpdu: bytes = DEFAULT_TPDU, header: bytes = DEFAULT_HEADER) -> bytes:
    """A complete POS frame (LEN + TPDU + header + message), as a terminal sends it."""
    if len(tpdu) != TPDU_LEN or len(header) != HEADER_LEN:
        raise ValueError("TPDU is 5 bytes and the header 6")
    return frame(tpdu + header + message)


def decode_pos(codec: Codec, body: bytes) -> tuple[PosFrame, Message]:
    """Split a POS frame body and decode its message. Raises only DecodeError.

    A TPDU whose first byte is not 0x60 makes the frame unparseable (contract "Bad input"), but the
    error still carries DE11/DE41/DE42 when the message behind it decodes, so the switch can answer 30.
    """
    try:
        pf = PosFrame.parse(body)
    except DecodeError as exc:
        partial: dict[str, Any] = {}
        if len(body) > POS_PREFIX_LEN:
            try:
                partial = codec.decode(body[POS_PREFIX_LEN:])
            except DecodeError as inner:
                partial = inner.partial
        raise DecodeError(exc.field, exc.reason, partial) from None
    return pf, codec.decode(pf.message)


# --- trio -----------------------------------------------------------------------------------------------

class FrameReader:
    """Reads frames from a trio stream through a :class:`FrameSplitter`.

    ``timeout`` (seconds, None = wait forever) bounds the wait for the next complete frame; an H2H
    keep-alive restarts it.
    """

    def __init__(self, stream: trio.abc.ReceiveStream, splitter: FrameSplitter, *,
                 timeout: float | None = None, receive_size: int = 65536) -> None:
        self.stream = stream
        self.splitter = splitter
        self.timeout = timeout
        self.receive_size = receive_size
        self._queue: deque[bytes] = deque()

    async def receive_batch(self) -> list[bytes]:
        """Every complete frame available, at least one; [] when the peer closed between frames."""
        if self._queue:
            out = list(self._queue)
            self._queue.clear()
            return out
        splitter = self.splitter
        splitter.check()
        timeout = math.inf if self.timeout is None else self.timeout
        with trio.move_on_after(timeout) as scope:
            while True:
                data = await self.stream.receive_some(self.receive_size)
                if not data:
                    if splitter.pending:
                        raise FrameError("connection closed inside a frame")
                    return []
                seen = splitter.keepalives
                frames = splitter.feed(data)
                if frames:
                    return frames
                if splitter.keepalives != seen:
                    scope.deadline = trio.current_time() + timeout
        raise FrameTimeout(f"no complete frame within {self.timeout} s", partial=splitter.pending > 0)

    async def receive(self) -> bytes | None:
        """One frame body, or None when the peer closed between frames."""
        if not self._queue:
            self._queue.extend(await self.receive_batch())
            if not self._queue:
                return None
        return self._queue.popleft()


async def write_frame(stream: trio.abc.SendStream, body: bytes) -> None:
    """Send LEN + body."""
    await stream.send_all(frame(body))


async def write_frames(stream: trio.abc.SendStream, bodies: Iterable[bytes]) -> None:
    """Send several frames with one ``send_all`` (fewer syscalls under load)."""
    await stream.send_all(b"".join(frame(b) for b in bodies))
