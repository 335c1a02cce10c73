"""`payswitch switch ...`: serve, and the operator's view of links, routes, the SAF queue and journal.

Keys given to ``link add`` are already under the LMK (form them with ``payswitch hsm form-key``); the
switch never sees a clear key. Changes to links and routes reach a running switch within
``switch.config_poll_s`` seconds (triggers bump ``switch_config.version``; the switch polls it).
``link rekey`` only marks the link: the running switch makes the key change (0800 DE70 101).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any, TypeVar

import click

from ops.cli import AppContext, configure_logging, pass_app
from ops.db import database_url, with_connection
from ops.digits import is_digits
from ops.localtime import format_local, iso_local
from ops.logs import get_logger
from ops.money import format_money, money_json
from switch import admin
from switch.journal_view import journal_rows, reason_text

log = get_logger(__name__)
T = TypeVar("T")


@click.group()
def switch() -> None:
    """The switch: POS terminals and acquirer links in, H2H links to issuer hosts out."""


def _db(app: AppContext, work: Callable[[Any], Awaitable[T]]) -> T:
    """Run ``work(conn)`` (a switch/admin.py function); its refusal is the command's one line."""
    try:
        return with_connection(app.config, work)
    except admin.SwitchAdminError as exc:
        raise click.ClickException(str(exc)) from None


def _jsonable(app: AppContext, data: Any) -> Any:
    """``data`` for --json: times as ISO 8601 in the programme's zone (ops.localtime)."""
    if isinstance(data, datetime):
        return iso_local(data, app.config.clearing.timezone)
    if isinstance(data, dict):
        return {k: _jsonable(app, v) for k, v in data.items()}
    if isinstance(data, list):
        return [_jsonable(app, v) for v in data]
    return data


@switch.command()
@pass_app
def serve(app: AppContext) -> None:
    """Run the switch until SIGTERM or Ctrl-C (in-flight requests are finished first)."""
    import trio

    from ops.metrics import serve_metrics
    from ops.pgpool import PgPool
    from switch.server import serve as serve_async

    configure_logging(app, "switch")
    cfg = app.config
    try:
        serve_metrics("switch", cfg.switch.metrics_port, cfg.switch.metrics_listen)
    except OSError as exc:
        raise click.ClickException(f"cannot open the switch metrics port: {exc.strerror}") from None
    pool = PgPool(database_url(cfg), min_size=1, max_size=cfg.switch.db_pool_max).start()
    try:
        trio.run(serve_async, cfg, pool)
    except (OSError, BaseExceptionGroup) as exc:
        leaf: BaseException = exc
        while isinstance(leaf, BaseExceptionGroup) and leaf.exceptions:
            leaf = leaf.exceptions[0]
        if isinstance(leaf, OSError):  # a port in use, an unreachable HSM at start, ...
            raise click.ClickException(f"switch cannot start: {leaf.strerror or leaf}") from None
        raise
    finally:
        pool.close()


# -- links -------------------------------------------------------------------------------------------
@switch.group()
def link() -> None:
    """H2H links: ``out`` to issuer hosts, ``in`` from other acquirers."""


@link.command("add")
@click.argument("name")
@click.option("--direction", type=click.Choice(["out", "in"]), default="out", show_default=True)
@click.option("--host", default="", help="out: the issuer host's address.")
@click.option("--port", type=click.IntRange(0, 65535), default=0, help="out: the issuer host's H2H port.")
@click.option(
    "--connections",
    type=click.IntRange(1, 64),
    default=2,
    show_default=True,
    help="out: TCP connections to keep open.",
)
@click.option("--institution-id", default="", help="in: the acquirer's DE32.")
@click.option("--scheme", type=click.Choice(["3des", "sm4"]), required=True, help="Key scheme of the link.")
@click.option("--zpk", required=True, help="Link PIN key under the LMK (U+32H or S+32H).")
@click.option("--zak", default=None, help="Link MAC key under the LMK (DE128 on every request).")
@click.option(
    "--no-mac",
    is_flag=True,
    help="in: declare the link without DE128 (accepted from loopback only, unless "
    "switch.allow_remote_no_mac); an in link needs --zak or --no-mac.",
)
@click.option(
    "--zmk",
    default=None,
    help="out: link ZMK under the LMK, for `link rekey` (kept by --replace when omitted).",
)
@click.option("--replace", is_flag=True, help="Replace an existing link of that name.")
@click.option(
    "--yes", is_flag=True, help="With --replace: change the scheme, ZPK or ZAK of a link that routes use."
)
@pass_app
def link_add(
    app: AppContext,
    name: str,
    direction: str,
    host: str,
    port: int,
    connections: int,
    institution_id: str,
    scheme: str,
    zpk: str,
    zak: str | None,
    no_mac: bool,
    zmk: str | None,
    replace: bool,
    yes: bool,
) -> None:
    """Add (or with --replace, change) a link. A running switch takes the change over."""
    spec = admin.LinkSpec(
        name=name,
        direction=direction,
        scheme=scheme,
        zpk=zpk,
        host=host,
        port=port,
        connections=connections,
        institution_id=institution_id,
        zak=zak,
        zmk=zmk,
        no_mac=no_mac,
    )
    try:
        admin.check_link(spec)  # before the database: a wrong argument needs none
    except admin.SwitchAdminError as exc:
        raise click.ClickException(str(exc)) from None
    _db(app, lambda conn: admin.save_link(conn, spec, replace=replace, yes=yes))
    app.emit({"link": name, "direction": direction}, f"link {name} ({direction}) saved")


