"""Settlement postings in the host ledger: a payout moves the merchant's payable to settled and the fee
to its earners.

For each payout, in the host ledger (settlement/README.md, "Ledger postings", is the contract):

    debit   the merchant's payable sub-accounts    gross (sales - returns - top-ups taken)
    credit  the merchant's settled account         net (paid out)
    credit  fee_income 'issuer'                    issuer share of the fee
    credit  fee_income 'acquirer:<acquirer>'       acquirer share, per acquirer
    credit  fee_income 'platform'                  platform share

(a negative share goes to the other side: returned fees flow from the earner to the settled account).
The host's transfers are one debit and one credit each, so the two sides are paired into legs
(``pair_legs``), each a ``settlement`` transfer with ``original_key`` = the payout reference, backed by
one ``ledger_settlements`` row. Everything is written with SQL against the host's documented tables in
the run's own transaction; settlement imports nothing from ``host``.

The rule for the payable (checked by ``payswitch ledger check``, ``settlement_within_payable``): a
payout's gross never exceeds the merchant's posted payable balance (the sum over its sub-accounts),
and no sub-account is taken below zero by settlement: the gross is taken from the sub-accounts with a
positive balance, in partition order. ``lock_ledger`` first waits for every posting in flight and holds
new ones until the run commits, so the balances read are exactly those of all lower posting ids.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Leg:
    debit: int  # account ids
    credit: int
    amount: int


def pair_legs(debits: list[tuple[int, int]], credits: list[tuple[int, int]]) -> list[Leg]:
    """Pair (account, amount) debits with (account, amount) credits of the same total into transfers,
    in the order given (at most len(debits) + len(credits) - 1 legs)."""
    if sum(a for _, a in debits) != sum(a for _, a in credits) or any(a <= 0 for _, a in debits + credits):
        raise AssertionError(f"cannot pair debits {debits} with credits {credits}")
    legs: list[Leg] = []
    i = j = 0
    left_d, left_c = (debits[0][1] if debits else 0), (credits[0][1] if credits else 0)
    while i < len(debits) and j < len(credits):
        amount = min(left_d, left_c)
        legs.append(Leg(debits[i][0], credits[j][0], amount))
        left_d -= amount
        left_c -= amount
        if left_d == 0:
            i += 1
            left_d = debits[i][1] if i < len(debits) else 0
        if left_c == 0:
            j += 1
            left_c = credits[j][1] if j < len(credits) else 0
    return legs


@dataclass(frozen=True)
class Payable:
    """A merchant as the host ledger has it: its id, currency and payable sub-accounts (id, balance)."""

    merchant_ref: int
    currency: str
    accounts: list[tuple[int, int]]

    @property
    def total(self) -> int:
        return sum(balance for _, balance in self.accounts)

    def take(self, gross: int) -> list[tuple[int, int]]:
        """(account, amount) to debit for ``gross``: positive balances in partition order."""
        out, left = [], gross
        for account, balance in self.accounts:
            if left == 0:
                break
            if balance > 0:
                amount = min(balance, left)
                out.append((account, amount))
                left -= amount
        if left:
            raise AssertionError(f"payable {self.total} cannot cover {gross}")
        return out


async def lock_ledger(conn: Any) -> None:
    """Wait for every host posting in flight and hold new ones until this transaction ends, so the
    payable balances read next are those of every lower posting id (the ledger check relies on it)."""
    await conn.execute("LOCK TABLE transfers IN SHARE MODE")


async def merchant_payable(conn: Any, merchant_id: str) -> Payable | None:
    """The merchant's payable sub-accounts, locked; None if the host ledger does not know it."""
    ref = await conn.fetchrow("SELECT id, currency FROM merchants WHERE merchant_id = $1", merchant_id)
    if ref is None:
        return None
    rows = await conn.fetch(
        "SELECT id, credits_posted - debits_posted AS balance FROM accounts "
        "WHERE kind = 'merchant' AND merchant_id = $1 ORDER BY part, id FOR UPDATE",
        ref["id"])
    return Payable(ref["id"], ref["currency"], [(r["id"], r["balance"]) for r in rows])


AccountCache = dict[tuple[str, str, int | None, str | None], int]


_CONFLICT = {
    "settled": "(merchant_id) WHERE kind = 'settled'",
    "fee_income": "(party, currency) WHERE kind = 'fee_income'",
    "cash_out_paid": "(currency) WHERE kind = 'cash_out_paid'",
}


