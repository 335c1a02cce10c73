"""Codec speed: encode + decode of a typical 0200 (~20 fields) per dialect and profile.

    python -m bench codec            # or: python -m bench.codec [--seconds S]

For each dialect/profile: the fast codec (specs.codec) and pyiso8583 with the same spec as baseline,
in the same process: µs per encode+decode (best of 5 rounds), messages per second (one core),
p50/p99 of single encode+decode calls, the fast codec's encode-only and decode-only cost, memory
per decoded message, and the speed ratio.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

import iso8583

from specs.codec import Codec, codec_for
from specs.dialects import DIALECTS, PROFILES, to_pyiso8583


def typical_0200(dialect: str, profile: str) -> dict[str, Any]:
    """A chip purchase with PIN as the dialect carries it."""
    pin = bytes(range(8 if profile == "3des" else 16))
    if dialect == "pos":
        return {
            "t": "0200",
            "2": "6212345678901234567",
            "3": "000000",
            "4": "000000012345",
            "11": "000777",
            "14": "3012",
            "22": "051",
            "23": "001",
            "25": "00",
            "26": "12",
            "35": "6212345678901234567=30121011234567890",
            "41": "T0000001",
            "42": "898330160120001",
            "49": "156",
            "52": pin,
            "53": "2600000000000000",
            "55": bytes(range(64)),
            "60": "22000001000",
            "63": "01 ",
            "64": b"69DB66D5",
        }
    return {
        "t": "0200",
        "2": "6212345678901234567",
        "3": "000000",
        "4": "000000012345",
        "7": "1125101010",
        "11": "000777",
        "12": "181010",
        "13": "1125",
        "14": "3012",
        "18": "5411",
        "22": "051",
        "25": "00",
        "32": "48880000",
        "33": "48880000",
        "35": "6212345678901234567=30121011234567890",
        "37": "533010000777",
        "41": "T3DES001",
        "42": "898330160120001",
        "43": "Campus canteen no. 2, Beijing           ",
        "49": "156",
        "52": pin,
        "60": "00000122000001000",
        "128": bytes(8),
    }


def _rate(fn: Callable[[], object], seconds: float, rounds: int = 5) -> float:
    """Seconds per call: the best of ``rounds`` timed batches filling about ``seconds`` in all (the
    best round is the least disturbed by other processes on a shared machine)."""
    n = 16
    while True:  # calibrate a batch to about seconds / rounds
        start = time.perf_counter()
        for _ in range(n):
            fn()
        elapsed = time.perf_counter() - start
        if elapsed >= seconds / rounds / 2:
            break
        n *= 2
    n = max(1, int(n * (seconds / rounds) / elapsed))
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(n):
            fn()
        best = min(best, (time.perf_counter() - start) / n)
    return best


def _percentiles(fn: Callable[[], object], samples: int = 20000) -> tuple[float, float]:
    times = []
    clock = time.perf_counter_ns
    for _ in range(samples):
        t0 = clock()
        fn()
        times.append(clock() - t0)
    q = statistics.quantiles(times, n=100)
    return q[49] / 1000, q[98] / 1000


def _memory_per_message(codec: Codec, raw: bytes, count: int = 2000) -> float:
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    kept = [codec.decode(raw) for _ in range(count)]
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    del kept
    return (after - before) / count


def measure(dialect: str, profile: str, seconds: float) -> dict[str, float]:
    codec = codec_for(dialect, profile)
    msg = typical_0200(dialect, profile)
    raw = codec.encode(msg)
    spec = codec.spec
    doc = to_pyiso8583(msg, spec)
    assert bytes(iso8583.encode(dict(doc), spec)[0]) == raw, "fast codec and pyiso8583 disagree"

    def fast() -> None:
        codec.decode(codec.encode(msg))

    def oracle() -> None:
        iso8583.decode(iso8583.encode(dict(doc), spec)[0], spec)

    fast_s = _rate(fast, seconds)
    base_s = _rate(oracle, seconds)
    p50, p99 = _percentiles(fast)
    return {
        "fields": len(msg) - 1,
        "bytes": len(raw),
        "fast_us": fast_s * 1e6,
        "fast_per_s": 1 / fast_s,
        "encode_us": _rate(lambda: codec.encode(msg), seconds / 2) * 1e6,
        "decode_us": _rate(lambda: codec.decode(raw), seconds / 2) * 1e6,
        "p50_us": p50,
        "p99_us": p99,
        "base_us": base_s * 1e6,
        "base_per_s": 1 / base_s,
        "ratio": base_s / fast_s,
        "mem_bytes": _memory_per_message(codec, raw),
    }


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="bench.codec", description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=1.0, help="time per measurement (default 1)")
    args = parser.parse_args(argv)
    print(
        f"{'dialect':<9}{'fields':>6}{'bytes':>6}{'enc+dec µs':>12}{'msg/s':>9}{'p50 µs':>8}{'p99 µs':>8}"
        f"{'enc µs':>8}{'dec µs':>8}{'mem B':>7}{'pyiso µs':>10}{'pyiso/s':>9}{'ratio':>7}"
    )
    for dialect in DIALECTS:
        for profile in PROFILES:
            r = measure(dialect, profile, args.seconds)
            print(
                f"{dialect + '/' + profile:<9}{r['fields']:>6.0f}{r['bytes']:>6.0f}{r['fast_us']:>12.1f}"
                f"{r['fast_per_s']:>9.0f}{r['p50_us']:>8.1f}{r['p99_us']:>8.1f}{r['encode_us']:>8.1f}"
                f"{r['decode_us']:>8.1f}{r['mem_bytes']:>7.0f}{r['base_us']:>10.1f}{r['base_per_s']:>9.0f}"
                f"{r['ratio']:>6.1f}x",
                flush=True,
            )
    print("target: >= 20,000 encode+decode per second per core (one process, one thread)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
