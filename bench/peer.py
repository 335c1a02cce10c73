"""Our host against a peer: iso8583sim's MockHost and ``payswitch host serve`` under the same load.

    python -m bench.peer [--count 20000] [--concurrency 64] [--connections 1] [--cards 2000] [--tree DIR]
                         [--purchases 0.5] [--rounds 1] [--writers N]

The peer is iso8583sim (PyPI ``iso8583sim``), an ISO 8583 simulator whose ``MockHost`` answers every
request 00 from memory (no ledger, no database). It is installed on first use into a venv of its own,
``var/bench/iso8583sim-venv`` (never a dependency of the project). Its ``ascii-hex`` wire format with
the ``2b`` length header is our H2H dialect byte for byte (ASCII fields, 16 hex characters of bitmap,
LL/LLL lengths as ASCII digits, 2-byte binary length): the same bytes go to both hosts.

The load is iso8583sim's own generator (``iso8583sim.net.run_load`` with its ``ISO8583Client``: one
``write`` per message, ``--concurrency`` requests in flight over ``--connections`` connections,
responses matched on DE11), run in the peer's venv as a process of its own, with our request builder:
0200 balance inquiries (DE3 31) and purchases (DE3 00, 0.01-1.00 CNY) on random bench cards, a
``--purchases`` share of them purchases, DE7 fixed per run and DE11 counting up (every request a new
duplicate key). The same messages go to both hosts.

Set-up is bench.host's: a throwaway PostgreSQL (fsync on), the HSM, one product, one hot merchant,
``--cards`` cards loaded through the ledger, the link without DE128 (bench.host's ``_setup``), then
``host serve`` warmed up with one balance inquiry per card (bench.host's ``_drive``). Each round
measures MockHost, then our host. Prints per host: responses/s, p50/p99, response codes, CPU ms per
request (MockHost: its process; ours: the host process plus its own PostgreSQL cluster's processes,
not every postgres on the machine), and the ratio ours / MockHost of throughput; then ``ledger check``.

``--tree DIR`` (A/B): a second ``host serve`` on the same database, run from another checkout (a
worktree of an earlier commit: its packages first on ``PYTHONPATH``), measured after ours in each
round, each warmed up the same way.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import asyncpg
import trio

from bench.host import _batch_stats, _drive, _proc_stats, _setup, _wait_port, host_env
from host.check import run_checks
from ops import processes
from ops.db import ensure_database
from ops.migrate import migrate_url
from ops.pgembed import EmbeddedPostgres, free_port
from pos.system import tree_cpu

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / "var" / "bench" / "iso8583sim-venv"
PEER = "iso8583sim"

# The load, run by the peer venv's Python: iso8583sim's run_load and client, our request builder.
# argv: port count concurrency connections purchases pans-file de7; prints one JSON report.
LOAD = r"""
import asyncio, json, random, sys
from iso8583sim.core.types import ISO8583Message
from iso8583sim.net import ISO8583Client, Framing, run_load
from iso8583sim.wire import WireFormat

port, count, concurrency, connections = (int(a) for a in sys.argv[1:5])
purchases, pans, de7 = float(sys.argv[5]), open(sys.argv[6]).read().split(), sys.argv[7]
rng = random.Random(21)
fmt, framing = WireFormat.ascii_hex(), Framing(header="2b")

def build(i):
    stan = f"{i % 999999 + 1:06d}"
    fields = {2: rng.choice(pans), 3: "310000", 7: de7, 11: stan, 12: "101010", 13: "1125",
              22: "012", 25: "00", 32: "48880000", 37: f"PEER{stan}00", 41: f"P{i % 997:07d}",
              42: "898330160120001", 49: "156"}
    if rng.random() < purchases:
        fields[3], fields[4] = "000000", f"{rng.randint(1, 100):012d}"
    return ISO8583Message(mti="0200", fields=fields)

report = asyncio.run(run_load(
    lambda: ISO8583Client("127.0.0.1", port, wire_format=fmt, framing=framing, timeout=30),
    count=count, concurrency=concurrency, connections=connections, make_message=build))
print(json.dumps({"responses": report.responses, "timeouts": report.timeouts, "errors": report.errors,
                  "seconds": report.duration_s, "p50": report.percentile(50),
                  "p99": report.percentile(99), "codes": dict(report.response_codes)}))
"""


def _peer_python() -> Path:
    """The peer venv's Python, the venv made and iso8583sim installed into it on first use."""
    python = VENV / "bin" / "python"
    if (
        python.exists()
        and subprocess.run([str(python), "-c", "import iso8583sim.net"], capture_output=True).returncode == 0
    ):
        return python
    print(f"installing {PEER} into {VENV.relative_to(ROOT)} (first use)", flush=True)
    VENV.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", PEER], check=True)
    return python


