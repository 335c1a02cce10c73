"""The batch upload posts (issue 19 item 5; specs/README.md, "Batch upload") with the real processes:
PostgreSQL, hsm_sim, the authorization host and the switch, set up through the operator CLIs
(tests/switch/test_host_e2e.py ``seeded``).

A batch with one lost approval (a purchase the host answered while frozen, after the switch had
answered 98 and reversed it upstream), one approval the terminal does not upload and one record
uploaded twice gives exactly one posting (one host transfer) and two report lines; the same upload
again posts nothing; `ledger check` stays clean.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from typing import Any

import pytest

from pos import messages
from specs.catalogue import BatchTotals, UploadRecord, parse_batch_totals
from switch.upload import Counts, parse_answer_de48
from tests.fixtures.hsm import HsmServer
from tests.fixtures.pg import query
from tests.fixtures.services import run_cli, start_switch
from tests.switch.terminal import Terminal
from tests.switch.test_host_e2e import MERCHANT, System, _saf_empty, _until, _wait_link, seeded


@pytest.fixture(scope="module")
def system(db_url: str, hsm_server: HsmServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    stub = seeded(db_url, hsm_server, tmp_path_factory, sm4_terminal=True)
    stub.start_host()
    stub.switch = start_switch(db_url, hsm_server, request_timeout_ms=800, saf_retry_s=1)
    try:
        t = stub.terminal("3des")
        _wait_link(stub, t)  # the link to the host is signed on (one approved purchase of 0.01)
        assert _settle(t, 1, 1) == "1"  # that batch closes balanced: the tests start on an empty one
        t.close()
        yield stub
    finally:
        assert stub.switch.stop() == 0, stub.switch.log()[-3000:]
        stub.host.stop()
    check = run_cli(["ledger", "check"], stub.env)
    assert check.returncode == 0, check.stdout + check.stderr


def _transfers(system: System) -> int:
    return int(query(system.db_url, "SELECT count(*) FROM transfers")[0][0])


def _settle(t: Terminal, debits: int, count: int) -> str:
    msg = messages.settlement(
        t.next_stan(), f"{t.batch:06d}", t.terminal_id, MERCHANT, BatchTotals(debits, count, 0, 0)
    )
    r = t.exchange(msg, mac=False)
    assert r.code == "00", r.msg
    return parse_batch_totals(str(r.msg["48"]))[0].result


def _upload(
    t: Terminal, records: list[UploadRecord], *, batch: int | None = None
) -> tuple[list[str], Counts]:
    msg = messages.batch_upload(
        t.next_stan(), f"{batch or t.batch:06d}", t.terminal_id, MERCHANT, records, last=True
    )
    r = t.exchange(msg, mac=False)
    assert r.msg["t"] == "0330" and r.code == "00", r.msg
    digits, counts = parse_answer_de48(str(r.msg["48"]))
    assert counts is not None
    return digits, counts


def _report(system: System, tid: str, batch: int) -> Any:
    return system.cli("switch", "batch-report", tid, "--batch", str(batch))


def test_lost_approval_posted_once_lacking_and_duplicate_reported(system: System) -> None:
    t = system.terminal("3des")
    batch = t.batch
    lost_before = system.balance(0)
    # the approval the terminal will not upload, and one it will (matched)
    lacking = t.exchange(system.buy(t, 1, 1200, pin="123456"))
    matched_msg = system.buy(t, 1, 300, pin="123456")
    matched = t.exchange(matched_msg)
    assert lacking.code == matched.code == "00"
    # the lost approval: the host frozen with the request on its socket -> 98 and a reversal advice;
    # resumed, the host posts the late purchase and the reversal behind it undoes it
    lost_msg = system.buy(t, 0, 900, pin="123456")
    os.kill(system.host.process.pid, signal.SIGSTOP)
    try:
        lost = t.exchange(lost_msg)
    finally:
        os.kill(system.host.process.pid, signal.SIGCONT)
    assert lost.code == "98"
    _until(lambda: system.balance(0) == lost_before and _saf_empty(system), "the lost approval reversed")
    # the terminal believes in the lost sale (approved by the card, "unable to go online") and not in
    # the first approval: its totals differ, it uploads
    assert _settle(t, 300 + 900, 2) == "2"
    before = _transfers(system)
    m = UploadRecord(str(matched_msg["11"]), system.pans[1], 300)
    lost_record = UploadRecord(str(lost_msg["11"]), system.pans[0], 900)
    digits, counts = _upload(t, [m, lost_record, lost_record])
    assert digits == ["0", "1", "2"]  # matched, posted as an advice, duplicate
    assert counts == Counts(records=3, matched=1, posted=1, duplicate=1, not_posted=0, terminal_lacks=1)
    assert _transfers(system) == before + 1  # exactly one posting
    assert system.balance(0) == lost_before - 900
    advice = query(
        system.db_url,
        "SELECT t.code, t.amount FROM transfers t ORDER BY t.id DESC LIMIT 1",
    )[0]
    assert (advice[0], advice[1]) == ("offline", 900)
    report = _report(system, t.terminal_id, batch)
    assert report["counts"]["posted"] == 1 and len(report["postings"]) == 1
    assert [(r["result"], r["stan"]) for r in report["lines"]] == [
        ("duplicate", lost_record.stan),
        ("terminal_lacks", str(lacking.msg["11"])),
    ]
    assert all(system.pans[0] not in json.dumps(r) for r in report["lines"] + report["postings"])
    text = run_cli(["switch", "batch-report", t.terminal_id, "--batch", str(batch)], system.env)
    assert text.returncode == 0 and text.stdout.count("\nreport ") == 2, text.stdout
    # the batch closed with the upload; the same upload again is answered from its results, posts nothing
    closed = query(
        system.db_url,
        "SELECT closed_at IS NOT NULL FROM switch_batches WHERE terminal_id = $1 AND batch_no = $2",
        t.terminal_id,
        batch,
    )
    assert closed[0][0] is True
    again, _ = _upload(t, [m, lost_record, lost_record], batch=batch)
    assert again == ["0", "2", "2"]
    assert _transfers(system) == before + 1
    assert len(_report(system, t.terminal_id, batch)["lines"]) == 2
    t.close()


def test_unknown_records_post_only_within_the_floor_limit(system: System) -> None:
    system.cli("product", "update", "CAMPUS", "--offline-floor-limit", "50.00")
    t = system.terminal("sm4")
    batch = t.batch
    balance = system.balance(2)
    assert _settle(t, 2000 + 8000, 2) == "2"
    before = _transfers(system)
    small = UploadRecord(t.next_stan(), system.pans[2], 2000)  # never seen by the switch, within 50.00
    large = UploadRecord(t.next_stan(), system.pans[2], 8000)  # never seen, above it: reported
    digits, counts = _upload(t, [small, large])
    assert digits == ["1", "3"], (digits, system.switch.log()[-3000:])
    assert counts == Counts(records=2, posted=1, not_posted=1)
    assert _transfers(system) == before + 1 and system.balance(2) == balance - 2000
    report = _report(system, t.terminal_id, batch)
    assert [(r["result"], r["detail"]) for r in report["lines"]] == [("not_posted", "unknown_to_switch")]
    t.close()
