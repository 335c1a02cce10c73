"""`payswitch settle FILE...` and `payswitch settlement ...` (rate cards, cycles, checks, reports).

Operator mistakes and bad files end in one line on stderr and a non-zero exit status.
"""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable
from contextlib import AbstractContextManager, nullcontext
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import asyncpg
import click

from ops.cli import AppContext, pass_app
from ops.config import Config
from ops.db import with_connection
from ops.digits import is_digits
from ops.files import write_text_atomic
from ops.localtime import format_local, iso_local
from ops.money import AMOUNT_OR_ZERO, format_money, money_json
from settlement.cycles import Cycle
from settlement.errors import SettlementError
from settlement.fees import FeeSchedule
from settlement.importer import ImportResult, import_file
from settlement.postings import check_postings
from settlement.reports import write_run_outputs
from settlement.run import RunResult, run_settlement
from settlement.runs import DEFAULT_LIMIT, MAX_LIMIT, RunRow, list_runs, show_run
from settlement.schedules import (
    FeeInForce,
    add_fee_schedule,
    fee_in_force,
    list_fee_schedules,
    set_merchant,
)
from specs.clearing import business_date_of

T = TypeVar("T")
SHOWN = 20  # payout / carry lines in the human summary; --json has them all


def _db(app: AppContext, work: Callable[[Any], Awaitable[T]]) -> T:
    try:
        return with_connection(app.config, work)
    except SettlementError as exc:
        raise click.ClickException(str(exc)) from None
    except asyncpg.UndefinedTableError as exc:
        raise click.ClickException(f"{exc}: run `payswitch db migrate` first") from None
    except asyncpg.PostgresError as exc:
        raise click.ClickException(f"database error: {type(exc).__name__}: {exc}") from None


def default_cycle(config: Config) -> Cycle:
    s = config.settlement
    try:
        return Cycle(s.default_cycle, s.default_cycle_day or None)
    except ValueError as exc:
        raise click.ClickException(f"config settlement.default_cycle/default_cycle_day: {exc}") from None


def business_today(config: Config) -> date:
    try:
        return datetime.now(ZoneInfo(config.clearing.timezone)).date()
    except ZoneInfoNotFoundError:
        raise click.ClickException(f"config clearing.timezone = {config.clearing.timezone!r}: "
                                   "not a known IANA time zone") from None


def _progress(enabled: bool, length: int, label: str) -> AbstractContextManager[Any]:
    if enabled and sys.stderr.isatty():
        return click.progressbar(length=length, label=label, file=sys.stderr)
    return nullcontext(None)


@click.command()
@click.argument("files", nargs=-1, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--as-of", "as_of", type=click.DateTime(["%Y-%m-%d"]), metavar="YYYY-MM-DD",
              help="Settle what is due on this date (default: today in clearing.timezone).")
@click.option("--no-run", is_flag=True, help="Verify and import the files only; pay nothing out.")
@click.option("--output-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Where reports and the payout file go (default: settlement.output_dir).")
@pass_app
def settle(app: AppContext, files: tuple[Path, ...], as_of: datetime | None, no_run: bool,
           output_dir: Path | None) -> None:
    """Verify and import clearing FILEs, then pay out every merchant whose cycle is due.

    A file is refused, with nothing imported, if its trailer does not match its details (count, totals,
    SHA-256) or any record breaks the clearing-file contract. A file settled before is skipped. Files are
    taken in the order given; a refused file stops the job (those before it stay imported, and settling
    them again is a no-op), so fix or remove it and run again.
    """
    run_date = as_of.date() if as_of else business_today(app.config)
    cycle = default_cycle(app.config)
    out = output_dir or Path(app.config.settlement.output_dir)

    async def work(conn: Any) -> tuple[list[ImportResult], RunResult | None, list[str]]:
        imported = []
        for path in files:
            size = path.stat().st_size if path.is_file() else 0
            with _progress(not app.json_output, size, path.name) as bar:
                imported.append(await import_file(conn, path, progress=bar.update if bar else None))
        if no_run:
            return imported, None, []
        c = app.config.clearing  # a date closed early (clearing close-day) is due the day it closed
        result = await run_settlement(conn, run_date, cycle, cutover=c.cutover, timezone=c.timezone)
        written = []
        if result.run_id is not None:
            tz = app.config.clearing.timezone  # the HTML shows the run's time in it
            written = [str(p) for p in await write_run_outputs(conn, result.run_id, out, timezone=tz)]
        return imported, result, written

    imported, result, written = _db(app, work)
    app.emit(_summary(imported, result, written), _human(imported, result, written))