@link.command("list")
@click.option("--direction", type=click.Choice(["in", "out"]), default=None, help="Only in or out links.")
@click.option("--state", type=click.Choice(["enabled", "disabled"]), default=None, help="Only these.")
@click.option("--limit", type=click.IntRange(1, 10_000), default=admin.DEFAULT_LIMIT, show_default=True)
@click.option("--after", metavar="NAME", default=None, help="Start after this link name (the next page).")
@pass_app
def link_list(
    app: AppContext, direction: str | None, state: str | None, limit: int, after: str | None
) -> None:
    """Links by name (keys are not shown; `switch link show NAME` for one)."""
    enabled = None if state is None else state == "enabled"
    rows = _db(
        app,
        lambda conn: admin.list_links(conn, direction=direction, enabled=enabled, limit=limit, after=after),
    )
    lines = [
        f"{'name':<16} {'dir':<4} {'address':<22} {'conns':>5} {'acquirer':<12} {'scheme':<6} mac zmk "
        f"{'routes':>6} state"
    ]
    for r in rows:
        address = f"{r['host']}:{r['port']}" if r["direction"] == "out" else "-"
        shown = "enabled" if r["enabled"] else "disabled"
        if r["rekey_requested_at"] is not None:
            shown += ", rekey requested"
        lines.append(
            f"{r['name']:<16} {r['direction']:<4} {address:<22} "
            f"{r['connections'] if r['direction'] == 'out' else '-':>5} "
            f"{r['institution_id'] or '-':<12} {r['scheme']:<6} {admin.mac_state(r):<3} "
            f"{'yes' if r['zmk'] else 'no ':<3} {r['routes']:>6} {shown}"
        )
    human = "\n".join(lines) if rows else "no links" + ("" if after is None else f" after {after}")
    if len(rows) == limit:
        human += f"\nmore: --after {rows[-1]['name']}"
    app.emit(_jsonable(app, rows), human)


@link.command("show")
@click.argument("name")
@pass_app
def link_show(app: AppContext, name: str) -> None:
    """One link: address, scheme, MAC, key check values (never a key), state, its routes, and whether a
    running switch has it up (asked on the switch's /metrics: the database does not record it)."""

    async def work(conn: Any) -> tuple[dict[str, Any], dict[str, str]]:
        return await admin.link_detail(conn, name), await admin.link_keys(conn, name)

    detail, keys = _db(app, work)
    detail["check_values"], why = _check_values(app, keys)
    sw = app.config.switch
    detail["running_switch"] = admin.running_link(sw.metrics_listen, sw.metrics_port, name)
    tz = app.config.clearing.timezone
    d = detail
    lines = [f"link {d['name']} ({d['direction']}, {'enabled' if d['enabled'] else 'disabled'})"]
    if d["direction"] == "out":
        lines.append(f"  address         {d['host']}:{d['port']}, {d['connections']} connection(s)")
    else:
        lines.append(f"  acquirer        DE32 {d['institution_id']}")
    mac = {"yes": "yes (DE128, ZAK)", "off": "off (declared --no-mac)", "no": "no"}[admin.mac_state(d)]
    lines += [f"  scheme          {d['scheme']}", f"  MAC             {mac}"]
    if d["check_values"]:
        lines.append(
            "  check values    "
            + ", ".join(f"{kind.upper()} {cv[:6]}" for kind, cv in sorted(d["check_values"].items()))
        )
    else:
        lines.append(f"  check values    not shown: {why}")
    lines.append(f"  ZMK             {'yes (link rekey possible)' if d['zmk'] else 'no'}")
    if d["rekey_requested_at"] is not None:
        lines.append(f"  rekey requested {format_local(d['rekey_requested_at'], tz)}")
    lines.append(f"  last key change {format_local(d['rekeyed_at'], tz) or 'never by the switch'}")
    lines.append(f"  created         {format_local(d['created_at'], tz)}")
    lines.append(f"  config version  {d['config_version']}")
    routes = d["routes"]
    lines.append(
        "  routes          "
        + (", ".join(admin.route_label(r) for r in routes) if routes else "none")
    )
    run = d["running_switch"]
    if run["running"]:
        state = (
            "not in the running switch"
            if run["up"] is None
            else f"up, {run['connections']} connection(s)"
            if run["up"]
            else "down"
        )
    else:
        state = f"unknown: {run['why']}"
    lines.append(f"  running switch  {state}")
    app.emit(_jsonable(app, detail), "\n".join(lines))


