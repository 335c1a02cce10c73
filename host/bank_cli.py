"""`payswitch cardholder bank-account ...`: the bank account a cardholder's unloads are paid to.

A thin caller of host.bank_accounts (no SQL here). The account number is read from a prompt without
echo when --account is not given (so it stays out of shell history) and is shown masked only.
"""

from __future__ import annotations

from typing import Any

import click

from host.bank_accounts import (
    BankAccount,
    BankAccountEvent,
    bank_account_events,
    clear_bank_account,
    set_bank_account,
    show_bank_account,
)
from host.cardholders import resolve_cardholder
from host.cli import _run
from host.keys import IssuerCrypto
from ops.actor import cli_actor
from ops.cli import AppContext, pass_app
from ops.localtime import format_local, iso_local
from ops.pgpool import PgPool


def _account_json(a: BankAccount | None) -> dict[str, Any] | None:
    if a is None:
        return None
    return {"bank_name": a.bank_name, "account_masked": a.account_masked, "account_holder": a.holder}


def _describe(a: BankAccount) -> str:
    return f"{a.account_masked} at {a.bank_name}, holder {a.holder}"


@click.group("bank-account")
def bank_account() -> None:
    """The bank account a cardholder's `card unload`s are paid to (stored encrypted, shown masked)."""


@bank_account.command("set")
@click.argument("ref", metavar="CARDHOLDER")
@click.option("--bank", "bank_name", required=True, help="The bank's name, as the payout file gives it.")
@click.option(
    "--account",
    "number",
    prompt="Bank account number",
    hide_input=True,
    help="The account number, 8 to 34 digits (prompted without echo when not given).",
)
@click.option(
    "--holder", default=None, help="The account holder's name (default: the cardholder's; must match it)."
)
@click.option("--reason", default="", help="Why (kept with who and when).")
@pass_app
def bank_account_set(
    app: AppContext, ref: str, bank_name: str, number: str, holder: str | None, reason: str
) -> None:
    """Register or replace CARDHOLDER's bank account: unloads made from now on are paid into it."""

    async def work(pool: PgPool, crypto: IssuerCrypto) -> BankAccount:
        cid = await pool.run(resolve_cardholder, ref)
        return await set_bank_account(
            pool, crypto, cid, bank_name, number, holder=holder, actor=cli_actor(), reason=reason
        )

    a = _run(app, work, hsm=True)
    app.emit(
        {"cardholder_id": a.cardholder_id, "bank_account": _account_json(a)},
        f"cardholder {a.cardholder_id}: unloads are paid to {_describe(a)}",
    )


def _event_json(e: BankAccountEvent, tz: str) -> dict[str, Any]:
    return {"action": e.action, "bank_name": e.bank_name, "account_masked": e.account_masked,
            "account_holder": e.holder, "actor": e.actor, "reason": e.reason, "at": iso_local(e.at, tz)}


@bank_account.command("show")
@click.argument("ref", metavar="CARDHOLDER")
@pass_app
def bank_account_show(app: AppContext, ref: str) -> None:
    """CARDHOLDER's registered bank account (masked) and its last changes, with who and when."""

    async def work(pool: PgPool) -> tuple[int, BankAccount | None, list[BankAccountEvent]]:
        cid = await pool.run(resolve_cardholder, ref)
        return cid, await show_bank_account(pool, cid), await bank_account_events(pool, cid)

    cardholder_id, a, events = _run(app, work)
    tz = app.config.clearing.timezone
    lines = [f"cardholder {cardholder_id}: " + (
        f"unloads are paid to {_describe(a)}" if a is not None
        else "no bank account registered (unloads are paid at the programme's desk)")]
    lines += [f"  {format_local(e.at, tz)}  {e.action:<5}  {e.account_masked} at {e.bank_name}  by {e.actor}"
              + (f": {e.reason}" if e.reason else "") for e in events]
    app.emit(
        {"cardholder_id": cardholder_id, "bank_account": _account_json(a),
         "events": [_event_json(e, tz) for e in events]},
        "\n".join(lines),
    )


@bank_account.command("clear")
@click.argument("ref", metavar="CARDHOLDER")
@click.option("--reason", default="", help="Why (kept with who and when).")
@pass_app
def bank_account_clear(app: AppContext, ref: str, reason: str) -> None:
    """Remove CARDHOLDER's bank account: later unloads are paid at the desk; those made before keep
    the account they were made to."""

    async def work(pool: PgPool) -> BankAccount:
        cid = await pool.run(resolve_cardholder, ref)
        return await clear_bank_account(pool, cid, actor=cli_actor(), reason=reason)

    a = _run(app, work)
    app.emit(
        {"cardholder_id": a.cardholder_id, "cleared": _account_json(a)},
        f"cardholder {a.cardholder_id}: bank account {_describe(a)} removed; later unloads are paid at the"
        " programme's desk",
    )
