"""The authorization host alone: approved purchases/s through the H2H link into the ledger.

    python -m bench.host [--cards 10000] [--active-cards 100000] [--runs 1] [--duration 10]
                         [--connections 4] [--window 32] [--writers 3] [--batch-max 500]
                         [--profile] [--controls] [--events] [--chain]

Starts a throwaway PostgreSQL (fsync on, as a ledger runs), the HSM and ``payswitch host serve`` as
processes; creates one product, ONE merchant (every purchase credits it: the hot merchant) and
``--cards`` active cards, loaded through the ledger. Then:

1. baseline, the database ceiling: a plain asyncpg loop of single-row ``UPDATE`` autocommits on the same
   cluster (a scratch copy of the card account ids), ``--connections`` x 4 connections, 4 seconds;
2. warm-up: one balance inquiry per card (the host learns each PAN's HSM hash, as it would in service);
   above ``--active-cards`` (100,000) cards, the warm-up and the purchases go to that many random ones;
3. measured: 0200 purchases on random cards, pre-encoded, ``--window`` in flight per connection (each
   batch of answers read is replaced by as many requests in one send), for ``--duration`` seconds.

Prints approved purchases/s, p50/p99/max latency, response codes, the host's batch sizes, CPU seconds of
the host, of PostgreSQL (this benchmark's own cluster: its postmaster and children) and of the load
generator, the host's peak RSS, the database ceiling and the ratio to it; then runs ``ledger check``
(exit 1 if it fails).

``--runs N`` (``python -m bench`` gives 5): the ceiling and the measured run N times, interleaved, then
the median of the N runs with the median ceiling beside it. Set-up at ``--cards 1000000``: see
bench/README.md for its time.

``--controls`` (issue 16 item 8, host.controls): the measured run three times, without spend controls,
with the product carrying a week + month + lifetime window, allowed hours (all day, so every purchase
is approved but each is checked) and a cap at the hot merchant's group (every purchase counts in it),
and without again; prints the controlled run's approvals/s as a ratio to the mean of the two others.

``--events`` (issue 17 item 5, host.events): the measured run with the event outbox (every purchase
writes its authorization.approved in the batch's write statement), with ``host.events = false`` (the
host restarted and warmed up again), and with it again; prints the ratio of the mean of the runs with
events to the one without.

``--chain`` (issue 18 item 4, host.ledger_chain): the measured run with the ledger chain (every batch
sealed by a chained SM3 digest row, host.chain, written by the batch's own write statement), without
it (``host.ledger_chain = false``, the host restarted and warmed up again), and with it again; prints
the ratio of the mean of the runs with the chain to the one without, and the batches sealed.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import asyncpg
import trio

from host import catalog
from host.check import run_checks
from host.client import H2HClient
from host.keys import IssuerCrypto, generate_missing, keys_from, load_keys, store_keys
from host.ledger import SERVER_SETTINGS, Ledger
from host.model import Request, Txn
from hsm_sim.client import HsmClient
from ops import processes
from ops.db import ensure_database
from ops.migrate import migrate_url
from ops.pgembed import EmbeddedPostgres, free_port
from ops.pgpool import PgPool
from pos.system import tree_cpu
from specs.codec import codec_for
from specs.framing import frame, h2h_splitter

ACQ = "48880000"
MERCHANT = "898330160120001"
BIN = "621299"
GROUP = "canteen"
SETUP_IN_FLIGHT = 256  # PAN hashes in flight during set-up (the HSM client takes 10,000 per connection)
SETUP_CHUNK = 5000  # cards per insert_cards call
SETUP_WORKERS = 4  # set-up statements in flight (the pool's connections)
LOAD_BATCH = 2000  # admin loads per ledger batch during set-up


def host_env(root: Path, url: str, hsm_port: int, host_port: int, metrics_port: int) -> dict[str, str]:
    """The environment of a benchmark's HSM and host processes: its own database and ports, the test
    LMK, no config file of the machine's (an empty one in ``root``)."""
    (root / "none.toml").write_text("")
    return {
        **os.environ,
        "PAYSWITCH_DATABASE_URL": url,
        "PAYSWITCH_HSM_PORT": str(hsm_port),
        "PAYSWITCH_HSM_LISTEN": "127.0.0.1",
        "PAYSWITCH_HSM_HOST": "127.0.0.1",
        "PAYSWITCH_HSM_TEST_LMK": "true",
        "PAYSWITCH_HSM_METRICS_PORT": "0",
        "PAYSWITCH_HOST_PORT": str(host_port),
        "PAYSWITCH_HOST_METRICS_PORT": str(metrics_port),
        "PAYSWITCH_LOG_LEVEL": "warning",
        "PAYSWITCH_CONFIG": str(root / "none.toml"),
    }