def _check_values(app: AppContext, keys: dict[str, str]) -> tuple[dict[str, str], str]:
    """The keys' check values from the HSM, or ({}, why not)."""
    if not keys:
        return {}, "no keys"
    import trio

    from hsm_sim.client import HsmClient, HsmError

    async def ask() -> dict[str, str]:
        async with HsmClient.from_config(app.config.hsm) as client:
            return await admin.check_values(client, keys)

    try:
        return trio.run(ask), ""
    except (HsmError, OSError) as exc:
        return {}, f"HSM not reachable ({exc})"


@link.command("enable")
@click.argument("name")
@pass_app
def link_enable(app: AppContext, name: str) -> None:
    """Enable a link: a running switch starts connecting it (out) or accepts the acquirer (in)."""
    _db(app, lambda conn: admin.set_link_enabled(conn, name, True))
    app.emit({"link": name, "enabled": True}, f"link {name} enabled")


@link.command("disable")
@click.argument("name")
@click.option("--yes", is_flag=True, help="Even when it is the only link for some BIN ranges.")
@pass_app
def link_disable(app: AppContext, name: str, yes: bool) -> None:
    """Disable a link: its routes stop matching, in-flight requests finish, then it disconnects."""
    _db(app, lambda conn: admin.set_link_enabled(conn, name, False, yes=yes))
    app.emit({"link": name, "enabled": False}, f"link {name} disabled")


@link.command("remove")
@click.argument("name")
@click.option("--with-routes", is_flag=True, help="Remove the routes that use it too (one transaction).")
@pass_app
def link_remove(app: AppContext, name: str, with_routes: bool) -> None:
    """Remove a link (refused while routes use it, unless --with-routes); a running switch drains it."""
    routes = _db(app, lambda conn: admin.remove_link(conn, name, with_routes=with_routes))
    gone = f" and routes {', '.join(admin.route_label(r) for r in routes)}" if routes else ""
    app.emit(
        {"removed": name, "routes_removed": [r["id"] for r in routes]}, f"link {name}{gone} removed"
    )


@link.command("rekey")
@click.argument("name")
@pass_app
def link_rekey(app: AppContext, name: str) -> None:
    """Ask the running switch to change the link's ZPK (0800 DE70 101, the new key under the ZMK)."""
    _db(app, lambda conn: admin.request_rekey(conn, name))
    app.emit(
        {"link": name, "rekey_requested": True},
        f"key change of link {name} requested (see `switch link show {name}` and the switch log)",
    )


# -- routes ------------------------------------------------------------------------------------------
@switch.group()
def route() -> None:
    """BIN routing: which outbound link serves a card range."""


@route.command("add")
@click.argument("bin_low")
@click.argument("bin_high", required=False)
@click.option("--link", "link_name", required=True, help="Outbound link serving the range.")
@pass_app
def route_add(app: AppContext, bin_low: str, bin_high: str | None, link_name: str) -> None:
    """Route PANs whose first digits lie in BIN_LOW..BIN_HIGH (same length; one BIN if HIGH omitted)."""
    route_id = _db(app, lambda conn: admin.add_route(conn, bin_low, bin_high, link_name))
    app.emit({"id": route_id}, f"route {route_id}: {bin_low}-{bin_high or bin_low} -> {link_name}")


