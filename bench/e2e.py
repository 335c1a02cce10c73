"""End to end: terminals -> switch -> host -> ledger on this machine, approved purchases/s with PIN and MAC.

    python -m bench e2e            # or: python -m bench.e2e --duration 30 --terminals 64 --profile

The defaults are the README's headline shape: 128 terminals, each on its own connection
(``--per-connection 1``), 1,000 cards, 15 s; ``--runs 5`` (what ``python -m bench`` gives) repeats the
baseline and the measured run five times after one warm-up and prints each run and the medians.

Starts the real processes in a scratch folder (``pos.system.System``: embedded PostgreSQL, hsm_sim,
host, switch), seeds the demo programme and its load pool (``payswitch demo seed``), then in this
process runs the load generator (``pos.load``):

1. baseline: echo 0820 round trips through the switch alone (no HSM, host or database);
2. a warm-up (``--warmup`` seconds): the same purchases, unmeasured, so every card's PIN data and PAN
   hash are in the host's caches (each run goes on from the last one's STANs);
3. the measured run: purchases with PIN and MAC on both key profiles.

It prints approved purchases/s, latency percentiles, the response-code histogram, the ratio to the
baseline, CPU seconds per process over the measured run (from /proc: switch, host, HSM, PostgreSQL,
this load generator; "services" sums all but the load generator), peak memory per process, the
per-hop time of a purchase from the switch journal, the result of ``payswitch ledger check`` and, with
``--profile``, where the switch's and the host's time goes (a second, shorter run with both under a
stack sampler, bench/_sampler.py: every thread, waiting included).

``--sweep 32,128,256`` measures those terminal counts one after the other in one system (seeded with the
largest; each its own echo baseline before it; with ``--runs N`` each count N times and the medians) and
prints each count's approved purchases/s, p99 and services CPU per purchase, and the spread of that CPU
(``flatness``: the largest over the smallest; issue 21 asks for it flat from 32 to 256 terminals within
±15 %).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import trio

from ops.cli import COMMANDS
from ops.runtime import tune_gc
from pos.load import LoadPlan, LoadReport, parse_mix, read_pool, run_load
from pos.system import System, cpu_seconds, peak_rss_mb, tree_cpu


def _load(system: System, plan: LoadPlan) -> LoadReport:
    report: LoadReport = trio.run(run_load, plan, None)
    return report


def _measure(system: System, plan: LoadPlan) -> tuple[LoadReport, dict[str, float], float]:
    pids = {name: svc.proc.pid for name, svc in system.services.items()}
    pg = system.postmaster_pid()
    before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    pg_before = tree_cpu(pg) if pg else 0.0
    me_before = _self_cpu()
    wall = time.perf_counter()
    report = _load(system, plan)
    wall = time.perf_counter() - wall
    cpu = {name: cpu_seconds(pid) - before[name] for name, pid in pids.items()}
    if pg:
        cpu["postgresql"] = tree_cpu(pg) - pg_before
    cpu["load generator"] = _self_cpu() - me_before
    return report, cpu, wall


def _hops(db_url: str) -> dict[str, Any]:
    """Where a purchase's time goes, from the switch journal's per-hop timings (microseconds)."""
    import asyncio

    import asyncpg

    async def query() -> dict[str, Any]:
        conn = await asyncpg.connect(db_url)
        try:
            row = await conn.fetchrow(
                """SELECT count(*) AS n, avg(us_total) AS total, avg(us_hsm) AS hsm, avg(us_host) AS host,
                          percentile_cont(0.99) WITHIN GROUP (ORDER BY us_total) AS total_p99,
                          percentile_cont(0.99) WITHIN GROUP (ORDER BY us_host) AS host_p99
                   FROM switch_journal WHERE txn_type = 'purchase' AND response_code = '00'"""
            )
        finally:
            await conn.close()
        if row is None or not row["n"]:
            return {}
        ms = {k: round(float(row[k]) / 1000, 2) for k in ("total", "hsm", "host", "total_p99", "host_p99")}
        return {"purchases": row["n"], "ms": ms}

    try:
        return asyncio.run(query())
    except Exception as exc:  # the journal layout is the switch's: report, do not fail the bench
        return {"unavailable": f"{exc.__class__.__name__}: {exc}"[:200]}


def _self_cpu() -> float:
    t = os.times()
    return t.user + t.system


def _samples(path: Path, n: int = 8) -> list[str]:
    """Lines of the sampler's report (bench/_sampler.py): per thread, the top functions on the stack."""
    if not path.exists():
        return [f"(no samples written at {path.name})"]
    report = json.loads(path.read_text())
    out = []
    for thread, data in report.items():
        if data["seconds"] < 0.1:
            continue
        out.append(f"thread {thread} ({data['seconds']} s sampled)")
        out.append("  top of stack: " + "; ".join(f"{100 * f:.0f}% {k}" for k, f in data["self"][:n]))
        if data["inclusive"]:
            out.append(
                "  inside:       " + "; ".join(f"{100 * f:.0f}% {k}" for k, f in data["inclusive"][:n])
            )
    return out