def _wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    try:
        processes.wait_listening(port, proc, timeout=timeout)
    except processes.NotListening as exc:
        raise RuntimeError(str(exc)) from None


def _pct(values: list[float], p: float) -> float:
    if not values:
        return 0.0
    s = sorted(values)
    return s[min(len(s) - 1, int(p / 100 * len(s)))]


# -- set-up ------------------------------------------------------------------------------------------
async def _setup(url: str, hsm_port: int, cards: int, took: dict[str, float]) -> list[str]:
    """Product, merchant, link and ``cards`` active cards loaded through the ledger; the seconds each
    phase took go into ``took``."""
    with PgPool(url, min_size=2, max_size=6, server_settings=SERVER_SETTINGS) as pool:
        async with HsmClient("127.0.0.1", hsm_port, connections=4, timeout=10) as hsm:
            keys = await pool.run(load_keys)
            keys = await pool.run(store_keys, await generate_missing(hsm, keys))
            crypto = IssuerCrypto(hsm, keys_from(keys))
            limit = 1_000_000_000
            spec = catalog.ProductSpec(
                code="BENCH",
                kind="reloadable",
                max_balance=limit,
                per_txn_limit=limit,
                daily_amount_limit=limit,
                daily_count_limit=1_000_000,
                pin_required=False,
                # bench cards are anonymous and loaded with 1,000,000.00 each: above the PBOC tier caps
                max_balance_anonymous=limit,
                max_balance_named=limit,
                max_balance_verified=limit,
            )
            await pool.run(catalog.add_product, spec, BIN, 19)
            # in a group (no effect unless a control caps it: --controls does)
            await pool.run(catalog.add_merchant, MERCHANT, "Hot canteen", "5812", GROUP, ACQ)
            # the link the load comes in on: no DE128 (the host's fast path), declared, from loopback
            await pool.run(catalog.set_link, ACQ, "3des", None, None, None, None, True)
            parts = await pool.run(catalog.partitions)
            pans = [f"{BIN}{i:012d}" for i in range(cards)]
            pans = [p + _luhn(p) for p in pans]
            hashes: dict[str, str] = {}
            todo = iter(pans)

            async def hasher() -> None:
                # A fixed set of workers, not a task per card: at 1M cards that many tasks (and as many
                # requests in flight, above the HSM client's 10,000 per connection) would not start.
                for pan in todo:
                    hashes[pan] = await crypto.pan_hash(pan, cache=False)

            t = time.perf_counter()
            async with trio.open_nursery() as n:
                for _ in range(SETUP_IN_FLIGHT):
                    n.start_soon(hasher)
            took["PAN hashes"] = time.perf_counter() - t
            # insert_cards is the host's bulk path (one unnest INSERT per chunk); a few chunks at a time
            # over the pool's connections
            chunks = [pans[i : i + SETUP_CHUNK] for i in range(0, len(pans), SETUP_CHUNK)]
            todo_chunks = iter(chunks)

            async def inserter() -> None:
                for chunk in todo_chunks:
                    new = [
                        catalog.NewCard(
                            hashes[p], "bench", p[:6] + "*" * 9 + p[-4:], "0000", int(hashes[p], 16) % parts
                        )
                        for p in chunk
                    ]
                    await pool.run(catalog.insert_cards, "BENCH", new, "bench", "active")

            t = time.perf_counter()
            async with trio.open_nursery() as n:
                for _ in range(SETUP_WORKERS):
                    n.start_soon(inserter)
            took["card rows"] = time.perf_counter() - t
            hashes.clear()
            ids = await pool.run(_card_ids)
            ledger = Ledger()
            loads = [
                Request(
                    key=f"admin:bench:{cid}",
                    mti="0000",
                    txn=Txn.ADMIN_LOAD,
                    acquirer_id="admin",
                    card_id=cid,
                    amount=100_000_000,
                )
                for cid in ids
            ]
            t = time.perf_counter()
            # one batch at a time: concurrent post_batch calls outside the engine are safe since 08c917f,
            # but each batch of random cards debits (and locks) every partition's funding account, so
            # concurrent ones would queue on those rows
            for i in range(0, len(loads), LOAD_BATCH):
                await pool.run(ledger.post_batch, loads[i : i + LOAD_BATCH])
            took["loads"] = time.perf_counter() - t
            return pans