@route.command("list")
@click.option("--link", "link_name", default=None, help="Only the routes of this link.")
@click.option(
    "--bin",
    "bin_prefix",
    metavar="DIGITS",
    default=None,
    help="A BIN or PAN prefix: the routes that match it, in the order the switch tries them, and the "
    "one it takes.",
)
@click.option("--limit", type=click.IntRange(1, 10_000), default=admin.DEFAULT_LIMIT, show_default=True)
@click.option("--after", metavar="ID", type=click.IntRange(0), default=None, help="Start after this id.")
@pass_app
def route_list(
    app: AppContext, link_name: str | None, bin_prefix: str | None, limit: int, after: int | None
) -> None:
    """Routes in the order they were added (with --bin: in the order the switch tries them)."""
    if bin_prefix is not None and after is not None:
        raise click.UsageError("--after pages the list by id; with --bin the list is the routes that match")
    rows = _db(
        app,
        lambda conn: admin.list_routes(conn, link=link_name, bin_prefix=bin_prefix, limit=limit, after=after),
    )
    lines = [f"{'id':>4} {'range':<32} {'link':<16} state"]
    for r in rows:
        state = "enabled" if r["link_enabled"] else "link disabled"
        if r.get("taken"):
            state += f", taken by {bin_prefix}"
        lines.append(f"{r['id']:>4} {r['bin_low'] + '-' + r['bin_high']:<32} {r['link']:<16} {state}")
    human = "\n".join(lines) if rows else "no routes" + (f" match {bin_prefix}" if bin_prefix else "")
    if bin_prefix is not None and not any(r.get("taken") for r in rows):
        human += f"\nno route takes {bin_prefix}: a card starting so finds no route"
    elif bin_prefix is None and len(rows) == limit:
        human += f"\nmore: --after {rows[-1]['id']}"
    app.emit(_jsonable(app, rows), human)


@route.command("show")
@click.argument("route_id", type=int)
@pass_app
def route_show(app: AppContext, route_id: int) -> None:
    """One route: its range, its link and the link's state, and the routes that overlap it."""
    r = _db(app, lambda conn: admin.route_detail(conn, route_id))
    tz = app.config.clearing.timezone
    overlapping = ", ".join(f"{admin.route_label(o)} -> {o['link']}" for o in r["overlapping"]) or "none"
    lines = [
        f"route {r['id']}: {r['bin_low']}–{r['bin_high']} -> {r['link']}",
        f"  link            {r['link']} ({r['link_direction']}, "
        f"{'enabled' if r['link_enabled'] else 'disabled'})",
        f"  created         {format_local(r['created_at'], tz)}",
        f"  overlapping     {overlapping} (which one a PAN takes: `switch route list --bin DIGITS`)",
    ]
    app.emit(_jsonable(app, r), "\n".join(lines))


@route.command("remove")
@click.argument("route_id", type=int)
@click.option("--yes", is_flag=True, help="Even when it is the only route for its BIN range.")
@pass_app
def route_remove(app: AppContext, route_id: int, yes: bool) -> None:
    """Remove a route by id (the only route for its range only with --yes)."""
    _db(app, lambda conn: admin.remove_route(conn, route_id, yes=yes))
    app.emit({"removed": route_id}, f"route {route_id} removed")


# -- store-and-forward and journal -------------------------------------------------------------------
@switch.group()
def saf() -> None:
    """Store-and-forward reversal advices."""


@saf.command("list")
@click.option("--all", "show_all", is_flag=True, help="Include delivered advices.")
@click.option("--limit", type=click.IntRange(1, 100_000), default=1000, show_default=True)
@click.option("--after", metavar="ID", type=click.IntRange(0), default=None, help="Start after this id.")
@pass_app
def saf_list(app: AppContext, show_all: bool, limit: int, after: int | None) -> None:
    """Reversal advices waiting (or, with --all, also delivered), oldest first."""
    rows = _db(app, lambda conn: admin.list_saf(conn, show_all=show_all, limit=limit, after=after))
    tz = app.config.clearing.timezone
    lines = [
        f"{'id':>6} {'created':<25} {'link':<12} {'tries':>5} {'state':<10} {'next try / done':<25} "
        "original (DE90)"
    ]
    for r in rows:
        state = f"done {r['response_code']}" if r["done_at"] else "waiting"
        when = format_local(r["done_at"] or r["next_attempt_at"], tz)
        lines.append(
            f"{r['id']:>6} {format_local(r['created_at'], tz):<25} {r['link']:<12} {r['attempts']:>5} "
            f"{state:<10} {when:<25} {r['message'].get('90', '')}"
        )
    human = "\n".join(lines) if rows else "store-and-forward queue is empty"
    if len(rows) == limit:
        human += f"\nmore: --after {rows[-1]['id']}"
    app.emit(_jsonable(app, rows), human)


@switch.group()
def journal() -> None:
    """The journal of requests and answers."""


