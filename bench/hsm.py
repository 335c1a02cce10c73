"""HSM throughput over TCP with pipelining: MU (POS MAC), M6/WM (H2H MAC), CA / W8 (PIN translate).

    python -m bench hsm                      # starts its own HSM (test LMK) on a free port
    python -m bench.hsm --port 1500          # or measure a running one
    python -m bench.hsm --ops 50000 --concurrency 128 --connections 2

One client process, ``--concurrency`` trio tasks sharing ``--connections`` pipelined connections;
``--rounds`` rounds interleaving the cases, ops/s from the median round (the machine is shared).
The baseline, measured first in the same run, is B2 echo: the transport ceiling (framing, TCP,
client and server loop) with no cryptography. Each line: ops/s, p50 and p99 latency per call, and
the ratio to the baseline's ops/s. Memory: the client's peak RSS and the server's RSS at the end.
"""

from __future__ import annotations

import argparse
import os
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import trio

from hsm_sim import pin
from hsm_sim.client import HsmClient, account_from_pan
from ops import processes
from ops.pgembed import free_port

TMK = "0123456789ABCDEFFEDCBA9876543210"
ZERO = "0" * 32
PAN = "6212345678901234567"
MAC_BLOCK = bytes(range(256))[:120]  # a typical POS MAC block: ~120 bytes, MTI through DE63
H2H_BLOCK = b"0200F238048108C0900000" + b"0" * 150  # a typical H2H MAC input: ~170 ASCII bytes


@dataclass
class Result:
    name: str
    ops: int
    seconds: float
    p50_us: float
    p99_us: float

    @property
    def rate(self) -> float:
        return self.ops / self.seconds


