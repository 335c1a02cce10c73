"""Import one clearing file: verify it, price every detail, store the details and per-store accruals.

One pass over the file and one transaction: details are read, checked and priced as they stream and
copied to ``settlement_items`` in batches (``copy_records_to_table``), so memory stays flat whatever the
file's size. Only when the trailer has been verified (count, totals, SHA-256) are the exact fees of
voids and reversals filled in, the accruals summed per merchant, store, acquirer and business date, and
the transaction committed; a bad file leaves nothing behind.

A file is remembered by name and by the SHA-256 of its bytes: the same file again is skipped (settled
nothing twice), a different file under a settled name is refused, and a posting that was already
settled from another file makes the whole file refused (the primary key on issuer + posting id).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import asyncpg

from ops.money import DEFAULT_CURRENCY
from settlement.errors import SettlementError
from settlement.fees import BP, FeeSchedule, applicable_fee, fee_function, split_exact
from settlement.scan import DetailScan
from settlement.schedules import schedules_in_force
from specs.clearing import DEBIT_TYPES, ClearingFormatError

BATCH: Final = 20_000
_LOCK_ID: Final = 0x5345_544C  # "SETL": one settlement writer at a time
FILE_FEE_SHARES: Final = (0, 0, BP)  # no rate card at all: the host's fee in the file, all to the platform

ITEM_COLUMNS: Final = (
    "issuer_id", "posting_id", "file_id", "business_date", "txn_type", "original_posting_id", "acquirer_id",
    "merchant_id", "store_id", "terminal_id", "amount", "sign", "merchant_amount", "file_fee", "fee",
    "fee_version", "issuer_share", "acquirer_share", "platform_share", "rrn", "stan", "auth_id",
)

# How one merchant's details are priced: its rate card's fee function (None: the host's fee in the file),
# the version label stored with each detail, the share weights, and the fee -> shares of those weights
_Price = tuple[Callable[[str, str, int], int] | None, str, tuple[int, int, int], dict[int, tuple[int, ...]]]


@dataclass(frozen=True)
class ImportResult:
    name: str
    sha256: str
    imported: bool  # False: this exact file was settled before, nothing done
    note: str
    file_id: int | None = None
    business_date: str = ""
    details: int = 0
    total_debit: int = 0
    total_credit: int = 0
    merchant_fee: int = 0
    accruals: int = 0
    currency: str = DEFAULT_CURRENCY  # the file header's (ISO 4217 numeric)


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


async def _already(conn: Any, name: str, sha: str) -> ImportResult | None:
    rows = await conn.fetch("SELECT id, name, sha256 FROM settlement_files WHERE name = $1 OR sha256 = $2",
                            name, sha)
    for r in rows:
        if r["name"] == name and r["sha256"] == sha:
            return ImportResult(name, sha, False, "already settled: skipped", file_id=r["id"])
    for r in rows:
        if r["name"] == name:
            raise SettlementError(
                f"{name}: a different file of this name was settled before (SHA-256 {r['sha256'][:12]}..., "
                f"this one {sha[:12]}...); refusing it"
            )
    for r in rows:
        return ImportResult(name, sha, False, f"already settled as {r['name']} (same SHA-256): skipped",
                            file_id=r["id"])
    return None


async def import_file(conn: Any, path: str | Path, *, progress: Callable[[int], None] | None = None,
                      batch: int = BATCH) -> ImportResult:
    """Verify and import ``path``; ``progress(bytes)`` is called as it is read. Raises SettlementError."""
    path = Path(path)
    if not path.is_file():
        raise SettlementError(f"{path}: no such file")
    sha = file_sha256(path)
    done = await _already(conn, path.name, sha)
    if done is not None:
        return done
    try:
        reader = DetailScan(path)
    except ClearingFormatError as exc:
        raise SettlementError(f"refused {exc}") from None
    with reader:
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _LOCK_ID)
            done = await _already(conn, path.name, sha)  # another job may have won the race
            if done is not None:
                return done
            try:
                return await _import(conn, reader, sha, progress, batch)
            except ClearingFormatError as exc:
                raise SettlementError(f"refused {exc}") from None
            except asyncpg.UniqueViolationError as exc:
                raise SettlementError(
                    f"refused {path.name}: it repeats a posting already settled from another file "
                    f"({exc.detail or exc})"
                ) from None


async def _import(conn: Any, reader: DetailScan, sha: str, progress: Callable[[int], None] | None,
                  batch: int) -> ImportResult:
    h = reader.header
    file_id: int = await conn.fetchval(
        "INSERT INTO settlement_files (name, sha256, issuer_id, business_date, sequence, currency, "
        "detail_count, total_debit, total_credit, total_fee, closed_at) "
        "VALUES ($1,$2,$3,$4,$5,$6,0,0,0,0,$7) RETURNING id",
        reader.name, sha, h.issuer_id, h.business_date, h.sequence, h.currency, h.created_at,
    )
    in_force = await schedules_in_force(conn, h.business_date)
    # merchant -> how its details are priced; built once per merchant per file
    pricing: dict[str, _Price] = {}
    splits: dict[tuple[int, int, int], dict[int, tuple[int, ...]]] = {}  # fees repeat: split each once
    functions: dict[FeeSchedule, Callable[[str, str, int], int]] = {}  # one per rate card
    issuer, bdate = h.issuer_id, h.business_date
    totals = {"fee": 0, "reported": 0}

    def price_of(m: str, file_version: str) -> _Price:
        s = applicable_fee(m, in_force).schedule if m else None
        if s is None:
            fee_fn, version, weights = None, "file:" + file_version, FILE_FEE_SHARES
        else:
            fee_fn = functions.get(s) or functions.setdefault(s, fee_function(s))
            version, weights = s.version, s.weights
        price = pricing[m] = (fee_fn, version, weights, splits.setdefault(weights, {}))
        return price

    def rows() -> Iterator[tuple[Any, ...]]:
        # One COPY streams the whole file: PostgreSQL ingests while the next records are parsed. A plain
        # generator (asyncpg iterates it in C, awaiting only when its buffer is full) of plain tuples.
        debit_types = DEBIT_TYPES
        get_price = pricing.get
        fee_total = 0
        for n, (pid, txn_type, orig, acq, m, store, term, amount, sign, file_fee, file_version, rrn, stan,
                auth) in enumerate(reader.rows(), start=1):
            fee_fn, version, weights, shares_of = get_price(m) or price_of(m, file_version)
            if not m:
                fee, merchant_amount, version = 0, 0, ""
            elif txn_type == "TOPUP":  # cash taken at the merchant: it owes that to the issuer
                fee, merchant_amount, version = 0, -amount, ""
            else:
                merchant_amount = amount if sign == "D" else -amount
                if fee_fn is not None:
                    fee = fee_fn(txn_type, sign, amount)
                else:  # the host's flat-rate fee from the file: charged on debits, returned on credits
                    fee = file_fee if txn_type in debit_types or sign == "D" else -file_fee
            if fee:
                shares = shares_of.get(fee)
                if shares is None:
                    if len(shares_of) > 100_000:
                        shares_of.clear()
                    shares = shares_of[fee] = tuple(split_exact(fee, weights))
                i_share, a_share, p_share = shares
                fee_total += fee
            else:
                i_share = a_share = p_share = 0
            yield (issuer, pid, file_id, bdate, txn_type, orig, acq, m, store, term, amount, sign,
                   merchant_amount, file_fee, fee, version, i_share, a_share, p_share, rrn, stan, auth)
            if progress is not None and n % batch == 0:
                progress(reader.bytes_read - totals["reported"])
                totals["reported"] = reader.bytes_read
        totals["fee"] = fee_total

    await conn.copy_records_to_table("settlement_items", records=rows(), columns=ITEM_COLUMNS)
    if progress is not None:
        progress(reader.bytes_read - totals["reported"])
    merchant_fee = totals["fee"]
    t = reader.trailer
    assert t is not None  # rows() returned normally: the trailer matched
    merchant_fee += await _exact_returned_fees(conn, file_id)
    accruals = await _accrue(conn, file_id)
    await conn.execute(
        "UPDATE settlement_files SET detail_count = $2, total_debit = $3, total_credit = $4, total_fee = $5 "
        "WHERE id = $1", file_id, t.count, t.total_debit, t.total_credit, t.total_fee,
    )
    return ImportResult(reader.name, sha, True, "imported", file_id=file_id, business_date=str(bdate),
                        details=t.count, total_debit=t.total_debit, total_credit=t.total_credit,
                        merchant_fee=merchant_fee, accruals=accruals, currency=h.currency)


async def _exact_returned_fees(conn: Any, file_id: int) -> int:
    """A void or full reversal returns exactly the fee (and shares) its original was charged.

    The estimate made while streaming used today's rate card; the original may have been priced under
    another version. Repeated so that a reversal of a void in the same file sees the void's exact fee.
    Returns the change in this file's total merchant fee.
    """
    delta = 0
    for _ in range(8):
        changed = await conn.fetch(
            """
            WITH fix AS (
                SELECT r.issuer_id, r.posting_id, r.fee AS old_fee, -o.fee AS fee, -o.issuer_share AS i,
                       -o.acquirer_share AS a, -o.platform_share AS p, o.fee_version
                FROM settlement_items r
                JOIN settlement_items o ON o.issuer_id = r.issuer_id AND o.posting_id = r.original_posting_id
                WHERE r.file_id = $1 AND r.txn_type IN ('VOID', 'REVERSAL') AND o.amount = r.amount
                  AND o.merchant_id = r.merchant_id AND o.sign <> r.sign
                  AND (r.fee, r.issuer_share, r.acquirer_share, r.platform_share)
                      IS DISTINCT FROM (-o.fee, -o.issuer_share, -o.acquirer_share, -o.platform_share)
            )
            UPDATE settlement_items t SET fee = fix.fee, issuer_share = fix.i, acquirer_share = fix.a,
                   platform_share = fix.p, fee_version = fix.fee_version
            FROM fix WHERE t.issuer_id = fix.issuer_id AND t.posting_id = fix.posting_id
            RETURNING fix.fee - fix.old_fee AS delta
            """,
            file_id,
        )
        if not changed:
            break
        delta += sum(r["delta"] for r in changed)
    return delta


async def _accrue(conn: Any, file_id: int) -> int:
    status: str = await conn.execute(
        """
        INSERT INTO settlement_accruals (file_id, merchant_id, store_id, acquirer_id, business_date,
            txn_count, sales, returns, topups, fee, issuer_share, acquirer_share, platform_share)
        SELECT file_id, merchant_id, store_id, acquirer_id, business_date, count(*),
               coalesce(sum(amount) FILTER (WHERE sign = 'D'), 0),
               coalesce(sum(amount) FILTER (WHERE sign = 'C' AND txn_type <> 'TOPUP'), 0),
               coalesce(sum(amount) FILTER (WHERE txn_type = 'TOPUP'), 0),
               sum(fee), sum(issuer_share), sum(acquirer_share), sum(platform_share)
        FROM settlement_items
        WHERE file_id = $1 AND merchant_id <> ''
        GROUP BY file_id, merchant_id, store_id, acquirer_id, business_date
        """,
        file_id,
    )
    return int(status.rsplit(" ", 1)[-1])
