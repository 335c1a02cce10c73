"""A cardholder's registered bank account, and where a `card unload` is paid (issue 16 item 5).

The account number is personal data: stored only sealed (host.pii: HSM ciphertext under ``pii_data``,
a keyed hash, the masked last 4) in the cardholder's row (host migration 0013), never in clear; the
bank name and the account holder's name beside it. Every set and clear is an event with who and why
(``bank_account_events``, migration 0019).

Rules (the issue is silent; chosen here):

- The account holder must be the cardholder: the holder's name, compared as the cardholder's
  ``name_key`` is (case and spaces ignored), must equal the cardholder's name; a different name is
  **refused**, not warned about. A prepaid card's money paid into somebody else's account is the
  money-laundering path the named-card rules exist to close, and the bank would bounce a transfer
  whose holder does not match anyway. The holder defaults to the cardholder's name.
- Only a named or verified cardholder (an ID number on record) can register one: an anonymous
  cardholder's name was never checked against a document, so matching it proves nothing. A closed
  cardholder cannot, nor one the AML screening holds (``aml_status`` not ``clear``): a new payout
  destination is exactly what a hit under review must not get.

Where an unload is paid (``destination_for``, ``record_destination``): ``card unload`` captures the
destination under the unload's key (``unload_destinations``) before it posts, so settlement pays the
account registered *at the unload*, whatever changes after. ``to``: ``None`` (the default) pays to the
registered account when there is one, else at the programme's desk (today's behaviour, payee
``cardholder:card:<id>``), saying why; ``"bank"`` refuses unless there is one; ``"desk"`` pays at the
desk even so (the cardholder collects it in person, e.g. their account is being closed).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from host.cardholders import name_key
from host.catalog import CatalogError
from host.keys import IssuerCrypto
from host.pii import PiiError, seal

To = Literal["bank", "desk"]
TO_CHOICES: tuple[To, ...] = ("bank", "desk")
BANK_NAME_MAX = 100
# A session advisory lock per unload key (two-int form: its own space, apart from the single-bigint
# locks of migrate and settlement): the destination row and the posting of one reference are one step
# for concurrent callers. Released before the connection goes back to the pool (ops.pgpool).
_LOCK_CLASS = 0x756E_6C64  # "unld"


class BankAccountError(CatalogError):
    """A bank account that cannot be set, shown or used; str() is the one line for the operator."""


@dataclass(frozen=True)
class BankAccount:
    cardholder_id: int
    bank_name: str
    account_masked: str
    holder: str


@dataclass(frozen=True)
class Destination:
    """Where an unload is paid. ``payee`` ``bank_account``: the cardholder's account as registered at
    the unload; ``desk``: at the programme's desk, ``why`` says why (for the operator)."""

    payee: Literal["bank_account", "desk"]
    cardholder_id: int | None = None
    bank_name: str | None = None
    account_masked: str | None = None
    holder: str | None = None
    why: str = ""
    account_enc: str | None = None  # as stored in cardholders (HSM ciphertext): settlement copies it

    def describe(self) -> str:
        """One phrase for people: where the money goes."""
        if self.payee == "bank_account":
            return f"bank account {self.account_masked} at {self.bank_name} (holder {self.holder})"
        return "the programme's desk" + (f" ({self.why})" if self.why else "")

    def as_json(self) -> dict[str, Any]:
        return {"payee": self.payee, "cardholder_id": self.cardholder_id, "bank_name": self.bank_name,
                "account_masked": self.account_masked, "account_holder": self.holder, "why": self.why}


def _clean_text(label: str, value: str, limit: int) -> str:
    v = " ".join(value.split())
    if not 1 <= len(v) <= limit or any(not ch.isprintable() for ch in v):
        raise BankAccountError(f"{label}: 1 to {limit} printable characters")
    return v


async def _cardholder_for_update(conn: Any, cardholder_id: int) -> Any:
    row = await conn.fetchrow(
        "SELECT id, name, name_key, kyc_level, aml_status, state, bank_name, bank_account_masked,"
        " bank_account_holder FROM cardholders WHERE id = $1 FOR UPDATE",
        cardholder_id,
    )
    if row is None:
        raise BankAccountError(f"no cardholder {cardholder_id}")
    return row


def _account(row: Any) -> BankAccount | None:
    if row["bank_account_masked"] is None:
        return None
    return BankAccount(row["id"], row["bank_name"], row["bank_account_masked"], row["bank_account_holder"])


