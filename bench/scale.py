"""What scale costs: approved purchases/s with 1 and 2 switch nodes and 1 and 2 host processes.

    python -m bench scale          # or: python -m bench.scale --duration 15 --terminals 64

One scratch system (``pos.system.System``: embedded PostgreSQL, hsm_sim, ``payswitch demo seed``), then
for each configuration (switches, hosts) in (1, 1), (2, 1), (1, 2), (2, 2): the configuration's
``switch serve`` and ``host serve`` processes are started fresh (distinct ports, switch node ids
``switch-1``/``switch-2``), warmed up (``--warmup`` s of the same purchases: caches, sign-ons, links up),
measured with the load generator in this process (``pos.load``, as bench/e2e), then stopped.

- Two switch nodes: the load terminals are split over the two nodes' POS ports, every other terminal
  to the second node (what HAProxy in front of them does by connection, without its own CPU in the
  figure). Both nodes share the database (switch/README.md "Several switch nodes").
- Two hosts: the switch gets a second H2H link ``host-2`` with the demo link's keys to the second host's
  port, and a route of every demo BIN over it; routes with the same bounds form a group the switch
  spreads requests over (switch.upstream). Both hosts post every partition, a batch leasing its
  writer group (host/README.md "Several host processes"). With one host the link ``host-2`` is disabled.

For each configuration it prints approved purchases/s, p50/p99, CPU ms per approved purchase per role
(switch nodes summed, hosts summed, HSM, PostgreSQL; the load generator is excluded from "all"), peak
memory per process, the ratio to the (1, 1) baseline of the same run, and what PostgreSQL did per
approved purchase: commits, WAL bytes (``pg_current_wal_lsn`` delta) and rows inserted / updated per
table (``pg_stat_user_tables`` deltas, partitions under their parent table; those counters reach the
view up to a second late, so they are steady-state figures, not exact counts). A configuration that
cannot run prints why and the bench goes on. ``ledger check`` runs at the end. No speed is asserted
anywhere (bench/README.md, "Scale").
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import trio

from ops import processes
from ops.cli import COMMANDS
from ops.config import env_name
from ops.pgembed import free_port
from ops.runtime import tune_gc
from pos.load import LoadError, LoadPlan, LoadReport, Pool, parse_mix, read_pool, run_load
from pos.system import System, cpu_seconds, peak_rss_mb, tree_cpu

CONFIGS: tuple[tuple[int, int], ...] = ((1, 1), (2, 1), (1, 2), (2, 2))
DEMO_LINK = "host"  # pos.demo.LINK_NAME: the link `demo seed` makes to the first host
SECOND_LINK = "host-2"


class ConfigError(Exception):
    """A configuration could not be started; str() says why in one line."""


@dataclass
class Proc:
    """One switch or host process this bench started, with the ports it listens on."""

    name: str
    role: str  # switch | host
    proc: subprocess.Popen[bytes]
    ports: dict[str, int]


@dataclass
class Nodes:
    """The switch and host processes of one configuration."""

    procs: list[Proc] = field(default_factory=list)

    def of(self, role: str) -> list[Proc]:
        return [p for p in self.procs if p.role == role]

    def stop(self) -> None:
        # switches first: they drain their requests to the hosts before the hosts go
        for p in [*self.of("switch"), *self.of("host")]:
            processes.stop(p.proc, timeout=30)
        self.procs.clear()


def _spawn(system: System, name: str, role: str, env: dict[str, str], port: int) -> Proc:
    log = system.root / f"{name}.log"
    with log.open("ab") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", "ops", role, "serve"],
            cwd=system.root,
            env=system.env() | env,
            stdout=fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        processes.wait_listening(port, proc, what=name, timeout=60)
    except processes.NotListening as exc:
        processes.stop(proc)
        tail = log.read_text(errors="replace").strip().splitlines()[-2:]
        raise ConfigError(f"{exc}: {' | '.join(tail)[-300:]}") from None
    return Proc(name, role, proc, {"main": port})


def start_nodes(system: System, switches: int, hosts: int, host2_port: int) -> Nodes:
    """Hosts first (the switch connects its links at start), then the switch nodes. Host 1 listens on
    the configured port (the demo link's); host 2 on ``host2_port`` (link ``host-2``)."""
    nodes = Nodes()
    try:
        for i in range(1, hosts + 1):
            port = system.ports["host"] if i == 1 else host2_port
            env = {env_name("host", "port"): str(port)}
            nodes.procs.append(_spawn(system, f"host-{i}", "host", env, port))
        for i in range(1, switches + 1):
            own = {"pos_3des_port": system.ports["pos_3des"], "pos_sm4_port": system.ports["pos_sm4"],
                   "h2h_port": system.ports["h2h"]}  # fmt: skip
            if i > 1:
                own = {k: free_port() for k in own}
            env = {env_name("switch", k): str(v) for k, v in own.items()}
            env[env_name("switch", "node_id")] = f"switch-{i}"
            proc = _spawn(system, f"switch-{i}", "switch", env, own["pos_3des_port"])
            proc.ports = own
            nodes.procs.append(proc)
    except BaseException:
        nodes.stop()
        raise
    return nodes


def split_pool(pool: Pool, system: System, nodes: Nodes) -> Pool:
    """The pool with every other terminal moved to the next switch node's POS port of its scheme."""
    switches = nodes.of("switch")
    if len(switches) < 2:
        return pool
    by_port = {system.ports["pos_3des"]: "pos_3des_port", system.ports["pos_sm4"]: "pos_sm4_port"}
    moved = []
    for i, t in enumerate(pool.terminals):
        node = switches[i % len(switches)]
        key = by_port.get(t.port)
        moved.append(dataclasses.replace(t, port=node.ports[key]) if key else t)
    return Pool(moved, pool.cards)


# -- the second host's link -----------------------------------------------------------------------------
def _sql(db_url: str, statement: str, *args: Any) -> list[dict[str, Any]]:
    import asyncpg

    async def run() -> list[dict[str, Any]]:
        conn = await asyncpg.connect(db_url)
        try:
            return [dict(r) for r in await conn.fetch(statement, *args)]
        finally:
            await conn.close()

    return asyncio.run(run())


def add_second_link(system: System, port: int) -> None:
    """Link ``host-2`` to ``port`` with the demo link's scheme and keys (both hosts know that acquirer's
    keys: one database) and the demo link's routes over it, through the operator CLI. The keys are read
    from the demo link's row because the CLI never shows them."""
    (link,) = _sql(system.db_url, "SELECT scheme, zpk, zak, connections FROM switch_links WHERE name = $1",
                   DEMO_LINK)  # fmt: skip
    mac = ("--zak", link["zak"]) if link["zak"] else ()
    system.cli("switch", "link", "add", SECOND_LINK, "--host", "127.0.0.1", "--port", str(port),
               "--scheme", link["scheme"], "--zpk", link["zpk"], *mac,
               "--connections", str(link["connections"]), "--replace", "--yes")  # fmt: skip
    for r in _sql(system.db_url, "SELECT bin_low, bin_high FROM switch_routes WHERE link = $1", DEMO_LINK):
        system.cli("switch", "route", "add", r["bin_low"], r["bin_high"], "--link", SECOND_LINK)


def set_second_link(system: System, enabled: bool) -> None:
    system.cli("switch", "link", "enable" if enabled else "disable", SECOND_LINK)


# -- what PostgreSQL did -----------------------------------------------------------------------------------
_DB_SNAPSHOT = """
SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint AS wal,
       (SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()) AS commits,
       coalesce((SELECT json_object_agg(t, json_build_array(ins, upd)) FROM (
           SELECT coalesce(pg_partition_root(relid), relid)::regclass::text AS t,
                  sum(n_tup_ins) AS ins, sum(n_tup_upd) AS upd
           FROM pg_stat_user_tables GROUP BY 1) x), '{}') AS tables
"""


def db_snapshot(db_url: str) -> dict[str, Any]:
    (row,) = _sql(db_url, _DB_SNAPSHOT)
    return {"wal": int(row["wal"]), "commits": int(row["commits"]), "tables": json.loads(row["tables"])}


def db_per_purchase(before: dict[str, Any], after: dict[str, Any], approved: float) -> dict[str, Any]:
    """Commits, WAL bytes and rows per table (inserted, updated) per approved purchase."""
    rows: dict[str, list[float]] = {}
    for table, (ins, upd) in after["tables"].items():
        b_ins, b_upd = before["tables"].get(table, (0, 0))
        d_ins, d_upd = (ins - b_ins) / approved, (upd - b_upd) / approved
        if d_ins >= 0.005 or d_upd >= 0.005:
            rows[table] = [round(d_ins, 3), round(d_upd, 3)]
    return {
        "commits": round((after["commits"] - before["commits"]) / approved, 4),
        "wal_bytes": round((after["wal"] - before["wal"]) / approved),
        "rows_inserted_updated": dict(sorted(rows.items(), key=lambda kv: -sum(kv[1]))),
    }


# -- one configuration ----------------------------------------------------------------------------------
def _self_cpu() -> float:
    t = os.times()
    return t.user + t.system


def _load(plan: LoadPlan) -> LoadReport:
    report: LoadReport = trio.run(run_load, plan, None)
    return report


def measure(system: System, nodes: Nodes, plan: LoadPlan, warmup: float) -> dict[str, Any]:
    if warmup > 0:
        _load(dataclasses.replace(plan, duration=warmup))
    pids = {p.name: p.proc.pid for p in nodes.procs} | {"hsm": system.services["hsm"].proc.pid}
    pg = system.postmaster_pid()
    db_before = db_snapshot(system.db_url)
    before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    pg_before = tree_cpu(pg) if pg else 0.0
    me_before = _self_cpu()
    wall = time.perf_counter()
    report = _load(plan)
    wall = time.perf_counter() - wall
    cpu = {name: cpu_seconds(pid) - before[name] for name, pid in pids.items()}
    cpu["postgresql"] = (tree_cpu(pg) - pg_before) if pg else 0.0
    load_cpu = _self_cpu() - me_before
    time.sleep(1.2)  # the backends' table counters reach pg_stat_user_tables within a second
    db_after = db_snapshot(system.db_url)
    data = report.as_dict()
    approved = max(data["approved_purchases_per_s"] * wall, 1.0)
    roles = {
        "switch": sum(v for k, v in cpu.items() if k.startswith("switch-")),
        "host": sum(v for k, v in cpu.items() if k.startswith("host-")),
        "hsm": cpu["hsm"],
        "postgresql": cpu["postgresql"],
    }
    ms = {k: round(v * 1000 / approved, 3) for k, v in roles.items()}
    ms["all"] = round(sum(roles.values()) * 1000 / approved, 3)
    return {
        "approved_per_s": data["approved_purchases_per_s"],
        "latency_ms": data["latency_ms"],
        "response_codes": data["response_codes"],
        "errors": data["errors"],
        "signed_on": data["signed_on"],
        "cpu_ms_per_purchase": ms,
        "cpu_ms_per_purchase_by_process": {k: round(v * 1000 / approved, 3) for k, v in cpu.items()},
        "load_generator_cpu_ms_per_purchase": round(load_cpu * 1000 / approved, 3),
        "cpu_share_of_machine": round(sum(roles.values()) / wall / (os.cpu_count() or 1), 3),
        "peak_rss_mb": {p.name: peak_rss_mb(p.proc.pid) for p in nodes.procs},
        "database_per_purchase": db_per_purchase(db_before, db_after, approved),
    }


def run_config(
    system: System, pool: Pool, switches: int, hosts: int, host2_port: int, args: argparse.Namespace,
    stans: dict[str, int],
) -> dict[str, Any]:
    set_second_link(system, hosts > 1)
    nodes = start_nodes(system, switches, hosts, host2_port)
    try:
        plan = LoadPlan(pool=split_pool(pool, system, nodes), terminals=args.terminals,
                        mix=parse_mix(args.mix), duration=args.duration,
                        per_connection=args.per_connection, stans=stans)  # fmt: skip
        return measure(system, nodes, plan, args.warmup)
    finally:
        nodes.stop()


# -- the whole bench ---------------------------------------------------------------------------------------
def _parse(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="bench.scale", description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=float, default=15.0, help="seconds of each measured run")
    ap.add_argument("--warmup", type=float, default=5.0, help="seconds of warm-up per configuration")
    ap.add_argument("--terminals", type=int, default=64, help="concurrent terminals")
    ap.add_argument("--cards", type=int, default=500, help="load cards")
    ap.add_argument("--mix", default="purchase=100")
    ap.add_argument("--per-connection", type=int, default=16,
                    help="terminals sharing one TCP connection (a concentrator; bench/e2e's target command)")
    ap.add_argument("--configs", default=",".join(f"{s}x{h}" for s, h in CONFIGS),
                    help="SWITCHESxHOSTS, comma-separated; the first is the baseline")
    ap.add_argument("--durable", action="store_true", help="PostgreSQL with fsync on (default: off)")
    ap.add_argument("--keep", action="store_true", help="keep the scratch folder (logs)")
    ap.add_argument("--json", action="store_true", help="print the result as JSON")
    ap.add_argument("--quick", action="store_true", help="a smoke run: 2 s each, 8 terminals, 40 cards")
    args = ap.parse_args(argv)  # fmt: skip
    if args.quick:
        args.duration, args.warmup, args.terminals, args.cards, args.per_connection = 2.0, 1.5, 8, 40, 4
    return args


def _configs(text: str) -> list[tuple[int, int]]:
    out = []
    for item in text.split(","):
        s, _, h = item.strip().partition("x")
        if not (s.isdigit() and h.isdigit() and 1 <= int(s) <= 2 and 1 <= int(h) <= 2):
            raise SystemExit(f"bench.scale: --configs takes SWITCHESxHOSTS with 1 or 2 each, not {item!r}")
        out.append((int(s), int(h)))
    return out


def main(argv: list[str]) -> int:
    tune_gc()  # the load generator runs in this process: the same interpreter settings as the services
    args = _parse(argv)
    configs = _configs(args.configs)
    missing = [s for s in ("hsm", "host", "switch", "demo", "ledger") if s not in COMMANDS]
    if missing:
        print(f"bench.scale: skipped, this build lacks: {', '.join(missing)}")
        return 0
    result: dict[str, Any] = {"bench": "scale", "cpus": os.cpu_count(), "configs": {}}
    system = System(durable=args.durable, keep=args.keep)
    try:
        t0 = time.perf_counter()
        seed = ("--load-terminals", str(args.terminals), "--load-cards", str(args.cards))
        system.start(("hsm",), seed=seed)
        host2_port = free_port()
        add_second_link(system, host2_port)
        result["setup_s"] = round(time.perf_counter() - t0, 1)
        pool = read_pool(system.root / "var/pos/load-pool.json", system.seal_key)
        stans: dict[str, int] = {}  # every run goes on from the last one's STANs (LoadPlan.stans)
        for switches, hosts in configs:
            key = f"{switches}x{hosts}"
            while key in result["configs"]:  # a configuration measured again (e.g. the baseline last)
                key += "'"
            try:
                result["configs"][key] = run_config(system, pool, switches, hosts, host2_port, args, stans)
            except (ConfigError, LoadError) as exc:
                result["configs"][key] = {"skipped": str(exc)}
            if not args.json:
                _print_config(key, result["configs"][key], result["configs"])
        check = system.cli("ledger", "check", check=False)
        result["ledger_check"] = (
            "clean" if check.returncode == 0
            else f"FAILED: {(check.stdout or check.stderr).strip().splitlines()[-1:]}"
        )  # fmt: skip
    finally:
        system.stop()
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"machine            {result['cpus']} CPUs, setup {result['setup_s']} s, PostgreSQL fsync "
          f"{'on' if args.durable else 'off'}, {args.terminals} terminals {args.per_connection} per "
          f"connection, {args.duration:g} s each after {args.warmup:g} s of warm-up")  # fmt: skip
    print(f"ledger check       {result['ledger_check']}")
    return 0


