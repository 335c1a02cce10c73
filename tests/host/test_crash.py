"""The host process killed (SIGKILL) under load, restarted, and every request sent again.

What must hold: an answer that went out was committed (its retransmission gets the same answer, auth id
included); nothing is posted twice; the ledger balances to exactly the approved answers; `ledger check`
passes. This is "responses only after commit" and "retries never post twice" across a crash.
"""

from __future__ import annotations

import signal
from types import SimpleNamespace
from typing import Any

import trio

from host.check import run_checks
from host.cli import open_crypto
from host.ledger import SERVER_SETTINGS
from ops.pgpool import PgPool
from specs.codec import codec_for
from specs.framing import frame, h2h_splitter
from tests.fixtures.services import base_env, free_port, start_service
from tests.host.harness import message, programme

CARDS = 20
REQUESTS = 1500


async def _set_up(db_url: str, hsm_server: Any) -> list[str]:
    with PgPool(db_url, min_size=1, max_size=4, server_settings=SERVER_SETTINGS) as pool:
        async with hsm_server.client() as hsm:
            h = SimpleNamespace(pool=pool, crypto=await open_crypto(pool, hsm))
            return await programme(
                h,
                "CRASH",
                cards=CARDS,
                load=1_000_000,
                bin_prefix="621244",  # type: ignore[arg-type]
                max_balance=10_000_000,
                max_balance_anonymous=10_000_000,  # 10,000.00 on anonymous cards: above the PBOC default
                daily_count_limit=10_000,
                daily_amount_limit=10**9,
            )


async def _send_all(port: int, frames: list[bytes], stop_after: int | None) -> dict[str, dict[str, Any]]:
    """Send every frame on one connection; collect answers (all, or stop reading after ``stop_after``)."""
    codec = codec_for("h2h", "3des")
    answers: dict[str, dict[str, Any]] = {}
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    splitter = h2h_splitter()
    await stream.send_all(b"".join(frames))
    with trio.move_on_after(30):
        while len(answers) < len(frames) and (stop_after is None or len(answers) < stop_after):
            try:
                data = await stream.receive_some(65536)
            except trio.BrokenResourceError:
                break
            if not data:
                break
            for body in splitter.feed(data):
                answer = codec.decode(body)
                answers[answer["11"]] = answer
    await stream.aclose()
    return answers


class _Stans:
    def __init__(self) -> None:
        self.n = 300_000

    def next_stan(self) -> str:
        self.n += 1
        return f"{self.n:06d}"

    @staticmethod
    def now_de7() -> str:
        return "1125120000"


def test_kill_restart_retransmit(db_url: str, hsm_server: Any) -> None:
    pans = trio.run(_set_up, db_url, hsm_server)
    codec = codec_for("h2h", "3des")
    ids = _Stans()
    msgs = [message(ids, pans[i % CARDS], 100 + i % 50) for i in range(REQUESTS)]  # type: ignore[arg-type]
    frames = [frame(codec.encode(m)) for m in msgs]
    port = free_port()
    env = {
        **base_env(db_url, hsm_server),
        "PAYSWITCH_HOST_PORT": str(port),
        "PAYSWITCH_HOST_METRICS_PORT": "0",
        "PAYSWITCH_HOST_WRITERS": "3",
        "PAYSWITCH_HOST_BATCH_MAX": "50",
    }
    host = start_service("host", ["host", "serve"], env, port)
    try:
        # warm the host's PAN hashes, then load it and kill it with answers in flight
        warm = [frame(codec.encode(message(ids, p, None, proc="310000"))) for p in pans]  # type: ignore[arg-type]
        trio.run(_send_all, port, warm, None)
        before = trio.run(_send_all, port, frames, 200)
        host.stop(signal.SIGKILL)
        assert 0 < len(before) < REQUESTS
        host = start_service("host", ["host", "serve"], env, port)
        after = trio.run(_send_all, port, frames, None)
        assert len(after) == REQUESTS, host.log()[-3000:]
        for stan, first in before.items():
            assert after[stan]["39"] == first["39"] and after[stan].get("38") == first.get("38"), stan
        approved = sum(int(m["4"]) for m in msgs if after[m["11"]]["39"] == "00")
        assert approved == sum(100 + i % 50 for i in range(REQUESTS))  # every one approved exactly once

        async def ledger() -> tuple[int, list[Any]]:
            with PgPool(db_url, min_size=1, max_size=2) as pool:
                spent = await pool.run(_spent)
                return spent, [r for r in await pool.run(run_checks) if not r.ok]

        spent, problems = trio.run(ledger)
        assert spent == approved and not problems, problems
    finally:
        host.stop()


async def _spent(conn: Any) -> int:
    return int(
        await conn.fetchval(
            "SELECT coalesce(sum(t.amount), 0) FROM transfers t JOIN cards c ON c.id = t.card_id"
            " JOIN products p ON p.id = c.product_id WHERE p.code = 'CRASH' AND t.code = 'purchase'"
        )
    )
