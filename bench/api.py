"""The HTTP API end to end: purchases by payment code through ``POST /v1/payments``, beside the POS path.

    python -m bench api            # or: python -m bench.api --duration 20 --clients 64
    python -m bench.api --quick    # a smoke run (< 30 s on a quiet machine): it completes and prints
    BENCH_WRAPPERS='{"api": ["-m", "cProfile", "-o", "api.prof"]}' python -m bench.api --keep

Starts the real processes in a scratch folder (``pos.system.System``: embedded PostgreSQL, hsm_sim,
host, switch and ``api serve``), seeds the demo programme and its load pool, then in this process:

1. makes the payment codes beforehand, through the API (``POST /v1/cards/{id}/payment-codes`` on the
   load pool's cards; ``host.payment_code_seconds`` = 3600 so none expires before it is used);
2. warms up, then measures API purchases: ``--clients`` concurrent httpx clients, each its own
   connection, each sending ``POST /v1/payments`` (a code, an amount, the demo merchant; a fresh
   Idempotency-Key) as soon as the previous answer came; every purchase is an ISO 8583 0200 the API
   sends to the switch over its H2H link, decided by the host into the ledger;
3. measures the HTTP stack's own ceiling with the same clients: ``GET /healthz`` (no database, HSM or
   switch), the most any API call could reach on this machine;
4. measures the POS purchase path in the same run (``pos.load``: ``--terminals`` terminals, PIN + MAC),
   for the same duration;
5. runs ``payswitch ledger check``.

It prints approved purchases/s, latency percentiles, status codes, CPU seconds and CPU ms per purchase
per process (the API, switch, host, HSM, PostgreSQL, this load generator) and summed, peak memory per
process, and the ratio API/POS. Nothing is asserted: the target (>= 1,000 API purchases/s, p99 < 100
ms on the 2-core development machine) is read off the figures (bench/README.md).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
import uuid
from typing import Any

import httpx
import trio

from ops.cli import COMMANDS
from ops.runtime import tune_gc
from pos.load import LoadPlan, parse_mix, read_pool
from pos.system import WITH_API, System, cpu_seconds, peak_rss_mb, tree_cpu

MERCHANT = "898330160120001"
AMOUNT = 100  # minor units per purchase


def _self_cpu() -> float:
    t = os.times()
    return t.user + t.system


def _percentiles(lat: list[float]) -> dict[str, float]:
    if not lat:
        return {"p50": 0.0, "p95": 0.0, "p99": 0.0, "max": 0.0}
    s = sorted(lat)

    def at(q: float) -> float:
        return round(s[min(len(s) - 1, int(q * len(s)))] * 1000, 1)

    return {"p50": at(0.50), "p95": at(0.95), "p99": at(0.99), "max": round(s[-1] * 1000, 1)}


def _api_key(system: System) -> str:
    from api.auth import add_client

    async def work() -> str:
        import asyncpg

        conn = await asyncpg.connect(system.db_url)
        try:
            made = await add_client(conn, f"bench-{uuid.uuid4().hex[:8]}", ["cards:write", "payments:write"],
                                    "bench", rate_per_second=1_000_000)
        finally:
            await conn.close()
        return made.key

    return asyncio.run(work())


def _card_ids(system: System, pans_count: int) -> list[int]:
    """The load pool's cards (product LOADTEST), by id: the codes are made for them."""

    async def work() -> list[int]:
        import asyncpg

        conn = await asyncpg.connect(system.db_url)
        try:
            rows = await conn.fetch(
                "SELECT c.id FROM cards c JOIN products p ON p.id = c.product_id WHERE p.code = 'LOADTEST'"
                " AND c.state = 'active' ORDER BY c.id LIMIT $1", pans_count)
        finally:
            await conn.close()
        return [int(r["id"]) for r in rows]

    return asyncio.run(work())


