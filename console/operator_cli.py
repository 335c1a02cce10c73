"""`payswitch operator ...`: the console's operators (add, list, disable, unlock, reset-totp, password).

Thin callers of console.operators (no SQL here). Every change writes its audit row as the CLI's actor,
``cli:<unix user>`` with role ``cli`` (ops.actor.cli_actor). A password is asked for without echo (twice)
or read from the first line of stdin (``--password-stdin``); it is never an argument, so it stays out of
the shell's history and the process list. ``add`` and ``reset-totp`` print the TOTP secret and its
otpauth URI once (the console shows its QR at the first login too); ``--qr FILE`` writes the QR as SVG.
"""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from console import operators
from console.operators import By, OperatorError
from console.roles import ROLES
from host.cli import _emit_page, _page_options, _run, _table
from ops.cli import AppContext, pass_app
from ops.digits import row_number

T = TypeVar("T")


def _call(app: AppContext, work: Callable[..., Awaitable[T]], *, hsm: bool = False) -> T:
    try:
        return _run(app, work, hsm=hsm)
    except OperatorError as exc:
        raise click.ClickException(str(exc)) from None


def _password(from_stdin: bool) -> str:
    if from_stdin:
        line = sys.stdin.readline().rstrip("\r\n")
        if not line:
            raise click.ClickException("--password-stdin: no password on the first line of stdin")
        password = line
    else:
        try:
            password = str(click.prompt("Password", hide_input=True, confirmation_prompt=True))
        except click.Abort:  # no terminal, or stdin closed: one line, not click's bare "Aborted!"
            raise click.ClickException("no password given (type it at the prompt, or use --password-stdin)"
                                       ) from None
    try:
        operators.check_password_rule(password)
    except OperatorError as exc:
        raise click.ClickException(str(exc)) from None
    return password


def _secret(app: AppContext, added: operators.Added, qr: Path | None, what: str) -> None:
    if qr is not None:
        try:
            qr.write_text(operators.qr_svg(added.provisioning_uri))
        except OSError as exc:
            raise click.ClickException(f"--qr: cannot write {qr}: {exc.strerror}") from None
    data = {"name": added.operator.name, "role": added.operator.role, "totp_secret": added.totp_secret,
            "otpauth_uri": added.provisioning_uri, "qr": str(qr) if qr else None}
    human = (f"{what} {added.operator.name} ({added.operator.role})\n"
             f"TOTP secret (shown once): {added.totp_secret}\n"
             f"otpauth URI: {added.provisioning_uri}"
             + (f"\nQR code written to {qr}" if qr else "")
             + "\nThe operator enrols at the first login (the console shows the QR) or from this secret.")
    app.emit(data, human)


@click.group()
def operator() -> None:
    """The console's operators: add, list, disable, unlock, reset-totp, password."""


