"""Clearing files from the ledger: one file per business date, exactly what was posted in it.

The details come from the ``clearing_postings`` view (host/migrations/0001) for the postings made in the
business date's window (``specs.clearing.business_window``: cut-over time and zone from [clearing]),
read in one REPEATABLE READ snapshot with a cursor, so the emitter streams whatever the day's volume.

Byte-identical on re-run: records are sorted by posting id, the header's creation time is the cut-over
instant that closed the date (not the wall clock), and the ledger is append-only. The file is written
under a temporary name in the target folder and renamed into place. If the file is already there:
identical -> nothing to do; different -> refused (something was posted into a closed business date,
which a person must look at before settlement sees two versions).

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

import filecmp
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, Final
from zoneinfo import ZoneInfo

from specs.clearing import (
    ClearingFormatError,
    ClearingWriter,
    Detail,
    Header,
    Trailer,
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


@dataclass
class EmitResult:
    path: Path
    business_date: date
    window: tuple[datetime, datetime]
    trailer: Trailer
    unchanged: bool  # the identical file was already there
    left_out: list[int] = field(default_factory=list)  # posting ids the contract cannot express


def flat_fee(amount: int, bps: int) -> int:
    return (amount * bps + 5000) // 10000


def terminal_local_time(mmddhhmmss: str, posted_at: datetime, zone: ZoneInfo) -> datetime | None:
    """DE13 + DE12 (MMDDhhmmss) as a full local date-time, the year taken nearest the posting time."""
    if len(mmddhhmmss) != 10 or not mmddhhmmss.isascii() or not mmddhhmmss.isdigit():
        return None
    near = posted_at.astimezone(zone).replace(tzinfo=None)
    best: datetime | None = None
    for year in (near.year - 1, near.year, near.year + 1):
        try:
            candidate = datetime(year, int(mmddhhmmss[:2]), int(mmddhhmmss[2:4]), int(mmddhhmmss[4:6]),
                                 int(mmddhhmmss[6:8]), int(mmddhhmmss[8:10]))
        except ValueError:
            continue
        if best is None or abs(candidate - near) < abs(best - near):
            best = candidate
    return best


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
    start, end = business_window(business_date, cutover, timezone)
    if end > (now or datetime.now(UTC)):
        raise ClearingEmitError(f"business date {business_date} is still open until {end:%Y-%m-%d %H:%M}Z "
                                f"(cut-over {cutover} {timezone})")
    name = file_name(issuer_id, business_date, sequence)
    directory.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=directory))
    left_out: list[int] = []
    try:
        async with conn.transaction(isolation="repeatable_read", readonly=True):
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
        assert writer.trailer is not None
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
        return EmitResult(target, business_date, (start, end), writer.trailer, unchanged, left_out)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def last_closed_business_date(now: datetime, cutover: str, timezone: str) -> date:
    """The newest business date whose window has ended at ``now``."""
    from specs.clearing import business_date_of

    return business_date_of(now, cutover, timezone) - timedelta(days=1)


async def emit_closed(conn: Any, now: datetime, *, issuer_id: str, directory: str | Path, cutover: str,
                      timezone: str, lookback_days: int = 7) -> list[EmitResult]:
    """Write the file of every closed business date in the last ``lookback_days`` that has none yet.

    What the host runs after each cut-over (and at start, to catch up after downtime); dates whose file
    is there are not read again.
    """
    last = last_closed_business_date(now, cutover, timezone)
    done = []
    for back in range(lookback_days - 1, -1, -1):
        day = last - timedelta(days=back)
        if (Path(directory) / file_name(issuer_id, day, 1)).exists():
            continue
        done.append(await emit(conn, day, issuer_id=issuer_id, directory=directory, cutover=cutover,
                               timezone=timezone, now=now))
    return done