def _run_result(
    base: dict[str, Any], data: dict[str, Any], cpu: dict[str, float], wall: float
) -> dict[str, Any]:
    """One measured run and the echo baseline measured just before it."""
    approved = max(data["approved_purchases_per_s"] * wall, 1.0)
    per = {k: round(v * 1000 / approved, 3) for k, v in cpu.items()}
    per["all"] = round(sum(cpu.values()) * 1000 / approved, 3)
    # what the target counts: switch, host, HSM and PostgreSQL, the load generator excluded
    per["services"] = round(sum(v for k, v in cpu.items() if k != "load generator") * 1000 / approved, 3)
    return {
        "baseline_echo": {k: base[k] for k in ("throughput_per_s", "latency_ms", "response_codes")},
        "e2e": data,
        "cpu_seconds": {k: round(v, 2) for k, v in cpu.items()},
        "cpu_ms_per_purchase": per,
        "cpu_share_of_machine": {k: round(v / wall / (os.cpu_count() or 1), 3) for k, v in cpu.items()},
        "ratio_to_echo_baseline": round(
            data["approved_purchases_per_s"] / max(base["throughput_per_s"], 1e-9), 3
        ),
    }


def _run_line(run: dict[str, Any]) -> str:
    e2e, lat = run["e2e"], run["e2e"]["latency_ms"]
    return (
        f"{e2e['approved_purchases_per_s']}/s approved, p99 {lat['p99']} ms, CPU ms per purchase"
        f" {run['cpu_ms_per_purchase']['services']} (services) {run['cpu_ms_per_purchase']['all']} (all);"
        f" baseline echo {run['baseline_echo']['throughput_per_s']}/s"
    )


