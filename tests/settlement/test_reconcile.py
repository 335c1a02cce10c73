"""Three-way reconciliation: the pure core over synthetic journal, ledger and file records."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from settlement.reconcile import (
    APPROVED,
    Category,
    Record,
    exceptions_csv,
    file_records,
    journal_csv_records,
    reconcile,
    summary_text,
)
from specs.clearing import write_file
from tests.settlement.factories import detail, header


def posted(pid: int, amount: int = 1000, txn: str = "PURCHASE", sign: str = "D",
           terminal: str = "T1") -> Record:
    return Record(txn, amount, sign, terminal, f"{pid:012d}", f"{pid:06d}", pid, "M1")


def journal_of(r: Record, status: str = APPROVED) -> Record:
    return replace(r, posting_id=None, sign="", status=status, ref="journal")


def test_all_agree() -> None:
    ledger = [posted(i) for i in range(1, 6)]
    report = reconcile([journal_of(r) for r in ledger], ledger, list(ledger))
    assert report.matched == 5 and report.exceptions == []
    assert report.counts == {"journal": 5, "ledger": 5, "file": 5}


def test_each_category() -> None:
    ledger = [posted(1), posted(2), posted(3, 500), posted(4, txn="REFUND", sign="C"), posted(6)]
    file = [posted(1), posted(3, 600), posted(4, txn="REFUND", sign="D"), posted(5), posted(6)]
    journal = [
        journal_of(posted(1)),
        journal_of(posted(2)),
        journal_of(posted(3, 500)),
        journal_of(posted(4, txn="REFUND")),
        journal_of(posted(6, 999)),  # the switch approved 999, the host posted 1000
        journal_of(posted(7)),  # approved, never posted
        journal_of(posted(8), status="declined"),  # declined, not posted: fine
    ]
    report = reconcile(journal, ledger, file)
    found = sorted((e.category, e.any().posting_id) for e in report.exceptions)
    assert found == sorted([
        (Category.IN_LEDGER_NOT_IN_FILE, 2),
        (Category.AMOUNT_MISMATCH, 3),
        (Category.STATUS_MISMATCH, 4),
        (Category.IN_FILE_NOT_IN_LEDGER, 5),
        (Category.AMOUNT_MISMATCH, 6),
        (Category.APPROVED_NOT_POSTED, None),
    ])
    assert report.matched == 1  # only posting 1 agrees everywhere
    text = summary_text(report)
    assert "approved_not_posted: 1" in text and "post or reverse it by hand" in text
    rows = exceptions_csv(report).splitlines()
    assert rows[0].startswith("category,posting_id") and len(rows) == 7
    assert any(r.startswith("amount_mismatch,6,PURCHASE,T1") and ",999,1000,1000," in r for r in rows)


def test_declined_but_posted_and_posted_without_journal() -> None:
    ledger = [posted(1), posted(2), posted(3, terminal="")]  # 3: an admin load, no terminal
    report = reconcile([journal_of(posted(1), status="declined")], ledger, list(ledger))
    cats = sorted((e.category.value, e.any().posting_id) for e in report.exceptions)
    assert cats == [("posted_not_in_journal", 2), ("status_mismatch", 1)]
    assert report.matched == 1


def test_without_journal() -> None:
    ledger = [posted(1), posted(2)]
    report = reconcile(None, ledger, [posted(1)])
    assert [e.category for e in report.exceptions] == [Category.IN_LEDGER_NOT_IN_FILE]
    assert "not available" in summary_text(report) and "journal" not in report.counts


@given(st.integers(1, 60), st.data())
def test_injected_defects_are_found_exactly(n: int, data: st.DataObject) -> None:
    truth = [posted(i, 100 + i) for i in range(1, n + 1)]
    kinds = data.draw(st.lists(st.sampled_from(["drop_file", "drop_ledger", "amount", "unposted", None]),
                               min_size=n, max_size=n))
    ledger, file, journal, expected = [], [], [], set()
    for r, kind in zip(truth, kinds, strict=True):
        journal.append(journal_of(r))
        if kind == "unposted":
            expected.add((Category.APPROVED_NOT_POSTED, None, r.rrn))
            continue
        if kind != "drop_ledger":
            ledger.append(r)
        if kind != "drop_file":
            file.append(replace(r, amount=r.amount + 1) if kind == "amount" else r)
        if kind == "drop_file":
            expected.add((Category.IN_LEDGER_NOT_IN_FILE, r.posting_id, r.rrn))
        elif kind == "drop_ledger":
            expected.add((Category.IN_FILE_NOT_IN_LEDGER, r.posting_id, r.rrn))
            expected.add((Category.APPROVED_NOT_POSTED, None, r.rrn))
        elif kind == "amount":
            expected.add((Category.AMOUNT_MISMATCH, r.posting_id, r.rrn))
    report = reconcile(journal, ledger, file)
    assert {(e.category, e.any().posting_id, e.any().rrn) for e in report.exceptions} == expected
    assert report.matched == sum(k is None for k in kinds)


def test_file_and_journal_sources(tmp_path: Path) -> None:
    path, _ = write_file(tmp_path, header(), [detail(1), detail(2, "REFUND", 300, original_posting_id=1)])
    records = list(file_records(path))
    assert [(r.posting_id, r.txn_type, r.sign, r.amount) for r in records] == [
        (1, "PURCHASE", "D", 1000), (2, "REFUND", "C", 300)]
    j = tmp_path / "journal.csv"
    j.write_text("terminal_id,rrn,stan,txn_type,amount,status\nT0000001,000000000001,000001,PURCHASE,1000,"
                 "APPROVED\n")
    journal = journal_csv_records(j)
    report = reconcile(journal, records, records)
    assert [e.category for e in report.exceptions] == [Category.POSTED_NOT_IN_JOURNAL]
    j.write_text("terminal_id,rrn,stan,txn_type,amount\n")
    with pytest.raises(ValueError, match="lacks column"):
        journal_csv_records(j)
    j.write_text("terminal_id,rrn,stan,txn_type,amount,status\nT1,1,1,PURCHASE,12.50,approved\n")
    with pytest.raises(ValueError, match=r"line 2: amount '12\.50'"):
        journal_csv_records(j)


def test_journal_matches_by_terminal_rrn_and_type_whatever_the_stan() -> None:
    # the switch journals the terminal's STAN; the host saw the link's (and an advice gets a new one)
    ledger = [posted(1), posted(2, txn="REVERSAL", sign="C")]
    ledger[1] = replace(ledger[1], rrn=ledger[0].rrn)  # a reversal carries the original's RRN
    journal = [replace(journal_of(r), stan="999999") for r in ledger]
    report = reconcile(journal, ledger, list(ledger))
    assert report.exceptions == [] and report.matched == 2


def test_timed_out_at_the_switch() -> None:
    from settlement.reconcile import TIMED_OUT

    sale, rev = posted(1), replace(posted(2, txn="REVERSAL", sign="C"), rrn=posted(1).rrn)
    both = [sale, rev]
    # posted and reversed by the advice, or never posted: fine; posted alone: the advice is missing
    assert reconcile([journal_of(sale, TIMED_OUT)], both, both).exceptions == []
    assert reconcile([journal_of(sale, TIMED_OUT)], [], []).exceptions == []
    alone = reconcile([journal_of(sale, TIMED_OUT)], [sale], [sale])
    assert [(e.category, e.any().posting_id) for e in alone.exceptions] == [(Category.STATUS_MISMATCH, 1)]
    assert "saf list" in alone.exceptions[0].detail


def test_edge_records_only_partner() -> None:
    from settlement.reconcile import UNKNOWN

    inside, outside = posted(1), replace(posted(2), edge=True)
    journal = [
        replace(journal_of(posted(2)), edge=False),  # journaled inside, posted just before the window
        replace(journal_of(inside), edge=True),  # posted inside, journaled just after it
        replace(journal_of(posted(3)), edge=True),  # the neighbouring day's: not reported
        journal_of(posted(4), UNKNOWN),  # forwarding not journaled, not posted: not reported
    ]
    report = reconcile(journal, [inside, outside], [inside])
    assert report.exceptions == [] and report.matched == 1
    assert report.counts == {"journal": 2, "ledger": 1, "file": 1}