def _luhn(partial: str) -> str:
    from host.issue import luhn_digit

    return luhn_digit(partial)


async def _card_ids(conn: Any) -> list[int]:
    return [r["id"] for r in await conn.fetch("SELECT id FROM cards ORDER BY id")]


# -- the database ceiling ----------------------------------------------------------------------------
async def _ceiling(url: str, connections: int, seconds: float) -> tuple[float, float, float]:
    conns = [await asyncpg.connect(url) for _ in range(connections)]
    # a scratch copy of the card accounts' ids: the ledger itself must stay balanced
    await conns[0].execute(
        "CREATE TABLE bench_rows AS SELECT id, 0::bigint AS v FROM accounts WHERE kind = 'card';"
        "ALTER TABLE bench_rows ADD PRIMARY KEY (id)"
    )
    ids = [r["id"] for r in await conns[0].fetch("SELECT id FROM bench_rows")]
    lat: list[float] = []
    done = 0
    stop = time.perf_counter() + seconds

    async def worker(conn: Any) -> None:
        nonlocal done
        while time.perf_counter() < stop:
            t = time.perf_counter()
            await conn.execute("UPDATE bench_rows SET v = v + 1 WHERE id = $1", random.choice(ids))
            lat.append(time.perf_counter() - t)
            done += 1

    t0 = time.perf_counter()
    await asyncio.gather(*(worker(c) for c in conns))
    elapsed = time.perf_counter() - t0
    await conns[0].execute("DROP TABLE bench_rows")
    for c in conns:
        await c.close()
    return done / elapsed, _pct(lat, 50) * 1000, _pct(lat, 99) * 1000


# -- the load ------------------------------------------------------------------------------------------
async def _drive(
    port: int,
    pans: list[str],
    *,
    connections: int,
    window: int,
    duration: float,
    proc: str = "000000",
    per_card_once: bool = False,
) -> tuple[int, float, list[float], Counter[str]]:
    clients = [await H2HClient.connect("127.0.0.1", port) for _ in range(connections)]
    lat: list[float] = []
    codes: Counter[str] = Counter()
    count = 0
    queue = list(pans) if per_card_once else []
    t0 = time.perf_counter()
    stop = t0 + duration

    async def lane(c: H2HClient) -> None:
        nonlocal count
        while True:
            if per_card_once:
                if not queue:
                    return
                pan = queue.pop()
            else:
                if time.perf_counter() >= stop:
                    return
                pan = random.choice(pans)
            msg = {
                "t": "0200",
                "2": pan,
                "3": proc,
                "7": c.now_de7(),
                "11": c.next_stan(),
                "12": "101010",
                "13": "1125",
                "22": "012",
                "25": "00",
                "32": ACQ,
                "37": "BENCH0000001",
                "41": f"B{random.randrange(10_000_000):07d}",
                "42": MERCHANT,
                "49": "156",
            }
            if proc == "000000":
                msg["4"] = f"{random.randint(1, 100):012d}"
            t = time.perf_counter()
            resp = await c.request(msg, timeout=30)
            lat.append(time.perf_counter() - t)
            codes[resp["39"]] += 1
            count += 1

    async with trio.open_nursery() as n:
        for c in clients:
            await n.start(c.run_reader)
        async with trio.open_nursery() as lanes:
            for c in clients:
                for _ in range(window):
                    lanes.start_soon(lane, c)
        elapsed = time.perf_counter() - t0
        n.cancel_scope.cancel()
    for c in clients:
        await c.aclose()
    return count, elapsed, lat, codes