def _print_config(key: str, r: dict[str, Any], every: dict[str, dict[str, Any]]) -> None:
    switches, hosts = key.rstrip("'").split("x")
    head = f"{switches} switch{'es' if switches != '1' else ''}, {hosts} host{'s' if hosts != '1' else ''}"
    head += " again" * key.count("'")
    if "skipped" in r:
        print(f"{head:<20} cannot run: {r['skipped']}")
        return
    base = next(iter(every.values()))
    lat = r["latency_ms"]
    print(f"{head:<20} {r['approved_per_s']}/s approved  p50 {lat['p50']}  p99 {lat['p99']} ms  "
          f"codes {r['response_codes']}  errors {r['errors'] or 'none'}")  # fmt: skip
    if "approved_per_s" in base:
        ratio = r["approved_per_s"] / max(base["approved_per_s"], 1e-9)
        cpu_ratio = r["cpu_ms_per_purchase"]["all"] / max(base["cpu_ms_per_purchase"]["all"], 1e-9)
        print(f"  ratio to (1, 1)    throughput {ratio:.3f}  CPU per purchase {cpu_ratio:.3f}")
    print("  CPU ms / purchase  " + "  ".join(f"{k} {v}" for k, v in r["cpu_ms_per_purchase"].items())
          + f"  (load generator {r['load_generator_cpu_ms_per_purchase']}, not in all; "
          f"{100 * r['cpu_share_of_machine']:.0f} % of the machine)")  # fmt: skip
    print("  peak memory MiB    " + "  ".join(f"{k} {v}" for k, v in r["peak_rss_mb"].items()))
    db = r["database_per_purchase"]
    tables = "  ".join(f"{t} {i}/{u}" for t, (i, u) in db["rows_inserted_updated"].items())
    print(f"  PostgreSQL         per approved purchase: {db['commits']} commits, {db['wal_bytes']} WAL "
          f"bytes; rows inserted/updated: {tables}")  # fmt: skip


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
