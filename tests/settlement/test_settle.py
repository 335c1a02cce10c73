"""The settlement job against a real PostgreSQL: every transaction type, reversals and refunds across the
cut-over, cycles and carries, a tampered file, a missing record, a re-run, reports and the CLI."""

from __future__ import annotations

import asyncio
import csv
import json
import os
import subprocess
import sys
from datetime import date
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from ops.cli import cli
from settlement.cycles import Cycle
from settlement.errors import SettlementError
from settlement.fees import FeeSchedule
from settlement.importer import import_file
from settlement.postings import check_postings
from settlement.reports import write_run_outputs
from settlement.run import run_settlement
from settlement.schedules import add_fee_schedule, set_merchant
from specs.clearing import Detail, write_file
from tests.settlement.db import db
from tests.settlement.factories import detail, header
from tests.settlement.ledger_seed import seed_payables

DAY1, DAY2 = date(2026, 11, 24), date(2026, 11, 25)  # a Tuesday and a Wednesday
SHARES = {"issuer_share_bp": 2000, "acquirer_share_bp": 3000, "platform_share_bp": 5000}


def one(url: str, sql: str, *args: Any) -> Any:
    return db(url, lambda c: c.fetchval(sql, *args))


def day1(issuer: str, m: str) -> list[Detail]:
    """Every transaction type (merchant ids prefixed with ``m`` so tests do not meet)."""
    a, b, w = f"{m}A", f"{m}B", f"{m}W"
    return [
        detail(1, "PURCHASE", 10000, merchant_id=a, store_id="S01"),
        detail(2, "PURCHASE", 5000, merchant_id=a, store_id="S02"),
        detail(3, "COMPLETION", 8000, merchant_id=a, store_id="S01", original_posting_id=None),
        detail(4, "REFUND", 2000, merchant_id=a, store_id="S01", original_posting_id=1),
        detail(5, "VOID", 5000, merchant_id=a, store_id="S02", original_posting_id=2),
        detail(6, "TOPUP", 50000, acquirer_id="", terminal_id="", fee=0),
        detail(7, "PURCHASE", 30000, merchant_id=b, store_id="S01"),
        detail(8, "PURCHASE", 4000, merchant_id=w, store_id="S09"),
        detail(9, "PURCHASE", 1234, merchant_id=a, store_id="S01", acquirer_id="ACQ2"),
        detail(
            10,
            "REVERSAL",
            1234,
            merchant_id=a,
            store_id="S01",
            acquirer_id="ACQ2",
            original_posting_id=9,
            sign="C",
        ),
    ]


def day2(m: str) -> list[Detail]:
    a, b = f"{m}A", f"{m}B"
    return [
        detail(11, "REVERSAL", 30000, merchant_id=b, store_id="S01", original_posting_id=7, sign="C"),
        detail(12, "REFUND", 3000, merchant_id=a, store_id="S01", original_posting_id=1),
        detail(13, "REVERSAL", 2000, merchant_id=a, store_id="S01", original_posting_id=4, sign="D"),
        detail(14, "PURCHASE", 100000, merchant_id=a, store_id="S02"),
        detail(15, "TOPUP", 3000, merchant_id=a, store_id="S02"),  # cash taken at the till: A owes it
    ]


def setup_rates(url: str, m: str) -> None:
    async def work(conn: Any) -> None:
        # the host ledger owes them more than these files: payouts are taken from it
        await seed_payables(conn, {f"{m}{x}": 1_000_000 for x in "ABW"})
        # per-merchant cards so tests never see each other's: A and W on v1; B changes rate on day 2
        for merchant in (f"{m}A", f"{m}B", f"{m}W"):
            await add_fee_schedule(
                conn,
                FeeSchedule(
                    merchant,
                    "v1",
                    date(2026, 1, 1),
                    rate_bp=100,
                    fixed_fee=10,
                    min_fee=20,
                    max_fee=500,
                    refund_rule="percent",
                    **SHARES,
                ),
            )
        await add_fee_schedule(
            conn, FeeSchedule(f"{m}B", "v2", DAY2, rate_bp=200, refund_rule="full", **SHARES)
        )
        await set_merchant(conn, f"{m}W", Cycle("weekly", 1), payout_account="6222-W")
        await set_merchant(conn, f"{m}A", Cycle(), payout_account="6222-A", name="Canteen A")

    db(url, work)