@operator.command("add")
@click.argument("name")
@click.option("--role", type=click.Choice(ROLES), required=True)
@click.option("--email", default=None, metavar="ADDR", help="Where risk alerts go (stored sealed).")
@click.option("--password-stdin", is_flag=True, help="Read the password from the first line of stdin.")
@click.option("--qr", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the TOTP enrolment QR code here (SVG).")
@pass_app
def operator_add(app: AppContext, name: str, role: str, email: str | None, password_stdin: bool,
                 qr: Path | None) -> None:
    """Add an operator with ROLE; prints its TOTP secret once."""
    try:
        operators.check_name(name)
    except OperatorError as exc:
        raise click.ClickException(str(exc)) from None
    password = _password(password_stdin)
    by = By.cli()

    async def work(pool: Any, crypto: Any) -> operators.Added:
        return await operators.add_operator(pool, crypto, name, role, password, created_by=by.actor,
                                            email=email, by=by)

    _secret(app, _call(app, work, hsm=True), qr, "added operator")


@operator.command("list")
@click.option("--role", type=click.Choice(ROLES), default=None)
@click.option("--state", type=click.Choice(("active", "locked", "disabled")), default=None)
@click.option("--name", "name_part", default=None, help="Names containing this.")
@_page_options
@pass_app
def operator_list(app: AppContext, role: str | None, state: str | None, name_part: str | None,
                  after: str | None, limit: int) -> None:
    """The operators, by id (filters: role, state, part of the name)."""
    if after is not None and row_number(after) is None:
        raise click.ClickException("--after: a cursor printed by the page before (digits)")
    start = int(after) if after is not None else None

    async def work(pool: Any) -> tuple[list[operators.OperatorRow], int | None]:
        return await operators.list_operators(pool, role=role, state=state, name=name_part, after=start,
                                              limit=limit)

    rows, cursor = _call(app, work)
    data = [r.as_json() for r in rows]
    table = _table([{"name": r.name, "role": r.role, "state": r.state,
                     "totp": "enrolled" if r.totp_enrolled else "not yet",
                     "failed": r.failed_logins, "email": r.email or "-", "created_by": r.created_by}
                    for r in rows], ["name", "role", "state", "totp", "failed", "email", "created_by"])
    _emit_page(app, "operators", data, table, None if cursor is None else str(cursor))


def _changed(app: AppContext, row: operators.OperatorRow, what: str) -> None:
    app.emit(row.as_json(), f"operator {row.name}: {what}")


@operator.command("disable")
@click.argument("name")
@click.option("--reason", default="", help="Why (kept in the audit record).")
@pass_app
def operator_disable(app: AppContext, name: str, reason: str) -> None:
    """Disable NAME: their sessions end, no login is accepted."""

    async def work(pool: Any) -> operators.OperatorRow:
        return await operators.disable_operator(pool, name, By.cli(), reason=reason)

    _changed(app, _call(app, work), "disabled")


@operator.command("unlock")
@click.argument("name")
@click.option("--reason", default="", help="Why (kept in the audit record).")
@pass_app
def operator_unlock(app: AppContext, name: str, reason: str) -> None:
    """Clear NAME's failed logins and lockout."""

    async def work(pool: Any) -> operators.OperatorRow:
        return await operators.unlock_operator(pool, name, By.cli(), reason=reason)

    _changed(app, _call(app, work), "unlocked")


@operator.command("reset-totp")
@click.argument("name")
@click.option("--reason", default="", help="Why (kept in the audit record).")
@click.option("--qr", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the new enrolment QR code here (SVG).")
@pass_app
def operator_reset_totp(app: AppContext, name: str, reason: str, qr: Path | None) -> None:
    """A new TOTP secret for NAME (printed once): enrolment again at the next login."""

    async def work(pool: Any, crypto: Any) -> operators.Added:
        return await operators.reset_totp(pool, crypto, name, By.cli(), reason=reason)

    _secret(app, _call(app, work, hsm=True), qr, "new TOTP secret for operator")


@operator.command("password")
@click.argument("name")
@click.option("--password-stdin", is_flag=True, help="Read the password from the first line of stdin.")
@pass_app
def operator_password(app: AppContext, name: str, password_stdin: bool) -> None:
    """Set NAME's password (their sessions end)."""
    password = _password(password_stdin)

    async def work(pool: Any) -> operators.OperatorRow:
        return await operators.set_password(pool, name, password, By.cli())

    _changed(app, _call(app, work), "password changed")


@operator.command("role")
@click.argument("name")
@click.argument("role", type=click.Choice(ROLES))
@click.option("--reason", default="", help="Why (kept in the audit record).")
@pass_app
def operator_role(app: AppContext, name: str, role: str, reason: str) -> None:
    """Give NAME another ROLE (their sessions end)."""

    async def work(pool: Any) -> operators.OperatorRow:
        return await operators.set_role(pool, name, role, By.cli(), reason=reason)

    _changed(app, _call(app, work), f"role {role}")
