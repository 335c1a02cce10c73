"""`payswitch audit verify | list`: the record nobody can edit (ops.audit), checked and read.

``verify`` walks the whole chain and prints ``audit chain OK: N rows, head <id> <hash>``, or names the
first broken row and exits 1. ``list`` prints the trail newest first, one line per row, in the
programme's local time, filtered and paged by cursor. Both only read.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any
from zoneinfo import ZoneInfo

import click

from ops import audit as chain
from ops.cli import AppContext, pass_app
from ops.db import with_connection
from ops.localtime import format_local, iso_local


def _timezone(app: AppContext) -> str:
    """The programme's local time zone (the clearing day's, as every page and report shows)."""
    return app.config.clearing.timezone


@click.group("audit")
def audit() -> None:
    """The audit trail: every state-changing action of the console, the API and the CLI, chained."""


@audit.command("verify")
@pass_app
def audit_verify(app: AppContext) -> None:
    """Recompute the SM3 chain; name the first row that does not follow (exit 1)."""

    async def work(conn: Any) -> tuple[int, chain.Broken | None, tuple[int, str]]:
        checked, broken = await chain.verify(conn)
        return checked, broken, await chain.head(conn)

    checked, broken, (head_id, head_hash) = with_connection(app.config, work)
    if broken is not None:
        app.emit({"ok": False, "checked": checked, "broken_id": broken.id, "reason": broken.reason},
                 f"audit chain BROKEN at row {broken.id}: {broken.reason} ({checked} rows before it follow)")
        raise click.exceptions.Exit(1)
    app.emit({"ok": True, "rows": checked, "head_id": head_id, "head_hash": head_hash},
             f"audit chain OK: {checked} rows, head {head_id} {head_hash}")


def _line(r: chain.Row, tz: str) -> str:
    who = f"{r.actor} ({r.role or '-'}{' ' + r.source if r.source else ''})"
    text = f"{r.id:>7}  {format_local(r.at, tz)}  {who}  {r.action}  {r.target or '-'}  {r.outcome}"
    if r.after is not None:
        text += f"  after={json.dumps(r.after, ensure_ascii=False, sort_keys=True)}"
    return text + (f"  reason: {r.reason}" if r.reason else "")


class _When(click.ParamType[dt.datetime]):
    name = "TIME"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> dt.datetime:
        if isinstance(value, dt.datetime):
            return value
        try:
            when = dt.datetime.fromisoformat(str(value))
        except ValueError:
            self.fail(f"{value!r} is not a time (ISO 8601, e.g. 2026-12-02T08:00 or 2026-12-02)", param, ctx)
        if when.tzinfo is None:  # a local time of the programme
            app = ctx.find_object(AppContext) if ctx is not None else None
            when = when.replace(tzinfo=ZoneInfo(_timezone(app) if app is not None else "Asia/Shanghai"))
        return when


@audit.command("list")
@click.option("--actor", default=None, help="Exactly this actor (an operator, api:<client>, cli:<user>).")
@click.option("--action", default=None, help="Actions starting with this (card. or card.freeze).")
@click.option("--target", default=None, help="Targets starting with this (card:504).")
@click.option("--outcome", type=click.Choice(chain.OUTCOMES), default=None)
@click.option("--since", type=_When(), default=None, help="From this time (local unless an offset is given).")
@click.option("--until", type=_When(), default=None, help="Before this time.")
@click.option("--limit", type=click.IntRange(1, 1000), default=50, show_default=True)
@click.option("--cursor", default=None, help="The next page's cursor printed by the previous page.")
@pass_app
def audit_list(app: AppContext, actor: str | None, action: str | None, target: str | None,
               outcome: str | None, since: dt.datetime | None, until: dt.datetime | None, limit: int,
               cursor: str | None) -> None:
    """The trail newest first, one line per row."""
    tz = _timezone(app)

    async def work(conn: Any) -> chain.Page:
        return await chain.list_rows(conn, actor=actor, action=action, target=target, outcome=outcome,
                                         since=since, until=until, limit=limit, cursor=cursor)

    try:
        page = with_connection(app.config, work)
    except chain.AuditError as exc:
        raise click.ClickException(str(exc)) from None
    rows = [{"id": r.id, "at": iso_local(r.at, tz), "actor": r.actor, "role": r.role, "source": r.source,
             "action": r.action, "target": r.target, "before": r.before, "after": r.after, "reason": r.reason,
             "outcome": r.outcome} for r in page.rows]
    lines = [_line(r, tz) for r in page.rows]
    if not lines:
        lines = ["no audit rows match"]
    if page.next_cursor:
        lines.append(f"next page: --cursor {page.next_cursor}")
    app.emit({"rows": rows, "next_cursor": page.next_cursor}, "\n".join(lines))
