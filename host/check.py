"""`payswitch ledger check`: the ledger's invariants, each a query returning the offending ids.

All run in one REPEATABLE READ snapshot, so the check can run while the host is posting.

- ``transfers_balance``: every transfer's two legs (ledger_entries) sum to zero, its accounts exist and
  are in its currency, and a completion / release resolves an existing hold between the same accounts
  (a release for exactly the hold's amount).
- ``accounts_match_entries``: each account's four sums equal the sums recomputed from its transfers.
- ``ledger_sums_to_zero``: over all accounts, credits minus debits is zero (posted and pending).
- ``prepaid_not_negative``: no prepaid (no-overdraft) account has debits posted + pending above its
  credits posted.
- ``one_transfer_per_approved_request``: every approved financial request made exactly one transfer
  (key = request key; operator unloads and forfeits included); every request marked posted has one;
  every transfer that is not the sweeper's, settlement's or a cash-out payout belongs to an approved,
  posted request.
- ``settlement_backed_by_run``: every settlement transfer (code ``settlement``, no card) belongs to a
  payout of a settlement run (``ledger_settlements`` row, original_key = its reference) in its
  currency and only moves money from that merchant's payable (or a fee-income account) to that
  merchant's settled account (or a fee-income account); each payout's legs add up to exactly its
  gross (payable debited), net (settled credited) and fee (fee income, credits minus debits); and no
  other transfer touches a settled or fee-income account.
- ``settlement_within_payable``: a settlement never takes more than the merchant has been credited:
  each payable sub-account's posted balance, run in posting-id order, is not below zero right after
  any settlement debit. (Settlement takes ``LOCK transfers IN SHARE MODE`` before it reads the
  balances, so every posting with a lower id was committed and seen; a refund posted later may still
  take a sub-account below zero: that is the merchant owing money, carried by the next run.)
- ``cash_out_from_unloads_only``: every unload (``admin_unload``) moves money from its card's account to
  the cash-out payable (kind ``cash_out``); no transfer but an unload or a cash-out payout touches a
  cash-out payable; and each one's sums are its unloads (credits) and payouts (debits), nothing pending,
  never below zero (``account:<id>`` names one that is not).
- ``cash_out_paid_once``: every cash-out payout (``cash_out_payout``, written by settlement) pays one
  unload (original_key) exactly: its key is ``cashout:<unload key>``, same card, amount and currency,
  from the cash-out payable the unload credited to a ``cash_out_paid`` account; no unload is paid
  twice; nothing else touches a ``cash_out_paid`` account. So a cash-out is paid at most once and
  never more than was unloaded.
- ``unload_destination_of_its_unload``: every payout destination captured by ``card unload``
  (``unload_destinations``, host.bank_accounts) whose key has a transfer belongs to an unload of the
  same card, and a bank-account destination is an account registered to its cardholder before it was
  captured (a ``set`` in ``bank_account_events`` of that masked account). So settlement, which pays each
  unload to its destination (``settlement check`` proves that side), pays a cardholder's own registered
  account or the desk, nothing else.
- ``breakage_from_forfeits_only``: every forfeit moves money from its card's account to breakage
  income (kind ``breakage``), once per card, and the card is closed; no other transfer touches a
  breakage account.
- ``replacement_moves_whole_balance``: every replacement (``card replace``, host.replace) is one
  single-phase transfer keyed ``replace:<old card>`` with original_key ``card:<old card>``, from that
  card's account to the account of the card its replaced_by names, same product and cardholder, for
  exactly the old card's posted balance just before it (the sum of the account's earlier postings),
  once per card; and a card that names a replacement is not live (lost, stolen or closed).
- ``pin_change_moves_nothing``: a PIN change at a terminal (``pin_change``, specs/README.md) has no
  amount, is never posted, and no transfer carries its key or names it as an original (its reversal
  undoes nothing); an approved one names its card.
- ``offline_receivables``: every card's offline receivable (host.offline) is its own card's, touched
  only by that card's shortfalls (with an approved, posted offline advice, at most its amount) and
  repayments (with an approved, posted top-up or load, at most its amount), and never below zero; the
  cards owing one are listed after the checks (``receivables``: card id, masked PAN, yuan).
- ``payment_code_paid_once``: every used payment code (host.payment_codes) was used by one approved,
  posted purchase or pre-auth of its own card (its used_key is that request's key; a unique index
  makes it one), within the code's cap and before it expired (used_at, the batch's time, before
  expires_at).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

CHECKS: dict[str, str] = {
    "transfers_balance": """
        SELECT DISTINCT t.key FROM transfers t
        LEFT JOIN accounts d ON d.id = t.debit_account_id
        LEFT JOIN accounts c ON c.id = t.credit_account_id
        LEFT JOIN transfers p ON p.key = t.pending_key
        WHERE d.id IS NULL OR c.id IS NULL OR d.currency <> t.currency OR c.currency <> t.currency
           OR t.amount <= 0 OR t.debit_account_id = t.credit_account_id
           OR (t.pending_key IS NOT NULL AND (p.key IS NULL OR p.phase <> 'pending'
               OR p.debit_account_id <> t.debit_account_id OR p.credit_account_id <> t.credit_account_id
               OR (t.phase = 'void_pending' AND t.amount <> p.amount)))
        UNION
        SELECT key FROM ledger_entries GROUP BY transfer_id, key HAVING sum(amount) <> 0 OR count(*) <> 2
        ORDER BY 1 LIMIT 1000""",
    "accounts_match_entries": """
        WITH t AS (
            SELECT t.debit_account_id AS dr, t.credit_account_id AS cr,
                   CASE WHEN t.phase IN ('single', 'post_pending') THEN t.amount ELSE 0 END AS posted,
                   CASE WHEN t.phase = 'pending' THEN t.amount
                        WHEN t.phase IN ('post_pending', 'void_pending') THEN -coalesce(p.amount, 0)
                        ELSE 0 END AS pending
            FROM transfers t LEFT JOIN transfers p ON p.key = t.pending_key
        ), sums AS (
            SELECT account, sum(dpe) AS dpe, sum(dpo) AS dpo, sum(cpe) AS cpe, sum(cpo) AS cpo FROM (
                SELECT dr AS account, pending AS dpe, posted AS dpo, 0 AS cpe, 0 AS cpo FROM t
                UNION ALL
                SELECT cr, 0, 0, pending, posted FROM t
            ) legs GROUP BY account
        )
        SELECT a.id::text FROM accounts a LEFT JOIN sums s ON s.account = a.id
        WHERE a.debits_pending <> coalesce(s.dpe, 0) OR a.debits_posted <> coalesce(s.dpo, 0)
           OR a.credits_pending <> coalesce(s.cpe, 0) OR a.credits_posted <> coalesce(s.cpo, 0)
        ORDER BY a.id LIMIT 1000""",
    "ledger_sums_to_zero": """
        SELECT currency FROM accounts GROUP BY currency
        HAVING sum(credits_posted - debits_posted) <> 0 OR sum(credits_pending - debits_pending) <> 0""",
    "prepaid_not_negative": """
        SELECT id::text FROM accounts
        WHERE no_overdraft AND debits_posted + debits_pending > credits_posted
        ORDER BY id LIMIT 1000""",
    "one_transfer_per_approved_request": """
        WITH n AS (SELECT key, count(*) AS transfers FROM transfers GROUP BY key)
        SELECT r.key FROM auth_requests r LEFT JOIN n ON n.key = r.key
        WHERE (r.response_code = '00' AND r.txn IN ('purchase', 'topup', 'void', 'refund', 'preauth',
                                                    'preauth_void', 'completion', 'admin_load',
                                                    'admin_unload', 'forfeit', 'offline')
               AND (NOT r.posted OR coalesce(n.transfers, 0) <> 1))
           OR (r.posted AND (r.response_code <> '00' OR coalesce(n.transfers, 0) <> 1))
           OR (NOT r.posted AND coalesce(n.transfers, 0) <> 0)
        UNION
        SELECT t.key FROM transfers t LEFT JOIN auth_requests r ON r.key = t.key
        WHERE t.code NOT IN ('expiry', 'settlement', 'cash_out_payout', 'offline_shortfall', 'offline_repay')
          AND (r.key IS NULL OR NOT r.posted OR r.response_code <> '00')
        ORDER BY 1 LIMIT 1000""",
    "settlement_backed_by_run": """
        WITH legs AS (
            SELECT t.key, t.original_key, t.amount, t.currency,
                   d.kind AS dk, d.merchant_id AS dm, c.kind AS ck, c.merchant_id AS cm
            FROM transfers t
            LEFT JOIN accounts d ON d.id = t.debit_account_id
            LEFT JOIN accounts c ON c.id = t.credit_account_id
            WHERE t.code = 'settlement'
        ), payouts AS (
            SELECT original_key,
                   coalesce(sum(amount) FILTER (WHERE dk = 'merchant'), 0) AS payable,
                   coalesce(sum(amount) FILTER (WHERE ck = 'settled'), 0) AS settled,
                   coalesce(sum(amount) FILTER (WHERE ck = 'fee_income'), 0)
                   - coalesce(sum(amount) FILTER (WHERE dk = 'fee_income'), 0) AS fee
            FROM legs GROUP BY original_key
        )
        SELECT l.key FROM legs l LEFT JOIN ledger_settlements s ON s.reference = l.original_key
        WHERE s.reference IS NULL OR l.currency <> s.currency
           OR NOT ((l.dk = 'merchant' AND l.dm = s.merchant_id) OR l.dk = 'fee_income')
           OR NOT ((l.ck = 'settled' AND l.cm = s.merchant_id) OR l.ck = 'fee_income')
        UNION
        SELECT 'payout:' || s.reference FROM ledger_settlements s
        LEFT JOIN payouts p ON p.original_key = s.reference
        WHERE coalesce(p.payable, 0) <> s.gross OR coalesce(p.settled, 0) <> s.net
           OR coalesce(p.fee, 0) <> s.fee
        UNION
        SELECT t.key FROM transfers t
        WHERE t.code <> 'settlement'
          AND (t.debit_account_id IN (SELECT id FROM accounts WHERE kind IN ('settled', 'fee_income'))
               OR t.credit_account_id IN (SELECT id FROM accounts WHERE kind IN ('settled', 'fee_income')))
        ORDER BY 1 LIMIT 1000""",
    "settlement_within_payable": """
        WITH payable AS (
            SELECT DISTINCT t.debit_account_id AS id FROM transfers t
            JOIN accounts a ON a.id = t.debit_account_id AND a.kind = 'merchant'
            WHERE t.code = 'settlement'
        ), legs AS (
            SELECT id, key, code, credit_account_id AS account, amount FROM transfers
            WHERE credit_account_id IN (SELECT id FROM payable) AND phase IN ('single', 'post_pending')
            UNION ALL
            SELECT id, key, code, debit_account_id, -amount FROM transfers
            WHERE debit_account_id IN (SELECT id FROM payable) AND phase IN ('single', 'post_pending')
        ), running AS (
            SELECT key, code, sum(amount) OVER (PARTITION BY account ORDER BY id) AS balance FROM legs
        )
        SELECT DISTINCT key FROM running WHERE code = 'settlement' AND balance < 0
        ORDER BY 1 LIMIT 1000""",
    "cash_out_from_unloads_only": """
        WITH cash_out AS (SELECT id FROM accounts WHERE kind = 'cash_out')
        SELECT t.key FROM transfers t
        LEFT JOIN cards c ON c.id = t.card_id
        WHERE t.code = 'admin_unload'
          AND (t.phase <> 'single' OR c.account_id IS DISTINCT FROM t.debit_account_id
               OR t.credit_account_id NOT IN (SELECT id FROM cash_out))
        UNION
        SELECT t.key FROM transfers t
        WHERE t.code NOT IN ('admin_unload', 'cash_out_payout')
          AND (t.debit_account_id IN (SELECT id FROM cash_out)
               OR t.credit_account_id IN (SELECT id FROM cash_out))
        UNION
        SELECT 'account:' || a.id FROM accounts a
        LEFT JOIN (SELECT credit_account_id AS id, sum(amount) AS n FROM transfers
                   WHERE code = 'admin_unload' GROUP BY 1) u ON u.id = a.id
        LEFT JOIN (SELECT debit_account_id AS id, sum(amount) AS n FROM transfers
                   WHERE code = 'cash_out_payout' GROUP BY 1) p ON p.id = a.id
        WHERE a.kind = 'cash_out'
          AND (a.credits_posted <> coalesce(u.n, 0) OR a.debits_posted <> coalesce(p.n, 0)
               OR a.debits_posted > a.credits_posted OR a.debits_pending <> 0 OR a.credits_pending <> 0)
        ORDER BY 1 LIMIT 1000""",
    "cash_out_paid_once": """
        WITH paid AS (SELECT id FROM accounts WHERE kind = 'cash_out_paid')
        SELECT p.key FROM transfers p
        LEFT JOIN transfers u ON u.key = p.original_key AND u.code = 'admin_unload'
        WHERE p.code = 'cash_out_payout'
          AND (u.key IS NULL OR p.key <> 'cashout:' || u.key OR p.phase <> 'single' OR p.amount <> u.amount
               OR p.card_id IS DISTINCT FROM u.card_id OR p.currency <> u.currency
               OR p.debit_account_id <> u.credit_account_id
               OR p.credit_account_id NOT IN (SELECT id FROM paid))
        UNION
        SELECT original_key FROM transfers WHERE code = 'cash_out_payout'
        GROUP BY original_key HAVING count(*) > 1
        UNION
        SELECT t.key FROM transfers t
        WHERE t.code <> 'cash_out_payout'
          AND (t.debit_account_id IN (SELECT id FROM paid) OR t.credit_account_id IN (SELECT id FROM paid))
        ORDER BY 1 LIMIT 1000""",
    "unload_destination_of_its_unload": """
        SELECT d.unload_key FROM unload_destinations d JOIN transfers t ON t.key = d.unload_key
        WHERE t.code <> 'admin_unload' OR t.card_id <> d.card_id
           OR (d.payee = 'bank_account' AND NOT EXISTS (
                   SELECT 1 FROM bank_account_events e WHERE e.cardholder_id = d.cardholder_id
                   AND e.action = 'set' AND e.account_masked = d.account_masked AND e.at <= d.created_at))
        ORDER BY 1 LIMIT 1000""",
    "breakage_from_forfeits_only": """
        WITH breakage AS (SELECT id FROM accounts WHERE kind = 'breakage')
        SELECT t.key FROM transfers t
        LEFT JOIN cards c ON c.id = t.card_id
        WHERE t.code = 'forfeit'
          AND (t.phase <> 'single' OR c.account_id IS DISTINCT FROM t.debit_account_id
               OR t.credit_account_id NOT IN (SELECT id FROM breakage) OR c.state IS DISTINCT FROM 'closed')
        UNION
        SELECT 'card:' || card_id FROM transfers WHERE code = 'forfeit' GROUP BY card_id HAVING count(*) > 1
        UNION
        SELECT t.key FROM transfers t
        WHERE t.code <> 'forfeit'
          AND (t.debit_account_id IN (SELECT id FROM breakage)
               OR t.credit_account_id IN (SELECT id FROM breakage))
        ORDER BY 1 LIMIT 1000""",
    "replacement_moves_whole_balance": """
        SELECT t.key FROM transfers t
        LEFT JOIN cards o ON o.id = t.card_id
        LEFT JOIN cards n ON n.id = o.replaced_by
        WHERE t.code = 'replacement'
          AND (t.phase <> 'single' OR n.id IS NULL OR t.key <> 'replace:' || o.id
               OR t.original_key IS DISTINCT FROM 'card:' || o.id
               OR t.debit_account_id <> o.account_id OR t.credit_account_id <> n.account_id
               OR n.product_id <> o.product_id OR n.cardholder_id IS DISTINCT FROM o.cardholder_id
               OR o.state NOT IN ('lost', 'stolen', 'closed')
               OR t.amount <> (SELECT coalesce(sum(CASE WHEN x.credit_account_id = o.account_id
                                                        THEN x.amount ELSE -x.amount END), 0)
                               FROM transfers x
                               WHERE x.id < t.id AND x.phase IN ('single', 'post_pending')
                                 AND o.account_id IN (x.debit_account_id, x.credit_account_id)))
        UNION
        SELECT 'card:' || card_id FROM transfers WHERE code = 'replacement'
        GROUP BY card_id HAVING count(*) > 1
        UNION
        SELECT 'card:' || id FROM cards
        WHERE replaced_by IS NOT NULL AND state NOT IN ('lost', 'stolen', 'closed')
        ORDER BY 1 LIMIT 1000""",
    "pin_change_moves_nothing": """
        SELECT r.key FROM auth_requests r
        WHERE r.txn = 'pin_change'
          AND (r.posted OR r.amount <> 0 OR (r.card_id IS NULL AND r.response_code = '00')
               OR EXISTS (SELECT 1 FROM transfers t WHERE t.key = r.key OR t.original_key = r.key))
        ORDER BY 1 LIMIT 1000""",
    "payment_code_paid_once": """
        SELECT 'code:' || pc.id FROM payment_codes pc LEFT JOIN auth_requests r ON r.key = pc.used_key
        WHERE pc.used_key IS NOT NULL
          AND (r.key IS NULL OR r.response_code <> '00' OR NOT r.posted OR r.card_id <> pc.card_id
               OR r.txn NOT IN ('purchase', 'preauth') OR r.amount > coalesce(pc.max_amount, r.amount)
               OR pc.used_at >= pc.expires_at)
        ORDER BY pc.id LIMIT 1000""",
    # Offline advices (host.offline, migration 0027). A receivable (kind offline_receivable) belongs to
    # one card, which names it; only that card's shortfalls (debits) and repayments (credits) touch it;
    # a shortfall goes with an approved, posted offline advice of its card and is at most the sale (one
    # per advice), or with the reversal of a load that repaid, giving the debt back; a repayment goes
    # with an approved, posted top-up or load of its card and is at most the load; and what is owed
    # (debits minus credits, = shortfalls minus repayments since accounts_match_entries holds) is
    # never below zero, nothing pending.
    "offline_receivables": """
        SELECT 'account:' || a.id FROM accounts a LEFT JOIN cards c ON c.id = a.card_id
        WHERE a.kind = 'offline_receivable'
          AND (c.id IS NULL OR c.offline_receivable_id IS DISTINCT FROM a.id
               OR a.credits_posted > a.debits_posted OR a.debits_pending <> 0 OR a.credits_pending <> 0)
        UNION
        SELECT t.key FROM transfers t
        JOIN accounts a ON a.id IN (t.debit_account_id, t.credit_account_id) AND a.kind = 'offline_receivable'
        LEFT JOIN cards c ON c.id = t.card_id
        LEFT JOIN auth_requests r ON r.key = t.original_key
        WHERE NOT (
            (t.code = 'offline_shortfall' AND t.debit_account_id = a.id AND t.credit_account_id = c.account_id
             AND r.txn IN ('offline', 'reversal') AND r.amount >= t.amount)
            OR (t.code = 'offline_repay' AND t.credit_account_id = a.id AND t.debit_account_id = c.account_id
                AND r.txn IN ('topup', 'admin_load') AND r.amount >= t.amount))
           OR a.card_id <> t.card_id OR t.phase <> 'single' OR r.key IS NULL OR r.response_code <> '00'
           OR NOT r.posted OR r.card_id IS DISTINCT FROM t.card_id
        UNION
        SELECT t.key FROM transfers t LEFT JOIN accounts d ON d.id = t.debit_account_id
        LEFT JOIN accounts c ON c.id = t.credit_account_id
        WHERE t.code IN ('offline_shortfall', 'offline_repay')
          AND NOT (d.kind = 'offline_receivable' OR c.kind = 'offline_receivable')
        ORDER BY 1 LIMIT 1000""",
}


@dataclass(frozen=True)
class CheckResult:
    name: str
    offenders: list[str]

    @property
    def ok(self) -> bool:
        return not self.offenders


async def run_checks(conn: Any) -> list[CheckResult]:
    results = []
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        for name, sql in CHECKS.items():
            rows = await conn.fetch(sql)
            results.append(CheckResult(name, [str(r[0]) for r in rows]))
    return results


@dataclass(frozen=True)
class Receivable:
    """A card owing offline sales (host.offline): `ledger check` names each one."""

    card_id: int
    pan_masked: str
    owed: int  # minor units (fen)

    def line(self) -> str:
        owed = f"{self.owed // 100}.{self.owed % 100:02d}"
        return f"offline receivable: card {self.card_id} {self.pan_masked} owes {owed} yuan"


async def receivables(conn: Any) -> list[Receivable]:
    """The cards whose offline receivable is outstanding, most owed first."""
    rows = await conn.fetch(
        """SELECT c.id, c.pan_masked, a.debits_posted - a.credits_posted AS owed
           FROM accounts a JOIN cards c ON c.id = a.card_id
           WHERE a.kind = 'offline_receivable' AND a.debits_posted > a.credits_posted
           ORDER BY owed DESC, c.id"""
    )
    return [Receivable(r["id"], r["pan_masked"], r["owed"]) for r in rows]


async def counts(conn: Any) -> dict[str, int]:
    row = await conn.fetchrow(
        "SELECT (SELECT count(*) FROM transfers) AS transfers, (SELECT count(*) FROM accounts) AS accounts,"
        " (SELECT count(*) FROM auth_requests) AS requests"
    )
    return dict(row)
