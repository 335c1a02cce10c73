"""`payswitch clearing emit`: write the clearing file of a closed business date."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from host.clearing import ClearingEmitError, EmitResult, emit, last_closed_business_date
from ops.cli import AppContext, pass_app
from ops.db import connect, database_url


@click.group()
def clearing() -> None:
    """Clearing files for the settlement job (one per business date)."""


@clearing.command("emit")
@click.option("--date", "business_date", type=click.DateTime(["%Y-%m-%d", "%Y%m%d"]), metavar="YYYY-MM-DD",
              help="Business date (default: the last one closed by the cut-over).")
@click.option("--seq", "sequence", type=click.IntRange(1, 99), default=1, show_default=True,
              help="Sequence number in the file name.")
@click.option("--dir", "directory", type=click.Path(file_okay=False, path_type=Path),
              help="Folder to write to (default: clearing.directory).")
@pass_app
def emit_cmd(app: AppContext, business_date: datetime | None, sequence: int, directory: Path | None) -> None:
    """Write CLR_<issuer>_<YYYYMMDD>_<seq>.txt from the ledger; the same date gives the same bytes."""
    cfg = app.config
    day = (business_date.date() if business_date
           else last_closed_business_date(datetime.now(UTC), cfg.clearing.cutover, cfg.clearing.timezone))

    async def work() -> EmitResult:
        conn = await connect(database_url(cfg))
        try:
            return await emit(conn, day, issuer_id=cfg.host.institution_id,
                              directory=directory or Path(cfg.clearing.directory),
                              cutover=cfg.clearing.cutover, timezone=cfg.clearing.timezone,
                              sequence=sequence)
        finally:
            await conn.close()

    try:
        r = asyncio.run(work())
    except ClearingEmitError as exc:
        raise click.ClickException(str(exc)) from None
    t = r.trailer
    data: dict[str, Any] = {
        "path": str(r.path), "business_date": str(r.business_date), "unchanged": r.unchanged,
        "window_utc": [r.window[0].isoformat(), r.window[1].isoformat()], "details": t.count,
        "total_debit": t.total_debit, "total_credit": t.total_credit, "total_fee": t.total_fee,
        "sha256": t.sha256, "left_out": r.left_out,
    }
    human = (f"{r.path}{' (already there, identical)' if r.unchanged else ''}: {t.count} details, "
             f"debits {t.total_debit}, credits {t.total_credit}, fees {t.total_fee}")
    if r.left_out:
        human += f"\nleft out {len(r.left_out)} posting(s) the contract has no type for: {r.left_out[:10]}"
    app.emit(data, human)
