"""A small issuer host speaking H2H over a real socket, for switch tests that need to control the
upstream (drop answers, count requests). It runs its own trio loop in a thread.

PIN check: decrypts DE52 with the clear link ZPK (known to the test), approves PIN ``123456``,
answers 55 for any other PIN.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

import trio

from hsm_sim import pin as pinlib
from hsm_sim.mac import retail_mac
from specs.codec import codec_for
from specs.framing import frame
from switch.links import split_frames
from tests.switch.terminal import cipher


@dataclass
class FakeHost:
    scheme: str
    zpk: bytes
    port: int = 0
    drop_financial: bool = False
    zak: bytes | None = None  # when set: requests' DE128 checked (mac_failures), answers MACed
    bad_answer_mac: bool = False
    mac_failures: int = 0
    drop_advices: bool = False
    delay: float = 0.0
    requests: list[dict[str, Any]] = field(default_factory=list)
    _thread: threading.Thread | None = None
    _token: trio.lowlevel.TrioToken | None = None
    _scope: trio.CancelScope | None = None
    _ready: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> FakeHost:
        self._thread = threading.Thread(target=trio.run, args=(self._main,), daemon=True)
        self._thread.start()
        assert self._ready.wait(10)
        return self

    def stop(self) -> None:
        if self._token is not None and self._scope is not None:
            self._token.run_sync_soon(self._scope.cancel)
        if self._thread is not None:
            self._thread.join(10)

    def seen(self, mti: str) -> list[dict[str, Any]]:
        with self._lock:
            return [r for r in self.requests if r["t"] == mti]

    async def _main(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        with trio.CancelScope() as scope:
            self._scope = scope
            listeners = await trio.open_tcp_listeners(self.port, host="127.0.0.1")
            self.port = listeners[0].socket.getsockname()[1]
            self._ready.set()
            await trio.serve_listeners(self._serve, listeners)

    async def _serve(self, stream: trio.SocketStream) -> None:
        codec = codec_for("h2h", self.scheme)
        buf = bytearray()
        lock = trio.Lock()
        async with trio.open_nursery() as nursery:
            try:
                while True:
                    data = await stream.receive_some(65536)
                    if not data:
                        return
                    buf += data
                    for body in split_frames(buf, 8192):
                        msg = codec.decode(body)
                        if self.zak is not None and msg["t"][:2] != "08":
                            expected = (
                                retail_mac(self.zak, codec.mac_block(body)) if codec.has_mac(body) else b""
                            )
                            if msg.get("128") != expected:
                                self.mac_failures += 1
                        with self._lock:
                            self.requests.append(msg)
                        nursery.start_soon(self._answer, stream, lock, codec, msg)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return
            finally:
                nursery.cancel_scope.cancel()

    async def _answer(
        self, stream: trio.SocketStream, lock: trio.Lock, codec: Any, msg: dict[str, Any]
    ) -> None:
        mti = msg["t"]
        answer = {
            k: v for k, v in msg.items() if k in ("3", "4", "7", "11", "32", "37", "41", "42", "49", "70")
        }
        answer["t"] = f"{int(mti[:3] + '0') + 10:04d}"
        if mti in ("0100", "0200", "0220"):
            if self.drop_financial:
                return
            if self.delay:
                await trio.sleep(self.delay)
            code = "00"
            if "52" in msg:
                account = msg["2"][:-1][-12:].rjust(12, "0")
                clear = cipher(self.scheme, self.zpk).decrypt(msg["52"])
                try:
                    pin = (
                        pinlib.sm4_decode(clear, account)
                        if self.scheme == "sm4"
                        else pinlib.decode(clear, account)
                    )
                except Exception:
                    pin = ""
                code = "00" if pin == "123456" else "55"
            answer["39"] = code
            if code == "00":
                answer["38"] = "A12345"
            answer["15"] = "1125"
        elif mti in ("0420", "0421") and self.drop_advices:
            return
        else:
            answer["39"] = "00"
        raw = codec.encode(answer)
        if self.zak is not None and mti[:2] != "08":
            raw = codec.encode({**answer, "128": bytes(8)})
            mac = bytes(8) if self.bad_answer_mac else retail_mac(self.zak, codec.mac_block(raw))
            raw = codec.with_mac(raw, mac)
        try:
            async with lock:
                await stream.send_all(frame(raw))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
