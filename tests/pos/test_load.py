"""The load generator against the stand-in switch: counts, mix, report, pool and mix validation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio
from click.testing import CliRunner

from ops.cli import cli
from pos.load import LoadError, LoadPlan, LoadReport, Progress, parse_mix, read_pool, run_load
from pos.sealed import write_sealed
from tests.pos.fakeswitch import FakeSwitch

TMK = "0123456789ABCDEFFEDCBA9876543210"


def write_pool(path: Path, fake: FakeSwitch, terminals: list[str]) -> None:
    pool = {
        "terminals": [
            {
                "terminal_id": t,
                "merchant_id": "898330160120001",
                "scheme": fake.scheme,
                "tmk": TMK,
                "host": "127.0.0.1",
                "port": fake.port,
            }
            for t in terminals
        ],
        "cards": [{"pan": f"62123456789012{i:05d}", "expiry": "3012", "pin": "123456"} for i in range(5)],
    }
    write_sealed(path, pool)  # as `demo seed` writes it


def run_against_fake(
    tmp_path: Path,
    tids: list[str],
    mix: str,
    *,
    scheme: str = "3des",
    hang_up: tuple[tuple[str, str], ...] = (),
    progress: Progress | None = None,
    **plan: Any,
) -> tuple[LoadReport, FakeSwitch]:
    """A load run of every terminal in ``tids`` against a fresh stand-in switch (stopped after)."""
    fake = FakeSwitch(scheme, {t: bytes.fromhex(TMK) for t in tids}).start()  # type: ignore[arg-type]
    fake.hang_up.update(hang_up)
    try:
        write_pool(tmp_path / "pool.json", fake, tids)
        load_plan = LoadPlan(
            pool=read_pool(tmp_path / "pool.json"), terminals=len(tids), mix=parse_mix(mix), **plan
        )
        report = trio.run(run_load, load_plan, progress)
    finally:
        fake.stop()
    return report, fake


@pytest.mark.parametrize(("scheme", "per_connection"), [("3des", 1), ("sm4", 1), ("3des", 3)])
def test_load_runs_the_mix_and_reports(tmp_path: Path, scheme: str, per_connection: int) -> None:
    tids = [f"L{i:07d}" for i in range(4)]
    progress: list[dict[str, object]] = []
    report, fake = run_against_fake(
        tmp_path,
        tids,
        "purchase=80,balance=10,echo=5,preauth=5",
        scheme=scheme,
        progress=progress.append,
        duration=None,
        count=300,
        per_connection=per_connection,
    )
    data = report.as_dict()
    assert data["signed_on"] == 4 and data["terminals_per_connection"] == per_connection
    assert data["requests"] >= 300 and data["answered"] == data["requests"]
    assert data["response_codes"] == {"00": data["answered"]}
    assert data["latency_ms"]["p50"] <= data["latency_ms"]["p99"] <= data["latency_ms"]["max"]
    assert set(data["by_transaction"]) <= {"purchase", "balance", "echo", "preauth", "completion"}
    macs = [m for m in fake.seen if m["t"] == "0200"]
    assert macs and all("52" in m for m in macs if m["3"] == "000000" and m["25"] == "00")
    assert "approved purchases" in report.render()


def test_bad_mix_and_pool_are_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(LoadError, match="unknown transaction"):
        parse_mix("purchase=1,steal=2")
    with pytest.raises(LoadError, match="number"):
        parse_mix("purchase=x")
    with pytest.raises(LoadError, match="demo seed"):
        read_pool(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(LoadError, match="not usable"):
        read_pool(tmp_path / "bad.json")


def test_target_rate_paces_the_terminals(tmp_path: Path) -> None:
    tids = [f"L{i:07d}" for i in range(4)]
    data = run_against_fake(tmp_path, tids, "purchase", duration=1.0, rate=200.0)[0].as_dict()
    assert 150 <= data["requests"] <= 210, data["requests"]


def test_a_lost_shared_connection_fails_its_terminals_without_hanging(tmp_path: Path) -> None:
    tids = [f"L{i:07d}" for i in range(4)]
    report, _ = run_against_fake(
        tmp_path,
        tids,
        "purchase",
        hang_up=(("0200", "000005"),),  # each terminal's 4th purchase closes its shared connection
        duration=3.0,
        per_connection=2,
        timeout=1.0,
    )
    data = report.as_dict()
    assert data["signed_on"] == 4
    assert data["answered"] == 12  # 3 purchases each, then the line drops under all of them
    assert sum(data["errors"].values()) == 4 and data["elapsed_s"] < 2.5  # every terminal stops at once


def test_a_lost_connection_during_a_preauth_pair_stops_only_that_terminal(tmp_path: Path) -> None:
    tids = [f"P{i:07d}" for i in range(2)]
    report, _ = run_against_fake(
        tmp_path,
        tids,
        "preauth",
        hang_up=(("0200", "000005"),),  # the second completion closes the connection
        duration=3.0,
        timeout=1.0,
    )  # no exception escapes the run
    data = report.as_dict()
    assert data["signed_on"] == 2
    assert sum(data["errors"].values()) == 2 and data["elapsed_s"] < 2.5


def test_a_terminal_goes_on_from_its_last_stan_run_after_run(tmp_path: Path) -> None:
    """A STAN used again in the same batch is a retransmission to the switch (answered from memory, not
    posted): a second run of the same terminals must not start again at 1. The book is kept next to the
    pool between `payswitch load` runs."""
    from pos.load import read_stans, stans_path, write_stans

    tids = [f"S{i:07d}" for i in range(3)]
    stans: dict[str, int] = {}
    seen: list[tuple[str, str]] = []
    for _ in range(2):
        _, fake = run_against_fake(
            tmp_path, tids, "purchase=1", duration=None, count=30, per_connection=3, stans=stans
        )
        seen += [(str(m["41"]), str(m["11"])) for m in fake.seen]
    assert len(seen) == len(set(seen))  # no (terminal, STAN) twice, sign-ons included
    assert set(stans) == set(tids) and all(n >= 10 for n in stans.values())

    # `payswitch load` keeps the book next to its pool, from one run to the next.
    pool = tmp_path / "cli-pool.json"
    book = stans_path(pool)
    assert book == tmp_path / "load-stans.json"
    fake = FakeSwitch("3des", {t: bytes.fromhex(TMK) for t in tids}).start()  # type: ignore[arg-type]
    try:
        write_pool(pool, fake, tids)
        for _ in range(2):
            args = ["--json", "load", "--pool", str(pool), "-c", "30", "--no-ledger-check", "--quiet"]
            result = CliRunner().invoke(cli, args, catch_exceptions=False)
            assert result.exit_code == 0, result.output
    finally:
        fake.stop()
    cli_seen = [(str(m["41"]), str(m["11"])) for m in fake.seen]
    assert len(cli_seen) == len(set(cli_seen))
    assert set(read_stans(book)) == set(tids)
    book.write_text("not json")
    assert read_stans(book) == {}  # unreadable: the next run starts at 1 rather than failing
    write_stans(book, stans)
    assert read_stans(book) == stans


def test_a_concentrator_never_hands_out_an_nii_twice() -> None:
    """Answers are routed by the NII: a port made after another closed must not share a live one's."""
    from pos.client import Multiplexer

    mux = Multiplexer(None)  # type: ignore[arg-type]  # no connection needed to make ports
    first, second, third = mux.port(), mux.port(), mux.port()
    trio.run(first.aclose)
    fourth = mux.port()
    assert len({first.nii, second.nii, third.nii, fourth.nii}) == 4