@journal.command("show")
@click.option("--terminal", help="Only this terminal id (DE41).")
@click.option("--rrn", help="Only this retrieval reference number.")
@click.option("--card-last4", metavar="NNNN", help="Only cards whose number ends in these 4 digits.")
@click.option("--rc", metavar="CODE", help="Only this response code (e.g. 51, 91, A0).")
@click.option("--limit", type=click.IntRange(1, 10_000), default=20, show_default=True)
@click.option("--after", metavar="ID", type=click.IntRange(1), default=None, help="Rows older than this id.")
@pass_app
def journal_show(
    app: AppContext,
    terminal: str | None,
    rrn: str | None,
    card_last4: str | None,
    rc: str | None,
    limit: int,
    after: int | None,
) -> None:
    """The latest journal rows, newest first: code and why (the switch's reason, or "issuer: ..."
    when the issuer decided; its own reason is in `card history`). Masked PANs; total in ms."""
    if card_last4 is not None and not (is_digits(card_last4) and len(card_last4) == 4):
        raise click.ClickException(f"--card-last4: the last 4 digits of the card number, not {card_last4!r}")
    if rc is not None and not (len(rc) == 2 and rc.isalnum()):
        raise click.ClickException(f"--rc: a 2-character response code such as 51 or A0, not {rc!r}")
    rows = _db(
        app,
        lambda conn: journal_rows(
            conn,
            terminal=terminal,
            rrn=rrn,
            card_last4=card_last4,
            rc=rc.upper() if rc else None,
            after=after,
            limit=limit,
        ),
    )
    tz = app.config.clearing.timezone
    out: list[dict[str, Any]] = []
    lines = [
        f"{'id':>7} {'time':<25} {'channel':<9} {'mti':<4} {'type':<11} {'terminal':<8} {'stan':<6} "
        f"{'amount':>14} {'pan':<19} {'rrn':<12} rc {'total':>7}  reason"
    ]
    for r in rows:
        why = reason_text(str(r["response_code"]), r["reason"])
        amount = r.pop("amount")
        out.append(
            {**r, **money_json("amount", amount, r["currency"]), "created_at": iso_local(r["created_at"], tz),
             "reason_text": why or None}
        )
        lines.append(
            f"{r['id']:>7} {format_local(r['created_at'], tz):<25} {r['channel']:<9} {r['mti']:<4} "
            f"{r['txn_type']:<11} {r['terminal_id'] or '-':<8} {r['stan'] or '-':<6} "
            f"{format_money(amount, r['currency']) if amount is not None else '-':>14} "
            f"{r['pan_masked'] or '-':<19} {r['rrn'] or '-':<12} {r['response_code']:<2} "
            f"{r['us_total'] / 1000:>7.1f}  {why or '-'}"
        )
    human = "\n".join(lines) if rows else "no journal rows"
    if rows and len(rows) == limit:
        human += f"\nmore: --after {rows[-1]['id']}"
    app.emit(out, human)


# -- batch upload --------------------------------------------------------------------------------------
@switch.command("batch-report")
@click.argument("terminal_id")
@click.option(
    "--batch", type=click.IntRange(1, 999_999), default=None, help="The batch (default: the latest uploaded)."
)
@pass_app
def batch_report(app: AppContext, terminal_id: str, batch: int | None) -> None:
    """The reconciliation report of a terminal's batch upload (0320): the counts, the records posted as
    advices, and the report lines: duplicates, records not posted, approvals the terminal lacks."""
    from switch.upload import batch_report as report_of
    from switch.upload import batch_results

    rows = _db(app, lambda conn: batch_results(conn, terminal_id, batch))
    if not rows:
        raise click.ClickException(
            f"no batch upload of terminal {terminal_id}" + ("" if batch is None else f" for batch {batch}")
        )
    report = report_of(rows)
    c = report["counts"]
    lines = [
        f"terminal {report['terminal_id']} merchant {report['merchant_id']} batch {report['batch_no']:06d}: "
        f"{c['records']} records, {c['matched']} matched, {c['posted']} posted, {c['duplicate']} duplicate, "
        f"{c['not_posted']} not posted, {c['terminal_lacks']} approvals the terminal lacks"
    ]
    for kind, entries in (("posted", report["postings"]), ("report", report["lines"])):
        for r in entries:
            lines.append(
                f"{kind:<7} {r['result']:<15} stan {r['stan']} {r['pan_masked'] or '-':<19} "
                f"{format_money(r['amount']):>12}  {r['text']}"
            )
    for part in ("postings", "lines"):
        report[part] = [{**money_json("amount", r.pop("amount")), **r} for r in report[part]]
    app.emit(_jsonable(app, report), "\n".join(lines))