async def _make_codes(url: str, key: str, cards: list[int], count: int, concurrency: int) -> list[str]:
    codes: list[str] = []
    failures: list[str] = []
    todo = iter(range(count))
    headers = {"Authorization": f"Bearer {key}"}

    async def worker() -> None:
        async with httpx.AsyncClient(base_url=url, headers=headers, timeout=30) as client:
            for i in todo:
                card = cards[i % len(cards)]
                r = await client.post(f"/v1/cards/card_{card}/payment-codes", json={},
                                      headers={"Idempotency-Key": uuid.uuid4().hex})
                if r.status_code == 201:
                    codes.append(r.json()["code"])
                elif len(failures) < 5:
                    failures.append(f"{r.status_code} {r.text[:200]}")

    async with trio.open_nursery() as nursery:
        for _ in range(concurrency):
            nursery.start_soon(worker)
    if not codes:
        raise SystemExit(f"bench.api: no payment code could be made: {failures}")
    return codes


async def _purchases(url: str, key: str, codes: list[str], clients: int, duration: float) -> dict[str, Any]:
    """``clients`` concurrent clients paying with the codes (each once) for ``duration`` s."""
    latencies: list[float] = []
    statuses: dict[str, int] = {}
    errors: dict[str, int] = {}
    approved = 0
    todo = iter(codes)
    headers = {"Authorization": f"Bearer {key}"}
    t0 = time.perf_counter()
    stop = t0 + duration

    async def client_task() -> None:
        nonlocal approved
        async with httpx.AsyncClient(base_url=url, headers=headers, timeout=30) as client:
            for code in todo:
                if time.perf_counter() >= stop:
                    return
                start = time.perf_counter()
                try:
                    r = await client.post("/v1/payments", headers={"Idempotency-Key": uuid.uuid4().hex},
                                          json={"payment_code": code, "merchant_id": MERCHANT,
                                                "amount": {"amount": AMOUNT, "currency": "CNY"}})
                except httpx.HTTPError as exc:
                    errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
                    continue
                latencies.append(time.perf_counter() - start)
                status = r.json().get("status") if r.status_code == 201 else None
                label = f"{r.status_code} {status}" if status else str(r.status_code)
                statuses[label] = statuses.get(label, 0) + 1
                if status == "approved":
                    approved += 1

    async with trio.open_nursery() as nursery:
        for _ in range(clients):
            nursery.start_soon(client_task)
    elapsed = time.perf_counter() - t0
    return {"clients": clients, "elapsed_s": round(elapsed, 3), "sent": len(latencies),
            "approved": approved, "approved_purchases_per_s": round(approved / elapsed, 1),
            "latency_ms": _percentiles(latencies), "statuses": statuses, "errors": errors,
            "ran_out_of_codes": len(latencies) >= len(codes)}


async def _floor(url: str, clients: int, duration: float) -> dict[str, Any]:
    """The HTTP stack's own ceiling, with the same clients: ``GET /healthz`` (the envelope, FastAPI on
    hypercorn, no database, no HSM, no switch) as fast as it answers, for ``duration`` s."""
    latencies: list[float] = []
    t0 = time.perf_counter()
    stop = t0 + duration

    async def client_task() -> None:
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            while (start := time.perf_counter()) < stop:
                r = await client.get("/healthz")
                if r.status_code == 200:
                    latencies.append(time.perf_counter() - start)

    async with trio.open_nursery() as nursery:
        for _ in range(clients):
            nursery.start_soon(client_task)
    elapsed = time.perf_counter() - t0
    return {"answers_per_s": round(len(latencies) / elapsed, 1), "latency_ms": _percentiles(latencies)}


def _cpu_snapshot(system: System) -> dict[str, float]:
    snap = {name: cpu_seconds(svc.proc.pid) for name, svc in system.services.items()}
    pg = system.postmaster_pid()
    if pg:
        snap["postgresql"] = tree_cpu(pg)
    snap["load generator"] = _self_cpu()
    return snap


