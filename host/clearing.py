"""Clearing files from the ledger: one file per business date, exactly what was posted in it.

The details come from the ``clearing_postings`` view (host/migrations/0001) for the postings made in the
business date's window (``specs.clearing.business_window``: cut-over time and zone from [clearing]),
read in one REPEATABLE READ snapshot with a cursor, so the emitter streams whatever the day's volume.

Byte-identical on re-run: records are sorted by posting id, the header's creation time is the cut-over
instant that closed the date, or the instant ``close_day`` closed it early (not the wall clock), and the
ledger is append-only. The file is written
under a temporary name in the target folder and renamed into place. If the file is already there:
identical -> nothing to do; different -> refused (something was posted into a closed business date,
which a person must look at before settlement sees two versions).

Closing early (``close_day``, ``payswitch clearing close-day``): the current business date D ends at the
close instant C and D+1 begins there (``specs.clearing.business_window`` with the early closes of table
``closed_business_dates``): D's file can be written at once and is final, postings after C belong to
D+1. No file is written for a date before the programme's first business date (its first product or
posting, ``first_business_date``).

Per detail:
- fee: the merchant's flat rate at posting (merchants.fee_rate_bps, half-up) on the amount, with the
  rate version; none for top-ups. The settlement job prices merchants from its own rate cards and uses
  this fee only for merchants without one.
- local date-time: the request's DE13 MMDD + DE12 hhmmss; the year is the one that puts it nearest the
  posting time (New Year's Eve at the terminal, posted on 1 January, keeps the old year). Left empty if
  the terminal sent none or nonsense.
- postings the contract has no type for (a top-up in the debit direction, e.g. an administrative unload)
  are left out and listed in the result: reconciliation then shows them as "in ledger, not in file".
"""

from __future__ import annotations

import asyncio
import filecmp
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, Final
from zoneinfo import ZoneInfo

from ops.localtime import format_local, year_nearest
from specs.clearing import (
    ClearingFormatError,
    ClearingWriter,
    Detail,
    EarlyCloses,
    Header,
    Trailer,
    business_date_of,
    business_window,
    file_name,
)

DEFAULT_CURRENCY: Final = "156"  # a day without postings still gets a file; the programmes' currency

POSTINGS_SQL: Final = """
    SELECT posting_id, txn_type, original_posting_id, acquirer_id, merchant_id, store_id, terminal_id,
           pan_masked, product_code, amount, sign, fee_rate_bps, fee_rate_version, rrn, stan, auth_id,
           local_time, currency, posted_at
    FROM clearing_postings WHERE posted_at >= $1 AND posted_at < $2 ORDER BY posting_id
"""


class ClearingEmitError(Exception):
    """The clearing file cannot be written; str() is one line saying which posting or file and why."""


class BeforeProgramme(ClearingEmitError):
    """The business date is before the programme's first one: nothing was ever posted in it, no file."""


class CloseDayError(Exception):
    """``close_day`` refused; str() is one line naming what blocks it."""


@dataclass(frozen=True)
class ClosedDay:
    business_date: date
    closed_at: datetime  # the close instant: the end of the date's window, the start of the next
    closed_by: str
    window: tuple[datetime, datetime]


@dataclass
class EmitResult:
    path: Path
    business_date: date
    window: tuple[datetime, datetime]
    trailer: Trailer
    unchanged: bool  # the identical file was already there
    left_out: list[int] = field(default_factory=list)  # posting ids the contract cannot express
    currency: str = DEFAULT_CURRENCY  # the header's (ISO 4217 numeric)


def flat_fee(amount: int, bps: int) -> int:
    return (amount * bps + 5000) // 10000


def terminal_local_time(mmddhhmmss: str, posted_at: datetime, zone: ZoneInfo) -> datetime | None:
    """DE13 + DE12 (MMDDhhmmss) as a full local date-time, the year taken nearest the posting time."""
    return year_nearest(mmddhhmmss, posted_at.astimezone(zone).replace(tzinfo=None))


