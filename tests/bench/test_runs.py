"""`python -m bench --runs N`: which modules take it, how a median of runs is made (bench/README.md).
No benchmark runs here and no speed is asserted."""

from __future__ import annotations

import argparse
from typing import Any

import pytest

import bench.e2e
import bench.host
from bench.__main__ import main


def test_the_headline_modules_take_runs() -> None:
    assert bench.e2e.RUNS and bench.host.RUNS


@pytest.mark.parametrize("argv", [["--runs", "0"], ["--runs"], ["--runs=x"], ["no-such-bench"]])
def test_bad_arguments_are_refused_before_anything_runs(argv: list[str], capsys: Any) -> None:
    assert main(argv) == 2
    assert capsys.readouterr().err.startswith("bench:")


def _run(rate: float, p99: float, codes: dict[str, int], echo: float) -> dict[str, Any]:
    return {
        "baseline_echo": {"throughput_per_s": echo, "latency_ms": {"p99": 1.0}, "response_codes": {"00": 1}},
        "e2e": {
            "terminals": 128,
            "approved_purchases_per_s": rate,
            "latency_ms": {"p99": p99},
            "response_codes": codes,
            "errors": {},
            "by_transaction": {},
        },
        "cpu_ms_per_purchase": {"switch": rate / 10_000, "services": rate / 5_000},
    }


def test_each_figure_is_its_own_median_and_counts_come_from_the_median_run() -> None:
    runs = [
        _run(3000, 90, {"00": 3}, 10_000),
        _run(1000, 120, {"00": 1}, 12_000),
        _run(2000, 80, {"00": 2}, 11_000),
    ]
    med = bench.e2e._median_run(runs)
    assert med["e2e"]["approved_purchases_per_s"] == 2000
    assert med["e2e"]["latency_ms"]["p99"] == 90  # not the median run's own 80
    assert med["baseline_echo"]["throughput_per_s"] == 11_000
    assert med["e2e"]["terminals"] == 128  # a setting stays what it was
    assert med["e2e"]["response_codes"] == {"00": 2}
    assert med["cpu_ms_per_purchase"]["services"] == 0.4


@pytest.mark.parametrize("text", ["", "32,,128", "32,x", "0,128", "-1", "128,128"])
def test_a_bad_sweep_is_refused(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="--sweep"):
        bench.e2e.parse_sweep(text)


def test_a_sweep_keeps_its_order_and_flatness_is_the_largest_cpu_over_the_smallest() -> None:
    assert bench.e2e.parse_sweep("256,32,128") == [256, 32, 128]
    by_terminals = {32: _run(500, 90, {"00": 1}, 1000), 256: _run(1000, 200, {"00": 1}, 1000)}
    # services CPU per purchase is rate / 5,000 in _run: 0.1 and 0.2 ms
    assert bench.e2e.flatness(by_terminals) == 2.0
    lines = bench.e2e._sweep_lines(by_terminals)
    assert [line.split()[0] for line in lines[1:3]] == ["32", "256"]
    assert lines[-1].startswith("flatness   2.0 ")
