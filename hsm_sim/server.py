"""The HSM TCP service (trio): framing, per-connection loop, metrics, clean shutdown.

Each connection reads what the socket has, answers every complete frame in its buffer, then sends all
the answers with one ``send_all``: one wake-up serves a whole pipelined burst. Commands run inline
(they are microseconds of CPU), so one connection's answers come back in request order, which the
contract allows (clients match on the header anyway).

A LEN of 0, or shorter than header + 2, closes that connection (answers already computed are still
sent) and nothing else: every other connection keeps being served.

Who may stay connected is an :class:`ops.guard.ConnectionGuard` (caps in all and per source address,
an idle timeout only a complete command resets, a time limit for a command once its first byte came):
the HSM is reachable by anything on its network, and its clients are a handful of long-lived
connections. One sweeping task enforces the deadlines; the read loop only stores a time.
"""

from __future__ import annotations

import contextlib
import signal
import time
from functools import partial

import trio

from hsm_sim.engine import Engine
from hsm_sim.metrics import BAD_FRAMES, CONNECTIONS, CONNECTIONS_TOTAL, STATS
from ops.guard import ConnectionGuard, GuardLimits, Slot, source_of
from ops.listening import cannot_listen
from ops.logs import get_logger

log = get_logger(__name__)

RECEIVE_SIZE = 65536
# Without a config (tests, embedding): generous, but never unbounded.
DEFAULT_LIMITS = GuardLimits(
    max_connections=1000, max_per_source=256, idle_timeout=3600.0, frame_timeout=15.0
)


class HsmServer:
    def __init__(self, engine: Engine, limits: GuardLimits = DEFAULT_LIMITS) -> None:
        self.engine = engine
        self.header_length = engine.header_length
        self.guard = ConnectionGuard("hsm", limits)

    def process(self, buf: bytearray) -> tuple[bytearray, int, bool]:
        """Answer every complete frame at the start of ``buf``.

        Returns (responses with their LEN, bytes consumed, whether a bad LEN means: close).
        """
        out = bytearray()
        pos = 0
        end = len(buf)
        minimum = self.header_length + 2
        execute = self.engine.execute
        record = STATS.record
        clock = time.perf_counter
        while end - pos >= 2:
            length = (buf[pos] << 8) | buf[pos + 1]
            if length < minimum:  # includes LEN 0
                return out, pos, True
            if end - pos - 2 < length:
                break
            body = bytes(buf[pos + 2 : pos + 2 + length])
            pos += 2 + length
            t0 = clock()
            response, command, error = execute(body)
            record(command, error, clock() - t0)
            out += len(response).to_bytes(2, "big")
            out += response
        return out, pos, False

    async def handle(self, stream: trio.SocketStream) -> None:
        try:
            source = source_of(stream.socket.getpeername())
        except OSError:
            source = "?"
        scope = trio.CancelScope()
        slot = self.guard.admit(source, trio.current_time(), scope.cancel)
        if slot is None:  # full, or this source is at its cap (counted by the guard)
            with trio.CancelScope(shield=True):
                await stream.aclose()
            return
        CONNECTIONS.inc()
        CONNECTIONS_TOTAL.inc()
        peer = _peer(stream)
        log.debug("connection_open", peer=peer)
        buf = bytearray()
        try:
            with scope:
                await self._read_loop(stream, buf, slot, peer)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        except Exception as exc:  # a bug here must cost one connection, never the service
            log.error("connection_failed", peer=peer, error=type(exc).__name__)
        finally:
            self.guard.release(slot)
            CONNECTIONS.dec()
            log.debug("connection_closed", peer=peer)
            with trio.move_on_after(1) as cleanup:
                cleanup.shield = True
                await stream.aclose()

    async def _read_loop(self, stream: trio.SocketStream, buf: bytearray, slot: Slot, peer: str) -> None:
        while True:
            data = await stream.receive_some(RECEIVE_SIZE)
            if not data:
                break
            buf += data
            out, used, bad = self.process(buf)
            del buf[:used]
            # Only a complete command resets the idle clock; an unfinished one runs the frame clock.
            if used:
                slot.framed(trio.current_time(), bool(buf))
            else:
                slot.partial(trio.current_time(), bool(buf))
            if out:
                await stream.send_all(out)
            if bad:
                BAD_FRAMES.inc()
                log.warning("bad_frame_length", peer=peer, detail="LEN 0 or shorter than header+2")
                break


def _peer(stream: trio.SocketStream) -> str:
    try:
        host, port = stream.socket.getpeername()[:2]
        return f"{host}:{port}"
    except OSError:
        return "?"


async def serve(
    engine: Engine,
    listen: str,
    port: int,
    *,
    handle_signals: bool = True,
    limits: GuardLimits = DEFAULT_LIMITS,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve until SIGTERM or SIGINT, then return normally (``handle_signals=False``: until cancelled,
    for use inside another program's trio run). ``task_status`` gets the bound port."""
    server = HsmServer(engine, limits)
    with contextlib.ExitStack() as stack:
        # Signals are caught before the port opens, so a stop request can never be missed.
        signals = (
            stack.enter_context(trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT))
            if handle_signals
            else None
        )
        try:
            listeners = await trio.open_tcp_listeners(port, host=listen)
        except OSError as exc:  # one line naming the address and the key, not a traceback
            raise cannot_listen("hsm", listen, port, "hsm.port", exc) from None
        bound = listeners[0].socket.getsockname()[1]
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server.guard.run)  # idle and frame deadlines
            nursery.start_soon(
                partial(trio.serve_listeners, server.handle, listeners, handler_nursery=nursery)
            )
            log.info(
                "hsm_listening",
                address=listen,
                port=bound,
                header_length=engine.header_length,
                lmk_check_value=engine.lmk.check_value().hex().upper(),
                test_lmk=engine.lmk.test,
            )
            task_status.started(bound)
            if signals is not None:
                async for signum in signals:
                    log.info("hsm_stopping", signal=signal.Signals(signum).name)
                    nursery.cancel_scope.cancel()
                    break