async def _set(conn: Any, cardholder_id: int, bank: str, holder: str | None, sealed: Any, actor: str,
               reason: str) -> BankAccount:
    async with conn.transaction():
        ch = await _cardholder_for_update(conn, cardholder_id)
        if ch["state"] != "active":
            raise BankAccountError(f"cardholder {cardholder_id} is closed")
        if ch["kyc_level"] == "anonymous":
            raise BankAccountError(
                f"cardholder {cardholder_id} is anonymous: register their ID number first (a bank account"
                " is paid only to a named or verified cardholder)"
            )
        if ch["aml_status"] != "clear":
            raise BankAccountError(
                f"cardholder {cardholder_id} is held by AML screening ({ch['aml_status']}): no new payout"
                " account until an operator clears it"
            )
        holder = ch["name"] if holder is None else holder
        if name_key(holder) != ch["name_key"]:
            raise BankAccountError(
                f"account holder \"{holder}\" is not cardholder {cardholder_id} ({ch['name']}): an unload"
                " is paid only into the cardholder's own account"
            )
        await conn.execute(
            "UPDATE cardholders SET bank_name = $2, bank_account_enc = $3, bank_account_hash = $4,"
            " bank_account_masked = $5, bank_account_holder = $6, updated_at = now() WHERE id = $1",
            cardholder_id, bank, sealed.enc, sealed.hash, sealed.masked, holder,
        )
        await conn.execute(
            "INSERT INTO bank_account_events (cardholder_id, action, bank_name, account_masked,"
            " account_holder, actor, reason) VALUES ($1, 'set', $2, $3, $4, $5, $6)",
            cardholder_id, bank, sealed.masked, holder, actor, reason,
        )
        return BankAccount(cardholder_id, bank, sealed.masked, holder)


async def set_bank_account(pool: Any, crypto: IssuerCrypto, cardholder_id: int, bank_name: str,
                           number: str, *, holder: str | None = None, actor: str,
                           reason: str = "") -> BankAccount:
    """Register (or replace) cardholder ``cardholder_id``'s bank account; ``holder`` defaults to the
    cardholder's name and must match it. Refused for an anonymous, closed or AML-held cardholder."""
    bank = _clean_text("bank name", bank_name, BANK_NAME_MAX)
    holder = None if holder is None else _clean_text("account holder", holder, 200)
    try:
        sealed = await seal(crypto, "bank_account", number)
    except PiiError as exc:
        raise BankAccountError(str(exc)) from None
    result: BankAccount = await pool.run(_set, cardholder_id, bank, holder, sealed, actor, reason)
    return result


async def _show(conn: Any, cardholder_id: int) -> BankAccount | None:
    row = await conn.fetchrow(
        "SELECT id, bank_name, bank_account_masked, bank_account_holder FROM cardholders WHERE id = $1",
        cardholder_id,
    )
    if row is None:
        raise BankAccountError(f"no cardholder {cardholder_id}")
    return _account(row)


async def show_bank_account(pool: Any, cardholder_id: int) -> BankAccount | None:
    """Cardholder ``cardholder_id``'s registered account (masked), or None when there is none."""
    result: BankAccount | None = await pool.run(_show, cardholder_id)
    return result


async def _clear(conn: Any, cardholder_id: int, actor: str, reason: str) -> BankAccount:
    async with conn.transaction():
        had = _account(await _cardholder_for_update(conn, cardholder_id))
        if had is None:
            raise BankAccountError(f"cardholder {cardholder_id} has no bank account registered")
        await conn.execute(
            "UPDATE cardholders SET bank_name = NULL, bank_account_enc = NULL, bank_account_hash = NULL,"
            " bank_account_masked = NULL, bank_account_holder = NULL, updated_at = now() WHERE id = $1",
            cardholder_id,
        )
        await conn.execute(
            "INSERT INTO bank_account_events (cardholder_id, action, bank_name, account_masked,"
            " account_holder, actor, reason) VALUES ($1, 'clear', $2, $3, $4, $5, $6)",
            cardholder_id, had.bank_name, had.account_masked, had.holder, actor, reason,
        )
        return had


async def clear_bank_account(pool: Any, cardholder_id: int, *, actor: str, reason: str = "") -> BankAccount:
    """Remove the registered account (unloads already made keep theirs); returns the one removed."""
    result: BankAccount = await pool.run(_clear, cardholder_id, actor, reason)
    return result