def _delta(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    return {k: after[k] - before.get(k, 0.0) for k in after}


def _per_purchase(cpu: dict[str, float], approved: int) -> dict[str, float]:
    n = max(approved, 1)
    out = {k: round(v * 1000 / n, 3) for k, v in cpu.items()}
    out["all"] = round(sum(cpu.values()) * 1000 / n, 3)
    return out


def main(argv: list[str]) -> int:
    tune_gc()
    ap = argparse.ArgumentParser(prog="bench.api", description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=float, default=15.0, help="seconds of each measured run")
    ap.add_argument("--warmup", type=float, default=3.0, help="seconds of API purchases before measuring")
    ap.add_argument("--clients", type=int, default=64, help="concurrent API clients")
    ap.add_argument("--terminals", type=int, default=64, help="concurrent POS terminals (the baseline)")
    ap.add_argument("--per-connection", type=int, default=16, help="POS terminals per TCP connection")
    ap.add_argument("--cards", type=int, default=500, help="load cards")
    ap.add_argument("--codes", type=int, default=0,
                    help="payment codes made beforehand (default: enough for 1,500/s over warm-up + run)")
    ap.add_argument("--code-makers", type=int, default=32, help="concurrent clients making the codes")
    ap.add_argument("--quick", action="store_true", help="a smoke run: small and short")
    ap.add_argument("--keep", action="store_true", help="keep the scratch folder (logs)")
    ap.add_argument("--json", action="store_true", help="print the result as JSON")
    args = ap.parse_args(argv)
    if args.quick:
        args.duration, args.warmup, args.clients, args.terminals = 2.0, 0.0, 8, 4
        args.per_connection, args.cards, args.codes, args.code_makers = 1, 8, 300, 8

    result: dict[str, Any] = {"bench": "api", "cpus": os.cpu_count(), "quick": args.quick}
    missing = [s for s in ("hsm", "host", "switch", "api", "demo", "ledger") if s not in COMMANDS]
    if missing:
        print(f"bench.api: skipped, this build lacks: {', '.join(missing)}")
        return 0
    codes_needed = args.codes or int(1500 * (args.duration + args.warmup)) + 1000
    system = System(keep=args.keep, settings={"host.payment_code_seconds": "3600"},
                    wrappers=json.loads(os.environ.get("BENCH_WRAPPERS", "{}")))
    try:
        t0 = time.perf_counter()
        terminals = max(args.terminals, 1)
        system.start(WITH_API, seed=("--load-terminals", str(terminals), "--load-cards", str(args.cards)))
        result["setup_s"] = round(time.perf_counter() - t0, 1)
        url = system.api_url
        key = _api_key(system)
        cards = _card_ids(system, args.cards)
        t1 = time.perf_counter()
        codes = trio.run(_make_codes, url, key, cards, codes_needed, args.code_makers)
        made_s = time.perf_counter() - t1
        result["codes"] = {"made": len(codes), "seconds": round(made_s, 1),
                           "per_s": round(len(codes) / max(made_s, 1e-9), 1)}
        if args.warmup > 0:
            warm = trio.run(_purchases, url, key, codes, args.clients, args.warmup)
            codes = codes[warm["sent"]:]
        before = _cpu_snapshot(system)
        api_run = trio.run(_purchases, url, key, codes, args.clients, args.duration)
        api_cpu = _delta(_cpu_snapshot(system), before)
        result["api"] = api_run
        result["api_cpu_seconds"] = {k: round(v, 2) for k, v in api_cpu.items()}
        result["api_cpu_ms_per_purchase"] = _per_purchase(api_cpu, api_run["approved"])

        before = _cpu_snapshot(system)
        floor = trio.run(_floor, url, args.clients, args.duration)
        floor_cpu = _delta(_cpu_snapshot(system), before)
        floor["cpu_ms_per_answer"] = {k: round(floor_cpu[k] * 1000 / max(floor["answers_per_s"]
                                                                           * args.duration, 1), 3)
                                      for k in ("api", "load generator")}
        result["http_floor"] = floor
        result["ratio_api_to_floor"] = round(api_run["approved_purchases_per_s"]
                                             / max(floor["answers_per_s"], 1e-9), 3)

        pool = read_pool(system.root / "var/pos/load-pool.json", system.seal_key)
        plan = LoadPlan(pool=pool, terminals=terminals, mix=parse_mix("purchase=100"), duration=args.duration,
                        per_connection=args.per_connection, amount=AMOUNT)
        from pos.load import run_load

        before = _cpu_snapshot(system)
        pos_report = trio.run(run_load, plan, None).as_dict()
        pos_cpu = _delta(_cpu_snapshot(system), before)
        pos_cpu.pop("api", None)  # idle during the POS run: not the POS path's cost
        approved_pos = int(pos_report["approved_purchases_per_s"] * pos_report["elapsed_s"])
        result["pos"] = {k: pos_report[k] for k in ("terminals", "terminals_per_connection", "elapsed_s",
                                                    "approved_purchases_per_s", "latency_ms",
                                                    "response_codes")}
        result["pos_cpu_ms_per_purchase"] = _per_purchase(pos_cpu, approved_pos)
        result["ratio_api_to_pos"] = round(api_run["approved_purchases_per_s"]
                                           / max(pos_report["approved_purchases_per_s"], 1e-9), 3)
        result["peak_rss_mb"] = {name: peak_rss_mb(svc.proc.pid) for name, svc in system.services.items()}
        result["peak_rss_mb"]["load generator"] = peak_rss_mb(os.getpid())
        check = system.cli("ledger", "check", check=False)
        result["ledger_check"] = ("clean" if check.returncode == 0
                                  else f"FAILED: {(check.stdout or check.stderr).strip().splitlines()[-1:]}")
    finally:
        system.stop()

    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    a, p = result["api"], result["pos"]
    la, lp = a["latency_ms"], p["latency_ms"]
    print(f"machine            {result['cpus']} CPUs, setup {result['setup_s']} s"
          f"{' (quick)' if args.quick else ''}")
    print(f"payment codes      {result['codes']['made']} made beforehand through the API "
          f"({result['codes']['per_s']}/s)")
    print(f"API purchases      {a['approved_purchases_per_s']}/s approved ({a['clients']} clients, "
          f"{a['elapsed_s']} s after {args.warmup:g} s of warm-up, by payment code)"
          f"{'  RAN OUT OF CODES' if a['ran_out_of_codes'] else ''}")
    print(f"  latency ms       p50 {la['p50']}  p95 {la['p95']}  p99 {la['p99']}  max {la['max']}")
    print(f"  statuses         {a['statuses']}  errors {a['errors'] or 'none'}")
    print("  CPU ms/purchase  " + "  ".join(f"{k} {v}" for k, v in result["api_cpu_ms_per_purchase"].items()))
    f = result["http_floor"]
    print(f"HTTP floor         {f['answers_per_s']}/s GET /healthz, same clients (no database, HSM or switch)"
          f"; p99 {f['latency_ms']['p99']} ms; CPU ms/answer "
          + "  ".join(f"{k} {v}" for k, v in f["cpu_ms_per_answer"].items()))
    print(f"POS purchases      {p['approved_purchases_per_s']}/s approved ({p['terminals']} terminals, "
          f"{p['terminals_per_connection']} per connection, PIN + MAC)")
    print(f"  latency ms       p50 {lp['p50']}  p95 {lp['p95']}  p99 {lp['p99']}  max {lp['max']}")
    print(f"  response codes   {p['response_codes']}")
    print("  CPU ms/purchase  " + "  ".join(f"{k} {v}" for k, v in result["pos_cpu_ms_per_purchase"].items()))
    print(f"ratio API / POS    {result['ratio_api_to_pos']}   "
          f"API / HTTP floor {result['ratio_api_to_floor']}")
    print("peak memory MiB    " + "  ".join(f"{k} {v}" for k, v in result["peak_rss_mb"].items()))
    print(f"ledger check       {result['ledger_check']}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
