"""The switch alone: POS purchases with PIN and MAC through the real switch and HSM processes to a
minimal H2H issuer that approves everything (no ledger), so the figure is the switch's ceiling.

    python -m bench switch [--duration 10] [--terminals 32] [--window 8] [--profile 3des|sm4]

Starts a throwaway PostgreSQL, the HSM, the issuer stub (its own process) and ``payswitch switch
serve``; registers terminals straight in the host's terminal table; signs every terminal on; then:

1. baseline: echo 0820 round trips through the switch (no HSM, no upstream, no database);
2. measured: 0200 purchases with PIN and MAC, ``window`` in flight per terminal connection.

Prints requests/s, p50/p99/max latency, response codes, the switch's CPU seconds and peak RSS, and
the ratio to the baseline measured in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
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

from hsm_sim import pin as pinlib
from hsm_sim.client import HsmClient
from hsm_sim.crypto import des, sm4
from hsm_sim.mac import cup_ecb_mac
from ops.db import ensure_database
from ops.migrate import migrate_url
from ops.pgembed import EmbeddedPostgres, free_port
from specs.codec import codec_for
from specs.framing import frame, h2h_splitter, pos_frame, pos_splitter

TMK = "0123456789ABCDEFFEDCBA9876543210"
ZPK = "89ABCDEF01234567FEDCBA9876543210"
PAN = "6212345678901234567"
MERCHANT = "898330160120001"


# -- the issuer stub (a separate process) ------------------------------------------------------------
def _issuer_main(port: int) -> None:
    trio.run(_issuer, port)


async def _issuer(port: int) -> None:
    codec = codec_for("h2h", "3des")

    async def serve(stream: trio.SocketStream) -> None:
        splitter = h2h_splitter()
        while data := await stream.receive_some(65536):
            out = []
            for body in splitter.feed(data):
                msg = codec.decode(body)
                answer = {
                    k: v
                    for k, v in msg.items()
                    if k in ("3", "4", "7", "11", "32", "37", "41", "42", "49", "70")
                }
                answer["t"] = f"{int(msg['t'][:3] + '0') + 10:04d}"
                answer["39"] = "00"
                if msg["t"] != "0800":
                    answer["38"] = "A00001"
                out.append(frame(codec.encode(answer)))
            if out:
                await stream.send_all(b"".join(out))

    await trio.serve_tcp(serve, port, host="127.0.0.1")


# -- setup -------------------------------------------------------------------------------------------
def _cli(args: list[str], env: dict[str, str]) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "ops", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    if result.returncode:
        raise SystemExit(f"payswitch {' '.join(args[:3])} failed: {result.stderr.strip()}")


def _wait_port(port: int, proc: subprocess.Popen[bytes], what: str) -> None:
    import socket

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{what} exited at start")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"{what} did not start")


async def _keys(hsm_port: int, scheme: str) -> tuple[str, str]:
    async with HsmClient("127.0.0.1", hsm_port, header_length=4) as h:
        tmk = (
            await (
                h.form_sm4_key("002", [TMK, "0" * 32])
                if scheme == "sm4"
                else h.form_key("002", [TMK, "0" * 32])
            )
        ).under_lmk
        zpk = (await h.form_key("001", [ZPK, "0" * 32])).under_lmk
        return tmk, zpk


async def _register(url: str, scheme: str, tmk: str, terminals: int) -> list[str]:
    conn = await asyncpg.connect(url)
    try:
        mid = await conn.fetchval(
            "INSERT INTO merchants (merchant_id, name, mcc) VALUES ($1, 'Bench', '5812') RETURNING id",
            MERCHANT,
        )
        ids = [f"B{i:07d}" for i in range(terminals)]
        await conn.executemany(
            "INSERT INTO terminals (terminal_id, merchant_id, scheme, tmk, tmk_check) "
            "VALUES ($1, $2, $3, $4, '')",
            [(tid, mid, scheme, tmk) for tid in ids],
        )
        return ids
    finally:
        await conn.close()


# -- load --------------------------------------------------------------------------------------------
class _Term:
    def __init__(self, scheme: str, tid: str, stan_base: int) -> None:
        self.scheme = scheme
        self.tid = tid
        self.codec = codec_for("pos", scheme)
        self.stan = stan_base
        self.batch = 1
        self.pik: Any = None
        self.mak: Any = None

    def cipher(self, key: bytes) -> Any:
        return sm4(key) if self.scheme == "sm4" else des(key)

    def next_stan(self) -> str:
        self.stan = self.stan % 999_999 + 1
        return f"{self.stan:06d}"

    def sign_on(self) -> bytes:
        net = "004" if self.scheme == "3des" else "005"
        return pos_frame(
            self.codec.encode(
                {"t": "0800", "11": self.next_stan(), "41": self.tid, "42": MERCHANT, "60": f"00000001{net}"}
            )
        )

    def take_keys(self, de62: bytes) -> None:
        tmk = self.cipher(bytes.fromhex(TMK))
        pik = tmk.decrypt(de62[0:16])
        mak = tmk.decrypt(de62[20:28] if self.scheme == "3des" else de62[20:36])
        self.pik, self.mak = self.cipher(pik), self.cipher(mak)

    def echo(self) -> bytes:
        return pos_frame(
            self.codec.encode(
                {
                    "t": "0820",
                    "11": self.next_stan(),
                    "41": self.tid,
                    "42": MERCHANT,
                    "60": f"00{self.batch:06d}301",
                }
            )
        )

    def purchase(self) -> bytes:
        account = PAN[:-1][-12:]
        clear = (
            pinlib.sm4_encode("123456", account) if self.scheme == "sm4" else pinlib.encode("123456", account)
        )
        msg = {
            "t": "0200",
            "2": PAN,
            "3": "000000",
            "4": "000000000100",
            "11": self.next_stan(),
            "14": "3012",
            "22": "011",
            "25": "00",
            "26": "12",
            "41": self.tid,
            "42": MERCHANT,
            "49": "156",
            "52": self.pik.encrypt(clear),
            "53": ("26" if self.scheme == "3des" else "24") + "0" * 14,
            "60": f"22{self.batch:06d}000",
            "64": bytes(8),
        }
        raw = self.codec.encode(msg)
        return pos_frame(self.codec.with_mac(raw, cup_ecb_mac(self.mak, self.codec.mac_block(raw))))


async def _run_load(
    port: int, terms: list[_Term], kind: str, duration: float, window: int
) -> tuple[list[float], Counter[str]]:
    latencies: list[float] = []
    codes: Counter[str] = Counter()
    deadline = trio.current_time() + duration

    async def one(t: _Term) -> None:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        splitter = pos_splitter()
        async with stream:
            if t.mak is None:
                await stream.send_all(t.sign_on())
                while not (bodies := splitter.feed(await stream.receive_some(4096))):
                    pass
                answer = t.codec.decode(bodies[0][11:])
                t.take_keys(answer["62"])
                t.batch = int(answer["60"][2:8])
            if duration <= 0:
                return
            sent: list[float] = []
            make = t.purchase if kind == "purchase" else t.echo
            for _ in range(window):
                sent.append(trio.current_time())
                await stream.send_all(make())
            while sent:
                data = await stream.receive_some(65536)
                if not data:
                    raise RuntimeError("switch closed a connection")
                now = trio.current_time()
                out = []
                for body in splitter.feed(data):
                    msg = t.codec.decode(body[11:])
                    codes[str(msg.get("39"))] += 1
                    latencies.append(now - sent.pop(0))
                    if now < deadline:
                        sent.append(now)
                        out.append(make())
                if out:
                    await stream.send_all(b"".join(out))

    async with trio.open_nursery() as nursery:
        for t in terms:
            nursery.start_soon(one, t)
    return latencies, codes


def _pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] * 1000 if values else 0.0


def _proc_stats(pid: int) -> tuple[float, int]:
    stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    cpu = (int(stat[11]) + int(stat[12])) / ticks
    rss = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            rss = int(line.split()[1]) * 1024
    return cpu, rss


async def _hops(url: str) -> tuple[float, float, float]:
    conn = await asyncpg.connect(url)
    try:
        row = await conn.fetchrow(
            "SELECT avg(us_total), avg(us_hsm), avg(us_host) FROM switch_journal WHERE txn_type = 'purchase'"
        )
        return (row[0] / 1000, row[1] / 1000, row[2] / 1000)
    finally:
        await conn.close()


def _tree_cpu(cluster: EmbeddedPostgres) -> float:
    """CPU seconds of this benchmark's PostgreSQL: its postmaster and its children (exited backends
    through the postmaster's reaped-children times), not every postgres process on the machine."""
    from pos.system import tree_cpu

    try:
        postmaster = int((cluster.data_dir / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0.0
    return tree_cpu(postmaster)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench switch", description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--terminals", type=int, default=32)
    parser.add_argument("--window", type=int, default=8, help="requests in flight per terminal connection")
    parser.add_argument("--profile", choices=("3des", "sm4"), default="3des")
    parser.add_argument("--cprofile", metavar="FILE", help="run the switch under cProfile, stats to FILE")
    args = parser.parse_args(argv)

    root = Path(tempfile.mkdtemp(prefix="payswitch-bench-switch-"))
    cluster = EmbeddedPostgres(root / "pg", durable=False)
    status = cluster.up()
    procs: list[subprocess.Popen[bytes]] = []
    issuer: multiprocessing.Process | None = None
    try:
        url = status.url("bench")
        asyncio.run(ensure_database(status.url("postgres"), "bench"))
        asyncio.run(migrate_url(url))
        hsm_port, issuer_port = free_port(), free_port()
        ports = {"pos_3des_port": free_port(), "pos_sm4_port": free_port(), "h2h_port": free_port()}
        env = {
            "PAYSWITCH_DATABASE_URL": url,
            "PAYSWITCH_HSM_PORT": str(hsm_port),
            "PAYSWITCH_HSM_TEST_LMK": "true",
            "PAYSWITCH_HSM_METRICS_PORT": "0",
            "PAYSWITCH_SWITCH_METRICS_PORT": "0",
            "PAYSWITCH_LOG_LEVEL": "warning",
            "PAYSWITCH_HSM_CONNECTIONS": "4",
            **{f"PAYSWITCH_SWITCH_{k.upper()}": str(v) for k, v in ports.items()},
        }
        hsm = subprocess.Popen(
            [sys.executable, "-m", "ops", "hsm", "serve"],
            env={**os.environ, **env},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        procs.append(hsm)
        _wait_port(hsm_port, hsm, "hsm")
        tmk, zpk = trio.run(_keys, hsm_port, args.profile)
        ids = asyncio.run(_register(url, args.profile, tmk, args.terminals))
        issuer = multiprocessing.Process(target=_issuer_main, args=(issuer_port,), daemon=True)
        issuer.start()
        _cli(
            [
                "switch",
                "link",
                "add",
                "issuer",
                "--host",
                "127.0.0.1",
                "--port",
                str(issuer_port),
                "--scheme",
                "3des",
                "--zpk",
                zpk,
                "--connections",
                "2",
            ],
            env,
        )
        _cli(["switch", "route", "add", "621234", "--link", "issuer"], env)
        prof = ["-m", "cProfile", "-o", args.cprofile] if args.cprofile else []
        switch = subprocess.Popen(
            [sys.executable, *prof, "-m", "ops", "switch", "serve"],
            env={**os.environ, **env},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        procs.append(switch)
        port = ports["pos_3des_port" if args.profile == "3des" else "pos_sm4_port"]
        _wait_port(port, switch, "switch")
        time.sleep(0.5)  # links sign on
        terms = [_Term(args.profile, tid, i * 20_000) for i, tid in enumerate(ids)]
        trio.run(_run_load, port, terms, "purchase", 0.0, 0)  # sign on every terminal
        trio.run(_run_load, port, terms, "purchase", 2.0, args.window)  # warm-up

        base_lat, _ = trio.run(_run_load, port, terms, "echo", args.duration, args.window)
        cpu0, _ = _proc_stats(switch.pid)
        others0 = {
            "hsm": _proc_stats(hsm.pid)[0],
            "issuer": _proc_stats(issuer.pid or 0)[0],
            "load": time.process_time(),
            "postgres": _tree_cpu(cluster),
        }
        t0 = time.perf_counter()
        lat, codes = trio.run(_run_load, port, terms, "purchase", args.duration, args.window)
        wall = time.perf_counter() - t0
        cpu1, rss = _proc_stats(switch.pid)
        others1 = {
            "hsm": _proc_stats(hsm.pid)[0],
            "issuer": _proc_stats(issuer.pid or 0)[0],
            "load": time.process_time(),
            "postgres": _tree_cpu(cluster),
        }
        rate = len(lat) / wall
        base_rate = len(base_lat) / args.duration
        print(
            f"switch bench ({args.profile}, {args.terminals} terminals x {args.window} in flight, "
            f"{args.duration:g}s, {os.cpu_count()} cores)"
        )
        print(
            f"  baseline echo 0820:   {base_rate:9.0f} req/s  p50 {_pct(base_lat, 0.5):6.2f} ms  "
            f"p99 {_pct(base_lat, 0.99):6.2f} ms"
        )
        print(
            f"  purchase PIN + MAC:   {rate:9.0f} req/s  p50 {_pct(lat, 0.5):6.2f} ms  "
            f"p99 {_pct(lat, 0.99):6.2f} ms  "
            f"max {_pct(lat, 1.0):6.1f} ms"
        )
        print(f"  ratio to baseline:    {rate / base_rate:.2f}")
        print(f"  response codes:       {dict(codes)}")
        print(
            f"  switch CPU:           {cpu1 - cpu0:.1f} s over {wall:.1f} s wall "
            f"({(cpu1 - cpu0) / wall * 100:.0f}% of a core); peak RSS {rss / 2**20:.0f} MiB"
        )
        hops = asyncio.run(_hops(url))
        print(f"  switch journal means: total {hops[0]:.1f} ms, HSM {hops[1]:.1f} ms, host {hops[2]:.1f} ms")
        print("  other CPU:            " + ", ".join(f"{k} {others1[k] - others0[k]:.1f} s" for k in others0))
        return 0
    finally:
        for proc in reversed(procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
        if issuer is not None:
            issuer.kill()
        cluster.destroy()


if __name__ == "__main__":
    sys.exit(main())
