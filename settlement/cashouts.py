"""Cash-outs: settlement pays out to the cardholder what `payswitch card unload` took off a card.

An unload (host transfer ``code = 'admin_unload'``, key ``unload:<reference>``) moved the money from the
card's account to the host's cash-out payable (account kind ``cash_out``, one per currency). Every
settlement run pays every unload not yet paid, whatever its date (a cash-out has no merchant cycle to
wait for), in the run's own transaction:

- one ``settlement_cashouts`` row (run, the unload's reference and key, card, masked PAN, amount), and
- one host transfer ``code = 'cash_out_payout'``: debit the cash-out payable the unload credited,
  credit the ``cash_out_paid`` account of the currency (created when missing), card_id = the unload's
  card, ``original_key`` = the unload's key, ``key = 'cashout:' || original_key``. The key is unique,
  so an unload is paid at most once however often a run is repeated, and the cash-out payable is
  ``no_overdraft``: the database itself refuses paying more than was unloaded.

Where it is paid is what the host captured at the unload (``unload_destinations``, host migration
0019, read by SQL like the rest): the cardholder's bank account as registered then (payee
``bank_account``: a **cardholder payout**: bank name, masked account, holder, and the account number as
the host stores it, HSM ciphertext under its ``pii_data`` key, which only the bank gateway's HSM
decrypts), or the programme's desk (payee ``desk``; also every unload made before that migration).
The row copies it (settlement migration 0005), so a bank account changed after the unload changes
nothing.

Each becomes a line of the run's payout file (the unload's reference, no merchant, ``payee()``) and of
``cashouts_<run>.csv``. Written through ``settlement.postings`` (the one place settlement writes host
transfers); ``payswitch ledger check`` proves the host side (``cash_out_paid_once``),
``check_cash_outs`` settlement's (each row has its transfer and back, and was paid where its unload's
destination says).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from settlement.postings import AccountCache, Leg, account_of, insert_transfers

UNLOAD_PREFIX = "unload:"


PAYEES = ("bank_account", "desk")


def payee(card_id: int, cardholder_id: int | None = None) -> str:
    """The payout file's account of a cash-out: ``cardholder:<id>`` for one to that cardholder's bank
    account (the account is in the line's bank columns), else ``cardholder:card:<id>``: the cardholder
    of the card unloaded, paid at the programme's desk."""
    return f"cardholder:{cardholder_id}" if cardholder_id is not None else f"cardholder:card:{card_id}"


def payee_type(payee: str) -> str:
    """The payout file's payee type of a cash-out paid to ``payee`` (bank_account / desk)."""
    return f"cardholder_{payee}"


# The destination is used only as captured for this very unload (same key and card).
_UNPAID_SQL = """
SELECT u.key, u.card_id, c.pan_masked, u.currency, u.amount, u.credit_account_id, u.created_at,
       coalesce(d.payee, 'desk') AS payee, d.cardholder_id, d.bank_name, d.account_enc, d.account_masked,
       d.account_holder
FROM transfers u JOIN cards c ON c.id = u.card_id
LEFT JOIN unload_destinations d ON d.unload_key = u.key AND d.card_id = u.card_id AND d.payee = 'bank_account'
WHERE u.code = 'admin_unload' AND NOT EXISTS (SELECT 1 FROM transfers p WHERE p.key = 'cashout:' || u.key)
ORDER BY u.id
"""


@dataclass(frozen=True)
class CashOut:
    unload_key: str  # the host transfer key of the unload
    card_id: int
    pan_masked: str
    currency: str  # ISO 4217 numeric
    amount: int
    cash_out_account: int  # the cash-out payable the unload credited
    unloaded_at: datetime
    payee: str = "desk"  # bank_account: the cardholder's, as captured at the unload; desk: at the desk
    cardholder_id: int | None = None  # bank_account only, as are the four below
    bank_name: str | None = None
    account_enc: str | None = None  # HSM ciphertext as the host stores it: never clear
    account_masked: str | None = None
    account_holder: str | None = None

    @property
    def reference(self) -> str:
        """The operator's reference of the unload (`card unload --reference`)."""
        return self.unload_key.removeprefix(UNLOAD_PREFIX)


async def unpaid_cash_outs(conn: Any) -> list[CashOut]:
    """Every unload the ledger has that no cash-out payout names yet, oldest first."""
    return [
        CashOut(r["key"], r["card_id"], r["pan_masked"], r["currency"], r["amount"], r["credit_account_id"],
                r["created_at"], r["payee"], r["cardholder_id"], r["bank_name"], r["account_enc"],
                r["account_masked"], r["account_holder"])
        for r in await conn.fetch(_UNPAID_SQL)
    ]


async def pay_cash_outs(conn: Any, run_id: int, cash_outs: list[CashOut],
                        accounts: AccountCache | None = None) -> list[CashOut]:
    """Pay ``cash_outs`` in run ``run_id`` (caller: inside the run's transaction, holding its lock)."""
    if not cash_outs:
        return []
    cache: AccountCache = {} if accounts is None else accounts
    await conn.executemany(
        "INSERT INTO settlement_cashouts (run_id, reference, unload_key, card_id, pan_masked, currency,"
        " amount, unloaded_at, payee, cardholder_id, bank_name, account_enc, account_masked, account_holder)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
        [(run_id, c.reference, c.unload_key, c.card_id, c.pan_masked, c.currency, c.amount, c.unloaded_at,
          c.payee, c.cardholder_id, c.bank_name, c.account_enc, c.account_masked, c.account_holder)
         for c in cash_outs])
    for currency in sorted({c.currency for c in cash_outs}):
        mine = [c for c in cash_outs if c.currency == currency]
        paid = await account_of(conn, "cash_out_paid", currency, None, None, cache)
        await insert_transfers(
            conn, "cash_out_payout", currency, [f"cashout:{c.unload_key}" for c in mine],
            [Leg(c.cash_out_account, paid, c.amount) for c in mine], [c.unload_key for c in mine],
            [c.card_id for c in mine])
    return cash_outs


@dataclass(frozen=True)
class PaidCashOut:
    """A cash-out as a run stored it (settlement_cashouts)."""

    reference: str
    card_id: int
    pan_masked: str
    currency: str
    amount: int
    unloaded_at: datetime
    payee: str  # bank_account / desk
    cardholder_id: int | None
    bank_name: str | None
    account_enc: str | None
    account_masked: str | None
    account_holder: str | None

    @property
    def payout_account(self) -> str:
        return payee(self.card_id, self.cardholder_id if self.payee == "bank_account" else None)

    def describe(self) -> str:
        """Where it was paid, for people (masked)."""
        if self.payee == "bank_account":
            return f"bank account {self.account_masked} at {self.bank_name} (holder {self.account_holder})"
        return "the programme's desk"


async def run_cash_outs(conn: Any, run_id: int) -> list[PaidCashOut]:
    """A run's cash-outs as stored (for its reports and `settlement run show`)."""
    return [PaidCashOut(r["reference"], r["card_id"], r["pan_masked"], r["currency"].strip(), r["amount"],
                        r["unloaded_at"], r["payee"], r["cardholder_id"], r["bank_name"], r["account_enc"],
                        r["account_masked"], r["account_holder"])
            for r in await conn.fetch(
                "SELECT reference, card_id, pan_masked, currency, amount, unloaded_at, payee, cardholder_id,"
                " bank_name, account_enc, account_masked, account_holder FROM settlement_cashouts"
                " WHERE run_id = $1 ORDER BY id", run_id)]


async def check_cash_outs(conn: Any) -> list[str]:
    """Problems found: a paid cash-out without its host transfer (or with another amount or card), or a
    host cash-out payout that no settlement run recorded."""
    problems = [
        f"cash-out {r['reference']} (run {r['run_id']}): host ledger has "
        + ("no payout" if r["amount"] is None else f"a payout of {r['amount']} for card {r['card_id']}")
        + f"; settlement paid {r['paid']} for card {r['paid_card']}"
        for r in await conn.fetch(
            """SELECT s.reference, s.run_id, s.amount AS paid, s.card_id AS paid_card, t.amount, t.card_id
               FROM settlement_cashouts s LEFT JOIN transfers t ON t.key = 'cashout:' || s.unload_key
               WHERE t.key IS NULL OR t.amount <> s.amount OR t.card_id <> s.card_id ORDER BY s.id""")
    ]
    problems += [
        f"cash-out {r['reference']} (run {r['run_id']}): paid to {r['payee']}, not where its unload's"
        " destination (host unload_destinations) says"
        for r in await conn.fetch(
            """SELECT s.reference, s.run_id, s.payee FROM settlement_cashouts s
               LEFT JOIN unload_destinations d ON d.unload_key = s.unload_key AND d.payee = 'bank_account'
                                              AND d.card_id = s.card_id
               WHERE (s.payee = 'bank_account') <> (d.unload_key IS NOT NULL)
                  OR s.cardholder_id IS DISTINCT FROM d.cardholder_id
                  OR s.bank_name IS DISTINCT FROM d.bank_name
                  OR s.account_enc IS DISTINCT FROM d.account_enc
                  OR s.account_masked IS DISTINCT FROM d.account_masked
                  OR s.account_holder IS DISTINCT FROM d.account_holder
               ORDER BY s.id""")
    ]
    problems += [
        f"host cash-out payout {r['key']} has no settlement run"
        for r in await conn.fetch(
            """SELECT t.key FROM transfers t WHERE t.code = 'cash_out_payout' AND NOT EXISTS
               (SELECT 1 FROM settlement_cashouts s WHERE 'cashout:' || s.unload_key = t.key)
               ORDER BY t.id""")
    ]
    return problems