def _summary(imported: list[ImportResult], result: RunResult | None, written: list[str]) -> dict[str, Any]:
    data: dict[str, Any] = {"files": [
        {"name": r.name, "sha256": r.sha256, "imported": r.imported, "note": r.note, "details": r.details,
         "business_date": r.business_date, **money_json("total_debit", r.total_debit, r.currency),
         **money_json("total_credit", r.total_credit, r.currency),
         **money_json("merchant_fee", r.merchant_fee, r.currency)}
        for r in imported
    ]}
    if result is not None:
        data["run"] = {
            "run_id": result.run_id, "as_of": str(result.as_of),
            **money_json("payout_total", result.payout_total, result.currency),
            "payouts": [{"merchant_id": p.merchant_id, "reference": p.reference,
                         **money_json("gross", p.gross, p.currency), "fee_minor": p.fee, "net_minor": p.net,
                         "business_dates": [str(d) for d in p.business_dates]}
                        for p in result.payouts],
            "carried": [{"merchant_id": c.merchant_id, "reason": c.reason,
                         **money_json("gross", c.gross, result.currency), "fee_minor": c.fee}
                        for c in result.carried],
            "cash_outs": [{"reference": c.reference, "card_id": c.card_id, "pan_masked": c.pan_masked,
                           **money_json("amount", c.amount, c.currency), "payee": c.payee,
                           "bank_name": c.bank_name, "account_masked": c.account_masked,
                           "account_holder": c.account_holder} for c in result.cash_outs],
            "outputs": written,
        }
    return data


