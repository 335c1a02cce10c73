"""bench/scale.py --quick runs every configuration and prints its figures (no speed is asserted:
bench/README.md). Real processes: PostgreSQL, the HSM, one or two hosts, one or two switch nodes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_bench_scale_quick_prints_every_configuration() -> None:
    out = subprocess.run([sys.executable, "-m", "bench.scale", "--quick"], cwd=ROOT, capture_output=True,
                         text=True, timeout=300, check=False)  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    for head in ("1 switch, 1 host ", "2 switches, 1 host ", "1 switch, 2 hosts ", "2 switches, 2 hosts "):
        line = next((x for x in out.stdout.splitlines() if x.startswith(head)), "")
        assert "/s approved" in line, out.stdout  # ran (a configuration that cannot run says so instead)
    for label in ("ratio to (1, 1)", "CPU ms / purchase", "peak memory MiB", "WAL bytes",
                  "auth_requests", "ledger check       clean"):  # fmt: skip
        assert label in out.stdout, out.stdout
