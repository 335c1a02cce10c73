"""`payswitch switch ...`: serve, and the operator's view of links, routes, the SAF queue and journal.

Keys given to ``link add`` are already under the LMK (form them with ``payswitch hsm form-key``); the
switch never sees a clear key. Changes to links and routes reach a running switch within
``switch.config_poll_s`` seconds (triggers bump ``switch_config.version``; the switch polls it).
``link rekey`` only marks the link: the running switch makes the key change (0800 DE70 101).
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import click

from ops.cli import AppContext, configure_logging, pass_app
from ops.db import connect, database_url
from ops.logs import get_logger

log = get_logger(__name__)
T = TypeVar("T")

_KEY = re.compile(r"(U[0-9A-Fa-f]{32}|S[0-9A-Fa-f]{32}|T[0-9A-Fa-f]{48})")
_DIGITS = re.compile(r"\d{1,19}")


@click.group()
def switch() -> None:
    """The switch: POS terminals and acquirer links in, H2H links to issuer hosts out."""


def _db(app: AppContext, work: Callable[[Any], Awaitable[T]]) -> T:
    url = database_url(app.config)

    async def main() -> T:
        conn = await connect(url)
        try:
            return await work(conn)
        finally:
            await conn.close()

    return asyncio.run(main())


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
) -> None:
    """Add (or with --replace, change) a link. A running switch takes the change over."""
    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,32}", name):
        raise click.ClickException(f"link name {name!r}: use 1-32 letters, digits, '_', '.', '-'")
    for label, key in (("--zpk", zpk), ("--zak", zak), ("--zmk", zmk)):
        if key is not None and not _KEY.fullmatch(key):
            raise click.ClickException(f"{label}: expected a key under the LMK (U+32H, T+48H or S+32H)")
    if (scheme == "sm4") != zpk.startswith("S"):
        raise click.ClickException(f"--zpk does not match --scheme {scheme}")
    if zmk is not None and (scheme == "sm4") != zmk.startswith("S"):
        raise click.ClickException(f"--zmk does not match --scheme {scheme}")
    if direction == "out" and (not host or not port):
        raise click.ClickException("an out link needs --host and --port")
    if direction == "in" and not re.fullmatch(r"\d{1,11}", institution_id):
        raise click.ClickException("an in link needs --institution-id (the acquirer's DE32, 1-11 digits)")
    # A link without DE128 is declared, never assumed: anyone reaching the port can write any DE32.
    if no_mac and zak:
        raise click.ClickException("--no-mac and --zak exclude each other")
    if no_mac and direction == "out":
        raise click.ClickException("--no-mac is for an in link (the issuer host decides on DE128)")
    if direction == "in" and not zak and not no_mac:
        raise click.ClickException("an in link needs --zak, or --no-mac for a link without DE128")

    async def work(conn: Any) -> None:
        exists = await conn.fetchval("SELECT 1 FROM switch_links WHERE name = $1", name)
        if exists and not replace:
            raise click.ClickException(f"link {name} exists; use --replace to change it")
        await conn.execute(
            "INSERT INTO switch_links "
            "(name, direction, host, port, connections, institution_id, scheme, zpk, zak, zmk, no_mac) "
            "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) ON CONFLICT (name) DO UPDATE SET "
            "direction = $2, host = $3, port = $4, connections = $5, institution_id = $6, scheme = $7, "
            "zpk = $8, zak = $9, no_mac = $11, "
            "zmk = coalesce($10, switch_links.zmk), zpk_check = NULL",
            name,
            direction,
            host,
            port,
            connections,
            institution_id,
            scheme,
            zpk.upper(),
            zak.upper() if zak else None,
            zmk.upper() if zmk else None,
            no_mac,
        )

    _db(app, work)
    app.emit({"link": name, "direction": direction}, f"link {name} ({direction}) saved")


@link.command("list")
@pass_app
def link_list(app: AppContext) -> None:
    """Links (keys are not shown)."""

    async def work(conn: Any) -> list[dict[str, Any]]:
        rows = await conn.fetch(
            "SELECT name, direction, host, port, connections, institution_id, scheme, "
            "zak IS NOT NULL AS mac, no_mac, zmk IS NOT NULL AS zmk, zpk_check, "
            "enabled, rekey_requested_at, rekeyed_at FROM switch_links ORDER BY name"
        )
        return [dict(r) for r in rows]

    rows = _db(app, work)
    lines = [
        f"{'name':<16} {'dir':<4} {'address':<22} {'conns':>5} {'acquirer':<12} {'scheme':<6} mac zmk state"
    ]
    for r in rows:
        address = f"{r['host']}:{r['port']}" if r["direction"] == "out" else "-"
        state = "enabled" if r["enabled"] else "disabled"
        if r["rekey_requested_at"] is not None:
            state += ", rekey requested"
        lines.append(
            f"{r['name']:<16} {r['direction']:<4} {address:<22} {r['connections']:>5} "
            f"{r['institution_id'] or '-':<12} {r['scheme']:<6} {_mac_column(r):<3} "
            f"{'yes' if r['zmk'] else 'no ':<3} {state}"
        )
    app.emit(rows, "\n".join(lines))


def _mac_column(row: dict[str, Any]) -> str:
    """yes: DE128 with a ZAK; off: declared --no-mac; no: neither (an in link so is refused)."""
    return "yes" if row["mac"] else "off" if row["no_mac"] else "no"


def _set_link(app: AppContext, name: str, assignment: str, *extra: Any) -> None:
    async def work(conn: Any) -> str:
        sql = f"UPDATE switch_links SET {assignment} WHERE name = $1"
        result: str = await conn.execute(sql, name, *extra)
        return result

    if _db(app, work).endswith(" 0"):
        raise click.ClickException(f"no link named {name}")


@link.command("enable")
@click.argument("name")
@pass_app
def link_enable(app: AppContext, name: str) -> None:
    """Enable a link: a running switch starts connecting it (out) or accepts the acquirer (in)."""
    _set_link(app, name, "enabled = true")
    app.emit({"link": name, "enabled": True}, f"link {name} enabled")


@link.command("disable")
@click.argument("name")
@pass_app
def link_disable(app: AppContext, name: str) -> None:
    """Disable a link: its routes stop matching, in-flight requests finish, then it disconnects."""
    _set_link(app, name, "enabled = false")
    app.emit({"link": name, "enabled": False}, f"link {name} disabled")


@link.command("remove")
@click.argument("name")
@pass_app
def link_remove(app: AppContext, name: str) -> None:
    """Remove a link and its routes (a running switch drains it first)."""

    async def work(conn: Any) -> str:
        result: str = await conn.execute("DELETE FROM switch_links WHERE name = $1", name)
        return result

    if _db(app, work).endswith(" 0"):
        raise click.ClickException(f"no link named {name}")
    app.emit({"removed": name}, f"link {name} removed")


@link.command("rekey")
@click.argument("name")
@pass_app
def link_rekey(app: AppContext, name: str) -> None:
    """Ask the running switch to change the link's ZPK (0800 DE70 101, the new key under the ZMK)."""

    async def work(conn: Any) -> None:
        row = await conn.fetchrow(
            "SELECT direction, enabled, zmk IS NOT NULL AS zmk FROM switch_links WHERE name = $1", name
        )
        if row is None or row["direction"] != "out":
            raise click.ClickException(f"no outbound link named {name}")
        if not row["zmk"]:
            raise click.ClickException(f"link {name} has no ZMK (link add {name} --replace ... --zmk U...)")
        if not row["enabled"]:
            raise click.ClickException(f"link {name} is disabled")
        await conn.execute("UPDATE switch_links SET rekey_requested_at = now() WHERE name = $1", name)

    _db(app, work)
    app.emit(
        {"link": name, "rekey_requested": True},
        f"key change of link {name} requested (see `switch link list` and the switch log)",
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
    bin_high = bin_high or bin_low
    if not (_DIGITS.fullmatch(bin_low) and _DIGITS.fullmatch(bin_high)):
        raise click.ClickException("BIN bounds are 1-19 digits")
    if len(bin_low) != len(bin_high) or bin_low > bin_high:
        raise click.ClickException("BIN bounds must have the same length and LOW <= HIGH")

    async def work(conn: Any) -> int:
        direction = await conn.fetchval("SELECT direction FROM switch_links WHERE name = $1", link_name)
        if direction != "out":
            raise click.ClickException(f"no outbound link named {link_name}")
        same = await conn.fetchval(
            "SELECT id FROM switch_routes WHERE bin_low = $1 AND bin_high = $2 AND link = $3",
            bin_low,
            bin_high,
            link_name,
        )
        if same is not None:
            raise click.ClickException(f"route {same} already exists: {bin_low}-{bin_high} -> {link_name}")
        route_id: int = await conn.fetchval(
            "INSERT INTO switch_routes (bin_low, bin_high, link) VALUES ($1, $2, $3) RETURNING id",
            bin_low,
            bin_high,
            link_name,
        )
        return route_id

    route_id = _db(app, work)
    app.emit({"id": route_id}, f"route {route_id}: {bin_low}-{bin_high} -> {link_name}")


@route.command("list")
@pass_app
def route_list(app: AppContext) -> None:
    """Routes in the order they were added."""

    async def work(conn: Any) -> list[dict[str, Any]]:
        return [
            dict(r)
            for r in await conn.fetch("SELECT id, bin_low, bin_high, link FROM switch_routes ORDER BY id")
        ]

    rows = _db(app, work)
    app.emit(
        rows,
        "\n".join(
            [f"{'id':>4} {'range':<32} link"]
            + [f"{r['id']:>4} {r['bin_low'] + '-' + r['bin_high']:<32} {r['link']}" for r in rows]
        ),
    )


@route.command("remove")
@click.argument("route_id", type=int)
@pass_app
def route_remove(app: AppContext, route_id: int) -> None:
    """Remove a route by id."""

    async def work(conn: Any) -> str:
        result: str = await conn.execute("DELETE FROM switch_routes WHERE id = $1", route_id)
        return result

    if _db(app, work).endswith(" 0"):
        raise click.ClickException(f"no route {route_id}")
    app.emit({"removed": route_id}, f"route {route_id} removed")


# -- store-and-forward and journal -------------------------------------------------------------------
@switch.group()
def saf() -> None:
    """Store-and-forward reversal advices."""


@saf.command("list")
@click.option("--all", "show_all", is_flag=True, help="Include delivered advices.")
@pass_app
def saf_list(app: AppContext, show_all: bool) -> None:
    """Reversal advices waiting (or, with --all, also delivered)."""

    async def work(conn: Any) -> list[dict[str, Any]]:
        rows = await conn.fetch(
            "SELECT id, created_at, link, attempts, next_attempt_at, done_at, response_code, reason, message "
            f"FROM switch_saf {'' if show_all else 'WHERE done_at IS NULL'} ORDER BY id"
        )
        out = []
        for r in rows:
            d = dict(r)
            d["message"] = json.loads(d["message"]) if isinstance(d["message"], str) else d["message"]
            out.append(d)
        return out

    rows = _db(app, work)
    lines = [f"{'id':>6} {'link':<12} {'tries':>5} {'state':<10} original (DE90)"]
    for r in rows:
        state = f"done {r['response_code']}" if r["done_at"] else "waiting"
        lines.append(
            f"{r['id']:>6} {r['link']:<12} {r['attempts']:>5} {state:<10} {r['message'].get('90', '')}"
        )
    app.emit(rows, "\n".join(lines) if rows else "store-and-forward queue is empty")


@switch.group()
def journal() -> None:
    """The journal of requests and answers."""


@journal.command("show")
@click.option("--terminal", help="Only this terminal id (DE41).")
@click.option("--rrn", help="Only this retrieval reference number.")
@click.option("--limit", type=click.IntRange(1, 10_000), default=20, show_default=True)
@pass_app
def journal_show(app: AppContext, terminal: str | None, rrn: str | None, limit: int) -> None:
    """The latest journal rows (masked PANs; timings in milliseconds)."""

    async def work(conn: Any) -> list[dict[str, Any]]:
        rows = await conn.fetch(
            "SELECT id, created_at, channel, mti, txn_type, terminal_id, batch_no, stan, amount, pan_masked, "
            "rrn, auth_id, response_code, link, us_total, us_hsm, us_host FROM switch_journal "
            "WHERE ($1::text IS NULL OR terminal_id = $1) AND ($2::text IS NULL OR rrn = $2) "
            "ORDER BY id DESC LIMIT $3",
            terminal,
            rrn,
            limit,
        )
        return [dict(r) for r in rows]

    rows = _db(app, work)
    lines = [
        f"{'id':>7} {'channel':<9} {'mti':<4} {'type':<11} {'terminal':<8} {'batch':>6} {'stan':<6} "
        f"{'amount':>10} {'pan':<19} {'rrn':<12} rc {'total':>7} {'hsm':>6} {'host':>7}"
    ]
    for r in rows:
        lines.append(
            f"{r['id']:>7} {r['channel']:<9} {r['mti']:<4} {r['txn_type']:<11} {r['terminal_id'] or '-':<8} "
            f"{r['batch_no'] or '-':>6} {r['stan'] or '-':<6} "
            f"{r['amount'] if r['amount'] is not None else '-':>10} "
            f"{r['pan_masked'] or '-':<19} {r['rrn'] or '-':<12} {r['response_code']:<2} "
            f"{r['us_total'] / 1000:>7.1f} {r['us_hsm'] / 1000:>6.1f} {r['us_host'] / 1000:>7.1f}"
        )
    app.emit(rows, "\n".join(lines))