def _human(imported: list[ImportResult], result: RunResult | None, written: list[str]) -> str:
    lines = []
    for r in imported:
        if r.imported:
            lines.append(f"{r.name}: {r.details} details, debits {format_money(r.total_debit, r.currency)}, "
                         f"credits {format_money(r.total_credit, r.currency)}, merchant fees "
                         f"{format_money(r.merchant_fee, r.currency)}")
        else:
            lines.append(f"{r.name}: {r.note}")
    if result is not None:
        if result.run_id is None:
            lines.append(f"nothing due on {result.as_of}")
        else:
            lines.append(f"run {result.run_id} as of {result.as_of}: {len(result.payouts)} payouts, "
                         f"{format_money(result.payout_total, result.currency)} in all")
            lines += [f"  {p.reference}: gross {format_money(p.gross, p.currency)} fee "
                      f"{format_money(p.fee, p.currency)} net {format_money(p.net, p.currency)}"
                      for p in result.payouts[:SHOWN]]
            if len(result.payouts) > SHOWN:
                lines.append(f"  ... and {len(result.payouts) - SHOWN} more (see the payout file)")
            # `card unload`s paid out to their cardholders (settlement.cashouts)
            lines += [f"  cash-out {c.reference}: {format_money(c.amount, c.currency)} to the cardholder of "
                      f"card {c.card_id}, " + (f"bank account {c.account_masked} at {c.bank_name}"
                                               if c.payee == "bank_account" else "at the programme's desk")
                      for c in result.cash_outs[:SHOWN]]
            if len(result.cash_outs) > SHOWN:
                lines.append(f"  ... and {len(result.cash_outs) - SHOWN} more cash-outs (payout file)")
        lines += [f"  carried {c.merchant_id}: {c.reason}" for c in result.carried[:SHOWN]]
        if len(result.carried) > SHOWN:
            lines.append(f"  ... and {len(result.carried) - SHOWN} more carried (--json lists all)")
        if written:
            lines.append(f"reports in {Path(written[0]).parent}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------
# `payswitch settlement`: administration


@click.group()
def settlement() -> None:
    """Settlement administration: rate cards, merchant cycles, checks, reports, reconciliation."""


@settlement.command("fee-add")
@click.argument("merchant_id")
@click.argument("version")
@click.option("--from", "effective_from", required=True, type=click.DateTime(["%Y-%m-%d"]),
              metavar="YYYY-MM-DD", help="First business date the version applies to.")
@click.option("--rate-bp", type=click.IntRange(0, 10000), required=True, help="Basis points of the amount.")
@click.option("--fixed", "fixed_fee", type=AMOUNT_OR_ZERO, default=0,
              help="Fixed fee per sale, in yuan (e.g. 0.50).")
@click.option("--min", "min_fee", type=AMOUNT_OR_ZERO, default=0, help="Minimum fee per sale, in yuan.")
@click.option("--max", "max_fee", type=AMOUNT_OR_ZERO, default=None, help="Maximum fee per sale, in yuan.")
@click.option("--refund", "refund_rule", type=click.Choice(["none", "percent", "full"]), default="none",
              help="What a refund returns: nothing, the percentage part, or the full fee.")
@click.option("--shares", default="0/0/10000", metavar="ISSUER/ACQUIRER/PLATFORM",
              help="Fee split in basis points, adding up to 10000.")
@pass_app
def fee_add(app: AppContext, merchant_id: str, version: str, effective_from: datetime, rate_bp: int,
            fixed_fee: int, min_fee: int, max_fee: int | None, refund_rule: str, shares: str) -> None:
    """Add fee schedule VERSION for MERCHANT_ID ('*' = every merchant without its own).

    A merchant's own rate card in force overrides the default '*' card and the merchant's flat
    --fee-bps in the host: `payswitch settlement fees MERCHANT_ID` shows which applies and why."""
    parts = shares.split("/")
    if len(parts) != 3 or not all(is_digits(x) for x in parts):
        raise click.ClickException(f"--shares {shares!r}: expected three integers like 2000/3000/5000")
    try:
        schedule = FeeSchedule(merchant_id, version, effective_from.date(), rate_bp, fixed_fee, min_fee,
                               max_fee, refund_rule, int(parts[0]), int(parts[1]), int(parts[2]))
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    _db(app, lambda conn: add_fee_schedule(conn, schedule))
    app.emit({"added": version, **_schedule_dict(schedule)},
             f"fee schedule {merchant_id}/{version} effective {schedule.effective_from}: "
             f"{_schedule_text(schedule)}")


@settlement.command("fees")
@click.argument("merchant_id", required=False)
@pass_app
def fees(app: AppContext, merchant_id: str | None) -> None:
    """List fee schedules (of one merchant, or all); for one merchant, which fee applies today and why."""
    cfg = app.config
    today = business_date_of(datetime.now(UTC), cfg.clearing.cutover, cfg.clearing.timezone)

    async def work(conn: Any) -> tuple[list[FeeSchedule], FeeInForce | None]:
        rows = await list_fee_schedules(conn, merchant_id)
        return rows, (await fee_in_force(conn, merchant_id, today) if merchant_id else None)

    rows, applies = _db(app, work)
    lines = [f"{s.merchant_id} {s.version} from {s.effective_from}: {_schedule_text(s)}" for s in rows]
    data: dict[str, Any] = {"schedules": [_schedule_dict(s) for s in rows]}
    if applies is not None:
        a = applies.applied
        lines.append(f"applies: {applies.reason}")
        data["applies"] = {"business_date": str(applies.on), "source": a.source,
                           "version": a.schedule.version if a.schedule else None,
                           "rate_card_merchant_id": a.schedule.merchant_id if a.schedule else None,
                           "merchant_fee_bps": applies.flat_bps, "reason": applies.reason}
    app.emit(data, "\n".join(lines) if rows or applies else "no fee schedules")


def _schedule_text(s: FeeSchedule) -> str:
    top = format_money(s.max_fee) if s.max_fee is not None else "none"
    return (f"{s.rate_bp} bp + {format_money(s.fixed_fee)}, min {format_money(s.min_fee)} max {top}, "
            f"refunds {s.refund_rule}, shares "
            f"{s.issuer_share_bp}/{s.acquirer_share_bp}/{s.platform_share_bp}")


def _schedule_dict(s: FeeSchedule) -> dict[str, Any]:
    money = {"fixed_fee", "min_fee", "max_fee"}
    data: dict[str, Any] = {name: getattr(s, name) for name in FeeSchedule.__slots__ if name not in money}
    for name in sorted(money):
        data.update(money_json(name, getattr(s, name)))
    return data


@settlement.command("merchant")
@click.argument("merchant_id")
@click.option("--cycle", type=click.Choice(["daily", "weekly", "monthly"]), required=True)
@click.option("--day", type=int, default=None, help="weekly: ISO weekday 1-7 (1 = Monday); monthly: 1-31.")
@click.option("--account", default=None, help="Payout account.")
@click.option("--name", default=None, help="Merchant name for reports.")
@pass_app
def merchant(app: AppContext, merchant_id: str, cycle: str, day: int | None, account: str | None,
             name: str | None) -> None:
    """Set MERCHANT_ID's settlement cycle and payout account."""
    try:
        c = Cycle(cycle, day)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    _db(app, lambda conn: set_merchant(conn, merchant_id, c, account, name))
    app.emit({"merchant_id": merchant_id, "cycle": cycle, "day": day}, f"{merchant_id}: {c}")


@settlement.group("run")
def run_group() -> None:
    """Settlement runs: list them, show one with its payouts and where its files are."""


def _run_dict(r: RunRow, tz: str) -> dict[str, Any]:
    return {"run_id": r.run_id, "as_of": str(r.as_of), "started_at": iso_local(r.started_at, tz),
            "payout_count": r.payout_count, "carried_count": r.carried_count,
            **money_json("payout_total", r.payout_total, r.currency)}


@run_group.command("list")
@click.option("--from", "since", type=click.DateTime(["%Y-%m-%d"]), metavar="YYYY-MM-DD",
              help="Runs as of this date or later.")
@click.option("--to", "until", type=click.DateTime(["%Y-%m-%d"]), metavar="YYYY-MM-DD",
              help="Runs as of this date or earlier.")
@click.option("--after", type=click.IntRange(0), default=None, metavar="CURSOR",
              help="Start after this cursor (printed by the page before).")
@click.option("--limit", type=click.IntRange(1, MAX_LIMIT), default=DEFAULT_LIMIT, show_default=True,
              help="Runs per page.")
@pass_app
def run_list(app: AppContext, since: datetime | None, until: datetime | None, after: int | None,
             limit: int) -> None:
    """Settlement runs in order: as-of date, merchants paid, total paid out, merchants carried."""
    tz = app.config.clearing.timezone
    page = _db(app, lambda conn: list_runs(conn, after=after, limit=limit,
                                           since=since.date() if since else None,
                                           until=until.date() if until else None))
    lines = [f"{'run':>6}  {'as of':<10}  {'started':<25}  {'paid':>5}  {'carried':>7}  total"]
    lines += [f"{r.run_id:>6}  {r.as_of!s:<10}  {format_local(r.started_at, tz):<25}  {r.payout_count:>5}  "
              f"{r.carried_count:>7}  {format_money(r.payout_total, r.currency)}" for r in page.runs]
    human = "\n".join(lines) if page.runs else "no settlement runs"
    if page.next is not None:
        human += f"\nnext page: payswitch settlement run list --limit {limit} --after {page.next}"
    app.emit({"runs": [_run_dict(r, tz) for r in page.runs], "next": page.next}, human)


settlement.add_command(run_list, "runs")  # the short name; `run list` is the same command


@run_group.command("show")
@click.argument("run_id", type=int)
@click.option("--output-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Where the run's reports were written (default: settlement.output_dir).")
@pass_app
def run_show(app: AppContext, run_id: int, output_dir: Path | None) -> None:
    """Run RUN_ID: its payouts, and where its merchant reports and payout file are."""
    tz = app.config.clearing.timezone
    d = _db(app, lambda conn: show_run(conn, run_id, output_dir or Path(app.config.settlement.output_dir)))
    r = d.run
    lines = [f"run {r.run_id} as of {r.as_of}, made {format_local(r.started_at, tz)}: {r.payout_count} "
             f"payout(s), {format_money(r.payout_total, r.currency)} in all, {r.carried_count} carried",
             f"payout file: {d.payout_file}"]
    for p in d.payouts:
        dates = (str(p.first_business_date) if p.first_business_date == p.last_business_date
                 else f"{p.first_business_date} to {p.last_business_date}")
        lines.append(f"  {p.reference}  {p.merchant_id}  business dates {dates}: gross "
                     f"{format_money(p.gross, p.currency)} fee {format_money(p.fee, p.currency)} net "
                     f"{format_money(p.net, p.currency)}  report {p.report}")
    # `card unload`s paid out to their cardholders (settlement.cashouts): where, masked
    lines += [f"  cash-out {c.reference}  card {c.card_id} {c.pan_masked}: "
              f"{format_money(c.amount, c.currency)} to {c.describe()}" for c in d.cash_outs]
    if d.missing:
        lines.append(f"{len(d.missing)} file(s) not in {d.folder}: `payswitch settlement report {run_id}` "
                     "writes them again")
    app.emit({**_run_dict(r, tz), "folder": str(d.folder), "payout_file": str(d.payout_file),
              "missing": [str(f) for f in d.missing],
              "payouts": [{"reference": p.reference, "merchant_id": p.merchant_id,
                           "payout_account": p.payout_account, **money_json("gross", p.gross, p.currency),
                           "fee_minor": p.fee, "net_minor": p.net,
                           "first_business_date": str(p.first_business_date),
                           "last_business_date": str(p.last_business_date), "report": str(p.report)}
                          for p in d.payouts],
              "cash_outs": [{"reference": c.reference, "card_id": c.card_id, "pan_masked": c.pan_masked,
                             **money_json("amount", c.amount, c.currency), "payee": c.payee,
                             "payout_account": c.payout_account, "bank_name": c.bank_name,
                             "account_masked": c.account_masked, "account_holder": c.account_holder,
                             "unloaded_at": iso_local(c.unloaded_at, tz)}
                            for c in d.cash_outs]},
             "\n".join(lines))


@settlement.command("check")
@pass_app
def check(app: AppContext) -> None:
    """Prove every payout is in the host ledger exactly as paid, and paid exactly its accruals."""
    problems = _db(app, check_postings)
    if problems:
        raise click.ClickException(f"{len(problems)} problem(s); first: {problems[0]}")
    app.emit({"ok": True}, "settlement postings balance")


@settlement.command("report")
@click.argument("run_id", type=int)
@click.option("--output-dir", type=click.Path(file_okay=False, path_type=Path))
@pass_app
def report(app: AppContext, run_id: int, output_dir: Path | None) -> None:
    """Write run RUN_ID's reports and payout file again (same bytes)."""
    out = output_dir or Path(app.config.settlement.output_dir)

    async def work(conn: Any) -> list[Path]:
        try:
            return await write_run_outputs(conn, run_id, out, timezone=app.config.clearing.timezone)
        except LookupError as exc:
            raise SettlementError(str(exc)) from None

    written = _db(app, work)
    app.emit([str(p) for p in written], "\n".join(str(p) for p in written))


@settlement.command("reconcile")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--journal", type=click.Path(dir_okay=False, path_type=Path),
              help="Use this switch journal export (CSV: terminal_id,rrn,stan,txn_type,amount,status) "
                   "instead of the switch's journal table.")
