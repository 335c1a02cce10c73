"""Three-way reconciliation of offline advices (issue 19): the sale's copies in the switch journal (the
terminal's retries, the batch upload's advice) pair with the host's one posting; none is an exception."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

from settlement.journal_source import normalise
from settlement.reconcile import ADVICE, Category, Record, reconcile

START = datetime(2026, 12, 2, tzinfo=UTC)


def _row(**kw: Any) -> dict[str, Any]:
    row = {
        "id": 1, "created_at": START + timedelta(hours=1), "channel": "pos-3des", "mti": "0220",
        "txn_type": "offline", "proc_code": "000000", "terminal_id": "T1", "merchant_id": "M1",
        "batch_no": 1, "stan": "000012", "amount": 900, "rrn": "633701000779", "response_code": "00",
        "link": "issuer", "link_stan": "000779", "original": None,
    }  # fmt: skip
    row.update(kw)
    return row


def test_an_offline_journal_row_is_an_advice_purchase() -> None:
    r = normalise(_row(), START, START + timedelta(days=1))
    assert r is not None and (r.txn_type, r.status, r.stan) == ("PURCHASE", ADVICE, "000779")
    timed_out = normalise(_row(response_code="98"), START, START + timedelta(days=1))
    assert timed_out is not None and timed_out.status == ADVICE
    declined = normalise(_row(response_code="05"), START, START + timedelta(days=1))
    assert declined is not None and declined.status == "declined 05"


def test_copies_of_one_advice_pair_with_its_one_posting() -> None:
    posting = Record("PURCHASE", 900, "D", "T1", "633701000779", "000779", 7, "M1")
    first = replace(posting, posting_id=None, sign="", status=ADVICE)  # 98 at the switch, posted
    again = replace(first, rrn="633701000790", stan="000790")  # the copy the host answered duplicate
    upload = replace(first, rrn="633701000801", stan="000801")  # the batch upload's copy
    report = reconcile([first, again, upload], [posting], [posting])
    assert report.exceptions == [] and report.matched == 1


def test_an_advice_posting_no_copy_names_is_still_reported() -> None:
    posting = Record("PURCHASE", 900, "D", "T1", "633701000779", "000779", 7, "M1")
    other = Record("PURCHASE", 900, "", "T1", "633701000790", "000790", None, "M1", ADVICE)
    report = reconcile([other], [posting], [posting])
    assert [e.category for e in report.exceptions] == [Category.POSTED_NOT_IN_JOURNAL]


def test_an_advice_amount_differs() -> None:
    posting = Record("PURCHASE", 900, "D", "T1", "633701000779", "000779", 7, "M1")
    copy = replace(posting, posting_id=None, sign="", status=ADVICE, amount=901)
    report = reconcile([copy], [posting], [posting])
    assert [e.category for e in report.exceptions] == [Category.AMOUNT_MISMATCH]
