"""Three-way reconciliation of the switch journal, the host ledger and the clearing file.

The core, ``reconcile``, is a pure function over three iterables of normalised records; where the
records come from is separate (``file_records`` reads a clearing file, ``ledger_records`` the host's
``clearing_postings`` view, and the journal side is any iterable: the switch journal does not exist yet,
so `payswitch settlement reconcile --journal FILE.csv` takes an export).

Matching:
- ledger <-> file by posting id (both carry it): a posting in one and not the other, or with a different
  amount, sign or type, is an exception;
- journal <-> ledger by (terminal id, RRN, STAN, transaction type): an approval at the switch with no
  posting, a decline that was posted, or a different amount is an exception. Postings without a terminal
  (administrative loads) are not expected in the journal.

Every exception says what was seen in each source and what a person should do about it.
"""

from __future__ import annotations

import csv
import io
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

from specs.clearing import ClearingReader


class Category(StrEnum):
    IN_LEDGER_NOT_IN_FILE = "in_ledger_not_in_file"
    IN_FILE_NOT_IN_LEDGER = "in_file_not_in_ledger"
    AMOUNT_MISMATCH = "amount_mismatch"
    STATUS_MISMATCH = "status_mismatch"
    APPROVED_NOT_POSTED = "approved_not_posted"
    POSTED_NOT_IN_JOURNAL = "posted_not_in_journal"


ACTIONS: dict[Category, str] = {
    Category.IN_LEDGER_NOT_IN_FILE: "posted but missing from the clearing file: the merchant will not be "
    "paid for it; check the cut-over and re-emit the file for its business date",
    Category.IN_FILE_NOT_IN_LEDGER: "in the clearing file but not in the ledger: hold the payout and ask the "
    "host team; the file may be altered or from another system",
    Category.AMOUNT_MISMATCH: "the sources disagree on the amount: compare with the terminal receipt and "
    "correct the wrong side with an adjustment",
    Category.STATUS_MISMATCH: "the sources disagree on what happened (type, direction or approval): check "
    "the host's auth_requests for this RRN/STAN and correct the wrong side",
    Category.APPROVED_NOT_POSTED: "approved at the switch but never posted: the cardholder was not charged; "
    "check the host's auth_requests and post or reverse it by hand",
    Category.POSTED_NOT_IN_JOURNAL: "posted but the switch has no record of it: check whether it came "
    "through another link; if not, investigate before paying",
}

APPROVED = "approved"
POSTED = "posted"


@dataclass(frozen=True, slots=True)
class Record:
    """One transaction as a source saw it. ``status``: the journal's outcome (``approved``, ``declined``,
    ...) or ``posted`` for ledger and file. ``ref`` is the source's own id for a person to look up."""

    txn_type: str
    amount: int
    sign: str = ""  # D / C where known
    terminal_id: str = ""
    rrn: str = ""
    stan: str = ""
    posting_id: int | None = None
    merchant_id: str = ""
    status: str = POSTED
    ref: str = ""

    @property
    def switch_key(self) -> tuple[str, str, str, str] | None:
        if not self.terminal_id or not (self.rrn or self.stan):
            return None
        return (self.terminal_id, self.rrn, self.stan, self.txn_type)


@dataclass(frozen=True, slots=True)
class Exception_:
    category: Category
    journal: Record | None
    ledger: Record | None
    file: Record | None
    detail: str

    @property
    def action(self) -> str:
        return ACTIONS[self.category]

    def any(self) -> Record:
        r = self.ledger or self.file or self.journal
        assert r is not None
        return r


@dataclass
class Report:
    journal_compared: bool
    counts: dict[str, int] = field(default_factory=dict)  # records seen per source
    matched: int = 0  # postings that agree everywhere they were compared
    exceptions: list[Exception_] = field(default_factory=list)

    def by_category(self) -> dict[str, int]:
        out: dict[str, int] = defaultdict(int)
        for e in self.exceptions:
            out[e.category.value] += 1
        return dict(out)


def _differences(a: Record, b: Record, compare_sign: bool = True) -> tuple[Category, str] | None:
    if a.txn_type != b.txn_type or (compare_sign and a.sign and b.sign and a.sign != b.sign):
        return Category.STATUS_MISMATCH, f"{a.txn_type}/{a.sign or '?'} vs {b.txn_type}/{b.sign or '?'}"
    if a.amount != b.amount:
        return Category.AMOUNT_MISMATCH, f"amount {a.amount} vs {b.amount}"
    return None