async def account_of(conn: Any, kind: str, currency: str, merchant_ref: int | None, party: str | None,
                     cache: AccountCache) -> int:
    """The settled, fee-income or cash-out-paid account, created when missing (ids cached for the run)."""
    wanted = (kind, currency, merchant_ref, party)
    if wanted in cache:
        return cache[wanted]
    conflict = _CONFLICT[kind]
    await conn.execute(
        "INSERT INTO accounts (kind, currency, part, merchant_id, party, no_overdraft) "
        f"VALUES ($1, $2, 0, $3, $4, false) ON CONFLICT {conflict} DO NOTHING",
        kind, currency, merchant_ref, party)
    if kind == "settled":
        account: int = await conn.fetchval(
            "SELECT id FROM accounts WHERE kind = 'settled' AND merchant_id = $1", merchant_ref)
    elif kind == "cash_out_paid":
        account = await conn.fetchval(
            "SELECT id FROM accounts WHERE kind = 'cash_out_paid' AND currency = $1", currency)
    else:
        account = await conn.fetchval(
            "SELECT id FROM accounts WHERE kind = 'fee_income' AND party = $1 AND currency = $2",
            party, currency)
    cache[wanted] = account
    return account


async def post_payout(conn: Any, run_id: int, reference: str, payable: Payable, gross: int, net: int,
                      issuer_share: int, acquirer_shares: Mapping[str, int], platform_share: int,
                      accounts: AccountCache | None = None) -> int:
    """Post one payout into the host ledger (caller: inside the run's transaction, after
    ``lock_ledger`` and ``merchant_payable``); returns the number of transfers written. ``accounts``:
    a cache of account ids the run's payouts share."""
    cache: AccountCache = {} if accounts is None else accounts
    currency = payable.currency
    debits = payable.take(gross)
    credits = [(await account_of(conn, "settled", currency, payable.merchant_ref, None, cache), net)]
    shares = {"issuer": issuer_share, **{f"acquirer:{a}": s for a, s in sorted(acquirer_shares.items())},
              "platform": platform_share}
    for party, share in shares.items():
        if share:
            account = await account_of(conn, "fee_income", currency, None, party, cache)
            (credits if share > 0 else debits).append((account, abs(share)))
    legs = pair_legs(debits, credits)
    await conn.execute(
        "INSERT INTO ledger_settlements (reference, run_id, merchant_id, currency, gross, fee, net) "
        "VALUES ($1, $2, $3, $4, $5, $6, $7)",
        reference, run_id, payable.merchant_ref, currency, gross, gross - net, net)
    await insert_transfers(conn, "settlement", currency,
                           [f"settle:{reference}:{n:03d}" for n in range(1, len(legs) + 1)], legs,
                           [reference] * len(legs), [None] * len(legs))
    return len(legs)


async def insert_transfers(conn: Any, code: str, currency: str, keys: list[str], legs: list[Leg],
                           original_keys: list[str], card_ids: list[int | None]) -> None:
    """Insert single-phase host transfers and add each to its accounts' posted sums, in one statement:
    the one way settlement writes the host ledger (merchant payouts, code ``settlement``; cash-outs,
    code ``cash_out_payout``, settlement.cashouts)."""
    await conn.execute(
        """
        WITH legs AS (
            SELECT * FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::bigint[], $5::text[],
                                 $6::bigint[]) AS l(key, dr, cr, amount, original_key, card_id)
        ), ins AS (
            INSERT INTO transfers (key, debit_account_id, credit_account_id, amount, currency, phase, code,
                                   card_id, original_key)
            SELECT key, dr, cr, amount, $7, 'single', $8, card_id, original_key FROM legs ORDER BY key
        ), sums AS (
            SELECT account, sum(d) AS d, sum(c) AS c FROM (
                SELECT dr AS account, amount AS d, 0 AS c FROM legs
                UNION ALL SELECT cr, 0, amount FROM legs) x GROUP BY account
        )
        UPDATE accounts a SET debits_posted = a.debits_posted + s.d, credits_posted = a.credits_posted + s.c
        FROM sums s WHERE a.id = s.account
        """,
        keys, [g.debit for g in legs], [g.credit for g in legs], [g.amount for g in legs], original_keys,
        card_ids, currency, code)