@click.option("--output-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Where the exceptions CSV goes (default: settlement.output_dir).")
@pass_app
def reconcile_cmd(app: AppContext, file: Path, journal: Path | None, output_dir: Path | None) -> None:
    """Reconcile clearing FILE with the host ledger and the switch journal: an exceptions report.

    The journal is the switch's switch_journal table in the same database (rows of the file's business
    date); --journal FILE takes an export instead. Without either the journal side is not compared.
    """
    from settlement.journal_source import DEFAULT_MARGIN, journal_available, journal_records
    from settlement.reconcile import (
        Reconciler,
        business_date_window,
        exceptions_csv,
        file_records,
        journal_csv_records,
        ledger_records,
        summary_text,
    )
    from specs.clearing import ClearingFormatError, ClearingReader

    cfg = app.config
    try:
        with ClearingReader(file) as r:
            business_date = r.header.business_date
        journal_rows = journal_csv_records(journal) if journal is not None else None
    except (ClearingFormatError, ValueError, OSError) as exc:
        raise click.ClickException(str(exc)) from None
    journal_source = {"source": "csv", "path": str(journal)} if journal is not None else None
    start = end = datetime.min

    async def work(conn: Any) -> Any:
        nonlocal journal_source, start, end
        start, end = await business_date_window(conn, business_date, cfg.clearing.cutover,
                                                cfg.clearing.timezone)
        use_table = journal is None and await journal_available(conn)
        if use_table:
            journal_source = {"source": "table", "table": "switch_journal"}
        compared = journal_source is not None
        try:
            # With a journal, postings just outside the window are read too, as partners only.
            ledger = await ledger_records(conn, start, end, DEFAULT_MARGIN if compared else timedelta(0))
        except asyncpg.PostgresError as exc:
            raise SettlementError(f"host ledger not readable (clearing_postings): {exc}") from None
        try:
            rec = Reconciler(ledger, file_records(file))
        except ClearingFormatError as exc:
            raise SettlementError(f"refused {exc}") from None
        if use_table:
            try:
                async for j in journal_records(conn, start, end):
                    rec.journal(j)
            except asyncpg.PostgresError as exc:
                raise SettlementError(f"switch journal not readable (switch_journal): {exc}") from None
        elif journal_rows is not None:
            for j in journal_rows:
                rec.journal(j)
        return rec.finish(compared)

    report = _db(app, work)
    out = (output_dir or Path(cfg.settlement.output_dir)) / f"reconcile_{file.stem}.csv"
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out, exceptions_csv(report))
    app.emit({"file": file.name, "business_date": str(business_date), "counts": report.counts,
              "matched": report.matched, "exceptions": report.by_category(),
              "journal_compared": report.journal_compared, "journal": journal_source, "report": str(out)},
             f"{file.name} (business date {business_date}, ledger {start:%Y-%m-%d %H:%M}Z to "
             f"{end:%Y-%m-%d %H:%M}Z; journal: "
             f"{'none' if journal_source is None else journal_source.get('path', 'switch_journal table')})\n"
             f"{summary_text(report)}\nexceptions: {out}")
