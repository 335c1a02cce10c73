"""bench/api.py --quick completes and prints its figures (no speed is asserted: bench/README.md)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_bench_api_quick_prints_figures() -> None:
    out = subprocess.run([sys.executable, "-m", "bench.api", "--quick"], cwd=ROOT, capture_output=True,
                         text=True, timeout=600, check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    for line in ("payment codes", "API purchases", "HTTP floor", "POS purchases", "ratio API / POS",
                 "API / HTTP floor", "CPU ms/purchase", "peak memory MiB", "ledger check       clean"):
        assert line in out.stdout, out.stdout
    assert "/s approved" in out.stdout