def reconcile(journal: Iterable[Record] | None, ledger: Iterable[Record], file: Iterable[Record]) -> Report:
    """Compare the three sources; ``journal=None`` when the switch journal is not available."""
    report = Report(journal_compared=journal is not None)
    ledger_by_id: dict[int, Record] = {}
    unkeyed_ledger: list[Record] = []
    for r in ledger:
        if r.posting_id is None:
            unkeyed_ledger.append(r)
        else:
            ledger_by_id[r.posting_id] = r
    file_by_id: dict[int, Record] = {}
    for r in file:
        if r.posting_id is not None:
            file_by_id[r.posting_id] = r
    report.counts = {"ledger": len(ledger_by_id) + len(unkeyed_ledger), "file": len(file_by_id)}
    bad: set[int] = set()

    for pid in sorted(ledger_by_id.keys() | file_by_id.keys()):
        lr, fr = ledger_by_id.get(pid), file_by_id.get(pid)
        if fr is None:
            report.exceptions.append(Exception_(Category.IN_LEDGER_NOT_IN_FILE, None, lr, None,
                                                f"posting {pid} is not in the file"))
            bad.add(pid)
        elif lr is None:
            report.exceptions.append(Exception_(Category.IN_FILE_NOT_IN_LEDGER, None, None, fr,
                                                f"posting {pid} is not in the ledger"))
            bad.add(pid)
        else:
            diff = _differences(lr, fr)
            if diff is not None:
                report.exceptions.append(Exception_(diff[0], None, lr, fr, f"ledger vs file: {diff[1]}"))
                bad.add(pid)

    if journal is not None:
        by_key: dict[tuple[str, str, str, str], list[Record]] = defaultdict(list)
        for r in [*ledger_by_id.values(), *unkeyed_ledger]:
            key = r.switch_key
            if key is not None:
                by_key[key].append(r)
        seen = 0
        for j in journal:
            seen += 1
            key = j.switch_key
            posted = by_key.pop(key, []) if key is not None else []
            if j.status != APPROVED:
                for lr in posted:
                    report.exceptions.append(Exception_(
                        Category.STATUS_MISMATCH, j, lr, _file(file_by_id, lr),
                        f"the switch says {j.status} but it was posted"))
                    _mark(bad, lr)
                continue
            if not posted:
                report.exceptions.append(Exception_(Category.APPROVED_NOT_POSTED, j, None, None,
                                                    "approved at the switch, no posting in the ledger"))
                continue
            for lr in posted:
                diff = _differences(j, lr, compare_sign=False)
                if diff is not None:
                    report.exceptions.append(Exception_(diff[0], j, lr, _file(file_by_id, lr),
                                                        f"journal vs ledger: {diff[1]}"))
                    _mark(bad, lr)
        report.counts["journal"] = seen
        for rest in by_key.values():
            for lr in rest:
                report.exceptions.append(Exception_(Category.POSTED_NOT_IN_JOURNAL, None, lr,
                                                    _file(file_by_id, lr), "no switch journal record"))
                _mark(bad, lr)

    report.matched = len((ledger_by_id.keys() & file_by_id.keys()) - bad)
    return report


def _file(file_by_id: dict[int, Record], r: Record) -> Record | None:
    return file_by_id.get(r.posting_id) if r.posting_id is not None else None


def _mark(bad: set[int], r: Record) -> None:
    if r.posting_id is not None:
        bad.add(r.posting_id)


# ---------------------------------------------------------------------------------------------------
# Sources


def file_records(path: str | Path) -> Iterable[Record]:
    """The clearing file's details (verified: a bad trailer raises ClearingFormatError at the end)."""
    with ClearingReader(path) as reader:
        for d in reader.details():
            yield Record(d.txn_type, d.amount, d.sign, d.terminal_id, d.rrn, d.stan, d.posting_id,
                         d.merchant_id, POSTED, f"file:{d.posting_id}")


async def ledger_records(conn: Any, start: datetime, end: datetime) -> list[Record]:
    """The host ledger's postings in [start, end) from its ``clearing_postings`` view."""
    rows = await conn.fetch(
        "SELECT posting_id, txn_type, amount, sign, terminal_id, rrn, stan, merchant_id "
        "FROM clearing_postings WHERE posted_at >= $1 AND posted_at < $2 ORDER BY posting_id",
        start, end,
    )
    return [Record(r["txn_type"], r["amount"], r["sign"], r["terminal_id"], r["rrn"], r["stan"],
                   r["posting_id"], r["merchant_id"], POSTED, f"transfer:{r['posting_id']}") for r in rows]


JOURNAL_COLUMNS = ("terminal_id", "rrn", "stan", "txn_type", "amount", "status")


def journal_csv_records(path: str | Path) -> list[Record]:
    """A switch journal export: CSV with a header naming at least JOURNAL_COLUMNS."""
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = [c for c in JOURNAL_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{Path(path).name}: journal CSV lacks column(s) {', '.join(missing)}")
        out = []
        for n, row in enumerate(reader, start=2):
            try:
                amount = int(row["amount"])
            except ValueError:
                raise ValueError(f"{Path(path).name} line {n}: amount {row['amount']!r} is not an integer "
                                 "(minor units)") from None
            out.append(Record(row["txn_type"], amount, "", row["terminal_id"], row["rrn"], row["stan"],
                              None, row.get("merchant_id", ""), row["status"].lower(), f"journal line {n}"))
        return out


# ---------------------------------------------------------------------------------------------------
# Output


EXCEPTION_COLUMNS = ("category", "posting_id", "txn_type", "terminal_id", "rrn", "stan", "merchant_id",
                     "journal_amount", "ledger_amount", "file_amount", "detail", "action")


def exceptions_csv(report: Report) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(EXCEPTION_COLUMNS)
    for e in report.exceptions:
        r = e.any()
        w.writerow([
            e.category.value, "" if r.posting_id is None else r.posting_id, r.txn_type, r.terminal_id, r.rrn,
            r.stan, r.merchant_id, *("" if x is None else x.amount for x in (e.journal, e.ledger, e.file)),
            e.detail, e.action,
        ])
    return buf.getvalue()


def summary_text(report: Report) -> str:
    counts = ", ".join(f"{k} {v}" for k, v in sorted(report.counts.items()))
    lines = [f"records: {counts}; matched {report.matched}; exceptions {len(report.exceptions)}"]
    if not report.journal_compared:
        lines.append("switch journal: not available, not compared")
    for category, n in sorted(report.by_category().items()):
        lines.append(f"  {category}: {n} - {ACTIONS[Category(category)]}")
    return "\n".join(lines)
