"""ops.pgpool's bridge between the trio loop and the pool's asyncio loop: no call is ever left queued
while both sides sleep, whatever either side is doing (a guard for any change that skips wake-ups), and
the counters add up. Real PostgreSQL; speed is never asserted."""

from __future__ import annotations

import random
import threading
import time
from typing import Any

import pytest
import trio

from ops.pgpool import PgPool


async def _echo(conn: Any, value: int) -> int:
    return int(await conn.fetchval("SELECT $1::int", value))


async def _sleep_then_echo(conn: Any, value: int, seconds: float) -> int:
    return int(await conn.fetchval("SELECT $1::int FROM pg_sleep($2)", value, seconds))


async def _fails(conn: Any) -> None:
    await conn.execute("SELECT 1 / 0")


def test_every_call_is_answered_whatever_either_loop_is_doing(db_url: str) -> None:
    """Callers that arrive alone, in bursts, while the trio loop is busy and while the asyncio loop is
    busy (a slow statement in flight): each gets its own answer, none waits for a wake-up that never
    comes (the whole run is bounded)."""
    rng = random.Random(21)

    async def main(pool: PgPool) -> None:
        stop = False

        async def spinner() -> None:  # keeps the trio loop awake: passes of 0-200 us of work
            while not stop:
                end = time.perf_counter() + rng.random() * 200e-6
                while time.perf_counter() < end:
                    pass
                await trio.sleep(0)

        async def caller(n: int) -> None:
            for i in range(60):
                value = n * 1000 + i
                if i % 20 == 0:  # the asyncio loop busy with a statement that takes a while
                    assert await pool.run(_sleep_then_echo, value, 0.01) == value
                else:
                    assert await pool.run(_echo, value) == value
                if rng.random() < 0.3:
                    await trio.sleep(rng.random() * 0.002)

        with trio.fail_after(120):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(spinner)
                async with trio.open_nursery() as callers:
                    for n in range(24):
                        callers.start_soon(caller, n)
                stop = True
            # one caller alone, trio otherwise idle: each call has to wake the asyncio side and back
            for i in range(50):
                assert await pool.run(_echo, i) == i

    with PgPool(db_url, min_size=1, max_size=4) as pool:
        trio.run(main, pool)
        stats = pool.stats()
    assert stats["calls"] == 24 * 60 + 50
    assert 0 < stats["wakeups_to_asyncio"] <= stats["calls"]
    assert 0 < stats["wakeups_to_trio"] <= stats["calls"]


def test_errors_and_blocking_calls_cross_too(db_url: str) -> None:
    """An error is the caller's, the next call works; a blocking call from another thread is answered
    while the trio side uses the pool."""

    async def main(pool: PgPool) -> None:
        with pytest.raises(Exception, match="division by zero"):
            await pool.run(_fails)
        assert await pool.run(_echo, 7) == 7
        answers: list[int] = []
        thread = threading.Thread(target=lambda: answers.extend(pool.call(_echo, i) for i in range(20)))
        thread.start()
        for i in range(100):
            assert await pool.run(_echo, i) == i
        await trio.to_thread.run_sync(thread.join)
        assert answers == list(range(20))

    with PgPool(db_url, min_size=1, max_size=2) as pool:
        trio.run(main, pool)
