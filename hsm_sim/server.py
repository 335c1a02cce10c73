"""The HSM TCP service (trio): framing, per-connection loop, metrics, clean shutdown.

Each connection reads what the socket has, answers every complete frame in its buffer, then sends all
the answers with one ``send_all``: one wake-up serves a whole pipelined burst. Commands run inline
(they are microseconds of CPU), so one connection's answers come back in request order, which the
contract allows (clients match on the header anyway).

A LEN of 0, or shorter than header + 2, closes that connection (answers already computed are still
sent) and nothing else: every other connection keeps being served.
"""

from __future__ import annotations

import contextlib
import signal
import time
from functools import partial

import trio

from hsm_sim.engine import Engine
from hsm_sim.metrics import BAD_FRAMES, CONNECTIONS, CONNECTIONS_TOTAL, STATS
from ops.logs import get_logger

log = get_logger(__name__)

RECEIVE_SIZE = 65536


class HsmServer:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.header_length = engine.header_length

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
        CONNECTIONS.inc()
        CONNECTIONS_TOTAL.inc()
        peer = _peer(stream)
        log.debug("connection_open", peer=peer)
        buf = bytearray()
        try:
            while True:
                data = await stream.receive_some(RECEIVE_SIZE)
                if not data:
                    break
                buf += data
                out, used, bad = self.process(buf)
                del buf[:used]
                if out:
                    await stream.send_all(out)
                if bad:
                    BAD_FRAMES.inc()
                    log.warning("bad_frame_length", peer=peer, detail="LEN 0 or shorter than header+2")
                    break
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        except Exception as exc:  # a bug here must cost one connection, never the service
            log.error("connection_failed", peer=peer, error=type(exc).__name__)
        finally:
            CONNECTIONS.dec()
            log.debug("connection_closed", peer=peer)
            with trio.move_on_after(1) as cleanup:
                cleanup.shield = True
                await stream.aclose()


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
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve until SIGTERM or SIGINT, then return normally (``handle_signals=False``: until cancelled,
    for use inside another program's trio run). ``task_status`` gets the bound port."""
    server = HsmServer(engine)
    with contextlib.ExitStack() as stack:
        # Signals are caught before the port opens, so a stop request can never be missed.
        signals = (
            stack.enter_context(trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT))
            if handle_signals
            else None
        )
        listeners = await trio.open_tcp_listeners(port, host=listen)
        bound = listeners[0].socket.getsockname()[1]
        async with trio.open_nursery() as nursery:
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
