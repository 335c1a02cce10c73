"""Three-way reconciliation of the switch journal, the host ledger and the clearing file.

The core, :class:`Reconciler` (and ``reconcile`` over three iterables), is pure: it compares normalised
records; where they come from is separate (``file_records`` reads a clearing file, ``ledger_records`` the
host's ``clearing_postings`` view, ``settlement.journal_source`` the switch's ``switch_journal`` table and
``journal_csv_records`` an exported journal). The journal is fed one record at a time, so it can stream
from a database cursor.

Matching:
- ledger <-> file by posting id (both carry it): a posting in one and not the other, or with a different
  amount, sign or type, is an exception;
- journal <-> ledger by (terminal id, RRN, transaction type): the RRN is the one the switch sends upstream
  in DE37 and the host records, so it is the same on both sides, while the STAN is not (the terminal's
  STAN at the switch, the link's at the host, and a reversal advice gets a new one); the STAN is the key
  only where there is no RRN, and otherwise breaks ties. An approval at the switch with no posting, a
  decline that was posted, or a different amount is an exception. Postings without a terminal
  (administrative loads) are not expected in the journal.
- a request that timed out at the switch (98: the switch queued a reversal advice) is fine with no
  posting or with the posting and its reversal; the posting alone is an exception.
- records marked ``edge`` lie just outside the business date's window (requests around the cut-over are
  journaled a moment after they are posted): they are used to find a partner, never reported themselves.

Every exception says what was seen in each source and what a person should do about it.
"""

from __future__ import annotations

import csv
import io
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Any

from specs.clearing import ClearingReader, business_window


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
TIMED_OUT = "timed_out"  # the switch answered 98 after sending it upstream and queued a reversal advice
UNKNOWN = "unknown"  # approved, but the journal does not say whether it went upstream: compared if posted
# One copy of an offline advice sent upstream (00 or 98): the host posts the sale once by its natural key
# (DE42, DE41, POS batch, terminal STAN), under the RRN of the copy it took; a copy pairs with the posting
# of its RRN when there is one, and is never an exception by itself (settlement/journal_source.py).
ADVICE = "advice"


@dataclass(frozen=True, slots=True)
class Record:
    """One transaction as a source saw it. ``status``: the journal's outcome (``approved``, ``declined``,
    ``timed_out``, ``unknown``, ...) or ``posted`` for ledger and file. ``ref`` is the source's own id for
    a person to look up. ``edge``: just outside the window, only a partner for the other side."""

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
    edge: bool = False

    @property
    def switch_key(self) -> tuple[str, str, str, str] | None:
        """(terminal, RRN, STAN only without an RRN, type): what journal and ledger both know."""
        if not self.terminal_id or not (self.rrn or self.stan):
            return None
        return (self.terminal_id, self.rrn, "" if self.rrn else self.stan, self.txn_type)


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


class Reconciler:
    """Ledger and file are read whole (``ledger`` is needed by key for the journal); journal records are
    fed one at a time with :meth:`journal`; :meth:`finish` gives the report."""

    def __init__(self, ledger: Iterable[Record], file: Iterable[Record]) -> None:
        self.exceptions: list[Exception_] = []
        self.ledger_by_id: dict[int, Record] = {}
        self.by_key: dict[tuple[str, str, str, str], list[Record]] = defaultdict(list)
        unkeyed = 0
        for r in ledger:
            key = r.switch_key
            if key is not None:
                self.by_key[key].append(r)
            if r.edge:
                continue
            if r.posting_id is None:
                unkeyed += 1
            else:
                self.ledger_by_id[r.posting_id] = r
        self.file_by_id: dict[int, Record] = {}
        for r in file:
            if r.posting_id is not None:
                self.file_by_id[r.posting_id] = r
        self.counts = {"ledger": len(self.ledger_by_id) + unkeyed, "file": len(self.file_by_id)}
        self.journal_seen = 0
        self.bad: set[int] = set()
        self._compare_ledger_and_file()

    def _add(self, category: Category, j: Record | None, lr: Record | None, fr: Record | None,
             detail: str) -> None:
        self.exceptions.append(Exception_(category, j, lr, fr, detail))
        if lr is not None and lr.posting_id is not None:
            self.bad.add(lr.posting_id)
        elif fr is not None and fr.posting_id is not None:
            self.bad.add(fr.posting_id)

    def _compare_ledger_and_file(self) -> None:
        for pid in sorted(self.ledger_by_id.keys() | self.file_by_id.keys()):
            lr, fr = self.ledger_by_id.get(pid), self.file_by_id.get(pid)
            if fr is None:
                self._add(Category.IN_LEDGER_NOT_IN_FILE, None, lr, None, f"posting {pid} is not in the file")
            elif lr is None:
                self._add(Category.IN_FILE_NOT_IN_LEDGER, None, None, fr,
                          f"posting {pid} is not in the ledger")
            else:
                diff = _differences(lr, fr)
                if diff is not None:
                    self._add(diff[0], None, lr, fr, f"ledger vs file: {diff[1]}")

    def _take(self, key: tuple[str, str, str, str] | None, stan: str) -> Record | None:
        """The posting under ``key`` (the one with the same STAN first); each posting matches once."""
        if key is None:
            return None
        found = self.by_key.get(key)
        if not found:
            return None
        i = next((n for n, r in enumerate(found) if r.stan == stan), 0)
        r = found.pop(i)
        if not found:
            del self.by_key[key]
        return r

    def _file(self, r: Record) -> Record | None:
        return self.file_by_id.get(r.posting_id) if r.posting_id is not None else None

    def journal(self, j: Record) -> None:
        if not j.edge:
            self.journal_seen += 1
        key = j.switch_key
        lr = self._take(key, j.stan)
        if j.status == ADVICE:
            if lr is not None:
                diff = _differences(j, lr, compare_sign=False)
                if diff is not None:
                    self._add(diff[0], j, lr, self._file(lr), f"journal vs ledger: {diff[1]}")
            return
        if j.status == TIMED_OUT:
            reversal = None
            if key is not None and lr is not None:
                reversal = self._take((key[0], key[1], key[2], "REVERSAL"), "")
            if lr is not None and reversal is None:
                self._add(Category.STATUS_MISMATCH, j, lr, self._file(lr),
                          "timed out at the switch (98, reversal advice queued) but posted and not reversed "
                          "in this window: check `payswitch switch saf list`")
            return
        if j.status not in (APPROVED, UNKNOWN):
            if lr is not None:
                self._add(Category.STATUS_MISMATCH, j, lr, self._file(lr),
                          f"the switch says {j.status} but it was posted")
            return
        if lr is None:
            if j.status == APPROVED and not j.edge:
                self._add(Category.APPROVED_NOT_POSTED, j, None, None,
                          "approved at the switch, no posting in the ledger")
            return
        diff = _differences(j, lr, compare_sign=False)
        if diff is not None:
            self._add(diff[0], j, lr, self._file(lr), f"journal vs ledger: {diff[1]}")

    def finish(self, journal_compared: bool) -> Report:
        report = Report(journal_compared=journal_compared, counts=dict(self.counts))
        report.exceptions = list(self.exceptions)
        if journal_compared:
            report.counts["journal"] = self.journal_seen
            for rest in self.by_key.values():
                for lr in rest:
                    if lr.edge:
                        continue
                    report.exceptions.append(Exception_(Category.POSTED_NOT_IN_JOURNAL, None, lr,
                                                        self._file(lr), "no switch journal record"))
                    if lr.posting_id is not None:
                        self.bad.add(lr.posting_id)
        report.matched = len((self.ledger_by_id.keys() & self.file_by_id.keys()) - self.bad)
        return report