def test_full_flow(db_url: str, tmp_path: Path) -> None:
    m, issuer = "FLOW", "11110000"
    setup_rates(db_url, m)
    f1, _ = write_file(tmp_path, header(DAY1, issuer), day1(issuer, m))
    f2, _ = write_file(tmp_path, header(DAY2, issuer), day2(m))

    r1 = db(db_url, lambda c: import_file(c, f1))
    assert r1.imported and r1.details == 10
    # A: 110 + 60 + 90 - 20 (refund: percent) - 60 (void) + 22 - 22 (reversal) = 180; B: 310; W: 50
    assert r1.merchant_fee == 180 + 310 + 50

    run1 = db(db_url, lambda c: run_settlement(c, DAY2, Cycle()))
    # (other tests' merchants may share this database: look at this test's only)
    paid = {p.merchant_id: p for p in run1.payouts if p.merchant_id.startswith(m)}
    assert set(paid) == {f"{m}A", f"{m}B"}
    assert (paid[f"{m}A"].gross, paid[f"{m}A"].fee, paid[f"{m}A"].net) == (16000, 180, 15820)
    assert (paid[f"{m}B"].gross, paid[f"{m}B"].fee, paid[f"{m}B"].net) == (30000, 310, 29690)
    carried1 = [c for c in run1.carried if c.merchant_id.startswith(m)]
    assert [c.merchant_id for c in carried1] == [f"{m}W"]  # weekly on Monday: not due yet
    assert "not due until 2026-11-30" in carried1[0].reason

    # day 2 crosses the cut-over: B's reversal returns exactly the v1 fee (310), not v2's 600; the
    # refund undone charges back the 20 it returned
    r2 = db(db_url, lambda c: import_file(c, f2))
    assert r2.merchant_fee == -310 + (-30 + 20 + 500)
    run2 = db(db_url, lambda c: run_settlement(c, date(2026, 11, 26), Cycle()))
    paid2 = {p.merchant_id: p for p in run2.payouts if p.merchant_id.startswith(m)}
    assert set(paid2) == {f"{m}A"}
    assert (paid2[f"{m}A"].gross, paid2[f"{m}A"].fee) == (-3000 + 2000 + 100000 - 3000, 490)
    carried = {c.merchant_id: c for c in run2.carried}
    assert carried[f"{m}B"].gross == -30000 and carried[f"{m}B"].fee == -310  # owes: waits for sales
    shares = db(
        db_url,
        lambda c: c.fetchrow(
            "SELECT sum(fee) f, sum(issuer_share) i, sum(acquirer_share) a, sum(platform_share) p "
            "FROM settlement_items WHERE issuer_id = $1",
            issuer,
        ),
    )
    assert shares["f"] == shares["i"] + shares["a"] + shares["p"]
    assert one(db_url, "SELECT sum(fee) FROM settlement_items WHERE merchant_id = $1", f"{m}B") == 0

    # the weekly merchant is paid on Monday
    run3 = db(db_url, lambda c: run_settlement(c, date(2026, 11, 30), Cycle()))
    assert [(p.merchant_id, p.net) for p in run3.payouts if p.merchant_id.startswith(m)] == [
        (f"{m}W", 4000 - 50)]

    # re-run: the same files settle nothing twice, and a run with nothing due pays nothing
    again = db(db_url, lambda c: import_file(c, f1))
    assert not again.imported and "already settled" in again.note
    run4 = db(db_url, lambda c: run_settlement(c, date(2026, 11, 30), Cycle()))
    assert not [p for p in run4.payouts if p.merchant_id.startswith(m)]
    assert db(db_url, check_postings) == []

    # reports: payout instruction file, store CSV, per-merchant CSV + HTML; same bytes when rewritten
    out = tmp_path / "out"
    assert run1.run_id is not None
    written = db(db_url, lambda c: write_run_outputs(c, run1.run_id, out))
    first = {p: p.read_bytes() for p in written}
    run_dir = out / f"run_{run1.run_id}"
    payouts = list(csv.DictReader((run_dir / f"payouts_{run1.run_id}.csv").read_text().splitlines()))
    assert {(p["merchant_id"], int(p["amount"])) for p in payouts if p["merchant_id"].startswith(m)} == {
        (f"{m}A", 15820), (f"{m}B", 29690)}
    merchant_csv = list(csv.DictReader((run_dir / f"merchant_{m}A.csv").read_text().splitlines()))
    assert merchant_csv[-1]["store_id"] == "TOTAL" and int(merchant_csv[-1]["net"]) == 15820
    assert {r["store_id"] for r in merchant_csv[:-1]} == {"S01", "S02"}
    page = (out / f"run_{run1.run_id}" / f"merchant_{m}A.html").read_text()
    assert "<svg" in page and "158.20" in page and "S02" in page
    rewritten = db(db_url, lambda c: write_run_outputs(c, run1.run_id, out))
    assert {p: p.read_bytes() for p in rewritten} == first


