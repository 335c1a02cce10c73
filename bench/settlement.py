"""Settle a generated clearing file of 1,000,000 details: wall time and peak memory (target < 60 s, < 1 GiB).

`python -m bench settlement` or `python -m bench.settlement [--details N] [--keep DIR]`. The file is
generated in a temporary folder (or DIR) and a throwaway PostgreSQL is started, unless
PAYSWITCH_DATABASE_URL names a server to use (a fresh database is created on it). Each measured step
runs in its own child process, and its peak memory is that process's own high-water mark (VmHWM; a
child's ru_maxrss starts at its parent's):

- baseline ``sha256``: read the bytes and hash them;
- baseline ``floor``: the streaming floor of any settlement: read the lines, SHA-256 them, split each and
  sum the amounts and fees by sign (no checks, nothing stored);
- baseline ``verify``: parse and check every record and the trailer (specs.clearing, nothing stored);
- ``settle``: the whole job: verify, price, copy the details to PostgreSQL, accrue, run, postings,
  reports and the payout file.

Each step reports wall time and CPU seconds (user + system; for ``settle`` also its PostgreSQL backend's,
when the server is the bench's own), and ``settle`` is given as a multiple of the floor. The scratch
folders (the file, the throwaway cluster) are removed at the end unless ``--keep``.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

MERCHANTS = 500
STORES = 4
BUSINESS_DATE = date(2026, 11, 24)


def generate(folder: Path, n: int) -> Path:
    """A valid clearing file with ``n`` details: mostly purchases, with completions, refunds, voids,
    reversals and top-ups. Written directly (not through the checking writer) for speed; the verify
    baseline then reads every line with the strict reader."""
    from specs.clearing import Header, Trailer, file_name, format_header, format_trailer

    header = Header("48880000", BUSINESS_DATE, 1, datetime(2026, 11, 24, 15, 0, tzinfo=UTC), "156")
    path = folder / file_name(header.issuer_id, header.business_date, header.sequence)
    digest = hashlib.sha256()
    debit = credit = fee_total = 0
    start = datetime(2026, 11, 23, 15, 0, tzinfo=UTC)
    rng = random.Random(8583)
    with open(path, "wb", buffering=1 << 20) as f:
        f.write(format_header(header).encode() + b"\n")
        for i in range(1, n + 1):
            kind = i % 100
            amount = (i * 7919) % 50000 + 100
            original = ""
            if kind < 85:
                txn, sign = "PURCHASE", "D"
            elif kind < 90:
                txn, sign = "COMPLETION", "D"
            elif kind < 94:
                txn, sign, original = "REFUND", "C", str(max(i - 50, 1))
                amount //= 3
            elif kind < 96:
                txn, sign, original = "VOID", "C", str(i - 7 if i > 7 else i + 1)
            elif kind < 98:
                txn, sign, original = "REVERSAL", "C", str(i - 3 if i > 3 else i + 1)
            else:
                txn, sign = "TOPUP", "C"
            m = rng.randrange(MERCHANTS)
            merchant, store = ("", "") if txn == "TOPUP" else (f"M{m:04d}", f"S{rng.randrange(STORES):02d}")
            acquirer = "" if txn == "TOPUP" else "48881111"
            fee = (amount * 38 + 5000) // 10000 if sign == "D" else 0
            posted = start + timedelta(seconds=i * 80_000 // n)
            local = posted + timedelta(hours=8)
            line = (
                f"D|{i}|{txn}|{original}|{acquirer}|{merchant}|{store}|T{m:07d}|623456******{i % 10000:04d}|"
                f"CAMPUS|{amount}|{sign}|{fee}|1|{i % 10**12:012d}|{i % 10**6:06d}|{i % 10**6:06d}|"
                f"{local:%Y%m%d%H%M%S}|{posted:%Y-%m-%dT%H:%M:%S}Z"
            ).encode()
            if i > 1:
                digest.update(b"\n")
            digest.update(line)
            f.write(line + b"\n")
            if sign == "D":
                debit += amount
            else:
                credit += amount
            fee_total += fee
        f.write(format_trailer(Trailer(n, debit, credit, fee_total, digest.hexdigest())).encode() + b"\n")
    return path


async def _prepare_db(url: str) -> None:
    from ops.db import connect
    from settlement.cycles import Cycle
    from settlement.fees import FeeSchedule
    from settlement.schedules import add_fee_schedule, set_merchant

    conn = await connect(url)
    try:
        await _seed_host_payables(conn)  # first: a rate card is refused for a merchant the host lacks
        await add_fee_schedule(
            conn, FeeSchedule("*", "std-1", date(2026, 1, 1), 60, 0, 1, 5000, "percent", 2000, 3000, 5000)
        )
        for m in range(0, MERCHANTS, 10):  # every tenth merchant has its own card, some with a fixed fee
            await add_fee_schedule(
                conn,
                FeeSchedule(
                    f"M{m:04d}", "own-1", date(2026, 6, 1), 38, m % 3, 0, None, "full", 1000, 2000, 7000
                ),
            )
        for m in range(0, MERCHANTS, 7):
            await set_merchant(conn, f"M{m:04d}", Cycle("weekly", 1), f"6222-{m:04d}")
    finally:
        await conn.close()


async def _seed_host_payables(conn: Any) -> None:
    """The merchants in the host ledger with a payable above what the file owes them (a run pays out only
    what the ledger holds): one card loaded, then one purchase per merchant, posted by the host's engine."""
    from host.catalog import NewCard, ProductSpec, add_merchant, add_product, insert_cards
    from host.ledger import Ledger
    from host.model import Request, Txn, request_key

    big = 10**12
    await add_product(conn, ProductSpec("BENCH", "reloadable", max_balance=big, per_txn_limit=big,
                                        daily_amount_limit=big, daily_count_limit=MERCHANTS + 1,
                                        pin_required=False, max_balance_anonymous=big), "699999", 16)
    (card,) = await insert_cards(conn, "BENCH", [NewCard("bench", "enc", "699999******0000", "1234", 0)],
                                 state="active")
    ledger = Ledger()
    per_merchant = 10**9
    await ledger.post_batch(conn, [Request("admin:bench", "0200", Txn.ADMIN_LOAD,
                                           amount=per_merchant * MERCHANTS, currency="156", card_id=card)])
    purchases = []
    for m in range(MERCHANTS):
        await add_merchant(conn, f"M{m:04d}", "", "5812", acquirer_id="48881111")
        stan, transmitted = f"{m + 1:06d}", f"1124{m + 1:06d}"
        purchases.append(Request(request_key("48881111", transmitted, stan, "TBENCH", "0200"), "0200",
                                 Txn.PURCHASE, acquirer_id="48881111", stan=stan, transmitted=transmitted,
                                 terminal_id="TBENCH", merchant_id=f"M{m:04d}", amount=per_merchant,
                                 currency="156", card_id=card))
    decisions = await ledger.post_batch(conn, purchases)
    assert all(d.code == "00" for d in decisions), decisions[:3]


