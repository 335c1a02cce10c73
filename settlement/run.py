"""A settlement run: pay out every merchant whose accrued business dates are due; carry the rest.

Due per the merchant's cycle (settlement.cycles). For each merchant with due dates, gross (sales -
returns - cash top-ups taken at its terminals) and fee are summed over them; a positive net = gross -
fee becomes one payout (one line of the payout instruction file) with its settlement transfers in the
host ledger (settlement.postings), and the accruals are stamped with the run. A merchant whose due net
is zero or negative is carried (its refunds wait for later sales), as are dates not yet due, and so is
one the host ledger cannot pay: not known there, or a posted payable below the gross. Everything
happens in one transaction, the outbox's ``settlement.report_ready`` included (ops.outbox, api/README.md
"Events"); the reports are written from the database after (their names are known before: reports).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

from ops.money import DEFAULT_CURRENCY, currency_alpha
from ops.outbox import Event, write_events
from settlement.cashouts import CashOut, pay_cash_outs, unpaid_cash_outs
from settlement.cycles import Cycle, closed_early_on, settlement_date
from settlement.importer import _LOCK_ID
from settlement.postings import AccountCache, Payable, lock_ledger, merchant_payable, post_payout
from settlement.reports import report_files
from settlement.schedules import merchant_settings


@dataclass(frozen=True)
class Payout:
    payout_id: int
    merchant_id: str
    reference: str
    gross: int
    fee: int
    net: int
    business_dates: tuple[date, ...]
    currency: str = DEFAULT_CURRENCY  # the merchant's in the host ledger (ISO 4217 numeric)


@dataclass(frozen=True)
class Carried:
    merchant_id: str
    reason: str
    gross: int
    fee: int


@dataclass
class RunResult:
    as_of: date
    run_id: int | None = None
    payouts: list[Payout] = field(default_factory=list)
    carried: list[Carried] = field(default_factory=list)
    cash_outs: list[CashOut] = field(default_factory=list)  # unloads paid out to cardholders

    @property
    def payout_total(self) -> int:
        return sum(p.net for p in self.payouts)

    @property
    def currency(self) -> str:
        return self.payouts[0].currency if self.payouts else DEFAULT_CURRENCY


def payout_reference(run_id: int, merchant_id: str) -> str:
    return f"STL{run_id:08d}-{merchant_id}"


async def run_settlement(conn: Any, as_of: date, default_cycle: Cycle, *, cutover: str | None = None,
                         timezone: str | None = None) -> RunResult:
    """Pay out what is due as of ``as_of``. With the programme's ``cutover`` and ``timezone``, a business
    date closed early (its file's creation time before the cut-over) is due on the daily cycle the day
    it was closed (settlement.cycles); without them every date waits for the day after it."""
    result = RunResult(as_of)
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _LOCK_ID)
        settings = await merchant_settings(conn)
        open_rows = await conn.fetch(
            """
            SELECT a.merchant_id, a.business_date, sum(a.sales - a.returns - a.topups)::bigint AS gross,
                   sum(a.fee)::bigint AS fee, min(f.closed_at) AS closed_at
            FROM settlement_accruals a JOIN settlement_files f ON f.id = a.file_id WHERE a.run_id IS NULL
            GROUP BY a.merchant_id, a.business_date ORDER BY a.merchant_id, a.business_date
            """
        )
        by_merchant: dict[str, list[Any]] = defaultdict(list)
        for r in open_rows:
            by_merchant[r["merchant_id"]].append(r)
        plans: list[tuple[str, list[date], int, int]] = []
        for merchant, rows in by_merchant.items():
            cycle = settings[merchant][0] if merchant in settings else default_cycle

            due_on = {r["business_date"]: settlement_date(  # one row per business date
                r["business_date"], cycle,
                closed_early_on(r["business_date"], r["closed_at"], cutover, timezone)
                if cutover and timezone else None) for r in rows}
            due = [r for r in rows if due_on[r["business_date"]] <= as_of]
            later = [r for r in rows if due_on[r["business_date"]] > as_of]
            if later:
                next_due = min(due_on[r["business_date"]] for r in later)
                result.carried.append(Carried(
                    merchant, f"{len(later)} business date(s) not due until {next_due} ({cycle})",
                    sum(r["gross"] for r in later), sum(r["fee"] for r in later)))
            if not due:
                continue
            gross, fee = sum(r["gross"] for r in due), sum(r["fee"] for r in due)
            if gross - fee <= 0:
                result.carried.append(Carried(
                    merchant, f"net {gross - fee} is not positive: carried until sales cover it", gross, fee))
                continue
            plans.append((merchant, [r["business_date"] for r in due], gross, fee))
        cash_outs = await unpaid_cash_outs(conn)  # every unpaid `card unload` (settlement.cashouts)
        if not plans and not cash_outs:
            return result
        await lock_ledger(conn)
        payables: dict[str, Payable] = {}
        for merchant, _dates, gross, fee in plans:
            payable = await merchant_payable(conn, merchant)
            if payable is None:
                reason = "not in the host ledger (no such merchant): nothing to settle from"
            elif gross <= 0:
                reason = f"gross {gross} is not positive: nothing payable to move"
            elif payable.total < gross:
                reason = (f"posted payable in the host ledger {payable.total} is below the gross {gross}: "
                          "reconcile the files with the ledger")
            else:
                payables[merchant] = payable
                continue
            result.carried.append(Carried(merchant, reason, gross, fee))
        plans = [plan for plan in plans if plan[0] in payables]
        if not plans and not cash_outs:
            return result
        run_id: int = await conn.fetchval(
            "INSERT INTO settlement_runs (as_of, carried_count) VALUES ($1, $2) RETURNING id",
            as_of, len(result.carried))
        result.run_id = run_id
        accounts: AccountCache = {}
        for merchant, dates, gross, fee in plans:
            account = settings[merchant][1] if merchant in settings else ""
            reference = payout_reference(run_id, merchant)
            payout_id: int = await conn.fetchval(
                "INSERT INTO settlement_payouts (run_id, merchant_id, payout_account, reference, gross, fee, "
                "net, first_business_date, last_business_date) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9) "
                "RETURNING id",
                run_id, merchant, account, reference, gross, fee, gross - fee, min(dates), max(dates))
            shares = await conn.fetch(
                "UPDATE settlement_accruals SET run_id = $1, payout_id = $2 "
                "WHERE merchant_id = $3 AND run_id IS NULL AND business_date = ANY($4::date[]) "
                "RETURNING acquirer_id, issuer_share, acquirer_share, platform_share",
                run_id, payout_id, merchant, dates)
            acquirer: dict[str, int] = defaultdict(int)
            for s in shares:
                acquirer[s["acquirer_id"]] += s["acquirer_share"]
            await post_payout(conn, run_id, reference, payables[merchant], gross, gross - fee,
                              sum(s["issuer_share"] for s in shares), acquirer,
                              sum(s["platform_share"] for s in shares), accounts)
            result.payouts.append(Payout(payout_id, merchant, reference, gross, fee, gross - fee,
                                         tuple(dates), payables[merchant].currency))
        result.cash_outs = await pay_cash_outs(conn, run_id, cash_outs, accounts)
        await conn.execute(
            "UPDATE settlement_runs SET payout_count = $2, payout_total = $3 WHERE id = $1",
            run_id, len(result.payouts), result.payout_total)
        await write_events(conn, [report_ready(result)])  # the outbox, in the run's transaction
    return result


def _money(minor: int, currency: str) -> dict[str, Any]:
    return {"amount": minor, "currency": currency_alpha(currency)}


def report_ready(result: RunResult) -> Event:
    """``settlement.report_ready`` (ops.outbox) of a committed run: its business dates, each merchant's
    payout (gross, fee, net as Money), the totals, and the names of the report files under
    ``<settlement.output_dir>/run_<id>/`` (settlement.reports). No payout account, bank or cardholder
    details: who was paid what is in the files, for whoever may read them."""
    assert result.run_id is not None
    run_id = result.run_id
    dates = sorted({d for p in result.payouts for d in p.business_dates})
    cur = result.currency
    outs = result.cash_outs
    payload = {
        "run_id": run_id,
        "as_of": result.as_of.isoformat(),
        "business_dates": [d.isoformat() for d in dates],
        "merchants": [
            {"merchant_id": p.merchant_id, "reference": p.reference, "gross": _money(p.gross, p.currency),
             "fee": _money(p.fee, p.currency), "net": _money(p.net, p.currency),
             "business_dates": [d.isoformat() for d in p.business_dates]}
            for p in result.payouts
        ],
        "payout_total": _money(result.payout_total, cur),
        "carried": len(result.carried),
        "cash_outs": {"count": len(outs), "total": _money(sum(c.amount for c in outs),
                                                          outs[0].currency if outs else cur)},
        "folder": f"run_{run_id}",
        "files": report_files(run_id, [p.merchant_id for p in result.payouts], cash_outs=bool(outs)),
        "occurred_at": datetime.now(UTC).isoformat(timespec="milliseconds"),
    }
    return Event("settlement.report_ready", payload)