def _cluster_cpu(data_dir: Path) -> float:
    """CPU seconds of one PostgreSQL cluster (its postmaster, reaped and living children): other
    clusters on the machine are not counted."""
    try:
        postmaster = int((data_dir / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0.0
    return tree_cpu(postmaster)


def _load(python: Path, port: int, args: argparse.Namespace, pans_file: Path) -> dict[str, Any]:
    de7 = time.strftime("%m%d%H%M%S", time.gmtime())
    out = subprocess.run(
        [
            str(python),
            "-c",
            LOAD,
            str(port),
            str(args.count),
            str(args.concurrency),
            str(args.connections),
            str(args.purchases),
            str(pans_file),
            de7,
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    report: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    time.sleep(1.1)  # the next run's DE7 is another second: its keys are new
    return report


def _spy(pid: int, out: Path) -> subprocess.Popen[bytes]:
    """py-spy sampling ``pid`` (every thread, idle frames left out) into collapsed stacks at ``out``."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    cmd = [spy, "record", "-p", str(pid), "-r", "100", "-f", "raw", "-o", str(out)]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _spy_report(spy: subprocess.Popen[bytes], out: Path, label: str) -> None:
    """Stop py-spy, then print the 30 functions with the most samples of their own."""
    spy.send_signal(signal.SIGINT)
    spy.wait(timeout=30)
    own: Counter[str] = Counter()
    for line in out.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        own[stack.rsplit(";", 1)[-1]] += int(count)
    total = sum(own.values()) or 1
    print(f"{label}: py-spy, {total} samples (own time, non-idle)")
    for frame, n in own.most_common(30):
        print(f"  {n / total:6.1%}  {frame}")


def _line(name: str, r: dict[str, Any], cpu_ms: float, parts: str) -> str:
    rate = r["responses"] / r["seconds"]
    return (
        f"{name}: {rate:,.0f} responses/s ({r['responses']} in {r['seconds']:.1f} s, codes {r['codes']},"
        f" timeouts {r['timeouts']}, errors {r['errors']}); p50 {r['p50']:.1f} ms, p99 {r['p99']:.1f} ms;"
        f" CPU {cpu_ms:.3f} ms per request ({parts})"
    )


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench peer")
    ap.add_argument("--count", type=int, default=20_000, help="requests per measured run")
    ap.add_argument("--concurrency", type=int, default=64, help="requests in flight")
    ap.add_argument("--connections", type=int, default=1)
    ap.add_argument("--cards", type=int, default=2_000)
    ap.add_argument("--purchases", type=float, default=0.5, help="share of purchases (rest: balance)")
    ap.add_argument("--rounds", type=int, default=1, help="MockHost then ours, this many times")
    ap.add_argument("--writers", type=int, default=None, help="host.writers (default: the host's own)")
    ap.add_argument(
        "--tree",
        default=None,
        help="also measure `host serve` run from this checkout (a worktree of another commit): A/B",
    )
    ap.add_argument("--profile", action="store_true", help="py-spy samples of our host in round 1: top 30")
    ap.add_argument(
        "--cprofile", action="store_true", help="run our host(s) under cProfile: top 25 at the end"
    )
    args = ap.parse_args(argv)

    python = _peer_python()
    root = Path(tempfile.mkdtemp(prefix="payswitch-bench-peer-"))
    cluster = EmbeddedPostgres(root / "pg", durable=True)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        status = cluster.up()
        asyncio.run(ensure_database(status.url("postgres"), "bench"))
        url = status.url("bench")
        asyncio.run(migrate_url(url))
        hsm_port, host_port, metrics_port, mock_port = free_port(), free_port(), free_port(), free_port()
        env = host_env(root, url, hsm_port, host_port, metrics_port)
        if args.writers is not None:
            env["PAYSWITCH_HOST_WRITERS"] = str(args.writers)
        null = subprocess.DEVNULL
        hsm = subprocess.Popen(
            [sys.executable, "-m", "ops", "hsm", "serve"], env=env, stdout=null, stderr=null
        )
        procs.append(hsm)
        _wait_port(hsm_port, hsm)
        t = time.perf_counter()
        # bench.host's set-up (its phases' times, when it reports them, are not printed here)
        took: dict[str, float] = {}
        pans: list[str] = trio.run(_setup, url, hsm_port, args.cards, took)
        pans_file = root / "pans.txt"
        pans_file.write_text("\n".join(pans))
        print(f"set-up: {len(pans)} cards, 1 merchant, in {time.perf_counter() - t:.1f} s", flush=True)

        # our hosts: this tree's, and with --tree another checkout's (its packages first on the path)
        hosts: list[tuple[str, subprocess.Popen[bytes], int, int]] = []
        for label, tree in [
            ("payswitch host", None),
            *([("payswitch host, --tree", args.tree)] if args.tree else []),
        ]:
            port, mport = (host_port, metrics_port) if tree is None else (free_port(), free_port())
            henv = {**env, "PAYSWITCH_HOST_PORT": str(port), "PAYSWITCH_HOST_METRICS_PORT": str(mport)}
            if tree is not None:
                henv["PYTHONPATH"] = str(Path(tree).resolve())
            host = subprocess.Popen(
                [
                    sys.executable,
                    *(["-m", "cProfile", "-o", str(root / f"host-{port}.prof")] if args.cprofile else []),
                    "-m",
                    "ops",
                    "host",
                    "serve",
                ],
                env=henv,
                cwd=tree,  # -m puts the working directory first on the path
                stdout=null,
                stderr=null,
            )
            procs.append(host)
            _wait_port(port, host)
            warm = functools.partial(
                _drive, port, pans, connections=4, window=32, duration=0, proc="310000", per_card_once=True
            )
            n, _, _, codes = trio.run(warm)
            print(f"{label}: warm-up, {n} balance inquiries ({dict(codes)})", flush=True)
            hosts.append((label, host, port, mport))
        mock = subprocess.Popen(
            [str(VENV / "bin" / "iso8583sim"), "serve", "--port", str(mock_port), "--format", "ascii-hex"],
            stdout=null,
            stderr=null,
        )
        procs.append(mock)
        _wait_port(mock_port, mock)
        print(
            f"load: iso8583sim run_load, {args.count} requests ({args.purchases:.0%} purchases, the rest"
            f" balance inquiries), {args.concurrency} in flight over {args.connections} connection(s)",
            flush=True,
        )
        ratios: list[float] = []
        for rnd in range(args.rounds):
            m0 = _proc_stats(mock.pid)[0]
            peer = _load(python, mock_port, args, pans_file)
            m_cpu = (_proc_stats(mock.pid)[0] - m0) * 1000 / max(peer["responses"], 1)
            print(_line(f"[{rnd + 1}] iso8583sim MockHost", peer, m_cpu, "its process"), flush=True)
            for label, host, port, mport in hosts:
                spy = _spy(host.pid, root / f"host-{port}.txt") if args.profile and rnd == 0 else None
                h0, p0 = _proc_stats(host.pid)[0], _cluster_cpu(cluster.data_dir)
                ours = _load(python, port, args, pans_file)
                if spy is not None:
                    _spy_report(spy, root / f"host-{port}.txt", label)
                h_cpu = (_proc_stats(host.pid)[0] - h0) * 1000 / max(ours["responses"], 1)
                p_cpu = (_cluster_cpu(cluster.data_dir) - p0) * 1000 / max(ours["responses"], 1)
                parts = f"host {h_cpu:.3f} + its PostgreSQL {p_cpu:.3f}"
                print(_line(f"[{rnd + 1}] {label}", ours, h_cpu + p_cpu, parts), flush=True)
                ratio = (ours["responses"] / ours["seconds"]) / (peer["responses"] / peer["seconds"])
                if host is hosts[0][1]:
                    ratios.append(ratio)
                print(
                    f"[{rnd + 1}] ratio {label} / MockHost: {ratio:.2f}x; {_batch_stats(mport)}", flush=True
                )
        if len(ratios) > 1:
            print(f"ratios ours / MockHost: {', '.join(f'{r:.2f}' for r in ratios)}", flush=True)

        async def check() -> list[Any]:
            conn = await asyncpg.connect(url)
            try:
                return await run_checks(conn)
            finally:
                await conn.close()

        bad = [r.name for r in asyncio.run(check()) if not r.ok]
        print("ledger check: " + ("OK" if not bad else f"FAILED {bad}"), flush=True)
        if args.cprofile:  # each host stopped (SIGTERM: cProfile writes its file), then its top 25
            import pstats

            for label, host, port, _ in hosts:
                processes.stop(host)
                print(f"{label}: cProfile, top 25 by own time")
                pstats.Stats(str(root / f"host-{port}.prof")).sort_stats("tottime").print_stats(25)
        return 0 if not bad else 1
    finally:
        for p in reversed(procs):
            processes.stop(p)
        cluster.destroy()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
