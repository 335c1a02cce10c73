"""`payswitch inventory ...`: card stock by product, batch and state; activate a batch or a PAN range."""

from __future__ import annotations

from typing import Any

import click

from host import inventory as inv
from host.business_day import business_today
from host.cli import _run, _table
from host.keys import IssuerCrypto
from ops.actor import cli_actor
from ops.cli import AppContext, pass_app
from ops.pgpool import PgPool


@click.group()
def inventory() -> None:
    """Card stock: report by product, batch and state; activate a batch or a PAN range."""


@inventory.command("report")
@click.option("--product", "product_code", default=None, help="Only this product's cards.")
@click.option("--batch", default=None, help="Only this issue batch.")
@pass_app
def inventory_report(app: AppContext, product_code: str | None, batch: str | None) -> None:
    """Cards by product, issue batch and state, with totals by state."""

    async def work(pool: PgPool) -> list[dict[str, Any]]:
        return await pool.run(inv.report, product_code, batch)

    rows = _run(app, work)
    totals = inv.totals(rows)
    shown = [{**r, "batch": r["batch"] or "-"} for r in rows]
    states = ", ".join(f"{s} {n:,}" for s, n in sorted(totals.items()) if s != "all")
    app.emit(
        {"rows": rows, "totals": totals},
        f"{_table(shown, ['product', 'batch', 'state', 'cards'])}\n"
        f"total {totals['all']:,} cards" + (f" ({states})" if states else ""),
    )


@inventory.command("activate")
@click.option("--batch", default=None, help="Activate the inventory cards of this issue batch.")
@click.option(
    "--range",
    "pan_range",
    default=None,
    metavar="FIRST_PAN-LAST_PAN",
    help=f"Activate the inventory cards whose PAN is in this range (at most {inv.MAX_RANGE:,} cards).",
)
@click.option("--dry-run", is_flag=True, help="Count and list what would be activated; change nothing.")
@click.option("--yes", is_flag=True, help=f"Confirm activating more than {inv.CONFIRM_ABOVE} cards.")
@pass_app
def inventory_activate(
    app: AppContext, batch: str | None, pan_range: str | None, dry_run: bool, yes: bool
) -> None:
    """Activate a whole issue batch or a PAN range in one command (gift cards get their face value, as
    `card activate`); prints the counts and which cards could not be activated and why."""
    if (batch is None) == (pan_range is None):
        raise click.UsageError("give --batch or --range (one of them)")

    async def work(pool: PgPool, crypto: IssuerCrypto | None = None) -> inv.Activation:
        return await inv.activate(
            pool,
            crypto,
            batch=batch,
            pan_range=pan_range,
            dry_run=dry_run,
            yes=yes,
            today=business_today(app.config),
            actor=cli_actor(),
        )

    r = _run(app, work, hsm=pan_range is not None)
    verb = "would be activated" if r.dry_run else "activated"
    lines = [f"{r.selected:,} cards selected; {len(r.activated):,} {verb}; {len(r.refused):,} not"]
    lines += [f"  card {cid}: {why}" for cid, why in r.refused[:50]]
    if len(r.refused) > 50:
        lines.append(f"  ... and {len(r.refused) - 50:,} more (--json lists them all)")
    app.emit(
        {
            "selected": r.selected,
            "dry_run": r.dry_run,
            "activated": r.activated,
            "refused": [{"card_id": cid, "why": why} for cid, why in r.refused],
        },
        "\n".join(lines),
    )
