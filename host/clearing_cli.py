"""`payswitch clearing emit|close-day`: write a closed business date's clearing file; close a date early."""

from __future__ import annotations

import getpass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import click

from host.clearing import (
    BeforeProgramme,
    ClearingEmitError,
    CloseDayError,
    ClosedDay,
    EmitResult,
    close_day,
    early_closes,
    emit,
    last_closed_business_date,
)
from ops.cli import AppContext, pass_app
from ops.db import with_connection
from ops.localtime import format_local, iso_local
from ops.money import format_money, money_json

DATE = click.DateTime(["%Y-%m-%d", "%Y%m%d"])


def operator() -> str:
    """Who runs this command, as a close records it: ``cli:<unix user>``."""
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):  # no login name and no passwd entry (a bare container)
        return "cli:unknown"


@click.group()
def clearing() -> None:
    """Clearing files for the settlement job (one per business date)."""


@clearing.command("emit")
@click.option("--date", "business_date", type=DATE, metavar="YYYY-MM-DD",
              help="Business date (default: the last one closed, by the cut-over or `close-day`).")
@click.option("--seq", "sequence", type=click.IntRange(1, 99), default=1, show_default=True,
              help="Sequence number in the file name.")
@click.option("--dir", "directory", type=click.Path(file_okay=False, path_type=Path),
              help="Folder to write to (default: clearing.directory).")
@pass_app
def emit_cmd(app: AppContext, business_date: datetime | None, sequence: int, directory: Path | None) -> None:
    """Write CLR_<issuer>_<YYYYMMDD>_<seq>.txt from the ledger; the same date gives the same bytes.

    A date before the programme's first business date (its first product or posting) gets no file."""
    cfg = app.config
    c = cfg.clearing

    async def work(conn: Any) -> EmitResult:
        day = (business_date.date() if business_date else
               last_closed_business_date(datetime.now(UTC), c.cutover, c.timezone, await early_closes(conn)))
        return await emit(conn, day, issuer_id=cfg.host.institution_id,
                          directory=directory or Path(c.directory), cutover=c.cutover, timezone=c.timezone,
                          sequence=sequence)

    try:
        r = with_connection(app.config, work)
    except BeforeProgramme as exc:  # nothing to write: said so, not an error
        app.emit({"path": None, "written": False, "reason": str(exc)}, str(exc))
        return
    except ClearingEmitError as exc:
        raise click.ClickException(str(exc)) from None
    t = r.trailer
    data: dict[str, Any] = {
        "path": str(r.path), "written": True, "business_date": str(r.business_date), "unchanged": r.unchanged,
        "window_utc": [r.window[0].isoformat(), r.window[1].isoformat()],
        "window": [iso_local(r.window[0], c.timezone), iso_local(r.window[1], c.timezone)],
        "details": t.count, **money_json("total_debit", t.total_debit, r.currency),
        **money_json("total_credit", t.total_credit, r.currency),
        **money_json("total_fee", t.total_fee, r.currency), "sha256": t.sha256, "left_out": r.left_out,
    }
    human = (f"{r.path}{' (already there, identical)' if r.unchanged else ''}: {t.count} details, "
             f"debits {format_money(t.total_debit, r.currency)}, credits "
             f"{format_money(t.total_credit, r.currency)}, fees {format_money(t.total_fee, r.currency)}")
    if r.left_out:
        human += f"\nleft out {len(r.left_out)} posting(s) the contract has no type for: {r.left_out[:10]}"
    app.emit(data, human)


@clearing.command("close-day")
@click.option("--date", "business_date", type=DATE, metavar="YYYY-MM-DD",
              help="The business date to close (default: the current one); only the current date can be.")
@pass_app
def close_day_cmd(app: AppContext, business_date: datetime | None) -> None:
    """Close the current business date now, before its cut-over (a test system, an operator's choice).

    Its window ends now and the next date begins: `clearing emit` and `settle` can run at once, and the
    date is due for payout on the daily cycle today. Later postings belong to the next business date.
    Recorded with who and when; a date already closed, or one that has not begun, is refused."""
    c = app.config.clearing
    who = operator()

    async def work(conn: Any) -> ClosedDay:
        return await close_day(conn, cutover=c.cutover, timezone=c.timezone, closed_by=who,
                               business_date=business_date.date() if business_date else None)

    try:
        r = with_connection(app.config, work)
    except CloseDayError as exc:
        raise click.ClickException(str(exc)) from None
    nxt = r.business_date + timedelta(days=1)
    app.emit(
        {"business_date": str(r.business_date), "closed_at": iso_local(r.closed_at, c.timezone),
         "closed_by": r.closed_by, "window": [iso_local(r.window[0], c.timezone),
                                              iso_local(r.window[1], c.timezone)],
         "next_business_date": str(nxt)},
        f"business date {r.business_date} closed at {format_local(r.closed_at, c.timezone)} by "
        f"{r.closed_by}; postings from now on are {nxt}'s. "
        f"Next: payswitch clearing emit --date {r.business_date}",
    )