def test_bad_files_are_refused_whole(db_url: str, tmp_path: Path) -> None:
    m, issuer = "BAD", "22220000"
    setup_rates(db_url, m)
    files_before = one(db_url, "SELECT count(*) FROM settlement_files")

    tampered, _ = write_file(tmp_path / "t", header(DAY1, issuer), day1(issuer, m))
    tampered.write_bytes(tampered.read_bytes().replace(b"|10000|D|", b"|10001|D|", 1))
    with pytest.raises(
        SettlementError, match=r"refused CLR_22220000_20261124_01\.txt line 12 field total_debit"
    ):
        db(db_url, lambda c: import_file(c, tampered))

    missing, _ = write_file(tmp_path / "m", header(DAY1, issuer), day1(issuer, m))
    lines = missing.read_bytes().split(b"\n")
    missing.write_bytes(b"\n".join(lines[:3] + lines[4:]))
    with pytest.raises(SettlementError, match="field count: trailer says 10 but the file has 9 details"):
        db(db_url, lambda c: import_file(c, missing))

    bad_record, _ = write_file(tmp_path / "r", header(DAY1, issuer), day1(issuer, m))
    bad_record.write_bytes(bad_record.read_bytes().replace(b"|PURCHASE|", b"|PURCHAS|", 1))
    with pytest.raises(SettlementError, match="line 2 field txn_type"):
        db(db_url, lambda c: import_file(c, bad_record))
    assert one(db_url, "SELECT count(*) FROM settlement_files") == files_before
    assert one(db_url, "SELECT count(*) FROM settlement_items WHERE issuer_id = $1", issuer) == 0

    good, _ = write_file(tmp_path / "g", header(DAY1, issuer), day1(issuer, m))
    assert db(db_url, lambda c: import_file(c, good)).imported
    # same name, other content: refused
    other, _ = write_file(tmp_path / "o", header(DAY1, issuer), day1(issuer, m)[:5])
    with pytest.raises(SettlementError, match="a different file of this name was settled before"):
        db(db_url, lambda c: import_file(c, other))
    # same postings under another sequence number: refused, nothing settles twice
    dup, _ = write_file(tmp_path / "d", header(DAY1, issuer, seq=2), day1(issuer, m)[:3])
    with pytest.raises(SettlementError, match="repeats a posting already settled"):
        db(db_url, lambda c: import_file(c, dup))
    # the same bytes under another name: skipped
    renamed = tmp_path / "x" / good.name
    renamed.parent.mkdir()
    renamed.write_bytes(good.read_bytes())
    assert not db(db_url, lambda c: import_file(c, renamed)).imported


def _cli(db_url: str, *args: str) -> Any:
    return CliRunner().invoke(cli, list(args), env={"PAYSWITCH_DATABASE_URL": db_url}, catch_exceptions=False)


