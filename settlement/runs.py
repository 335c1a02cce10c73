"""Finding settlement runs: a keyset page of runs, and one run with its payouts and output files.

Amounts are integer minor units with the currency (ISO 4217 numeric) the host ledger posted them in
(``ledger_settlements.currency``); callers format them (ops.money). Times are ``datetime``.
A list is a page in ascending run id, at most ``limit`` runs, with ``next``: the cursor (the last run's
id) of the following page, or None when there is none.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Any, Final

from ops.money import DEFAULT_CURRENCY
from settlement.cashouts import PaidCashOut, run_cash_outs
from settlement.errors import SettlementError
from settlement.reports import safe_name

DEFAULT_LIMIT: Final = 50
MAX_LIMIT: Final = 1000
FALLBACK_CURRENCY: Final = DEFAULT_CURRENCY  # a run whose payouts have no ledger row (paid before host 0004)


@dataclass(frozen=True)
class RunRow:
    run_id: int
    as_of: date
    started_at: datetime
    payout_count: int
    payout_total: int
    carried_count: int
    currency: str


@dataclass(frozen=True)
class PayoutRow:
    reference: str
    merchant_id: str
    payout_account: str
    gross: int
    fee: int
    net: int
    first_business_date: date
    last_business_date: date
    currency: str
    report: Path  # merchant_<id>.html in the run's folder


@dataclass
class RunPage:
    runs: list[RunRow]
    next: int | None = None


@dataclass
class RunDetail:
    run: RunRow
    payouts: list[PayoutRow]
    folder: Path  # <output_dir>/run_<id>/
    payout_file: Path  # payouts_<id>.csv, the payout instruction file
    missing: list[Path] = field(default_factory=list)  # outputs not on disk (settlement report writes them)
    cash_outs: list[PaidCashOut] = field(default_factory=list)  # unloads paid out to cardholders


_RUNS: Final = """
    SELECT r.id, r.as_of, r.started_at, r.payout_count, r.payout_total, r.carried_count,
           coalesce((SELECT min(ls.currency) FROM settlement_payouts p
                     JOIN ledger_settlements ls ON ls.reference = p.reference WHERE p.run_id = r.id), $4)
               AS currency
    FROM settlement_runs r
    WHERE ($1::bigint IS NULL OR r.id > $1) AND ($2::date IS NULL OR r.as_of >= $2)
      AND ($3::date IS NULL OR r.as_of <= $3)
"""


def _run(r: Any) -> RunRow:
    return RunRow(r["id"], r["as_of"], r["started_at"], r["payout_count"], r["payout_total"],
                  r["carried_count"], r["currency"].strip())


async def list_runs(conn: Any, *, after: int | None = None, limit: int = DEFAULT_LIMIT,
                    since: date | None = None, until: date | None = None) -> RunPage:
    """Runs in id order after the cursor ``after``; ``since``/``until`` bound their as-of date."""
    if not 1 <= limit <= MAX_LIMIT:
        raise SettlementError(f"--limit {limit}: 1 to {MAX_LIMIT}")
    rows = await conn.fetch(_RUNS + f" ORDER BY r.id LIMIT {limit + 1}", after, since, until,
                            FALLBACK_CURRENCY)
    runs = [_run(r) for r in rows[:limit]]
    return RunPage(runs, runs[-1].run_id if len(rows) > limit else None)


async def show_run(conn: Any, run_id: int, output_dir: str | Path) -> RunDetail:
    """Run ``run_id``, its payouts, and where its reports and payout file are (``output_dir``)."""
    row = await conn.fetchrow(_RUNS + " AND r.id = $5", None, None, None, FALLBACK_CURRENCY, run_id)
    if row is None:
        raise SettlementError(f"no settlement run {run_id}: `payswitch settlement run list` shows the runs")
    folder = Path(output_dir) / f"run_{run_id}"
    payouts = [
        PayoutRow(p["reference"], p["merchant_id"], p["payout_account"], p["gross"], p["fee"], p["net"],
                  p["first_business_date"], p["last_business_date"], p["currency"].strip(),
                  folder / f"merchant_{safe_name(p['merchant_id'])}.html")
        for p in await conn.fetch(
            "SELECT p.reference, p.merchant_id, p.payout_account, p.gross, p.fee, p.net, "
            "p.first_business_date, p.last_business_date, coalesce(ls.currency, $2) AS currency "
            "FROM settlement_payouts p LEFT JOIN ledger_settlements ls ON ls.reference = p.reference "
            "WHERE p.run_id = $1 ORDER BY p.merchant_id", run_id, FALLBACK_CURRENCY)
    ]
    payout_file = folder / f"payouts_{run_id}.csv"
    cash_outs = await run_cash_outs(conn, run_id)
    expected = [payout_file, folder / f"stores_{run_id}.csv", *(p.report for p in payouts)]
    if cash_outs:
        expected.append(folder / f"cashouts_{run_id}.csv")
    return RunDetail(_run(row), payouts, folder, payout_file, [f for f in expected if not f.exists()],
                     cash_outs)