async def check_postings(conn: Any) -> list[str]:
    """Problems found (empty = the book is sound): every payout is in the host ledger exactly as paid
    (a ``ledger_settlements`` row with its run, merchant, gross, fee and net, and settlement transfers
    adding up to them), every ledger settlement is a payout, and the payable debited equals the accruals
    it paid. Payouts made before the host ledger took settlement postings are checked in the old
    ``settlement_postings`` book instead. Cash-outs: every one paid has its host transfer and back
    (settlement.cashouts.check_cash_outs)."""
    problems: list[str] = []
    for r in await conn.fetch(
        """
        SELECT p.id, p.reference, p.merchant_id, p.gross, p.fee, p.net, coalesce(a.gross, 0) AS accrued,
               l.reference IS NOT NULL AS in_ledger, l.run_id = p.run_id AS same_run,
               m.merchant_id AS ledger_merchant, l.gross AS l_gross, l.fee AS l_fee, l.net AS l_net,
               coalesce(t.payable, 0) AS payable, coalesce(t.settled, 0) AS settled,
               EXISTS (SELECT 1 FROM settlement_postings o WHERE o.payout_id = p.id) AS legacy
        FROM settlement_payouts p
        LEFT JOIN (SELECT payout_id, sum(sales - returns - topups) AS gross FROM settlement_accruals
                   GROUP BY payout_id) a ON a.payout_id = p.id
        LEFT JOIN ledger_settlements l ON l.reference = p.reference
        LEFT JOIN merchants m ON m.id = l.merchant_id
        LEFT JOIN (SELECT t.original_key,
                          sum(t.amount) FILTER (WHERE d.kind = 'merchant') AS payable,
                          sum(t.amount) FILTER (WHERE c.kind = 'settled') AS settled
                   FROM transfers t JOIN accounts d ON d.id = t.debit_account_id
                   JOIN accounts c ON c.id = t.credit_account_id
                   WHERE t.code = 'settlement' GROUP BY t.original_key) t ON t.original_key = p.reference
        ORDER BY p.id
        """
    ):
        where = f"payout {r['id']} ({r['reference']})"
        if r["gross"] != r["accrued"]:
            problems.append(f"{where}: gross {r['gross']} but accruals {r['accrued']}")
        if r["legacy"]:
            continue
        if not r["in_ledger"]:
            problems.append(f"{where}: not in the host ledger (no ledger_settlements row)")
            continue
        seen = (r["ledger_merchant"], r["l_gross"], r["l_fee"], r["l_net"], r["payable"], r["settled"])
        want = (r["merchant_id"], r["gross"], r["fee"], r["net"], r["gross"], r["net"])
        if not r["same_run"] or seen != want:
            problems.append(
                f"{where}: ledger has merchant {seen[0]}, gross {seen[1]}, fee {seen[2]}, net {seen[3]}, "
                f"payable debited {seen[4]}, settled credited {seen[5]}; payout says {want[:4]}")
    for r in await conn.fetch(
        "SELECT reference FROM ledger_settlements l WHERE NOT EXISTS "
        "(SELECT 1 FROM settlement_payouts p WHERE p.reference = l.reference) ORDER BY reference"
    ):
        problems.append(f"ledger settlement {r['reference']} has no payout")
    problems += await _check_legacy(conn)
    from settlement.cashouts import check_cash_outs  # (it imports this module)

    problems += await check_cash_outs(conn)
    return problems


async def _check_legacy(conn: Any) -> list[str]:
    """The old book (settlement/migrations/0001, no longer written): it still balances and matches."""
    problems: list[str] = []
    for r in await conn.fetch(
        "SELECT payout_id, sum(debit) AS d, sum(credit) AS c FROM settlement_postings "
        "GROUP BY payout_id HAVING sum(debit) <> sum(credit)"
    ):
        problems.append(f"payout {r['payout_id']}: debits {r['d']} <> credits {r['c']}")
    for r in await conn.fetch(
        """
        SELECT p.id, p.gross, p.net, s.payable, s.settled
        FROM settlement_payouts p
        JOIN (SELECT payout_id,
                     sum(debit - credit) FILTER (WHERE account LIKE 'merchant\\_payable:%') AS payable,
                     sum(credit - debit) FILTER (WHERE account LIKE 'merchant\\_settled:%') AS settled
              FROM settlement_postings GROUP BY payout_id) s ON s.payout_id = p.id
        WHERE p.gross <> coalesce(s.payable, 0) OR p.net <> coalesce(s.settled, 0)
        """
    ):
        problems.append(f"payout {r['id']}: gross {r['gross']}, payable posted {r['payable']}, "
                        f"net {r['net']}, settled posted {r['settled']}")
    return problems