# ---------------------------------------------------------------------------------------------------
# child steps (each in a fresh process; report wall time and peak RSS as JSON on stdout)


def floor(path: Path) -> tuple[int, int, int, int, str]:
    """What any settlement of the file must do at least: stream the lines, hash the detail lines, split
    each and sum amount and fee by sign. Count, debit, credit, fee and the digest."""
    digest = hashlib.sha256()
    count = debit = credit = fee = 0
    with open(path, "rb") as f:
        f.readline()
        for line in f:
            if line[:2] != b"D|":
                break
            if count:
                digest.update(b"\n")
            digest.update(line[:-1])
            p = line.split(b"|", 13)
            if p[11] == b"D":
                debit += int(p[10])
            else:
                credit += int(p[10])
            fee += int(p[12])
            count += 1
    return count, debit, credit, fee, digest.hexdigest()


def _peak_mib() -> float:
    """This process's own peak resident set (VmHWM), in MiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _child(step: str, path: str, url: str, out: str) -> dict[str, Any]:
    t0 = time.perf_counter()
    c0 = _cpu_s()
    info: dict[str, Any] = {}
    if step == "sha256":
        from settlement.importer import file_sha256

        file_sha256(Path(path))
    elif step == "floor":
        info["details"] = floor(Path(path))[0]
    elif step == "verify":
        from specs.clearing import verify_file

        _, trailer = verify_file(path)
        info["details"] = trailer.count
    elif step == "settle":
        info = asyncio.run(_settle(Path(path), url, Path(out)))
    wall = time.perf_counter() - t0
    return {"step": step, "wall_s": wall, "cpu_s": _cpu_s() - c0, "peak_mib": _peak_mib(), **info}


def _backend_cpu_s(pid: int) -> float | None:
    """CPU seconds of a PostgreSQL backend on this machine (None if it is not here)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _settle(path: Path, url: str, out: Path) -> dict[str, Any]:
    from ops.db import connect
    from settlement.cycles import Cycle
    from settlement.importer import import_file
    from settlement.reports import write_run_outputs
    from settlement.run import run_settlement

    conn = await connect(url)
    try:
        backend: int = await conn.fetchval("SELECT pg_backend_pid()")
        pg0 = _backend_cpu_s(backend)
        t0 = time.perf_counter()
        imported = await import_file(conn, path)
        t1 = time.perf_counter()
        result = await run_settlement(conn, BUSINESS_DATE + timedelta(days=7), Cycle())
        assert result.run_id is not None
        written = await write_run_outputs(conn, result.run_id, out)
        t2 = time.perf_counter()
        pg1 = _backend_cpu_s(backend)
    finally:
        await conn.close()
    return {
        "pg_cpu_s": None if pg0 is None or pg1 is None else pg1 - pg0,
        "details": imported.details,
        "import_s": t1 - t0,
        "run_and_reports_s": t2 - t1,
        "payouts": len(result.payouts),
        "carried": len(result.carried),
        "files_written": len(written),
        "payout_total": result.payout_total,
    }