def test_cli(db_url: str, tmp_path: Path) -> None:
    m, issuer = "CLI", "33330000"
    res = _cli(db_url, "settlement", "fee-add", f"{m}A", "v1", "--from", "2026-01-01", "--rate-bp", "100")
    assert res.exit_code == 1 and f"merchant {m}A does not exist in the host" in res.output
    db(db_url, lambda c: seed_payables(c, {f"{m}{x}": 1_000_000 for x in "ABW"}))  # the host's merchants
    res = _cli(
        db_url,
        "settlement",
        "fee-add",
        f"{m}A",
        "v1",
        "--from",
        "2026-01-01",
        "--rate-bp",
        "100",
        "--fixed",
        "0.10",
        "--min",
        "0.20",
        "--max",
        "5.00",
        "--refund",
        "percent",
        "--shares",
        "2000/3000/5000",
    )
    assert res.exit_code == 0, res.output
    for merchant in (f"{m}B", f"{m}W"):
        assert (
            _cli(
                db_url,
                "settlement",
                "fee-add",
                merchant,
                "v1",
                "--from",
                "2026-01-01",
                "--rate-bp",
                "100",
                "--fixed",
                "0.10",
                "--min",
                "0.20",
                "--max",
                "5",
            ).exit_code
            == 0
        )
    res = _cli(db_url, "settlement", "fee-add", f"{m}A", "v1", "--from", "2026-02-01", "--rate-bp", "100")
    assert res.exit_code == 1 and "already has fee schedule v1" in res.output
    res = _cli(
        db_url,
        "settlement",
        "fee-add",
        f"{m}A",
        "v9",
        "--from",
        "2026-02-01",
        "--rate-bp",
        "100",
        "--shares",
        "1/2",
    )
    assert res.exit_code == 1 and "--shares" in res.output
    assert _cli(db_url, "settlement", "merchant", f"{m}W", "--cycle", "weekly", "--day", "1").exit_code == 0
    res = _cli(db_url, "settlement", "merchant", f"{m}W", "--cycle", "weekly", "--day", "9")
    assert res.exit_code == 1 and "weekday 1-7" in res.output
    assert f"{m}A v1" in _cli(db_url, "settlement", "fees", f"{m}A").output

    f1, _ = write_file(tmp_path, header(DAY1, issuer), day1(issuer, m))
    out = tmp_path / "out"
    res = _cli(db_url, "--json", "settle", str(f1), "--as-of", "2026-11-25", "--output-dir", str(out))
    assert res.exit_code == 0, res.output
    summary = json.loads(res.output)
    assert summary["files"][0]["details"] == 10
    payouts = summary["run"]["payouts"]
    mine = {p["merchant_id"]: p["net_minor"] for p in payouts if p["merchant_id"].startswith(m)}
    assert mine == {f"{m}A": 15820, f"{m}B": 29690}  # (other tests' merchants share this database)
    assert all(Path(p).exists() for p in summary["run"]["outputs"])
    res = _cli(db_url, "settle", str(f1), "--as-of", "2026-11-25", "--output-dir", str(out))
    assert res.exit_code == 0 and "already settled" in res.output and "nothing due" in res.output
    assert _cli(db_url, "settlement", "check").output.strip() == "settlement postings balance"


def test_cli_errors_are_one_line(db_url: str, tmp_path: Path) -> None:
    f1, _ = write_file(tmp_path, header(DAY1, "44440000"), day1("44440000", "ONE"))
    f1.write_bytes(f1.read_bytes().replace(b"|5000|D|", b"|5001|D|", 1))
    env = {**os.environ, "PAYSWITCH_DATABASE_URL": db_url}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "ops", "settle", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    for args, expected in (
        ([str(f1)], "refused CLR_44440000_20261124_01.txt line 12 field total_debit: trailer says"),
        ([str(tmp_path / "nope.txt")], "nope.txt: no such file"),
    ):
        proc = run(*args)
        assert proc.returncode == 1
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        assert expected in proc.stderr
    proc = run("--as-of", "2026-13-01")  # click's usage error: usage hint + one error line
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("Error: Invalid value for '--as-of'")


def test_progress_reports_every_byte(db_url: str, tmp_path: Path) -> None:
    details = [detail(i, merchant_id="PRGA") for i in range(1, 2001)]
    path, _ = write_file(tmp_path, header(DAY1, "55550000"), details)
    seen: list[int] = []
    result = db(db_url, lambda c: import_file(c, path, progress=seen.append, batch=500))
    assert result.imported and len(seen) >= 4
    assert sum(seen) == path.stat().st_size


def test_unmigrated_database_is_one_line(pg_cluster: Any, tmp_path: Path) -> None:
    from ops.db import ensure_database

    asyncio.run(ensure_database(pg_cluster.url("postgres"), "t_settle_unmigrated"))
    res = CliRunner().invoke(cli, ["settle", "--as-of", "2026-11-25", "--output-dir", str(tmp_path)],
                             env={"PAYSWITCH_DATABASE_URL": pg_cluster.url("t_settle_unmigrated")})
    assert res.exit_code == 1
    assert "run `payswitch db migrate` first" in res.output and len(res.output.strip().splitlines()) == 1
