"""The host's commands `host` (serve, links, keys, producers) and `ledger`, and what every host
command module shares: running work against the database and the HSM, tables and pages.
`card` is in host/card_cli.py; `product`, `merchant`, `store`, `terminal`, `acquirer` are in
host/catalog_cli.py. Operator mistakes are one line and exit 1.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shlex
import signal
import sys
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import click
import trio

from host import catalog
from host.catalog import CatalogError
from host.keys import IssuerCrypto, generate_missing, keys_from, load_keys, store_keys
from host.ledger import SERVER_SETTINGS
from host.producers import ExportedMailerKey
from ops.cli import AppContext, configure_logging, pass_app
from ops.db import DatabaseUnavailable, database_url
from ops.pgpool import PgPool

T = TypeVar("T")
APP_ROLE = "payswitch_app"
_KEY = re.compile(r"^(U[0-9A-Fa-f]{32}|T[0-9A-Fa-f]{48}|S[0-9A-Fa-f]{32})$")


# -- running work against the database (and the HSM) ---------------------------------------------
def _run(app: AppContext, work: Callable[..., Awaitable[T]], *, hsm: bool = False) -> T:
    """Run ``work(pool)`` or ``work(pool, crypto)`` in trio with the database pool (and HSM client)."""
    url = database_url(app.config)

    async def main() -> T:
        with PgPool(url, min_size=1, max_size=4, role=APP_ROLE, server_settings=SERVER_SETTINGS) as pool:
            if not hsm:
                return await work(pool)
            from hsm_sim.client import HsmClient, HsmError

            try:
                async with HsmClient.from_config(app.config.hsm) as client:
                    crypto = await open_crypto(pool, client)
                    return await work(pool, crypto)
            except HsmError as exc:
                raise click.ClickException(f"HSM: {exc}") from None

    try:
        return trio.run(main)
    except CatalogError as exc:
        raise click.ClickException(str(exc)) from None
    except DatabaseUnavailable as exc:
        raise click.ClickException(str(exc)) from None


async def open_crypto(pool: PgPool, client: Any) -> IssuerCrypto:
    """The issuer keys (generated in the HSM and stored under the LMK the first time)."""
    existing = await pool.run(load_keys)
    new = await generate_missing(client, existing)
    if new:
        existing = await pool.run(store_keys, new)
    return IssuerCrypto(client, keys_from(existing))


def _clear_components(label: str, count: int) -> list[str]:
    """``count`` clear key components, one per custodian: prompted without echo (or read from stdin)."""
    return [click.prompt(f"{label} component {i + 1} (32 hex)", hide_input=True) for i in range(count)]


def _check_components(label: str, components: list[str]) -> None:
    for c in components:
        if not re.fullmatch(r"[0-9A-Fa-f]{32}", c):
            raise click.ClickException(f"a {label} component is 32 hexadecimal characters")


def _table(rows: list[dict[str, Any]], cols: list[str]) -> str:
    if not rows:
        return "(none)"
    widths = [max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in cols]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True))]
    for r in rows:
        lines.append("  ".join(str(r.get(c, "")).ljust(w) for c, w in zip(cols, widths, strict=True)))
    return "\n".join(lines)


# -- host -----------------------------------------------------------------------------------------
@click.group()
def host() -> None:
    """The authorization host: `host serve`, links, keys."""


@host.command()
@click.option("--port", type=click.IntRange(0, 65535), default=None, help="H2H port (default: host.port).")
@pass_app
def serve(app: AppContext, port: int | None) -> None:
    """Listen for H2H requests, decide, post to the ledger, answer."""

    from host.service import HostService, load_partitions
    from hsm_sim.client import HsmClient
    from ops.metrics import serve_metrics

    configure_logging(app, "host")
    # The ledger's database work runs on the pool's asyncio thread, the H2H protocol on the trio
    # thread: each database reply needs the GIL back promptly, not after the default 5 ms slice.
    sys.setswitchinterval(0.0005)
    config = app.config
    if port is not None:
        config = dataclasses.replace(config, host=dataclasses.replace(config.host, port=port))
    url = database_url(config)
    serve_metrics("host", config.host.metrics_port, config.host.metrics_listen)
    pool_size = max(config.database.pool_max, config.host.writers + 4)

    async def main() -> None:
        with PgPool(
            url,
            min_size=min(config.database.pool_min, pool_size),
            max_size=pool_size,
            role=APP_ROLE,
            server_settings=SERVER_SETTINGS,
        ) as pool:
            async with HsmClient.from_config(config.hsm) as client:
                crypto = await open_crypto(pool, client)
                keys = await pool.run(load_keys)
                service = HostService(
                    config, pool, client, partitions=await pool.run(load_partitions), keys=keys
                )
                service.crypto = crypto
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(_stop_on_signal, nursery.cancel_scope)
                    await nursery.start(service.serve)

    from hsm_sim.client import HsmError

    try:
        trio.run(main)
    except HsmError as exc:
        raise click.ClickException(f"HSM: {exc}") from None


async def _stop_on_signal(scope: trio.CancelScope) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for _ in signals:
            scope.cancel()
            return


@host.command("link")
@click.argument("institution_id")
@click.option("--profile", type=click.Choice(["3des", "sm4"]), required=True)
@click.option("--zpk", default=None, help="Link PIN key under the LMK (U+32H / S+32H), as the switch has it.")
@click.option("--zmk", default=None, help="Link ZMK under the LMK, for 0800 key changes.")
@click.option(
    "--zak", default=None, help="Link MAC key under the LMK (DE128 checked and sent); '' removes it."
)
@click.option(
    "--no-mac",
    is_flag=True,
    help="Declare the link without DE128 (accepted from loopback only, unless host.allow_remote_no_mac).",
)
@pass_app
def link_set(
    app: AppContext,
    institution_id: str,
    profile: str,
    zpk: str | None,
    zmk: str | None,
    zak: str | None,
    no_mac: bool,
) -> None:
    """Set the link of a peer institution (the DE33, else DE32, it sends). A new link needs --zak or
    --no-mac: a link without a MAC key is declared, never assumed."""
    if not re.fullmatch(r"[0-9]{1,11}", institution_id):
        raise click.ClickException("institution id: 1 to 11 digits")
    for label, key in (("--zpk", zpk), ("--zmk", zmk), ("--zak", zak or None)):
        if key is not None and not _KEY.fullmatch(key):
            raise click.ClickException(f"{label}: expected a key under the LMK (U+32H, T+48H or S+32H)")
    inst = institution_id.lstrip("0") or "0"

    async def work(pool: PgPool) -> None:
        await pool.run(
            catalog.set_link,
            inst,
            profile,
            zmk.upper() if zmk else None,
            zpk.upper() if zpk else None,
            None,
            zak.upper() if zak is not None else None,
            True if no_mac else None,  # without the flag the stored declaration stays
        )

    _run(app, work)
    app.emit({"link": inst, "profile": profile, "no_mac": no_mac}, f"link {inst} ({profile}) saved")


@host.command("keys")
@pass_app
def keys_cmd(app: AppContext) -> None:
    """Create the issuer keys in the HSM if missing; show their check values."""

    async def work(pool: PgPool, crypto: IssuerCrypto) -> dict[str, str]:
        rows = await pool.run(load_keys)
        return {name: cv[:6] for name, (_key, cv) in sorted(rows.items())}

    cvs = _run(app, work, hsm=True)
    app.emit(cvs, "\n".join(f"{k:<10} check value {v}" for k, v in cvs.items()))


# -- host producer -----------------------------------------------------------------------------------
@host.group("producer")
def producer_group() -> None:
    """Card producers: their ZMK (formed from components) and the PIN-mailer key exported under it."""


@producer_group.command("add")
@click.argument("name")
@click.option("--scheme", type=click.Choice(["3des", "sm4"]), default="3des", show_default=True)
@click.option(
    "--zmk-components",
    type=click.IntRange(2, 9),
    required=True,
    help="Enter the producer's ZMK as N clear components (prompted, not echoed), XORed in the HSM.",
)
@pass_app
def producer_add(app: AppContext, name: str, scheme: str, zmk_components: int) -> None:
    """Register a card producer; its ZMK is formed in the HSM (A4 / WK) and kept under the LMK only."""
    from host import producers

    if not producers.NAME.fullmatch(name):
        raise click.ClickException("producer name: 1 to 32 letters, digits, '_', '.', '-'")
    components = _clear_components("ZMK", zmk_components)
    _check_components("ZMK", components)

    async def work(pool: PgPool, crypto: IssuerCrypto) -> str:
        if await pool.run(catalog.producer_exists, name):
            raise CatalogError(f"producer {name} already exists")
        zmk, cv = await producers.form_zmk(crypto, scheme, components)
        await pool.run(producers.add_producer, name, scheme, zmk, cv)
        return cv

    cv = _run(app, work, hsm=True)
    app.emit(
        {"producer": name, "scheme": scheme, "zmk_check_value": cv[:6]},
        f"producer {name} ({scheme}) added; ZMK check value {cv[:6]}",
    )


@producer_group.command("list")
@pass_app
def producer_list(app: AppContext) -> None:
    """Card producers and their ZMK check values."""
    from host import producers

    async def work(pool: PgPool) -> list[dict[str, Any]]:
        return await pool.run(producers.list_producers)

    rows = _run(app, work)
    app.emit(rows, _table(rows, ["name", "scheme", "zmk_check_value"]))


@producer_group.command("export-mailer-key")
@click.argument("name")
@pass_app
def producer_export(app: AppContext, name: str) -> None:
    """The PIN-mailer key under the producer's ZMK (A8 / ST) and its check value, for the producer's HSM."""

    async def work(pool: PgPool, crypto: IssuerCrypto) -> ExportedMailerKey:
        return await _export_for(pool, crypto, name)

    out = _run(app, work, hsm=True).public()
    app.emit(
        out,
        f"producer {out['producer']} ({out['scheme']}): mailer key under ZMK {out['mailer_key_under_zmk']}\n"
        f"mailer key check value {out['mailer_key_check_value']}; ZMK check value {out['zmk_check_value']}",
    )


async def _export_for(pool: PgPool, crypto: IssuerCrypto, name: str) -> ExportedMailerKey:
    from host import producers

    return await producers.export_mailer_key(crypto, await pool.run(producers.producer, name))


# -- listing: one page at a time -------------------------------------------------------------------------
def _page_options(f: Callable[..., Any]) -> Callable[..., Any]:
    f = click.option(
        "--after",
        default=None,
        metavar="CURSOR",
        help="Start after this cursor (printed by the page before).",
    )(f)
    return click.option(
        "--limit", type=click.IntRange(1, 1000), default=50, show_default=True, help="Rows per page."
    )(f)


def _next_page_command(cursor: str) -> str:
    """The exact command line that gives the next page: this one with --after CURSOR."""
    ctx = click.get_current_context()
    names, c = [], ctx
    while c.parent is not None:  # the root's own name is the program's (`cli` under a test runner)
        names.append(c.info_name or "")
        c = c.parent
    parts = ["payswitch", *reversed(names)]
    for p in ctx.command.params:
        value = ctx.params.get(p.name or "")
        if p.name == "after" or value is None or value == () or value is False:
            continue
        if isinstance(p, click.Argument):
            parts.append(shlex.quote(str(value)))
        elif isinstance(p, click.Option):
            if p.is_flag:
                parts.append(p.opts[0] if value else p.secondary_opts[0])
            elif value != p.default:
                for v in value if p.multiple else (value,):
                    parts += [p.opts[0], shlex.quote(str(v))]
    return " ".join([*parts, "--after", cursor])


def _emit_page(
    app: AppContext, name: str, rows: list[dict[str, Any]], human: str, cursor: str | None
) -> None:
    """A page: JSON {name: rows, "next": cursor or null}; people see the table and the next command."""
    tail = f"\nnext page: {_next_page_command(cursor)}" if cursor is not None else ""
    app.emit({name: rows, "next": cursor}, human + tail)


# -- ledger ---------------------------------------------------------------------------------------
@click.group()
def ledger() -> None:
    """The double-entry ledger."""


@ledger.command("check")
@pass_app
def ledger_check(app: AppContext) -> None:
    """Check the ledger's invariants; exit 1 naming the offending ids if any fails."""
    from host.check import counts, receivables, run_checks

    async def work(pool: PgPool) -> tuple[list[Any], dict[str, int], list[Any]]:
        return await pool.run(run_checks), await pool.run(counts), await pool.run(receivables)

    results, sizes, owing = _run(app, work)
    data = {
        "ok": all(r.ok for r in results),
        "counts": sizes,
        "checks": {r.name: {"ok": r.ok, "offenders": r.offenders} for r in results},
        # cards owing offline sales (host.offline): named, not a failure
        "offline_receivables": [
            {"card_id": o.card_id, "pan_masked": o.pan_masked, "owed": o.owed} for o in owing
        ],
    }
    lines = [
        f"{'OK    ' if r.ok else 'FAILED'} {r.name}"
        + ("" if r.ok else f": {', '.join(r.offenders[:20])}" + (" ..." if len(r.offenders) > 20 else ""))
        for r in results
    ]
    lines.append(", ".join(f"{v} {k}" for k, v in sizes.items()))
    lines += [o.line() for o in owing]  # cards owing offline sales (host.offline), named
    if app.json_output:
        click.echo(json.dumps(data, indent=2, sort_keys=True))
    else:
        click.echo("\n".join(lines))
    if not data["ok"]:
        raise SystemExit(1)


@ledger.command("verify")
@pass_app
def ledger_verify(app: AppContext) -> None:
    """Recompute every posting batch's chained digest (host.chain); exit 1 naming the first broken
    link (the batch, and the row in it when known), else print OK with each chain's head."""
    from host.chain import verify

    async def work(pool: PgPool) -> Any:
        return await pool.run(verify)

    checked, heads, broken = _run(app, work)
    data = {
        "ok": broken is None,
        "batches": checked,
        "heads": [h.as_dict() for h in heads],
        "broken": broken.as_dict() if broken is not None else None,
    }
    if app.json_output:
        click.echo(json.dumps(data, indent=2, sort_keys=True))
    elif broken is not None:
        click.echo(f"FAILED {broken}" + (f"; {broken.row}" if broken.row else ""))
    else:
        click.echo(f"OK {checked} batches")
        for h in heads:
            click.echo(f"chain {h.chain}: seq {h.seq} batch {h.batch_id} {h.hash}")
    if broken is not None:
        raise SystemExit(1)