def _run_child(step: str, path: Path, url: str, out: Path) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, "-m", "bench.settlement", "--child", step, str(path), url, str(out)],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise SystemExit(f"bench step {step} failed:\n{proc.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.settlement")
    parser.add_argument("--details", type=int, default=1_000_000)
    parser.add_argument("--keep", metavar="DIR", help="generate into DIR and keep it")
    parser.add_argument("--child", nargs=4, metavar=("STEP", "FILE", "URL", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(_child(*args.child)))
        return 0

    with tempfile.TemporaryDirectory(prefix="bench-settlement-") as tmp:
        folder = Path(args.keep) if args.keep else Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        path = generate(folder, args.details)
        size_mib = path.stat().st_size / 2**20
        print(
            f"generated {path.name}: {args.details:,} details, {size_mib:.0f} MiB in "
            f"{time.perf_counter() - t0:.1f} s",
            flush=True,
        )
        url, cleanup = _database(folder)
        try:
            asyncio.run(_prepare_db(url))
            steps = ("sha256", "floor", "verify", "settle")
            results = {step: _run_child(step, path, url, folder / "out") for step in steps}
        finally:
            cleanup()
    n = args.details
    for step, r in results.items():
        rate = n / r["wall_s"] if r["wall_s"] else 0.0
        print(f"{step:>8}: {r['wall_s']:6.2f} s  {rate:>10,.0f} details/s  CPU {r['cpu_s']:6.2f} s  "
              f"peak RSS {r['peak_mib']:6.0f} MiB")
    s = results["settle"]
    pg = s.get("pg_cpu_s")
    print(
        f"  settle: import {s['import_s']:.2f} s, run + reports {s['run_and_reports_s']:.2f} s; "
        f"{s['payouts']} payouts, {s['carried']} carried, {s['files_written']} report files"
        + (f"; PostgreSQL backend CPU {pg:.2f} s" if pg is not None else "")
    )
    base = results["floor"]
    with_pg = "" if pg is None else f", {(s['cpu_s'] + pg) / base['cpu_s']:.2f}x with PostgreSQL's"
    print(
        f"  settle / floor: {s['wall_s'] / base['wall_s']:.2f}x wall, {s['cpu_s'] / base['cpu_s']:.2f}x CPU "
        f"(Python's){with_pg}; settle / verify: {s['wall_s'] / results['verify']['wall_s']:.2f}x wall"
    )
    ok = s["wall_s"] < 60 and s["peak_mib"] < 1024
    print(f"  target < 60 s and < 1024 MiB: {'met' if ok else 'NOT met'}")
    return 0


def _database(folder: Path) -> tuple[str, Any]:
    """A fresh migrated database: on PAYSWITCH_DATABASE_URL's server if set, else a throwaway cluster."""
    from ops.db import ensure_database
    from ops.migrate import migrate_url
    from ops.pgembed import EmbeddedPostgres

    name = f"bench_settlement_{os.getpid()}"
    server = os.environ.get("PAYSWITCH_DATABASE_URL")
    if server:
        base = server.rsplit("/", 1)[0]
        asyncio.run(ensure_database(f"{base}/postgres", name))
        url = f"{base}/{name}"
        asyncio.run(migrate_url(url))
        return url, lambda: None
    scratch = Path(tempfile.mkdtemp(prefix="bench-pg-"))
    cluster = EmbeddedPostgres(scratch / "pg", durable=False)

    def cleanup() -> None:
        cluster.destroy()  # the cluster's data (it may live outside scratch, see ops.pgembed)
        shutil.rmtree(scratch, ignore_errors=True)

    try:
        status = cluster.up()
        asyncio.run(ensure_database(status.url("postgres"), name))
        url = status.url(name)
        asyncio.run(migrate_url(url))
    except BaseException:
        cleanup()
        raise
    return url, cleanup


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