# -- where an unload is paid ------------------------------------------------------------------------
async def destination_for(conn: Any, card_id: int, to: To | None = None) -> Destination:
    """Where an unload of card ``card_id`` made now is paid (see the module docstring for ``to``)."""
    row = await conn.fetchrow(
        "SELECT c.cardholder_id, h.bank_name, h.bank_account_enc, h.bank_account_masked,"
        " h.bank_account_holder FROM cards c LEFT JOIN cardholders h ON h.id = c.cardholder_id"
        " WHERE c.id = $1",
        card_id,
    )
    if row is None:
        raise BankAccountError(f"no card {card_id}")
    chid = row["cardholder_id"]
    if to == "desk":
        return Destination("desk", chid, why="--to desk")
    if chid is None:
        why = "the card has no cardholder"
    elif row["bank_account_enc"] is None:
        why = f"cardholder {chid} has no bank account registered"
    else:
        return Destination("bank_account", chid, row["bank_name"], row["bank_account_masked"],
                           row["bank_account_holder"], account_enc=row["bank_account_enc"])
    if to == "bank":
        hint = ("`payswitch cardholder bank-account set` registers one" if chid is not None
                else "assign the card to a cardholder first")
        raise BankAccountError(f"card {card_id}: --to bank but {why} ({hint})")
    return Destination("desk", chid, why=why)


def _destination(row: Any) -> Destination:
    if row["payee"] == "bank_account":
        return Destination("bank_account", row["cardholder_id"], row["bank_name"], row["account_masked"],
                           row["account_holder"], account_enc=row["account_enc"])
    return Destination("desk", row["cardholder_id"])


async def unload_destination(conn: Any, key: str) -> Destination | None:
    """The destination captured for unload ``key``; None for an unload made before migration 0019
    (those are paid at the desk, as they were)."""
    row = await conn.fetchrow("SELECT * FROM unload_destinations WHERE unload_key = $1", key)
    return None if row is None else _destination(row)


async def record_destination(conn: Any, key: str, card_id: int, dest: Destination) -> None:
    """Capture ``dest`` for unload ``key`` (before it posts). A row left by an attempt that never
    posted is replaced; once the unload is posted its row stays as it is (and the trigger of
    migration 0019 refuses changing it)."""
    await conn.execute(
        "INSERT INTO unload_destinations (unload_key, card_id, payee, cardholder_id, bank_name,"
        " account_enc, account_masked, account_holder) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
        " ON CONFLICT (unload_key) DO UPDATE SET card_id = EXCLUDED.card_id, payee = EXCLUDED.payee,"
        " cardholder_id = EXCLUDED.cardholder_id, bank_name = EXCLUDED.bank_name,"
        " account_enc = EXCLUDED.account_enc, account_masked = EXCLUDED.account_masked,"
        " account_holder = EXCLUDED.account_holder, created_at = now()"
        " WHERE NOT EXISTS (SELECT 1 FROM transfers t WHERE t.key = EXCLUDED.unload_key)",
        key, card_id, dest.payee, dest.cardholder_id, dest.bank_name, dest.account_enc,
        dest.account_masked, dest.holder,
    )


@contextlib.asynccontextmanager
async def unload_lock(conn: Any, key: str) -> Any:
    """Hold the session advisory lock of unload ``key`` on ``conn`` for the block (see _LOCK_CLASS)."""
    await conn.execute("SELECT pg_advisory_lock($1, hashtext($2))", _LOCK_CLASS, key)
    try:
        yield
    finally:
        if not conn.is_closed():  # a lost connection took its session lock with it
            await conn.execute("SELECT pg_advisory_unlock($1, hashtext($2))", _LOCK_CLASS, key)


@dataclass(frozen=True)
class BankAccountEvent:
    action: str  # set / clear
    bank_name: str
    account_masked: str
    holder: str
    actor: str
    reason: str
    at: datetime


async def _events(conn: Any, cardholder_id: int, limit: int) -> list[BankAccountEvent]:
    rows = await conn.fetch(
        "SELECT action, bank_name, account_masked, account_holder, actor, reason, at FROM bank_account_events"
        " WHERE cardholder_id = $1 ORDER BY id DESC LIMIT $2",
        cardholder_id, limit,
    )
    return [BankAccountEvent(r["action"], r["bank_name"], r["account_masked"], r["account_holder"],
                             r["actor"], r["reason"], r["at"]) for r in rows]


async def bank_account_events(pool: Any, cardholder_id: int, limit: int = 10) -> list[BankAccountEvent]:
    """The last ``limit`` sets and clears of the cardholder's bank account, newest first."""
    result: list[BankAccountEvent] = await pool.run(_events, cardholder_id, limit)
    return result