def _purchase_frames(pans: list[str], count: int, first_stan: int) -> list[tuple[str, bytes]]:
    """(STAN, framed purchase) pairs, encoded before the clock starts: the load generator's own cost
    is kept out of the measurement (each request a distinct key: DE7 fixed, STAN counts up)."""
    codec = codec_for("h2h", "3des")
    de7 = time.strftime("%m%d%H%M%S", time.gmtime())
    out = []
    for i in range(count):
        stan = f"{(first_stan + i) % 1_000_000:06d}"
        msg = {
            "t": "0200",
            "2": random.choice(pans),
            "3": "000000",
            "4": f"{random.randint(1, 100):012d}",
            "7": de7,
            "11": stan,
            "12": "101010",
            "13": "1125",
            "22": "012",
            "25": "00",
            "32": ACQ,
            "37": f"BENCH{stan}0",
            "41": f"B{i % 997:07d}",
            "42": MERCHANT,
            "49": "156",
        }
        out.append((stan, frame(codec.encode(msg))))
    return out


async def _pipelined(
    port: int, work: list[list[tuple[str, bytes]]], window: int, duration: float
) -> tuple[int, float, list[float], Counter[str]]:
    """One task per connection keeps ``window`` requests in flight: every batch of answers read is
    replaced by as many new requests in one send. Latency = answer read - request sent."""
    codec = codec_for("h2h", "3des")
    lat: list[float] = []
    codes: Counter[str] = Counter()
    t0 = time.perf_counter()
    stop = t0 + duration

    async def lane(items: list[tuple[str, bytes]]) -> None:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        splitter = h2h_splitter()
        sent: dict[str, float] = {}
        it = iter(items)

        def take(n: int) -> bytes:
            chunk = []
            now = time.perf_counter()
            if now >= stop:
                return b""
            for stan, data in itertools.islice(it, n):
                sent[stan] = now
                chunk.append(data)
            return b"".join(chunk)

        await stream.send_all(take(window))
        while sent:
            data = await stream.receive_some(65536)
            if not data:
                break
            now = time.perf_counter()
            answered = 0
            for body in splitter.feed(data):
                answer = codec.decode(body)
                lat.append(now - sent.pop(answer["11"]))
                codes[answer["39"]] += 1
                answered += 1
            more = take(answered)
            if more:
                await stream.send_all(more)
        await stream.aclose()

    async with trio.open_nursery() as n:
        for items in work:
            n.start_soon(lane, items)
    return sum(codes.values()), time.perf_counter() - t0, lat, codes


def _batch_stats(port: int) -> str:
    """Mean batch size and commit time from the host's own histograms."""
    import urllib.request

    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    vals = {}
    for line in text.splitlines():
        for name in (
            "payswitch_host_batch_size_sum",
            "payswitch_host_batch_size_count",
            "payswitch_host_batch_seconds_sum",
        ):
            if line.startswith(name + " "):
                vals[name] = float(line.split()[1])
    n = vals.get("payswitch_host_batch_size_count", 0) or 1
    return (
        f"host batches: {n:.0f}, mean size {vals.get('payswitch_host_batch_size_sum', 0) / n:.1f}, "
        f"mean time {vals.get('payswitch_host_batch_seconds_sum', 0) / n * 1000:.1f} ms"
    )