def reconcile(journal: Iterable[Record] | None, ledger: Iterable[Record], file: Iterable[Record]) -> Report:
    """Compare the three sources; ``journal=None`` when the switch journal is not available."""
    r = Reconciler(ledger, file)
    if journal is not None:
        for j in journal:
            r.journal(j)
    return r.finish(journal is not None)


# ---------------------------------------------------------------------------------------------------
# Sources


def file_records(path: str | Path) -> Iterable[Record]:
    """The clearing file's details (verified: a bad trailer raises ClearingFormatError at the end)."""
    with ClearingReader(path) as reader:
        for d in reader.details():
            yield Record(d.txn_type, d.amount, d.sign, d.terminal_id, d.rrn, d.stan, d.posting_id,
                         d.merchant_id, POSTED, f"file:{d.posting_id}")


async def ledger_records(conn: Any, start: datetime, end: datetime,
                         margin: timedelta = timedelta(0)) -> list[Record]:
    """The host ledger's postings in [start, end) from its ``clearing_postings`` view, and with a
    ``margin`` those just outside it, marked ``edge`` (partners for journal records only)."""
    rows = await conn.fetch(
        "SELECT posting_id, txn_type, amount, sign, terminal_id, rrn, stan, merchant_id, posted_at "
        "FROM clearing_postings WHERE posted_at >= $1 AND posted_at < $2 ORDER BY posting_id",
        start - margin, end + margin,
    )
    return [Record(r["txn_type"], r["amount"], r["sign"], r["terminal_id"], r["rrn"], r["stan"],
                   r["posting_id"], r["merchant_id"], POSTED, f"transfer:{r['posting_id']}",
                   not start <= r["posted_at"] < end) for r in rows]


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
                     "journal_amount", "ledger_amount", "file_amount", "detail", "action", "references")


def exceptions_csv(report: Report) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(EXCEPTION_COLUMNS)
    for e in report.exceptions:
        r = e.any()
        sources = (e.journal, e.ledger, e.file)
        w.writerow([
            e.category.value, "" if r.posting_id is None else r.posting_id, r.txn_type, r.terminal_id, r.rrn,
            r.stan, r.merchant_id, *("" if x is None else x.amount for x in sources),
            e.detail, e.action, "; ".join(x.ref for x in sources if x is not None and x.ref),
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


async def business_date_window(conn: Any, business_date: date, cutover: str,
                               timezone: str) -> tuple[datetime, datetime]:
    """The ledger window of ``business_date``, as the host's emitter drew it: its cut-over, moved by the
    early closes of that date and the one before (the host's ``closed_business_dates``, read-only)."""
    rows = await conn.fetch(
        "SELECT business_date, closed_at FROM closed_business_dates WHERE business_date BETWEEN $1 AND $2",
        business_date - timedelta(days=1), business_date)
    closes = {r["business_date"]: r["closed_at"] for r in rows}
    return business_window(business_date, cutover, timezone, closes)
