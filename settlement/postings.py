"""Settlement postings: a payout moves the merchant's payable to settled and the fee to its earners.

For each payout, one balanced set of entries:

    debit   merchant_payable:<merchant>        gross (sales - returns - top-ups taken)
    credit  merchant_settled:<merchant>        net (paid out)
    credit  fee_income:issuer                  issuer share of the fee
    credit  fee_income:acquirer:<acquirer>     acquirer share, per acquirer
    credit  fee_income:platform                platform share

(a negative amount goes to the other side). ``post_payout`` is the one place postings are written.
They go to settlement's own double-entry table: the host ledger (host/migrations/0001) has no account
kind or transfer code for settlement and requires a card on every transfer, so it cannot take them yet.
When it can, only this module changes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Entry:
    account: str
    amount: int  # > 0 debit, < 0 credit


def payout_entries(merchant_id: str, gross: int, net: int, issuer_share: int,
                   acquirer_shares: Mapping[str, int], platform_share: int) -> list[Entry]:
    entries = [
        Entry(f"merchant_payable:{merchant_id}", gross),
        Entry(f"merchant_settled:{merchant_id}", -net),
        Entry("fee_income:issuer", -issuer_share),
        *(Entry(f"fee_income:acquirer:{a}", -s) for a, s in sorted(acquirer_shares.items())),
        Entry("fee_income:platform", -platform_share),
    ]
    entries = [e for e in entries if e.amount]
    if sum(e.amount for e in entries) != 0:
        raise AssertionError(f"unbalanced settlement postings for {merchant_id}: {entries}")
    return entries


async def post_payout(conn: Any, run_id: int, payout_id: int, entries: list[Entry]) -> None:
    await conn.executemany(
        "INSERT INTO settlement_postings (run_id, payout_id, account, debit, credit) VALUES ($1,$2,$3,$4,$5)",
        [(run_id, payout_id, e.account, max(e.amount, 0), max(-e.amount, 0)) for e in entries],
    )


async def check_postings(conn: Any) -> list[str]:
    """Problems found (empty = the book is sound): every payout balances, matches its payout row, and
    the payable debited equals the accruals it paid."""
    problems: list[str] = []
    for r in await conn.fetch(
        "SELECT payout_id, sum(debit) AS d, sum(credit) AS c FROM settlement_postings "
        "GROUP BY payout_id HAVING sum(debit) <> sum(credit)"
    ):
        problems.append(f"payout {r['payout_id']}: debits {r['d']} <> credits {r['c']}")
    for r in await conn.fetch(
        """
        SELECT p.id, p.gross, p.net, coalesce(a.gross, 0) AS accrued,
               coalesce(s.payable, 0) AS payable, coalesce(s.settled, 0) AS settled
        FROM settlement_payouts p
        LEFT JOIN (SELECT payout_id, sum(sales - returns - topups) AS gross FROM settlement_accruals
                   GROUP BY payout_id) a ON a.payout_id = p.id
        LEFT JOIN (SELECT payout_id,
                          sum(debit - credit) FILTER (WHERE account LIKE 'merchant\\_payable:%') AS payable,
                          sum(credit - debit) FILTER (WHERE account LIKE 'merchant\\_settled:%') AS settled
                   FROM settlement_postings GROUP BY payout_id) s ON s.payout_id = p.id
        WHERE p.gross <> coalesce(a.gross, 0) OR p.gross <> coalesce(s.payable, 0)
           OR p.net <> coalesce(s.settled, 0)
        """
    ):
        problems.append(
            f"payout {r['id']}: gross {r['gross']}, accruals {r['accrued']}, payable posted {r['payable']}, "
            f"net {r['net']}, settled posted {r['settled']}"
        )
    total = await conn.fetchval("SELECT coalesce(sum(debit) - sum(credit), 0) FROM settlement_postings")
    if total != 0:
        problems.append(f"the settlement book does not sum to zero: {total}")
    return problems