async def measure(
    op: Callable[[], Awaitable[object]], ops: int, concurrency: int
) -> tuple[float, list[float]]:
    """Run ``ops`` calls from ``concurrency`` tasks: (wall seconds, per-call latencies)."""
    latencies: list[float] = []
    per_task = max(1, ops // concurrency)
    clock = time.perf_counter

    async def worker() -> None:
        lat = latencies
        for _ in range(per_task):
            t0 = clock()
            await op()
            lat.append(clock() - t0)

    start = clock()
    async with trio.open_nursery() as nursery:
        for _ in range(concurrency):
            nursery.start_soon(worker)
    return clock() - start, latencies


def summarise(name: str, rounds: list[tuple[float, list[float]]]) -> Result:
    """Median round's rate (the machine is shared: one noisy round must not decide), pooled latencies."""
    rates = sorted(len(lat) / seconds for seconds, lat in rounds)
    latencies = sorted(x for _seconds, lat in rounds for x in lat)
    n = len(latencies)
    median = rates[len(rates) // 2]
    return Result(name, n, n / median, latencies[n // 2] * 1e6, latencies[min(n - 1, int(n * 0.99))] * 1e6)


def start_server(header_length: int) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    env = {
        **os.environ,
        "PAYSWITCH_HSM_PORT": str(port),
        "PAYSWITCH_HSM_TEST_LMK": "true",
        "PAYSWITCH_HSM_METRICS_PORT": "0",
        "PAYSWITCH_HSM_LISTEN": "127.0.0.1",
        "PAYSWITCH_HSM_HEADER_LENGTH": str(header_length),
        "PAYSWITCH_LOG_LEVEL": "warning",
    }
    proc = subprocess.Popen([sys.executable, "-m", "ops", "hsm", "serve"], env=env)
    try:
        processes.wait_listening(port, proc, what="the HSM", timeout=20)
    except processes.NotListening as exc:
        proc.kill()
        raise SystemExit(str(exc)) from None
    return proc, port


def _rss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


async def run(args: argparse.Namespace, port: int) -> list[Result]:
    from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    account = account_from_pan(PAN)
    async with HsmClient(
        args.host, port, header_length=args.header_length, connections=args.connections, timeout=30
    ) as hsm:
        # keys: known clear values so the PIN blocks can be built here
        tmk3 = (await hsm.form_key("002", [TMK, ZERO])).under_lmk
        mak_z = (await hsm.generate_key("003", "Z")).under_lmk
        mak_u = (await hsm.generate_key("003", "U")).under_lmk
        zpk3 = (await hsm.generate_key("001", "U")).under_lmk
        tpk_sm4 = (await hsm.form_sm4_key("002", [TMK, ZERO])).under_lmk
        zpk_sm4 = (await hsm.generate_sm4_key("001")).under_lmk
        mak_sm4 = (await hsm.generate_sm4_key("003")).under_lmk
        zak3 = (await hsm.generate_key("008", "U")).under_lmk
        zak_sm4 = (await hsm.generate_sm4_key("008")).under_lmk
        des = Cipher(TripleDES(bytes.fromhex(TMK + TMK[:16])), modes.ECB()).encryptor()
        block3 = des.update(pin.encode("123456", account)).hex().upper()
        sm4 = Cipher(algorithms.SM4(bytes.fromhex(TMK)), modes.ECB()).encryptor()
        block_sm4 = sm4.update(pin.sm4_encode("123456", account)).hex().upper()
        echo_data = b"x" * 16

        cases: list[tuple[str, Callable[[], Awaitable[object]]]] = [
            ("B2 echo (baseline)", lambda: hsm.echo(echo_data)),
            ("MU 3des, DES MAK (Z)", lambda: hsm.pos_mac(mak_z, MAC_BLOCK)),
            ("MU 3des, 3DES MAK (U)", lambda: hsm.pos_mac(mak_u, MAC_BLOCK)),
            ("MU sm4", lambda: hsm.pos_mac(mak_sm4, MAC_BLOCK)),
            ("M6 X9.19 (H2H 3des)", lambda: hsm.generate_mac(zak3, H2H_BLOCK)),
            ("WM sm4 (H2H sm4)", lambda: hsm.sm4_mac(zak_sm4, H2H_BLOCK)),
            ("CA 3des TPK->ZPK", lambda: hsm.translate_pin_tpk(tmk3, zpk3, block3, account)),
            ("W8 sm4 TPK->sm4 ZPK", lambda: hsm.translate_pin(tpk_sm4, zpk_sm4, block_sm4, account)),
            ("W8 sm4 TPK->3des ZPK", lambda: hsm.translate_pin(tpk_sm4, zpk3, block_sm4, account)),
        ]
        for _name, op in cases:  # warm up: connections, key caches
            await op()
        # Rounds interleave the cases, so a burst of load from elsewhere hits them all alike.
        rounds: dict[str, list[tuple[float, list[float]]]] = {name: [] for name, _op in cases}
        for _round in range(args.rounds):
            for name, op in cases:
                rounds[name].append(await measure(op, args.ops // args.rounds, args.concurrency))
        return [summarise(name, rounds[name]) for name, _op in cases]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="bench.hsm", description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, help="a running HSM (default: start one)")
    parser.add_argument("--header-length", type=int, default=4)
    parser.add_argument("--ops", type=int, default=30_000, help="operations per case")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per case (the median is shown)")
    parser.add_argument("--concurrency", type=int, default=64, help="concurrent caller tasks")
    parser.add_argument("--connections", type=int, default=2, help="client connections")
    args = parser.parse_args(argv)

    proc = None
    port = args.port
    if port is None:
        proc, port = start_server(args.header_length)
    try:
        results = trio.run(run, args, port)
        server_rss = _rss_kb(proc.pid) if proc is not None else 0
    finally:
        if proc is not None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=10)

    base = results[0].rate
    print(
        f"HSM over TCP: {args.concurrency} concurrent callers, {args.connections} connections, "
        f"{results[0].ops} ops per case in {args.rounds} rounds (median round), one client process"
    )
    print(f"{'case':<26}{'ops/s':>10}{'p50 µs':>10}{'p99 µs':>10}{'vs echo':>9}")
    for r in results:
        print(f"{r.name:<26}{r.rate:>10,.0f}{r.p50_us:>10.0f}{r.p99_us:>10.0f}{r.rate / base:>9.2f}")
    client_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(
        f"memory: client peak RSS {client_rss / 1024:.1f} MiB"
        + (f", server RSS {server_rss / 1024:.1f} MiB" if server_rss else "")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
