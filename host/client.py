"""A small pipelined H2H client: the tests' and the benchmark's way into the host (not the switch's).

Many requests in flight on one connection; answers are matched on DE7 + DE11 + DE32 + DE41, as the
contract says. ``request(msg)`` sends one and waits for its answer; ``send_raw`` puts any bytes on the
wire (for bad-input tests).
"""

from __future__ import annotations

import datetime as dt
import itertools
import secrets
from typing import Any

import trio

from specs.codec import Codec, codec_for
from specs.framing import FrameReader, frame, h2h_splitter

_STANS = itertools.count(secrets.randbelow(900_000) + 1)


def match_key(msg: dict[str, Any]) -> tuple[str, str, str, str]:
    return (
        str(msg.get("7", "")),
        str(msg.get("11", "")),
        str(msg.get("32", "")).lstrip("0"),
        str(msg.get("41", "")).strip(),
    )


class H2HClient:
    def __init__(self, stream: trio.SocketStream, profile: str = "3des") -> None:
        self.stream = stream
        self.codec: Codec = codec_for("h2h", profile)
        self._waiting: dict[tuple[str, str, str, str], tuple[trio.Event, list[dict[str, Any]]]] = {}
        self.unmatched: list[dict[str, Any]] = []
        self._send_lock = trio.Lock()

    @classmethod
    async def connect(cls, host: str, port: int, profile: str = "3des") -> H2HClient:
        return cls(await trio.open_tcp_stream(host, port), profile)

    def next_stan(self) -> str:
        """STANs are shared by every client in the process, so two clients never send the same key."""
        return f"{next(_STANS) % 1_000_000:06d}"

    @staticmethod
    def now_de7() -> str:
        return dt.datetime.now(dt.UTC).strftime("%m%d%H%M%S")

    async def run_reader(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        reader = FrameReader(self.stream, h2h_splitter())
        task_status.started()
        while True:
            bodies = await reader.receive_batch()
            if not bodies:
                return
            for body in bodies:
                msg = self.codec.decode(body)
                slot = self._waiting.pop(match_key(msg), None)
                if slot is None:
                    self.unmatched.append(msg)
                    continue
                slot[1].append(msg)
                slot[0].set()

    async def request(self, msg: dict[str, Any], timeout: float = 10.0) -> dict[str, Any]:
        key = match_key(msg)
        done = trio.Event()
        box: list[dict[str, Any]] = []
        self._waiting[key] = (done, box)
        await self.send_raw(frame(self.codec.encode(msg)))
        with trio.fail_after(timeout):
            await done.wait()
        return box[0]

    async def send_raw(self, data: bytes) -> None:
        async with self._send_lock:
            await self.stream.send_all(data)

    async def aclose(self) -> None:
        await self.stream.aclose()