def _median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The runs' medians, figure by figure (each figure its own median: the run with the median
    throughput need not have the median p99), in the shape of one run's result."""

    def med(values: list[Any]) -> Any:
        if isinstance(values[0], dict):
            return {k: med([v[k] for v in values]) for k in values[0] if all(k in v for v in values)}
        if all(v == values[0] for v in values):  # a setting, not a measurement (terminals: 128)
            return values[0]
        if isinstance(values[0], (int, float)) and not isinstance(values[0], bool):
            return round(statistics.median(values), 3)
        return values[len(values) // 2]

    out: dict[str, Any] = med(runs)
    # counts are the runs' own (a median of histograms is none of them): the median run's, by throughput
    middle = sorted(runs, key=lambda r: r["e2e"]["approved_purchases_per_s"])[len(runs) // 2]
    for key in ("response_codes", "errors", "by_transaction"):
        out["e2e"][key] = middle["e2e"][key]
    out["baseline_echo"]["response_codes"] = middle["baseline_echo"]["response_codes"]
    return out


def parse_sweep(text: str) -> list[int]:
    """``--sweep``'s terminal counts: whole numbers of at least 1, comma-separated, each once."""
    try:
        counts = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--sweep wants counts like 32,128,256, not {text!r}") from None
    if not counts or min(counts) < 1 or len(set(counts)) != len(counts):
        raise argparse.ArgumentTypeError(f"--sweep wants distinct counts of at least 1, not {text!r}")
    return counts


def flatness(by_terminals: dict[int, dict[str, Any]]) -> float:
    """The largest services CPU per purchase of the sweep over the smallest (1.0: perfectly flat)."""
    cpu = [float(r["cpu_ms_per_purchase"]["services"]) for r in by_terminals.values()]
    return round(max(cpu) / max(min(cpu), 1e-9), 3)


def _sweep_lines(by_terminals: dict[int, dict[str, Any]]) -> list[str]:
    lines = ["terminals  approved/s   p99 ms  services CPU ms per purchase  echo baseline/s"]
    for n, r in by_terminals.items():
        lines.append(
            f"{n:>9}  {r['e2e']['approved_purchases_per_s']:>10}  {r['e2e']['latency_ms']['p99']:>7}  "
            f"{r['cpu_ms_per_purchase']['services']:>28}  {r['baseline_echo']['throughput_per_s']:>15}"
        )
    lines.append(
        f"flatness   {flatness(by_terminals)} (largest CPU per purchase over the smallest; target <= 1.15)"
    )
    return lines


# `python -m bench --runs N` gives this module --runs N (bench/__main__.py)
RUNS = True


def main(argv: list[str]) -> int:
    tune_gc()  # the load generator runs in this process: the same interpreter settings as the services
    ap = argparse.ArgumentParser(prog="bench.e2e", description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=float, default=15.0, help="seconds of the measured run")
    ap.add_argument(
        "--terminals", type=int, default=128, help="concurrent terminals (the README's headline: 128)"
    )
    ap.add_argument("--cards", type=int, default=1000, help="load cards")
    ap.add_argument(
        "--runs",
        type=int,
        default=1,
        help="echo baseline + measured run N times (one warm-up); print each run and the medians",
    )
    ap.add_argument("--mix", default="purchase=100")
    ap.add_argument(
        "--per-connection",
        type=int,
        default=1,
        help="terminals sharing one TCP connection (1: each its own, as real terminals)",
    )
    ap.add_argument("--baseline-duration", type=float, default=5.0)
    ap.add_argument(
        "--warmup",
        type=float,
        default=5.0,
        help="seconds of the same purchase load before the measured run (fills the host's card caches)",
    )
    ap.add_argument("--durable", action="store_true", help="PostgreSQL with fsync on (default: off)")
    ap.add_argument(
        "--no-link-mac",
        action="store_true",
        help="the switch-host link without DE128 (declared --no-mac; the demo's link is MACed)",
    )
    ap.add_argument(
        "--sweep",
        type=parse_sweep,
        metavar="N,N,...",
        help="terminal counts measured in one system (e.g. 32,128,256): how flat the CPU per purchase is",
    )
    ap.add_argument("--profile", action="store_true", help="also sample where switch and host spend time")
    ap.add_argument("--keep", action="store_true", help="keep the scratch folder (logs, profiles)")
    ap.add_argument("--json", action="store_true", help="print the result as JSON")
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="a configuration setting for every process (repeatable), e.g. hsm.connections=4",
    )
    args = ap.parse_args(argv)

    result: dict[str, Any] = {"bench": "e2e", "cpus": os.cpu_count()}
    missing = [s for s in ("hsm", "host", "switch", "demo", "ledger") if s not in COMMANDS]
    if missing:
        print(f"bench.e2e: skipped, this build lacks: {', '.join(missing)}")
        return 0
    settings = dict(item.split("=", 1) for item in args.set if "=" in item)
    result["settings"] = settings
    system = System(durable=args.durable, keep=args.keep, settings=settings)
    try:
        t0 = time.perf_counter()
        shapes: list[int] = args.sweep or [args.terminals]
        seed = ("--load-terminals", str(max(shapes)), "--load-cards", str(args.cards))
        system.start(seed=(*seed, "--no-link-mac") if args.no_link_mac else seed)
        result["link_mac"] = not args.no_link_mac
        result["setup_s"] = round(time.perf_counter() - t0, 1)
        pool = read_pool(system.root / "var/pos/load-pool.json", system.seal_key)
        stans: dict[str, int] = {}  # every run goes on from the last one's STANs (LoadPlan.stans)

        base_plan = LoadPlan(
            pool=pool,
            terminals=args.terminals,
            mix=parse_mix("echo=1"),
            duration=args.baseline_duration,
            per_connection=args.per_connection,
            stans=stans,
        )
        plan = LoadPlan(
            pool=pool,
            terminals=args.terminals,
            mix=parse_mix(args.mix),
            duration=args.duration,
            per_connection=args.per_connection,
            stans=stans,
        )
        by_shape: dict[int, list[dict[str, Any]]] = {n: [] for n in shapes}
        for k in range(args.runs):
            for n in shapes:
                # The baseline before each measured run: each run's ratio is to its own phase of the box.
                base = _load(system, dataclasses.replace(base_plan, terminals=n)).as_dict()
                if k == 0 and n == shapes[0] and args.warmup > 0:
                    # Each card's first PIN purchase reads its PIN data and hashes its PAN once per host
                    # process: the steady state is what the measured runs report.
                    _load(system, dataclasses.replace(plan, terminals=max(shapes), duration=args.warmup))
                report, cpu, wall = _measure(system, dataclasses.replace(plan, terminals=n))
                by_shape[n].append(_run_result(base, report.as_dict(), cpu, wall))
                if (args.runs > 1 or args.sweep) and not args.json:
                    shape = f", {n} terminals" if args.sweep else ""
                    print(f"run {k + 1} of {args.runs}{shape}      " + _run_line(by_shape[n][-1]), flush=True)
        result["warmup_s"] = args.warmup
        summary = {n: rs[-1] if args.runs == 1 else _median_run(rs) for n, rs in by_shape.items()}
        runs = by_shape[shapes[-1]]
        result.update(summary[shapes[-1]])  # a sweep's detail below is its last count's
        if args.runs > 1:
            result["runs"] = runs
        if args.sweep:
            result["sweep"] = {str(n): r for n, r in summary.items()}
            result["flatness"] = flatness(summary)
        result["peak_rss_mb"] = {name: peak_rss_mb(svc.proc.pid) for name, svc in system.services.items()}
        result["peak_rss_mb"]["load generator"] = peak_rss_mb(os.getpid())
        result["switch_journal_hops"] = _hops(system.db_url)
        check = system.cli("ledger", "check", check=False)
        result["ledger_check"] = (
            "clean"
            if check.returncode == 0
            else f"FAILED: {(check.stdout or check.stderr).strip().splitlines()[-1:]}"
        )

        if args.profile:
            # A second, shorter run with switch and host restarted under the stack sampler.
            for name in ("switch", "host"):
                system.stop_service(name, timeout=30)
            for name in ("host", "switch"):
                sampler = str(Path(__file__).with_name("_sampler.py"))  # by path: services run elsewhere
                system.wrappers[name] = [sampler, str(system.root / f"{name}.samples.json")]
                system.start_service(name)
            _load(system, dataclasses.replace(plan, duration=min(args.duration, 10.0)))
            for name in ("switch", "host"):
                system.stop_service(name, timeout=30)
            result["profile"] = {
                name: _samples(system.root / f"{name}.samples.json") for name in ("switch", "host")
            }
    finally:
        system.stop()

    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    e2e = result["e2e"]
    lat = e2e["latency_ms"]
    print(
        f"machine            {result['cpus']} CPUs, setup {result['setup_s']} s, "
        f"PostgreSQL fsync {'on' if args.durable else 'off'}"
    )
    if "runs" in result:
        rates = ", ".join(str(r["e2e"]["approved_purchases_per_s"]) for r in result["runs"])
        print(
            f"median of {len(result['runs'])} runs  each figure below is its own median over the runs"
            f" (approved/s: {rates}); the echo baseline was measured just before each run"
        )
    print(f"baseline (echo)    {result['baseline_echo']['throughput_per_s']}/s through the switch alone")
    print(
        f"e2e purchases      {e2e['approved_purchases_per_s']}/s approved "
        f"({e2e['terminals']} terminals, {e2e['terminals_per_connection']} per connection, "
        f"{e2e['elapsed_s']} s after {result['warmup_s']:g} s of warm-up, PIN + MAC, both profiles)"
    )
    print(f"latency ms         p50 {lat['p50']}  p95 {lat['p95']}  p99 {lat['p99']}  max {lat['max']}")
    print(f"response codes     {e2e['response_codes']}  errors {e2e['errors'] or 'none'}")
    print(f"ratio to baseline  {result['ratio_to_echo_baseline']}")
    print("CPU seconds        " + "  ".join(f"{k} {v}" for k, v in result["cpu_seconds"].items()))
    print("CPU ms / purchase  " + "  ".join(f"{k} {v}" for k, v in result["cpu_ms_per_purchase"].items()))
    print("peak memory MiB    " + "  ".join(f"{k} {v}" for k, v in result["peak_rss_mb"].items()))
    hops = result.get("switch_journal_hops", {})
    if "ms" in hops:
        h = hops["ms"]
        print(
            f"where time goes    switch journal, mean per approved purchase: total {h['total']} ms, "
            f"of which HSM {h['hsm']} and host {h['host']} (p99 total {h['total_p99']}, host {h['host_p99']})"
        )
    elif hops:
        print(f"where time goes    {hops}")
    print(f"ledger check       {result['ledger_check']}")
    if args.sweep:
        print(f"sweep ({'median of ' + str(args.runs) + ' runs each' if args.runs > 1 else 'one run each'}; "
              f"the figures above are the last count's)")
        for line in _sweep_lines(summary):
            print("   " + line)
    for name, lines in result.get("profile", {}).items():
        print(f"where {name} spends its time (wall-clock stack samples, waiting included)")
        for line in lines:
            print("   " + line)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