def _pg_cpu(cluster: EmbeddedPostgres) -> float:
    """CPU seconds of this benchmark's own PostgreSQL: its postmaster and every child (backends,
    walwriter, checkpointer; exited ones through the postmaster's reaped-children times), not every
    postgres process on the machine (another cluster, a test suite's, would be counted too)."""
    try:
        postmaster = int((cluster.data_dir / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0.0
    return tree_cpu(postmaster)


def _proc_stats(pid: int) -> tuple[float, int]:
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    cpu = (int(fields[11]) + int(fields[12])) / tick
    rss = 0
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                rss = int(line.split()[1]) // 1024
    return cpu, rss


async def _set_controls(url: str, *, on: bool) -> None:
    """The bench product's spend controls: every kind at once (limits high enough to approve all), or none."""
    from host import controls

    big = 10**15
    changes = (
        controls.Changes(
            {"week_amount": big, "week_count": 10**9, "month_amount": big, "lifetime_amount": big},
            controls.parse_hours("00:00-24:00"),
            (controls.GroupCap(GROUP, "day", big, None),),
        )
        if on
        else controls.Changes(clear=frozenset({"all"}))
    )
    conn = await asyncpg.connect(url)
    try:
        await controls.set_product_controls(conn, "BENCH", changes)
    finally:
        await conn.close()


async def _count_batches(url: str) -> int:
    conn = await asyncpg.connect(url)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM ledger_batches"))
    finally:
        await conn.close()


async def _count_events(url: str) -> int:
    conn = await asyncpg.connect(url)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM events"))
    finally:
        await conn.close()


# `python -m bench --runs N` gives this module --runs N (bench/__main__.py)
RUNS = True


def _print_medians(runs: list[tuple[tuple[float, float, float, float], float]]) -> None:
    """The median of every figure over the runs, the same-run baseline (the database ceiling) beside."""
    med = statistics.median
    rates = [r[0][0] for r in runs]
    ceilings = [r[1] for r in runs]
    print(
        f"median of {len(runs)} runs: {med(rates):,.0f} approved/s"
        f" (runs {', '.join(f'{x:,.0f}' for x in rates)}), p50 {med(r[0][1] for r in runs):.1f} ms,"
        f" p99 {med(r[0][2] for r in runs):.1f} ms, host + PostgreSQL CPU"
        f" {med(r[0][3] for r in runs):.3f} ms per purchase; baseline beside it: database ceiling"
        f" {med(ceilings):,.0f} commits/s (runs {', '.join(f'{x:,.0f}' for x in ceilings)}),"
        f" ratio {med(r[0][0] / r[1] for r in runs):.2f}",
        flush=True,
    )


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench host")
    ap.add_argument("--cards", type=int, default=10_000)
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--connections", type=int, default=4)
    ap.add_argument("--window", type=int, default=32, help="requests in flight per connection")
    ap.add_argument("--writers", type=int, default=3)
    ap.add_argument("--batch-max", type=int, default=500)
    ap.add_argument(
        "--active-cards",
        type=int,
        default=100_000,
        help="the warm-up and the purchases go to this many random cards of --cards (when fewer)",
    )
    ap.add_argument(
        "--runs", type=int, default=1, help="the ceiling and the measured run N times; print their medians"
    )
    ap.add_argument("--profile", action="store_true", help="run the host under cProfile; print its top 25")
    ap.add_argument(
        "--events",
        action="store_true",
        help="measure with, without (host.events = false) and again with the event outbox; print the ratio",
    )
    ap.add_argument(
        "--chain",
        action="store_true",
        help="measure with, without (host.ledger_chain = false) and again with the ledger chain; the ratio",
    )
    ap.add_argument(
        "--controls",
        action="store_true",
        help="measure without, with and again without spend controls on the product; print the ratio",
    )
    args = ap.parse_args(argv)

    root = Path(tempfile.mkdtemp(prefix="payswitch-bench-host-"))
    cluster = EmbeddedPostgres(root / "pg", durable=True)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        status = cluster.up()
        asyncio.run(ensure_database(status.url("postgres"), "bench"))
        url = status.url("bench")
        asyncio.run(migrate_url(url))
        hsm_port, host_port, metrics_port = free_port(), free_port(), free_port()
        env = host_env(root, url, hsm_port, host_port, metrics_port)
        env["PAYSWITCH_HOST_WRITERS"] = str(args.writers)
        env["PAYSWITCH_HOST_BATCH_MAX"] = str(args.batch_max)
        hsm = subprocess.Popen(
            [sys.executable, "-m", "ops", "hsm", "serve"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        procs.append(hsm)
        _wait_port(hsm_port, hsm)
        t = time.perf_counter()
        took: dict[str, float] = {}
        pans = trio.run(_setup, url, hsm_port, args.cards, took)
        print(
            f"set-up: {len(pans)} cards, 1 merchant, in {time.perf_counter() - t:.1f} s ("
            + ", ".join(f"{k} {v:.1f} s" for k, v in took.items())
            + ")",
            flush=True,
        )
        # The load's cards: all of them, or at --cards above --active-cards that many at random (the
        # warm-up's one inquiry per card would take ~10 minutes at 1M; the database still holds them all)
        if len(pans) > args.active_cards:
            pans = random.sample(pans, args.active_cards)
            print(f"load on {len(pans):,} random cards of the {args.cards:,} (--active-cards)", flush=True)

        def measure_ceiling() -> float:
            found, c50, c99 = asyncio.run(_ceiling(url, args.connections * 4, 4.0))
            print(
                f"database ceiling: {found:,.0f} single-row UPDATE commits/s "
                f"({args.connections * 4} connections, p50 {c50:.2f} ms, p99 {c99:.2f} ms)",
                flush=True,
            )
            return found

        ceiling = measure_ceiling()

        prof = ["-m", "cProfile", "-o", str(root / "host.prof")] if args.profile else []

        def start_host(events: bool = True, chain: bool = True) -> subprocess.Popen[bytes]:
            """``host serve`` (the outbox on or off: host.events; the ledger chain: host.ledger_chain),
            warmed up with one inquiry per card."""
            proc = subprocess.Popen(
                [sys.executable, *prof, "-m", "ops", "host", "serve"],
                env={
                    **env,
                    "PAYSWITCH_HOST_EVENTS": "true" if events else "false",
                    "PAYSWITCH_HOST_LEDGER_CHAIN": "true" if chain else "false",
                },
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            procs.append(proc)
            _wait_port(host_port, proc)
            t = time.perf_counter()
            n, _, _, codes = trio.run(
                lambda: _drive(
                    host_port,
                    pans,
                    connections=args.connections,
                    window=args.window,
                    duration=0,
                    proc="310000",
                    per_card_once=True,
                )
            )
            print(
                f"warm-up: {n} balance inquiries ({dict(codes)}) in {time.perf_counter() - t:.1f} s",
                flush=True,
            )
            return proc

        def restart_host(events: bool, chain: bool = True) -> subprocess.Popen[bytes]:
            processes.stop(procs.pop())
            return start_host(events, chain)

        host = start_host()

        def measure(label: str) -> tuple[float, float, float, float]:
            """One measured run: approvals/s, p50 and p99 in ms, host + PostgreSQL CPU ms per approval
            (and its report lines)."""
            per_lane = int(args.duration * 12_000 / args.connections) + args.window
            work = [_purchase_frames(pans, per_lane, 1 + i * per_lane) for i in range(args.connections)]
            cpu0, _ = _proc_stats(host.pid)
            me0, pg0 = time.process_time(), _pg_cpu(cluster)
            n, elapsed, lat, codes = trio.run(_pipelined, host_port, work, args.window, args.duration)
            cpu1, rss = _proc_stats(host.pid)
            me1, pg1 = time.process_time(), _pg_cpu(cluster)
            print(_batch_stats(metrics_port), flush=True)
            approved = codes.get("00", 0)
            p50, p99 = _pct(lat, 50) * 1000, _pct(lat, 99) * 1000
            print(
                f"purchases{label}: {approved / elapsed:,.0f} approved/s ({n} answered in {elapsed:.1f} s, "
                f"codes {dict(codes)}); latency p50 {p50:.1f} ms, p99 {p99:.1f} ms,"
                f" max {max(lat) * 1000:.1f} ms",
                flush=True,
            )
            print(
                f"host process: {cpu1 - cpu0:.1f} CPU s over {elapsed:.1f} s, peak RSS {rss} MB; "
                f"{args.connections} connections x {args.window} in flight, {args.writers} writers",
                flush=True,
            )
            print(
                f"CPU seconds: host {cpu1 - cpu0:.1f}, PostgreSQL {pg1 - pg0:.1f}, "
                f"load generator {me1 - me0:.1f} "
                f"(2 cores x {elapsed:.1f} s = {2 * elapsed:.1f})",
                flush=True,
            )
            print(
                f"ratio to the database ceiling: {approved / elapsed / ceiling:.2f} "
                f"(purchases/s per single-row UPDATE commit/s)",
                flush=True,
            )
            return approved / elapsed, p50, p99, ((cpu1 - cpu0) + (pg1 - pg0)) * 1000 / max(approved, 1)

        if args.events:
            on = measure(" (events on)")
            host = restart_host(events=False)
            off = measure(" (events off: host.events = false)")
            host = restart_host(events=True)
            again = measure(" (events on, again)")
            written = asyncio.run(_count_events(url))
            base = off[0]
            mean_on = (on[0] + again[0]) / 2
            print(
                f"event outbox: {mean_on:,.0f} approved/s with events (mean of the runs before and after) vs"
                f" {base:,.0f} without: ratio {mean_on / base:.3f}"
                f" ({(1 - mean_on / base) * 100:.1f} % fewer);"
                f" p50 {on[1]:.1f}/{again[1]:.1f} vs {off[1]:.1f} ms, p99 {on[2]:.1f}/{again[2]:.1f} vs"
                f" {off[2]:.1f} ms; host + PostgreSQL CPU per purchase {on[3]:.2f}/{again[3]:.2f} vs"
                f" {off[3]:.2f} ms; {written:,} events written",
                flush=True,
            )
        elif args.chain:
            on = measure(" (ledger chain on)")
            host = restart_host(events=True, chain=False)
            off = measure(" (ledger chain off: host.ledger_chain = false)")
            host = restart_host(events=True, chain=True)
            again = measure(" (ledger chain on, again)")
            sealed = asyncio.run(_count_batches(url))
            base = off[0]
            mean_on = (on[0] + again[0]) / 2
            print(
                f"ledger chain: {mean_on:,.0f} approved/s with the chain (mean of the runs before and after)"
                f" vs {base:,.0f} without: ratio {mean_on / base:.3f}"
                f" ({(1 - mean_on / base) * 100:.1f} % fewer);"
                f" p50 {on[1]:.1f}/{again[1]:.1f} vs {off[1]:.1f} ms, p99 {on[2]:.1f}/{again[2]:.1f} vs"
                f" {off[2]:.1f} ms; host + PostgreSQL CPU per purchase {on[3]:.2f}/{again[3]:.2f} vs"
                f" {off[3]:.2f} ms; {sealed:,} batches sealed",
                flush=True,
            )
        elif not args.controls:
            runs = [(measure(""), ceiling)]
            for k in range(1, args.runs):
                # the baseline again before each run, so that each run's ratio is to its own phase of the box
                ceiling = measure_ceiling()
                runs.append((measure(f" (run {k + 1} of {args.runs})"), ceiling))
            if args.runs > 1:
                _print_medians(runs)
        else:
            plain = measure(" (no controls)")
            asyncio.run(_set_controls(url, on=True))
            ruled = measure(" (controls: week + month + lifetime, hours, group cap)")
            asyncio.run(_set_controls(url, on=False))
            again = measure(" (no controls, again)")
            base = (plain[0] + again[0]) / 2
            print(
                f"spend controls: {ruled[0]:,.0f} approved/s vs {base:,.0f} without (mean of the runs before"
                f" and after): ratio {ruled[0] / base:.3f} ({(1 - ruled[0] / base) * 100:.1f} % fewer);"
                f" p50 {ruled[1]:.1f} vs {plain[1]:.1f}/{again[1]:.1f} ms, p99 {ruled[2]:.1f} vs"
                f" {plain[2]:.1f}/{again[2]:.1f} ms",
                flush=True,
            )

        async def check() -> list[Any]:
            conn = await asyncpg.connect(url)
            try:
                return await run_checks(conn)
            finally:
                await conn.close()

        if args.profile:
            host.send_signal(signal.SIGTERM)
            host.wait(timeout=30)
            import pstats

            pstats.Stats(str(root / "host.prof")).sort_stats("tottime").print_stats(25)
        results = asyncio.run(check())
        bad = [r.name for r in results if not r.ok]
        print("ledger check: " + ("OK" if not bad else f"FAILED {bad}"), flush=True)
        return 0 if not bad else 1
    finally:
        for p in reversed(procs):
            processes.stop(p)
        cluster.destroy()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