def _detail(r: Any, zone: ZoneInfo) -> Detail:
    merchant = r["merchant_id"]
    txn_type = r["txn_type"]
    charged = bool(merchant) and txn_type != "TOPUP"
    posted_at: datetime = r["posted_at"].astimezone(UTC).replace(microsecond=0)
    return Detail(
        posting_id=r["posting_id"], txn_type=txn_type, original_posting_id=r["original_posting_id"],
        acquirer_id=r["acquirer_id"], merchant_id=merchant, store_id=r["store_id"],
        terminal_id=r["terminal_id"].strip(), masked_pan=r["pan_masked"], card_product=r["product_code"],
        amount=r["amount"], sign=r["sign"],
        fee=flat_fee(r["amount"], r["fee_rate_bps"]) if charged else 0,
        fee_rate_version=str(r["fee_rate_version"]) if charged else "",
        rrn=r["rrn"].strip(), stan=r["stan"].strip(), auth_id=r["auth_id"].strip(),
        local_time=terminal_local_time(r["local_time"], posted_at, zone), posted_at=posted_at,
    )


async def emit(conn: Any, business_date: date, *, issuer_id: str, directory: str | Path, cutover: str,
               timezone: str, sequence: int = 1, batch: int = 5000,
               now: datetime | None = None) -> EmitResult:
    """Write ``CLR_<issuer>_<YYYYMMDD>_<seq>.txt`` for ``business_date``; see the module docstring.

    ``now`` (default: the clock) decides whether the date is closed yet."""
    directory = Path(directory)
    zone = ZoneInfo(timezone)
    name = file_name(issuer_id, business_date, sequence)
    work: Path | None = None
    left_out: list[int] = []
    try:
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            closes = await early_closes(conn)
            start, end = business_window(business_date, cutover, timezone, closes)
            if end > (now or datetime.now(UTC)):
                raise ClearingEmitError(
                    f"business date {business_date} is still open until {format_local(end, timezone)} "
                    f"(cut-over {cutover} {timezone}); `payswitch clearing close-day` closes it now")
            first = await first_business_date(conn, cutover, timezone, closes)
            if first is None or business_date < first:
                raise BeforeProgramme(before_programme(business_date, first))
            directory.mkdir(parents=True, exist_ok=True)
            work = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=directory))
            currencies = [r["currency"] for r in await conn.fetch(
                "SELECT DISTINCT currency FROM clearing_postings WHERE posted_at >= $1 AND posted_at < $2",
                start, end)]
            if len(currencies) > 1:
                raise ClearingEmitError(f"business date {business_date} has postings in several currencies "
                                        f"({', '.join(sorted(currencies))}); one file holds one currency")
            header = Header(issuer_id, business_date, sequence, end, currencies[0] if currencies
                            else DEFAULT_CURRENCY)
            with ClearingWriter(work, header) as writer:
                async for r in conn.cursor(POSTINGS_SQL, start, end, prefetch=batch):
                    if r["txn_type"] == "TOPUP" and r["sign"] == "D":
                        left_out.append(r["posting_id"])
                        continue
                    try:
                        writer.write(_detail(r, zone))
                    except (ClearingFormatError, ValueError) as exc:
                        raise ClearingEmitError(
                            f"posting {r['posting_id']} cannot go into {name}: {exc}") from None
        assert writer.trailer is not None and work is not None
        target = directory / name
        fresh = work / name
        unchanged = False
        if target.exists():
            if not filecmp.cmp(fresh, target, shallow=False):
                raise ClearingEmitError(
                    f"{target} exists with different content: the ledger changed for a closed business date "
                    "(posting after cut-over?); move the old file away after checking it"
                )
            unchanged = True
        else:
            os.replace(fresh, target)
        return EmitResult(target, business_date, (start, end), writer.trailer, unchanged, left_out,
                          header.currency)
    finally:
        if work is not None:
            shutil.rmtree(work, ignore_errors=True)


def before_programme(business_date: date, first: date | None) -> str:
    if first is None:
        return f"{business_date}: no product and no posting yet, the programme has no business date: no file"
    return f"{business_date} is before the programme's first business date {first}: no file"


async def early_closes(conn: Any) -> dict[date, datetime]:
    """The business dates closed before their cut-over (``close_day``) -> their close instant."""
    rows = await conn.fetch("SELECT business_date, closed_at FROM closed_business_dates")
    return {r["business_date"]: r["closed_at"] for r in rows}


async def first_business_date(conn: Any, cutover: str, timezone: str,
                              closes: EarlyCloses | None = None) -> date | None:
    """The programme's first business date: that of its first product or first posting (None: neither).

    No clearing file is written for a date before it (nothing can have been posted in it)."""
    first = await conn.fetchval(
        "SELECT least((SELECT min(created_at) FROM products), (SELECT min(created_at) FROM transfers))")
    return None if first is None else business_date_of(first, cutover, timezone, closes)


def last_closed_business_date(now: datetime, cutover: str, timezone: str,
                              closes: EarlyCloses | None = None) -> date:
    """The newest business date whose window has ended at ``now`` (by its cut-over or closed early)."""
    return business_date_of(now, cutover, timezone, closes) - timedelta(days=1)


