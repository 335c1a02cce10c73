"""The trio <-> asyncio bridge alone: ``ops.pgpool`` calls/s and cross-thread wake-ups per call.

    python -m bench.pgpool --duration 5 --tasks 1,16,128 [--busy]

Starts a throwaway PostgreSQL (fsync off) in a scratch folder and, for each ``--tasks`` count, runs that
many trio tasks each awaiting ``SELECT 1`` through the pool in a loop. Prints calls/s, the wake-ups per
call in each direction (``PgPool.stats``) and this process's CPU ms per call (both loops' threads;
PostgreSQL's own CPU is not counted). ``--busy`` adds a trio task that keeps the trio loop busy
between calls (50 us of work per scheduler pass), as the switch's loop is under load: a bridge that
skips a wake-up when the other side is awake shows it there.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

from ops.db import ensure_database
from ops.pgembed import EmbeddedPostgres
from ops.pgpool import PgPool


async def _one(conn: Any) -> int:
    return int(await conn.fetchval("SELECT 1"))


async def _measure(pool: PgPool, tasks: int, duration: float, busy: bool) -> dict[str, float]:
    before = pool.stats()
    cpu0, t0 = time.process_time(), time.perf_counter()
    stop = t0 + duration

    async def caller() -> None:
        while time.perf_counter() < stop:
            await pool.run(_one)

    async def spinner() -> None:
        while time.perf_counter() < stop:
            end = time.perf_counter() + 50e-6
            while time.perf_counter() < end:
                pass
            await trio.sleep(0)

    async with trio.open_nursery() as nursery:
        for _ in range(tasks):
            nursery.start_soon(caller)
        if busy:
            nursery.start_soon(spinner)
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    after = pool.stats()
    calls = after["calls"] - before["calls"]
    return {
        "tasks": tasks,
        "calls_per_s": round(calls / elapsed),
        "wakeups_to_asyncio_per_call": round(
            (after["wakeups_to_asyncio"] - before["wakeups_to_asyncio"]) / calls, 3
        ),
        "wakeups_to_trio_per_call": round((after["wakeups_to_trio"] - before["wakeups_to_trio"]) / calls, 3),
        "cpu_us_per_call": round(cpu / calls * 1e6, 1),
    }


async def _series(pool: PgPool, counts: list[int], duration: float, busy: bool) -> None:
    # one trio run for all (a pool serves one trio run)
    await _measure(pool, max(counts), 0.5, False)  # every connection opened and warm
    for tasks in counts:
        row = await _measure(pool, tasks, duration, busy)
        print("  ".join(f"{k} {v}" for k, v in row.items()), flush=True)


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.pgpool", description=__doc__.split("\n")[0])
    ap.add_argument("--duration", type=float, default=5.0, help="seconds per task count")
    ap.add_argument("--tasks", default="1,16,128", help="comma-separated concurrent callers")
    ap.add_argument("--busy", action="store_true", help="keep the trio loop busy between calls")
    ap.add_argument(
        "--switch-interval", type=float, help="sys.setswitchinterval (s), as a service may set it"
    )
    args = ap.parse_args(argv)
    if args.switch_interval:
        sys.setswitchinterval(args.switch_interval)
    root = Path(tempfile.mkdtemp(prefix="bench-pgpool-"))
    cluster = EmbeddedPostgres(root / "pg", durable=False)
    try:
        status = cluster.up()
        asyncio.run(ensure_database(status.url("postgres"), "bench"))
        with PgPool(status.url("bench"), min_size=2, max_size=10) as pool:
            trio.run(_series, pool, [int(t) for t in args.tasks.split(",")], args.duration, args.busy)
    finally:
        cluster.down()
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
