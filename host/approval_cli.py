"""`payswitch approval ...`: four eyes from the command line (host.approvals holds the logic).

The CLI acts as ``cli:<unix user>`` (ops.actor) with the role ``cli``: an admin tool, it may approve or
reject a request, but never one it made itself (the same unix user). ``approval request`` asks for a
change the way the console's form does; a request's amounts are typed in yuan.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import click

from host import approvals, directory
from host.cli import _emit_page, _page_options, _run, _table
from host.keys import IssuerCrypto
from ops.actor import cli_actor
from ops.cli import AppContext, pass_app
from ops.digits import is_digits
from ops.localtime import format_local
from ops.money import AMOUNT
from ops.pgpool import PgPool

ROLE = "cli"


def _when(app: AppContext, instant: Any) -> str:
    return format_local(instant, app.config.clearing.timezone) if instant is not None else ""


def _line(app: AppContext, r: dict[str, Any]) -> dict[str, Any]:
    return {"id": r["id"], "state": r["state"], "kind": r["kind"], "what": approvals.describe(r),
            "requested by": r["requested_by"], "at": _when(app, r["requested_at"]),
            "decided by": r["decided_by"] or ""}


def _detail(app: AppContext, r: dict[str, Any]) -> str:
    lines = [
        f"approval {r['id']}: {r['state']}",
        f"  change        {approvals.describe(r)}",
        f"  requested by  {r['requested_by']} ({r['requested_role']}) at {_when(app, r['requested_at'])}",
        f"  reason        {r['reason']}",
    ]
    if r["decided_at"] is not None:
        nobody = "(nobody: expired)" if r["state"] == "expired" else "(withdrawn by the requester)"
        lines.append(f"  decided by    {r['decided_by'] or nobody}"
                     f" ({r['decided_role'] or ''}) at {_when(app, r['decided_at'])}")
        if r["decision_reason"]:
            lines.append(f"  decision      {r['decision_reason']}")
    if r["result"]:
        error = r["result"].get("error")
        lines.append(f"  result        {error if error else r['result']}")
    return "\n".join(lines)


@click.group()
def approval() -> None:
    """Four eyes: requests for changes a second person approves."""


@approval.command("list")
@click.option("--state", type=click.Choice(approvals.STATES), default=None,
              help="Only requests in this state.")
@click.option("--kind", type=click.Choice(approvals.KINDS), default=None, help="Only this kind of change.")
@click.option("--target", default=None, help="Only requests on this target, e.g. card:504.")
@_page_options
@pass_app
def approval_list(app: AppContext, state: str | None, kind: str | None, target: str | None,
                  after: str | None, limit: int) -> None:
    """Requests, newest first."""

    async def work(pool: PgPool) -> tuple[list[dict[str, Any]], str | None]:
        page: tuple[list[dict[str, Any]], str | None] = await pool.run(
            lambda conn: approvals.list_(conn, state, after, limit, kind=kind, target=target))
        return page

    rows, cursor = _run(app, work)
    human = _table([_line(app, r) for r in rows],
                   ["id", "state", "kind", "what", "requested by", "at", "decided by"])
    _emit_page(app, "approvals", rows, human, cursor)


@approval.command("show")
@click.argument("approval_id", type=int)
@pass_app
def approval_show(app: AppContext, approval_id: int) -> None:
    """One request: what, who asked, who decided, the result."""

    async def work(pool: PgPool) -> dict[str, Any]:
        row: dict[str, Any] = await pool.run(approvals.show, approval_id)
        return row

    r = _run(app, work)
    app.emit(r, _detail(app, r))


@approval.command("approve")
@click.argument("approval_id", type=int)
@click.option("--reason", default="", help="A note kept with the decision.")
@pass_app
def approval_approve(app: AppContext, approval_id: int, reason: str) -> None:
    """Approve a request (not one this user made) and make its change."""

    async def work(pool: PgPool) -> dict[str, Any]:
        return await approvals.approve(pool, app.config, approval_id, cli_actor(), ROLE, "", reason)

    r = _run(app, work)
    app.emit(r, _detail(app, r))
    if r["state"] == "failed":
        raise click.ClickException(f"approval {approval_id}: the change was refused: {r['result']['error']}")


@approval.command("reject")
@click.argument("approval_id", type=int)
@click.option("--reason", required=True, help="Why (kept with the decision).")
@pass_app
def approval_reject(app: AppContext, approval_id: int, reason: str) -> None:
    """Reject a request: nothing changes."""

    async def work(pool: PgPool) -> dict[str, Any]:
        row: dict[str, Any] = await pool.run(approvals.reject, approval_id, cli_actor(), ROLE, reason, "")
        return row

    r = _run(app, work)
    app.emit(r, _detail(app, r))


@approval.command("expire")
@click.option("--older-than-hours", type=click.FloatRange(0, 24 * 365), default=72.0, show_default=True,
              help="Requests waiting longer than this become expired.")
@pass_app
def approval_expire(app: AppContext, older_than_hours: float) -> None:
    """Expire requests nobody decided in time (each gets an audit row); they can no longer be approved."""

    async def work(pool: PgPool) -> int:
        n: int = await pool.run(approvals.expire, dt.timedelta(hours=older_than_hours), cli_actor())
        return n

    n = _run(app, work)
    app.emit({"expired": n}, f"{n} request(s) expired")


@approval.command("request")
@click.argument("kind", type=click.Choice(approvals.KINDS))
@click.argument("target_ref", metavar="TARGET")
@click.option("--reason", required=True, help="Why (kept with the request).")
@click.option("--amount", "minor", type=AMOUNT, default=None, help="load/unload: yuan, e.g. 1500.00.")
@click.option("--to", type=click.Choice(["bank", "desk"]), default=None, help="unload: where it is paid.")
@click.option("--limit", "limit_items", multiple=True, metavar="KEY=MINOR",
              help="limits: set a card limit (minor units or a count), e.g. per_txn=20000; repeatable.")
@click.option("--clear", "clear_keys", multiple=True, metavar="KEY", help="limits: clear a card limit.")
@click.option("--decision", type=click.Choice(["approve", "reject", "downgrade"]), default=None,
              help="tier: the KYC decision asked for.")
@click.option("--to-level", default=None, help="tier: the level a downgrade goes to.")
@click.option("--fee-bps", type=click.IntRange(0, 10_000), default=None, help="merchant_fee: the new rate.")
@pass_app
def approval_request(app: AppContext, kind: str, target_ref: str, reason: str, minor: int | None,
                     to: str | None, limit_items: tuple[str, ...], clear_keys: tuple[str, ...],
                     decision: str | None, to_level: str | None, fee_bps: int | None) -> None:
    """Ask for a change a second person approves. TARGET: a CARD (load, unload, limits, forfeit), a
    cardholder id (tier) or a merchant id (merchant_fee)."""
    params: dict[str, Any] = {}
    if kind in ("load", "unload"):
        params = {"amount": minor, "to": to}
    elif kind == "limits":
        limits: dict[str, int] = {}
        for item in limit_items:
            key, _, value = item.partition("=")
            if not is_digits(value):
                raise click.BadParameter(f"{item!r}: KEY=MINOR", param_hint="--limit")
            limits[key] = int(value)
        params = {"limits": limits, "clear": list(clear_keys)}
    elif kind == "tier":
        params = {"decision": decision, "to_level": to_level}
    elif kind == "merchant_fee":
        params = {"fee_rate_bps": fee_bps}
    prefix = approvals.TARGET_OF[kind]

    async def work(pool: PgPool, crypto: IssuerCrypto | None = None) -> dict[str, Any]:
        ident = target_ref.partition(":")[2] if target_ref.startswith(prefix + ":") else target_ref
        if prefix == "card":
            ident = str(await directory.resolve_card(pool, crypto, ident))
        row: dict[str, Any] = await pool.run(approvals.request, kind, f"{prefix}:{ident}", params,
                                             cli_actor(), ROLE, reason, "")
        return row

    r = _run(app, work, hsm=prefix == "card" and directory.needs_hsm(target_ref))
    app.emit(r, _detail(app, r) + f"\nanother person approves it: payswitch approval approve {r['id']}")