async def emit_closed(conn: Any, now: datetime, *, issuer_id: str, directory: str | Path, cutover: str,
                      timezone: str, lookback_days: int = 7) -> list[EmitResult]:
    """Write the file of every closed business date in the last ``lookback_days`` that has none yet.

    What the host runs after each cut-over (and at start, to catch up after downtime); dates whose file
    is there are not read again, and dates before the programme's first business date get none.
    """
    closes = await early_closes(conn)
    last = last_closed_business_date(now, cutover, timezone, closes)
    first = await first_business_date(conn, cutover, timezone, closes)
    done: list[EmitResult] = []
    if first is None:
        return done
    for back in range(lookback_days - 1, -1, -1):
        day = last - timedelta(days=back)
        if day < first or (Path(directory) / file_name(issuer_id, day, 1)).exists():
            continue
        done.append(await emit(conn, day, issuer_id=issuer_id, directory=directory, cutover=cutover,
                               timezone=timezone, now=now))
    return done


# How long close_day waits for the transactions begun before its close instant (a posting carries its
# transaction's start time, so one begun before the close belongs to the closed date however late it
# commits): the file written right after the close must already hold it.
CLOSE_WAIT_SECONDS: Final = 30.0

_OLDER_TRANSACTIONS_SQL: Final = """
    SELECT pid, xact_start FROM pg_stat_activity
    WHERE datname = current_database() AND pid <> pg_backend_pid() AND backend_type = 'client backend'
      AND xact_start < $1
    ORDER BY xact_start LIMIT 5
"""


async def close_day(conn: Any, *, cutover: str, timezone: str, closed_by: str,
                    business_date: date | None = None,
                    wait_seconds: float = CLOSE_WAIT_SECONDS) -> ClosedDay:
    """Close the current business date now, before its cut-over (``payswitch clearing close-day``).

    The date's window ends at the close instant and the next date starts there (``business_window``),
    so the date's clearing file can be written at once and is final; later postings are the next
    date's. Recorded with who and when. Refused (``CloseDayError``, one line): a date already closed
    (by its cut-over or early) and a date after the current one (it has not begun).
    """
    if not closed_by:
        raise CloseDayError("a close needs the operator's name")
    async with conn.transaction():
        # One close at a time; readers (emit, the host) are not blocked.
        await conn.execute("LOCK TABLE closed_business_dates IN SHARE ROW EXCLUSIVE MODE")
        closed_at: datetime = await conn.fetchval("SELECT clock_timestamp()")
        closes = await early_closes(conn)
        current = business_date_of(closed_at, cutover, timezone, closes)
        day = business_date or current
        if day in closes:
            row = await conn.fetchrow(
                "SELECT closed_at, closed_by FROM closed_business_dates WHERE business_date = $1", day)
            raise CloseDayError(f"business date {day} is already closed: closed early at "
                                f"{format_local(row['closed_at'], timezone)} by {row['closed_by']}")
        if day < current:
            _, end = business_window(day, cutover, timezone, closes)
            raise CloseDayError(f"business date {day} is already closed: by the cut-over at "
                                f"{format_local(end, timezone)} ({cutover} {timezone})")
        if day > current:
            raise CloseDayError(f"business date {day} has not begun: the current business date is {current} "
                                "(only the current date can be closed early)")
        await _wait_for_older_transactions(conn, closed_at, wait_seconds)
        await conn.execute(
            "INSERT INTO closed_business_dates (business_date, closed_at, closed_by) VALUES ($1, $2, $3)",
            day, closed_at, closed_by)
    start, _ = business_window(day, cutover, timezone, closes)
    return ClosedDay(day, closed_at, closed_by, (start, closed_at))


async def _wait_for_older_transactions(conn: Any, before: datetime, wait_seconds: float) -> None:
    deadline = time.monotonic() + wait_seconds
    while True:
        # pg_stat_activity is read once per transaction unless the snapshot is dropped
        await conn.execute("SELECT pg_stat_clear_snapshot()")
        older = await conn.fetch(_OLDER_TRANSACTIONS_SQL, before)
        if not older:
            return
        if time.monotonic() >= deadline:
            pids = ", ".join(str(r["pid"]) for r in older)
            raise CloseDayError(f"transactions begun before the close are still open after "
                                f"{wait_seconds:g} s (database sessions {pids}): nothing closed; try again")
        await asyncio.sleep(0.05)
