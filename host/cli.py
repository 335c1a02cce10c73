"""The host's commands: `host`, `product`, `card`, `merchant`, `store`, `terminal`, `ledger`.

Amounts on the command line are in currency units with up to two decimals (``500.00`` = 50,000 minor
units); JSON output gives minor units. A CARD argument is a card id or a PAN (looked up through the
HSM's keyed hash; the PAN is never stored or logged). Operator mistakes are one line and exit 1.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import re
import shlex
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import click
import trio

from host import catalog, directory, rules
from host.admin import admin_load, load_refusal
from host.business_day import business_today
from host.catalog import CatalogError
from host.keys import IssuerCrypto, generate_missing, keys_from, load_keys, store_keys
from host.ledger import SERVER_SETTINGS
from host.producers import ExportedMailerKey
from ops.cli import AppContext, configure_logging, pass_app
from ops.db import DatabaseUnavailable, database_url
from ops.localtime import format_local, iso_local
from ops.logs import mask_pan
from ops.money import AMOUNT, AMOUNT_OR_ZERO, currency_alpha, format_money, money_json
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


async def _card_id(pool: PgPool, crypto: IssuerCrypto | None, card: str) -> int:
    """The card a CARD argument names (id, PAN, masked PAN or label): host.directory.resolve_card."""
    from host.directory import resolve_card

    return await resolve_card(pool, crypto, card)


def _needs_hsm(card: str) -> bool:
    from host.directory import needs_hsm

    return needs_hsm(card)


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
    import dataclasses

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
    if not re.fullmatch(r"\d{1,11}", institution_id):
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


# -- product --------------------------------------------------------------------------------------
@click.group()
def product() -> None:
    """Card products and their BIN ranges."""


@product.command("add")
@click.argument("code")
@click.option("--kind", type=click.Choice(["reloadable", "fixed_amount", "usage_limited"]), required=True)
@click.option("--bin", "bin_prefix", required=True, help="BIN prefix (6-11 digits) of the product's PANs.")
@click.option("--pan-length", type=click.IntRange(13, 19), default=19, show_default=True)
@click.option("--name", default="")
@click.option("--currency", default="156", show_default=True)
@click.option("--max-balance", type=AMOUNT, default="5000.00", show_default=True, help="Most a card holds.")
@click.option("--face-value", type=AMOUNT_OR_ZERO, default="0", help="fixed_amount: loaded at activation.")
@click.option("--uses", type=click.IntRange(1), default=None, help="usage_limited: number of uses.")
@click.option("--per-txn-limit", type=AMOUNT, default="1000.00", show_default=True, help="Largest purchase.")
@click.option("--daily-amount-limit", type=AMOUNT, default="3000.00", show_default=True, help="Daily spend.")
@click.option("--daily-count-limit", type=click.IntRange(1), default=50, show_default=True)
@click.option("--validity-months", type=click.IntRange(1, 240), default=36, show_default=True)
@click.option("--pin-required/--no-pin", default=True, show_default=True)
@click.option("--pin-scheme", type=click.Choice(["3des", "sm4"]), default="3des", show_default=True)
@click.option("--mcc", "mccs", multiple=True, help="Allowed MCC (repeatable; default any).")
@click.option("--group", "groups", multiple=True, help="Allowed merchant group (repeatable; default any).")
@pass_app
def product_add(
    app: AppContext,
    code: str,
    kind: str,
    bin_prefix: str,
    pan_length: int,
    name: str,
    currency: str,
    max_balance: int,
    face_value: int,
    uses: int | None,
    per_txn_limit: int,
    daily_amount_limit: int,
    daily_count_limit: int,
    validity_months: int,
    pin_required: bool,
    pin_scheme: str,
    mccs: tuple[str, ...],
    groups: tuple[str, ...],
) -> None:
    """Add a card product with its BIN range."""
    if kind == "usage_limited" and uses is None:
        raise click.ClickException("a usage_limited product needs --uses")
    if kind == "fixed_amount" and face_value <= 0:
        raise click.ClickException("a fixed_amount product needs --face-value")
    if not re.fullmatch(r"\d{6,11}", bin_prefix):
        raise click.ClickException("--bin: 6 to 11 digits")
    spec = catalog.ProductSpec(
        code=code,
        kind=kind,
        currency=currency,
        name=name,
        max_balance=max_balance,
        initial_amount=face_value,
        uses=uses if kind == "usage_limited" else None,
        per_txn_limit=per_txn_limit,
        daily_amount_limit=daily_amount_limit,
        daily_count_limit=daily_count_limit,
        validity_months=validity_months,
        pin_required=pin_required,
        pin_scheme=pin_scheme,
        allowed_mccs=list(mccs) or None,
        allowed_groups=list(groups) or None,
    )

    async def work(pool: PgPool) -> int:
        if await pool.run(catalog.product_exists, code):
            raise CatalogError(f"product {code} already exists")
        return await pool.run(catalog.add_product, spec, bin_prefix, pan_length)

    pid = _run(app, work)
    app.emit({"product": code, "id": pid, "bin": bin_prefix}, f"product {code} ({kind}) on BIN {bin_prefix}")


@product.command("list")
@click.option("--kind", type=click.Choice(["reloadable", "fixed_amount", "usage_limited"]), default=None)
@click.option("--currency", default=None, help="ISO 4217 numeric code, e.g. 156.")
@_page_options
@pass_app
def product_list(
    app: AppContext, kind: str | None, currency: str | None, limit: int, after: str | None
) -> None:
    """Products: kind, BINs, limits (in yuan) and how many cards each has."""

    async def work(pool: PgPool) -> directory.Page:
        return await pool.run(
            lambda conn: directory.list_products(conn, kind=kind, currency=currency, after=after, limit=limit)
        )

    page = _run(app, work)
    rows = [_product_view(app, r) for r in page.rows]
    human = [
        {
            "code": r["code"],
            "kind": r["kind"],
            "bins": ",".join(r["bins"]),
            "max balance": format_money(r["max_balance"], r["currency"]),
            "per txn": format_money(r["per_txn_limit"], r["currency"]),
            "daily": format_money(r["daily_amount_limit"], r["currency"]),
            "count/day": r["daily_count_limit"],
            "PIN": "yes" if r["pin_required"] else "no",
            "cards": r["cards"],
        }
        for r in page.rows
    ]
    cols = ["code", "kind", "bins", "max balance", "per txn", "daily", "count/day", "PIN", "cards"]
    _emit_page(app, "products", rows, _table(human, cols), page.next)


@product.command("show")
@click.argument("code")
@pass_app
def product_show(app: AppContext, code: str) -> None:
    """A product: its BINs, limits in yuan, restrictions and its cards by state."""

    async def work(pool: PgPool) -> dict[str, Any]:
        return await pool.run(directory.show_product, code)

    r = _run(app, work)
    cur = r["currency"]
    lines = [
        f"product      {r['code']}  {r['name']}".rstrip(),
        f"kind         {r['kind']}  currency {currency_alpha(cur)} ({cur})",
        f"BINs         {', '.join(r['bins']) or '-'}",
        f"max balance  {format_money(r['max_balance'], cur)}",
        f"per txn      {format_money(r['per_txn_limit'], cur)}",
        f"daily        {format_money(r['daily_amount_limit'], cur)}, {r['daily_count_limit']} purchases",
    ]
    if r["kind"] == "fixed_amount":
        lines.append(f"face value   {format_money(r['face_value'], cur)}")
    if r["uses"] is not None:
        lines.append(f"uses         {r['uses']}")
    lines += [
        f"validity     {r['validity_months']} months",
        f"PIN          {'required' if r['pin_required'] else 'not required'} ({r['pin_scheme']})",
        f"MCCs         {', '.join(r['allowed_mccs']) if r['allowed_mccs'] else 'any'}",
        f"groups       {', '.join(r['allowed_groups']) if r['allowed_groups'] else 'any'}",
        f"cards        {r['cards']}"
        + (f" ({', '.join(f'{n} {s}' for s, n in r['cards_by_state'].items())})" if r["cards"] else ""),
        f"created      {format_local(r['created_at'], app.config.clearing.timezone)}",
    ]
    app.emit({**_product_view(app, r), "cards_by_state": r["cards_by_state"]}, "\n".join(lines))


@product.command("update")
@click.argument("code")
@click.option("--name", default=None)
@click.option("--max-balance", type=AMOUNT, default=None, help="Most a card may hold, in yuan.")
@click.option("--per-txn-limit", type=AMOUNT, default=None, help="Largest purchase, in yuan.")
@click.option("--daily-amount-limit", type=AMOUNT, default=None, help="Purchases per business day, in yuan.")
@click.option("--daily-count-limit", type=click.IntRange(1), default=None, help="Purchases per business day.")
@click.option(
    "--validity-months", type=click.IntRange(1, 240), default=None, help="For cards issued from now on."
)
@click.option("--pin-required/--no-pin", default=None, help="Whether a purchase needs the PIN.")
@click.option("--mcc", "mccs", multiple=True, help="Allowed MCC (repeatable; replaces the list).")
@click.option("--any-mcc", is_flag=True, help="Allow every MCC again.")
@click.option(
    "--group", "groups", multiple=True, help="Allowed merchant group (repeatable; replaces the list)."
)
@click.option("--any-group", is_flag=True, help="Allow every merchant group again.")
@pass_app
def product_update(
    app: AppContext,
    code: str,
    name: str | None,
    max_balance: int | None,
    per_txn_limit: int | None,
    daily_amount_limit: int | None,
    daily_count_limit: int | None,
    validity_months: int | None,
    pin_required: bool | None,
    mccs: tuple[str, ...],
    any_mcc: bool,
    groups: tuple[str, ...],
    any_group: bool,
) -> None:
    """Change a product's limits or restrictions; a running host applies them from its next request."""
    if mccs and any_mcc:
        raise click.UsageError("--mcc and --any-mcc exclude each other")
    if groups and any_group:
        raise click.UsageError("--group and --any-group exclude each other")
    changes: dict[str, Any] = {
        k: v
        for k, v in (
            ("name", name),
            ("max_balance", max_balance),
            ("per_txn_limit", per_txn_limit),
            ("daily_amount_limit", daily_amount_limit),
            ("daily_count_limit", daily_count_limit),
            ("validity_months", validity_months),
            ("pin_required", pin_required),
            ("allowed_mccs", list(mccs) if mccs else [] if any_mcc else None),
            ("allowed_groups", list(groups) if groups else [] if any_group else None),
        )
        if v is not None
    }
    if not changes:
        raise click.UsageError("nothing to change: give at least one option (see --help)")

    async def work(pool: PgPool) -> tuple[dict[str, tuple[Any, Any]], dict[str, Any]]:
        changed = await pool.run(catalog.update_product, code, changes)
        return changed, await pool.run(directory.show_product, code)

    changed, r = _run(app, work)

    def shown(k: str, v: Any) -> str:
        if k in ("max_balance", "per_txn_limit", "daily_amount_limit") and v is not None:
            return format_money(v, r["currency"])
        if isinstance(v, list):
            return ",".join(v) or "any"
        return "any" if v is None and k.startswith("allowed") else str(v)

    human = (
        "\n".join(f"product {code}: {k} {shown(k, a)} -> {shown(k, b)}" for k, (a, b) in changed.items())
        if changed
        else f"product {code}: nothing changed"
    )
    app.emit({"product": _product_view(app, r), "changed": sorted(changed)}, human)


def _product_view(app: AppContext, r: dict[str, Any]) -> dict[str, Any]:
    """A product for --json: amounts as *_minor with the currency, times with the programme's offset."""
    cur = r["currency"]
    out = {
        k: r[k]
        for k in (
            "code",
            "name",
            "kind",
            "uses",
            "daily_count_limit",
            "validity_months",
            "pin_required",
            "pin_scheme",
            "allowed_mccs",
            "allowed_groups",
            "bins",
            "cards",
        )
    }
    out["currency_numeric"] = cur
    for k in ("max_balance", "face_value", "per_txn_limit", "daily_amount_limit"):
        out.update(money_json(k, r[k], cur))
    out["created_at"] = iso_local(r["created_at"], app.config.clearing.timezone)
    return out


# -- card -----------------------------------------------------------------------------------------
@click.group()
def card() -> None:
    """Cards: issue, state changes, loads, history."""


@card.command("issue")
@click.option("--product", "product_code", required=True)
@click.option("--count", type=click.IntRange(1, 100_000), default=1, show_default=True)
@click.option("--pin", default=None, help="Chosen PIN for every card (demos, tests; under the LMK by BA).")
@click.option("--activate", is_flag=True, help="Activate the cards at once (else they stay in inventory).")
@click.option(
    "--mailer-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where the PIN-mailer file goes (default: host.mailer_dir).",
)
@click.option(
    "--producer",
    "producer_name",
    default=None,
    help="Card producer: PANs under its mailer key, the key under its ZMK in the file's header line.",
)
@pass_app
def card_issue(
    app: AppContext,
    product_code: str,
    count: int,
    pin: str | None,
    activate: bool,
    mailer_dir: Path | None,
    producer_name: str | None,
) -> None:
    """Issue cards: Luhn-valid PANs in the product's BIN, PINs through the HSM, a PIN-mailer file.

    The clear PANs are printed (for embossing) and never stored; the mailer file holds no clear PAN or PIN.
    """
    from host.issue import issue_cards

    if pin is not None and not (pin.isdigit() and 4 <= len(pin) <= 12):
        raise click.ClickException("--pin: 4 to 12 digits")
    folder = mailer_dir or Path(app.config.host.mailer_dir)

    async def work(pool: PgPool, crypto: IssuerCrypto) -> tuple[list[Any], Path | None]:
        export = await _export_for(pool, crypto, producer_name) if producer_name else None
        return await issue_cards(
            pool,
            crypto,
            product_code,
            count,
            pin=pin,
            activate=activate,
            mailer_dir=folder,
            producer=export,
        )

    cards, mailer = _run(app, work, hsm=True)
    data = {
        "cards": [{"card_id": c.card_id, "pan": c.pan, "expiry": c.expiry} for c in cards],
        "mailer": str(mailer) if mailer else None,
        "state": "active" if activate else "inventory",
        "producer": producer_name,
    }
    # Each full PAN once, for embossing: the database keeps only the PAN under the HSM and its keyed hash.
    human = _table(
        [{"card": c.card_id, "pan": c.pan, "expiry": c.expiry} for c in cards], ["card", "pan", "expiry"]
    )
    app.emit(
        data,
        f"{human}\n{len(cards)} cards issued ({data['state']}); PIN mailer {mailer}\n"
        "These card numbers are shown this once and never again: the database keeps only each number "
        "encrypted and its hash (`card show` masks it).",
    )


def _state_command(name: str, target: str, help_text: str) -> None:
    @card.command(name, help=help_text)
    @click.argument("card_ref", metavar="CARD")
    @pass_app
    def command(app: AppContext, card_ref: str) -> None:
        async def work(pool: PgPool, crypto: IssuerCrypto | None = None) -> tuple[int, str, str]:
            cid = await _card_id(pool, crypto, card_ref)
            if target == "active" and name == "activate":
                from host.issue import activate_card

                info = await pool.run(catalog.card_info, cid)
                old = info["state"]
                if old != "inventory":
                    raise CatalogError(f"card {cid} is {old}: only an inventory card can be activated")
                _not_past_expiry(cid, info["expiry"], "be activated", business_today(app.config))
                await activate_card(pool, cid)
                return cid, old, "active"
            if name == "unfreeze":
                info = await pool.run(catalog.card_info, cid)
                old = info["state"]
                if old != "frozen":
                    raise CatalogError(f"card {cid} is {old}, not frozen")
                _not_past_expiry(cid, info["expiry"], "be unfrozen", business_today(app.config))
            old, new = await pool.run(catalog.set_card_state, cid, target)
            return cid, old, new

        cid, old, new = _run(app, work, hsm=_needs_hsm(card_ref))
        app.emit({"card_id": cid, "from": old, "to": new}, f"card {cid}: {old} -> {new}")


def _not_past_expiry(card_id: int, expiry: str, action: str, today: dt.date) -> None:
    """A card past its expiry month (on business date ``today``) is not made active again (it would
    only answer 54)."""
    from host.rules import yymm

    if expiry < yymm(today):
        raise CatalogError(f"card {card_id} is past its expiry {expiry}: it cannot {action}")


_state_command("activate", "active", "Activate an inventory card (gift cards get their face value).")
_state_command("freeze", "frozen", "Freeze a card (declined 05 until unfrozen).")
_state_command("unfreeze", "active", "Unfreeze a frozen card.")
_state_command("lost", "lost", "Report a card lost (41).")
_state_command("stolen", "stolen", "Report a card stolen (43).")


@card.command("close")
@click.argument("card_ref", metavar="CARD")
@click.option(
    "--forfeit",
    is_flag=True,
    help="Post the card's balance to breakage income and close it in one transaction (not while holds "
    "are pending).",
)
@pass_app
def card_close(app: AppContext, card_ref: str, forfeit: bool) -> None:
    """Close a card for good. Refused while it holds money: unload it first (`card unload`, settlement
    pays it out) or give --forfeit."""
    from host.admin import Closed, close_card

    async def work(pool: PgPool, crypto: IssuerCrypto | None = None) -> Closed:
        return await close_card(pool, await _card_id(pool, crypto, card_ref), forfeit=forfeit)

    done = _run(app, work, hsm=_needs_hsm(card_ref))
    lost = ""
    if done.forfeited:
        lost = f"; {format_money(done.forfeited, done.currency)} forfeited to breakage income"
    app.emit(
        {
            "card_id": done.card_id,
            "from": done.from_state,
            "to": "closed",
            **money_json("forfeited", done.forfeited, done.currency),
        },
        f"card {done.card_id}: {done.from_state} -> closed{lost}",
    )


@card.command("unload")
@click.argument("card_ref", metavar="CARD")
@click.option("--amount", type=AMOUNT, default=None, help="Yuan to unload (default: all that is available).")
@click.option(
    "--reference", required=True, help="Your reference for the payout: the same one twice unloads once."
)
@pass_app
def card_unload(app: AppContext, card_ref: str, amount: int | None, reference: str) -> None:
    """Take money off a card to the cash-out payable; the next settlement run pays it out to the
    cardholder under REFERENCE. Held money (pending pre-auths) stays on the card."""
    from host.admin import Unload, admin_unload

    async def work(pool: PgPool, crypto: IssuerCrypto | None = None) -> Unload:
        return await admin_unload(pool, await _card_id(pool, crypto, card_ref), reference, amount)

    u = _run(app, work, hsm=_needs_hsm(card_ref))
    verb = "already unloaded" if u.duplicate else "unloaded"
    held = f" ({format_money(u.held, u.currency)} held)" if u.held else ""
    app.emit(
        {
            "card_id": u.card_id,
            "reference": u.reference,
            "duplicate": u.duplicate,
            **money_json("unloaded", u.amount, u.currency),
            "balance_minor": u.balance,
            "held_minor": u.held,
        },
        f"card {u.card_id}: {verb} {format_money(u.amount, u.currency)} under reference {u.reference};"
        f" balance {format_money(u.balance, u.currency)}{held}.\n"
        "The next settlement run (`payswitch settle`) pays it out to the cardholder with this reference.",
    )


@card.command("expire")
@click.option("--dry-run", is_flag=True, help="Count the cards that would expire; change nothing.")
@click.option(
    "--as-of",
    type=click.DateTime(formats=["%Y-%m-%d"]),
    default=None,
    help="Expire as on this business date, YYYY-MM-DD (default: today's, in clearing.timezone).",
)
@click.option("--yes", is_flag=True, help="Confirm an --as-of in the future (expires cards not yet expired).")
@pass_app
def card_expire(app: AppContext, dry_run: bool, as_of: Any, yes: bool) -> None:
    """Move active and frozen cards past their expiry month to `expired` (what `host serve` runs)."""
    from host.expiry import ExpiryResult, expire_cards

    if as_of is not None and not (dry_run or yes) and as_of.date() > business_today(app.config):
        raise click.ClickException(
            f"--as-of {as_of.date().isoformat()} is in the future (today's business date is"
            f" {business_today(app.config).isoformat()}): cards not yet expired would be expired;"
            " give --yes to do it (or --dry-run to count them)"
        )

    async def work(pool: PgPool) -> ExpiryResult:
        day = as_of.date() if as_of else business_today(app.config)
        return await expire_cards(pool, day, dry_run=dry_run)

    result = _run(app, work)
    app.emit(
        {
            "as_of": result.as_of.isoformat(),
            "expiry_before": result.expiry_before,
            "dry_run": result.dry_run,
            "count": result.count,
            "by_state": result.by_state,
        },
        result.summary(),
    )


@card.command("reset-pin-tries")
@click.argument("card_ref", metavar="CARD")
@pass_app
def card_reset_pin_tries(app: AppContext, card_ref: str) -> None:
    """Give a card locked by wrong PINs (75) its PIN tries back."""

    async def work(pool: PgPool, crypto: IssuerCrypto | None = None) -> tuple[int, int]:
        cid = await _card_id(pool, crypto, card_ref)
        return cid, await pool.run(catalog.reset_pin_tries, cid)

    cid, old = _run(app, work, hsm=_needs_hsm(card_ref))
    app.emit({"card_id": cid, "pin_tries_were": old}, f"card {cid}: PIN tries reset (were {old})")


@card.command("show")
@click.argument("card_ref", metavar="CARD")
@pass_app
def card_show(app: AppContext, card_ref: str) -> None:
    """A card (id, PAN, masked PAN or label): state, product, balances, limits and the day's use, PIN
    tries, batch, label, issue and update times."""

    async def work(pool: PgPool, crypto: IssuerCrypto | None = None) -> dict[str, Any]:
        return await pool.run(directory.show_card, await _card_id(pool, crypto, card_ref))

    r = _run(app, work, hsm=_needs_hsm(card_ref))
    cur, tz = r["currency"], app.config.clearing.timezone
    day = r["day"].isoformat() if r["day"] is not None else None
    data: dict[str, Any] = {
        k: r[k]
        for k in (
            "id",
            "label",
            "pan_masked",
            "expiry",
            "state",
            "product",
            "kind",
            "issue_batch",
            "uses_left",
            "pin_tries",
            "daily_count_limit",
            "day_count",
            "pin_required",
            "account_id",
        )
    }
    data["card_id"] = r["id"]
    data["day"] = day
    for k in (
        "balance",
        "available",
        "held",
        "max_balance",
        "per_txn_limit",
        "daily_amount_limit",
        "day_amount",
    ):
        data.update(money_json(k, r[k], cur))
    data["issued_at"] = iso_local(r["issued_at"], tz)
    data["updated_at"] = iso_local(r["updated_at"], tz)
    today = business_today(app.config)
    data["today_amount_minor"] = r["day_amount"] if r["day"] == today else 0
    data["today_count"] = r["day_count"] if r["day"] == today else 0
    used = (
        f"{format_money(data['today_amount_minor'], cur)} in {data['today_count']} purchases "
        f"(business day {today.isoformat()}"
        + (f"; last purchase day {day})" if day is not None and r["day"] != today else ")")
    )
    lines = [
        f"card         {r['id']}" + (f"  label {r['label']}" if r["label"] else ""),
        f"PAN          {r['pan_masked']}  expiry {r['expiry'][2:]}/{r['expiry'][:2]}",
        f"state        {r['state']}",
        f"product      {r['product']} ({r['kind']})",
        f"balance      {format_money(r['balance'], cur)}",
        f"available    {format_money(r['available'], cur)}",
        f"held         {format_money(r['held'], cur)}",
        f"limits       {format_money(r['per_txn_limit'], cur)} per purchase, "
        f"{format_money(r['daily_amount_limit'], cur)} and {r['daily_count_limit']} purchases a day, "
        f"balance up to {format_money(r['max_balance'], cur)}",
        f"today        {used}",
    ]
    if r["uses_left"] is not None:
        lines.append(f"uses left    {r['uses_left']}")
    lines += [
        f"PIN tries    {r['pin_tries']}" + (" (PIN required)" if r["pin_required"] else ""),
        f"batch        {r['issue_batch'] or '-'}",
        f"issued       {format_local(r['issued_at'], tz)}",
        f"updated      {format_local(r['updated_at'], tz)}",
    ]
    app.emit(data, "\n".join(lines))


@card.command("list")
@click.option("--last4", default=None, help="The PAN's last 4 digits.")
@click.option(
    "--pan",
    default=None,
    help="A masked PAN (621234*********1234), its first 6 + last 4 digits, or a whole PAN (looked up by "
    "its hash through the HSM, never stored).",
)
@click.option("--state", type=click.Choice(directory.CARD_STATES), default=None)
@click.option("--product", "product_code", default=None, help="Product code.")
@click.option("--batch", default=None, help="Issue batch.")
@click.option("--label", default=None)
@_page_options
@pass_app
def card_list(
    app: AppContext,
    last4: str | None,
    pan: str | None,
    state: str | None,
    product_code: str | None,
    batch: str | None,
    label: str | None,
    limit: int,
    after: str | None,
) -> None:
    """Find cards: by last 4 digits, masked PAN, state, product, issue batch or label (all that are
    given must match)."""
    clear_pan = pan is not None and directory.needs_hsm(pan.replace(" ", ""))

    async def work(pool: PgPool, crypto: IssuerCrypto | None = None) -> directory.Page:
        flt = directory.CardFilter(state=state, product=product_code, batch=batch, label=label)
        if pan is not None:
            digits = pan.replace(" ", "")
            by_pan = directory.card_filter_for_pan(
                digits, await crypto.pan_hash(digits) if crypto is not None and clear_pan else None
            )
            if last4 is not None and by_pan.last4 not in (None, last4):
                raise CatalogError(f"--last4 {last4} and --pan {mask_pan(digits)} name other cards")
            flt = dataclasses.replace(
                flt,
                masked_pan=by_pan.masked_pan,
                first6=by_pan.first6,
                pan_hash=by_pan.pan_hash,
                last4=by_pan.last4,
            )
        if last4 is not None and flt.last4 is None:
            flt = dataclasses.replace(flt, last4=last4)
        return await pool.run(lambda conn: directory.list_cards(conn, flt, after=after, limit=limit))

    page = _run(app, work, hsm=clear_pan)
    tz = app.config.clearing.timezone
    rows = [
        {
            "card_id": r["id"],
            "label": r["label"],
            "pan_masked": r["pan_masked"],
            "expiry": r["expiry"],
            "state": r["state"],
            "product": r["product"],
            "issue_batch": r["issue_batch"],
            **money_json("balance", r["balance"], r["currency"]),
            **money_json("available", r["available"], r["currency"]),
            "issued_at": iso_local(r["issued_at"], tz),
        }
        for r in page.rows
    ]
    human = [
        {
            "card": r["id"],
            "label": r["label"] or "",
            "pan": r["pan_masked"],
            "expiry": f"{r['expiry'][2:]}/{r['expiry'][:2]}",
            "state": r["state"],
            "product": r["product"],
            "batch": r["issue_batch"],
            "balance": format_money(r["balance"], r["currency"]),
            "issued": format_local(r["issued_at"], tz, seconds=False),
        }
        for r in page.rows
    ]
    cols = ["card", "label", "pan", "expiry", "state", "product", "batch", "balance", "issued"]
    _emit_page(app, "cards", rows, _table(human, cols), page.next)


@card.command("label")
@click.argument("card_ref", metavar="CARD")
@click.argument("name", required=False)
@click.option("--clear", is_flag=True, help="Remove the card's label.")
@pass_app
def card_label(app: AppContext, card_ref: str, name: str | None, clear: bool) -> None:
    """Name a card (1-32 letters, digits, '_', '.', '-', not all digits): every card command then takes
    the name, as `pos` takes a demo name."""
    if clear == (name is not None):
        raise click.UsageError("give a NAME, or --clear to remove the label")
    if name is not None and (problem := directory.label_problem(name)):
        raise click.UsageError(problem)

    async def work(pool: PgPool, crypto: IssuerCrypto | None = None) -> tuple[int, str | None]:
        cid = await _card_id(pool, crypto, card_ref)
        return cid, await pool.run(directory.set_card_label, cid, name)

    cid, old = _run(app, work, hsm=_needs_hsm(card_ref))
    human = f"card {cid}: label {name}" if name is not None else f"card {cid}: label {old or '-'} removed"
    app.emit({"card_id": cid, "label": name, "label_was": old}, human)


@card.command("load")
@click.argument("card_ref", metavar="CARD")
@click.option("--amount", "minor", type=AMOUNT, required=True, help="Yuan to load, e.g. 500.00.")
@click.option("--reference", default=None, help="Idempotency reference: the same one twice loads once.")
@pass_app
def card_load(app: AppContext, card_ref: str, minor: int, reference: str | None) -> None:
    """Load money onto a card from the issuer's funding account."""

    async def work(pool: PgPool, crypto: IssuerCrypto | None = None) -> tuple[int, Any, dict[str, Any]]:
        cid = await _card_id(pool, crypto, card_ref)
        d = await admin_load(pool, cid, minor, reference)
        return cid, d, await pool.run(catalog.card_info, cid)

    cid, d, info = _run(app, work, hsm=_needs_hsm(card_ref))
    if d.code != "00":
        raise click.ClickException(f"card {cid}: load refused: {load_refusal(d.code)}")
    cur = info["currency"]
    app.emit(
        {
            "card_id": cid,
            **money_json("loaded", minor, cur),
            **money_json("balance", info["balance"], cur),
            "duplicate": d.duplicate,
        },
        f"card {cid}: {'already loaded' if d.duplicate else 'loaded'} {format_money(minor, cur)}"
        f"{' under that reference' if d.duplicate else ''}, balance {format_money(info['balance'], cur)}",
    )


@card.command("history")
@click.argument("card_ref", metavar="CARD")
@click.option("--limit", type=click.IntRange(1, 10_000), default=50, show_default=True)
@pass_app
def card_history(app: AppContext, card_ref: str, limit: int) -> None:
    """The card's requests and postings, newest first."""

    async def work(pool: PgPool, crypto: IssuerCrypto | None = None) -> tuple[list[dict[str, Any]], str]:
        cid = await _card_id(pool, crypto, card_ref)
        rows = await pool.run(catalog.card_history, cid, limit)
        return rows, (await pool.run(catalog.card_info, cid))["currency"]

    rows, cur = _run(app, work, hsm=_needs_hsm(card_ref))
    tz = app.config.clearing.timezone  # times in the programme's zone with the offset
    # the reason the host declined (host.rules.REASONS), in words for people; JSON keeps the key too
    shown = [
        {
            **r,
            "at": format_local(r["at"], tz),
            "amount": format_money(r["amount"], cur),
            "reason": rules.describe(r["reason"]),
        }
        for r in rows
    ]
    for r in rows:
        r["at"] = iso_local(r["at"], tz)
        r["reason_text"] = rules.describe(r["reason"]) or None
        r.update(money_json("amount", r.pop("amount"), cur))
    app.emit(
        rows,
        _table(
            shown,
            ["at", "txn", "mti", "amount", "rc", "reason", "auth_id", "rrn", "terminal_id", "posting_id"],
        ),
    )


# -- merchant, store, terminal ----------------------------------------------------------------------
@click.group()
def merchant() -> None:
    """Merchants (each gets a payable sub-account per ledger partition)."""


@merchant.command("add")
@click.argument("merchant_id")
@click.option("--name", default="")
@click.option("--mcc", required=True)
@click.option("--group", default=None, help="Merchant group (products may be limited to groups).")
@click.option("--acquirer", default="", help="Acquiring institution id.")
@click.option("--currency", default="156", show_default=True)
@click.option("--fee-bps", type=click.IntRange(0, 10000), default=0, show_default=True)
@pass_app
def merchant_add(
    app: AppContext,
    merchant_id: str,
    name: str,
    mcc: str,
    group: str | None,
    acquirer: str,
    currency: str,
    fee_bps: int,
) -> None:
    """Add a merchant (DE42)."""
    if not re.fullmatch(r"\d{4}", mcc):
        raise click.ClickException("--mcc: 4 digits")

    async def work(pool: PgPool) -> int:
        if await pool.run(catalog.merchant_exists, merchant_id):
            raise CatalogError(f"merchant {merchant_id} already exists")
        return await pool.run(
            catalog.add_merchant, merchant_id, name, mcc, group, acquirer, currency, fee_bps
        )

    mid = _run(app, work)
    app.emit({"merchant": merchant_id, "id": mid}, f"merchant {merchant_id} ({name or 'no name'}) added")


@click.group()
def store() -> None:
    """Stores of a merchant."""


@store.command("add")
@click.argument("merchant_id")
@click.argument("code")
@click.option("--name", default="")
@click.option("--address", default="")
@pass_app
def store_add(app: AppContext, merchant_id: str, code: str, name: str, address: str) -> None:
    """Add a store to a merchant."""

    async def work(pool: PgPool) -> int:
        await pool.run(catalog.merchant_ref, merchant_id)  # no such merchant: said first
        if await pool.run(catalog.store_exists, merchant_id, code):
            raise CatalogError(f"store {code} already exists at merchant {merchant_id}")
        return await pool.run(catalog.add_store, merchant_id, code, name, address)

    sid = _run(app, work)
    app.emit({"merchant": merchant_id, "store": code, "id": sid}, f"store {code} added to {merchant_id}")


@click.group()
def terminal() -> None:
    """POS terminals (the switch reads them at sign-on)."""


@terminal.command("add")
@click.argument("terminal_id")
@click.option("--merchant", "merchant_id", required=True)
@click.option("--store", "store_code", default=None)
@click.option("--scheme", type=click.Choice(["3des", "sm4"]), required=True)
@click.option(
    "--tmk-components",
    type=click.IntRange(2, 9),
    default=None,
    help="Enter the TMK as N clear components (prompted, not echoed), XORed in the HSM.",
)
@click.option("--tmk", default=None, help="The clear TMK in one piece (32H; demos and tests).")
@pass_app
def terminal_add(
    app: AppContext,
    terminal_id: str,
    merchant_id: str,
    store_code: str | None,
    scheme: str,
    tmk_components: int | None,
    tmk: str | None,
) -> None:
    """Add a terminal; its TMK is formed in the HSM from clear components and kept under the LMK."""
    if (tmk_components is None) == (tmk is None):
        raise click.ClickException("give exactly one of --tmk-components N or --tmk")
    if not re.fullmatch(r"[ -~]{1,8}", terminal_id):
        raise click.ClickException("terminal id: 1 to 8 printable characters")
    if tmk is not None:
        components = [tmk, "0" * 32]
    else:
        assert tmk_components is not None
        components = _clear_components("TMK", tmk_components)
    _check_components("TMK", components)

    async def work(pool: PgPool, crypto: IssuerCrypto) -> tuple[int, str]:
        await pool.run(catalog.merchant_ref, merchant_id)  # no such merchant: said first
        if await pool.run(catalog.terminal_exists, merchant_id, terminal_id):
            raise CatalogError(f"terminal {terminal_id} already exists at merchant {merchant_id}")
        from hsm_sim.client import HsmCommandError

        try:
            if scheme == "sm4":
                key = await crypto.hsm.form_sm4_key("002", components)
            else:
                key = await crypto.hsm.form_key("002", components, "U")
        except HsmCommandError as exc:
            raise CatalogError(f"the HSM refused the TMK ({exc.code}: parity or format)") from None
        tid = await pool.run(
            catalog.add_terminal, terminal_id, merchant_id, scheme, key.under_lmk, key.check_value, store_code
        )
        return tid, key.check_value

    tid, cv = _run(app, work, hsm=True)
    app.emit(
        {"terminal": terminal_id, "id": tid, "check_value": cv[:6]},
        f"terminal {terminal_id} ({scheme}) added; TMK check value {cv[:6]}",
    )


# -- merchant, store, terminal: find, show, change -------------------------------------------------------
@merchant.command("list")
@click.option("--state", type=click.Choice(directory.MERCHANT_STATES), default=None)
@click.option("--group", default=None, help="Merchant group.")
@click.option("--mcc", default=None)
@click.option("--acquirer", default=None, help="Acquiring institution id.")
@click.option("--name", default=None, help="Part of the name (any case).")
@_page_options
@pass_app
def merchant_list(
    app: AppContext,
    state: str | None,
    group: str | None,
    mcc: str | None,
    acquirer: str | None,
    name: str | None,
    limit: int,
    after: str | None,
) -> None:
    """Merchants, with their state, stores and terminals."""

    async def work(pool: PgPool) -> directory.Page:
        return await pool.run(
            lambda conn: directory.list_merchants(
                conn,
                state=state,
                group=group,
                mcc=mcc,
                acquirer=acquirer,
                name=name,
                after=after,
                limit=limit,
            )
        )

    page = _run(app, work)
    rows = [_merchant_view(app, r) for r in page.rows]
    human = [
        {
            "merchant": r["merchant_id"],
            "name": r["name"],
            "mcc": r["mcc"],
            "group": r["group_code"] or "",
            "acquirer": r["acquirer_id"],
            "fee bps": r["fee_rate_bps"],
            "state": r["state"],
            "stores": r["stores"],
            "terminals": r["terminals"],
        }
        for r in page.rows
    ]
    cols = ["merchant", "name", "mcc", "group", "acquirer", "fee bps", "state", "stores", "terminals"]
    _emit_page(app, "merchants", rows, _table(human, cols), page.next)


@merchant.command("show")
@click.argument("merchant_id")
@pass_app
def merchant_show(app: AppContext, merchant_id: str) -> None:
    """A merchant: state, MCC, group, acquirer, fee rate, stores, terminals and what it is owed."""

    async def work(pool: PgPool) -> dict[str, Any]:
        return await pool.run(directory.show_merchant, merchant_id)

    r = _run(app, work)
    data = {
        **_merchant_view(app, r),
        "store_codes": r["store_codes"],
        **money_json("payable", r["payable"], r["currency"]),
    }
    lines = [
        f"merchant     {r['merchant_id']}  {r['name']}".rstrip(),
        f"state        {r['state']}",
        f"MCC          {r['mcc']}  group {r['group_code'] or '-'}  acquirer {r['acquirer_id'] or '-'}",
        f"fee          {r['fee_rate_bps']} bps",
        f"stores       {', '.join(r['store_codes']) or '-'}",
        f"terminals    {r['terminals']}",
        f"payable      {format_money(r['payable'], r['currency'])} (owed, not yet paid out)",
        f"created      {format_local(r['created_at'], app.config.clearing.timezone)}",
    ]
    app.emit(data, "\n".join(lines))


def _merchant_view(app: AppContext, r: dict[str, Any]) -> dict[str, Any]:
    out = {
        k: r[k]
        for k in (
            "merchant_id",
            "name",
            "mcc",
            "group_code",
            "acquirer_id",
            "fee_rate_bps",
            "state",
            "stores",
            "terminals",
        )
    }
    out["currency"] = currency_alpha(r["currency"])
    out["created_at"] = iso_local(r["created_at"], app.config.clearing.timezone)
    return out


def _merchant_state_command(name: str, target: str, help_text: str) -> None:
    @merchant.command(name, help=help_text)
    @click.argument("merchant_id")
    @pass_app
    def command(app: AppContext, merchant_id: str) -> None:
        async def work(pool: PgPool) -> tuple[str, str]:
            return await pool.run(catalog.set_merchant_state, merchant_id, target)

        old, new = _run(app, work)
        app.emit({"merchant": merchant_id, "from": old, "to": new}, f"merchant {merchant_id}: {old} -> {new}")


_merchant_state_command(
    "suspend",
    "suspended",
    "Suspend a merchant: its purchases are declined 03 and its terminals cannot sign on.",
)
_merchant_state_command("resume", "active", "Resume a suspended merchant.")
_merchant_state_command("close", "closed", "Close a merchant for good (it never reopens).")


@store.command("list")
@click.option("--merchant", "merchant_id", default=None)
@_page_options
@pass_app
def store_list(app: AppContext, merchant_id: str | None, limit: int, after: str | None) -> None:
    """Stores, with their merchant and terminal count."""

    async def work(pool: PgPool) -> directory.Page:
        return await pool.run(
            lambda conn: directory.list_stores(conn, merchant=merchant_id, after=after, limit=limit)
        )

    page = _run(app, work)
    tz = app.config.clearing.timezone
    rows = [
        {
            **{k: r[k] for k in ("merchant_id", "code", "name", "address", "terminals")},
            "created_at": iso_local(r["created_at"], tz),
        }
        for r in page.rows
    ]
    human = [
        {
            "merchant": r["merchant_id"],
            "store": r["code"],
            "name": r["name"],
            "address": r["address"],
            "terminals": r["terminals"],
        }
        for r in page.rows
    ]
    _emit_page(
        app, "stores", rows, _table(human, ["merchant", "store", "name", "address", "terminals"]), page.next
    )


@store.command("show")
@click.argument("merchant_id")
@click.argument("code")
@pass_app
def store_show(app: AppContext, merchant_id: str, code: str) -> None:
    """A store of a merchant."""

    async def work(pool: PgPool) -> dict[str, Any]:
        return await pool.run(directory.show_store, merchant_id, code)

    r = _run(app, work)
    tz = app.config.clearing.timezone
    data = {
        **{k: r[k] for k in ("merchant_id", "code", "name", "address", "terminals")},
        "created_at": iso_local(r["created_at"], tz),
    }
    human = "\n".join(
        [
            f"store        {r['code']} at merchant {r['merchant_id']}",
            f"name         {r['name'] or '-'}",
            f"address      {r['address'] or '-'}",
            f"terminals    {r['terminals']}",
            f"created      {format_local(r['created_at'], tz)}",
        ]
    )
    app.emit(data, human)


@store.command("update")
@click.argument("merchant_id")
@click.argument("code")
@click.option("--name", default=None)
@click.option("--address", default=None)
@pass_app
def store_update(app: AppContext, merchant_id: str, code: str, name: str | None, address: str | None) -> None:
    """Rename a store or change its address."""
    if name is None and address is None:
        raise click.UsageError("nothing to change: give --name or --address")

    async def work(pool: PgPool) -> dict[str, Any]:
        return await pool.run(catalog.update_store, merchant_id, code, name, address)

    r = _run(app, work)
    app.emit(
        {"merchant_id": merchant_id, "code": code, "name": r["name"], "address": r["address"]},
        f"store {code} at {merchant_id}: name {r['name'] or '-'}, address {r['address'] or '-'}",
    )


@terminal.command("list")
@click.option("--merchant", "merchant_id", default=None)
@click.option("--store", "store_code", default=None)
@click.option("--state", type=click.Choice(directory.TERMINAL_STATES), default=None)
@click.option("--scheme", type=click.Choice(["3des", "sm4"]), default=None)
@_page_options
@pass_app
def terminal_list(
    app: AppContext,
    merchant_id: str | None,
    store_code: str | None,
    state: str | None,
    scheme: str | None,
    limit: int,
    after: str | None,
) -> None:
    """Terminals, with merchant, store, key scheme, state and TMK check value."""

    async def work(pool: PgPool) -> directory.Page:
        return await pool.run(
            lambda conn: directory.list_terminals(
                conn,
                merchant=merchant_id,
                store=store_code,
                state=state,
                scheme=scheme,
                after=after,
                limit=limit,
            )
        )

    page = _run(app, work)
    rows = [_terminal_view(app, r) for r in page.rows]
    human = [
        {
            "terminal": r["terminal_id"],
            "merchant": r["merchant_id"],
            "store": r["store"] or "",
            "scheme": r["scheme"],
            "state": r["state"]
            + ("" if r["merchant_state"] == "active" else f" (merchant {r['merchant_state']})"),
            "TMK check": r["tmk_check"],
        }
        for r in page.rows
    ]
    cols = ["terminal", "merchant", "store", "scheme", "state", "TMK check"]
    _emit_page(app, "terminals", rows, _table(human, cols), page.next)


def _terminal_view(app: AppContext, r: dict[str, Any]) -> dict[str, Any]:
    out = {
        k: r[k]
        for k in ("terminal_id", "merchant_id", "store", "scheme", "state", "merchant_state", "tmk_check")
    }
    out["created_at"] = iso_local(r["created_at"], app.config.clearing.timezone)
    return out


@terminal.command("show")
@click.argument("terminal_id")
@click.option("--merchant", "merchant_id", default=None, help="Needed when several merchants use the id.")
@pass_app
def terminal_show(app: AppContext, terminal_id: str, merchant_id: str | None) -> None:
    """A terminal: merchant, store, key scheme, state, TMK check value."""

    async def work(pool: PgPool) -> dict[str, Any]:
        return await pool.run(directory.show_terminal, terminal_id, merchant_id)

    r = _run(app, work)
    human = "\n".join(
        [
            f"terminal     {r['terminal_id']} at merchant {r['merchant_id']} ({r['merchant_state']})",
            f"store        {r['store'] or '-'}",
            f"scheme       {r['scheme']}  TMK check value {r['tmk_check']}",
            f"state        {r['state']}",
            f"created      {format_local(r['created_at'], app.config.clearing.timezone)}",
        ]
    )
    app.emit(_terminal_view(app, r), human)


def _terminal_state_command(name: str, target: str, help_text: str) -> None:
    @terminal.command(name, help=help_text)
    @click.argument("terminal_id")
    @click.option("--merchant", "merchant_id", default=None, help="Needed when several merchants use the id.")
    @pass_app
    def command(app: AppContext, terminal_id: str, merchant_id: str | None) -> None:
        async def work(pool: PgPool) -> tuple[str, str]:
            ref = await pool.run(directory.terminal_ref, terminal_id, merchant_id)
            return await pool.run(catalog.set_terminal_state, ref, target)

        old, new = _run(app, work)
        app.emit({"terminal": terminal_id, "from": old, "to": new}, f"terminal {terminal_id}: {old} -> {new}")


_terminal_state_command(
    "disable", "disabled", "Disable a terminal: it cannot sign on and the switch refuses its requests (58)."
)
_terminal_state_command("enable", "active", "Enable a disabled terminal.")


# -- acquirer -----------------------------------------------------------------------------------------
@click.group()
def acquirer() -> None:
    """Acquiring institutions: named in the register, by merchants (acquirer id) and by host links."""


@acquirer.command("list")
@_page_options
@pass_app
def acquirer_list(app: AppContext, limit: int, after: str | None) -> None:
    """Every institution the host knows, with its name, merchants and link."""

    async def work(pool: PgPool) -> directory.Page:
        return await pool.run(lambda conn: directory.list_acquirers(conn, after=after, limit=limit))

    page = _run(app, work)
    rows = [_acquirer_view(app, r) for r in page.rows]
    human = [
        {
            "acquirer": r["institution_id"],
            "name": r["name"],
            "merchants": r["merchants"],
            "link": f"{r['link_profile']} {r['link_mac']}" if r["link_profile"] else "-",
        }
        for r in page.rows
    ]
    _emit_page(app, "acquirers", rows, _table(human, ["acquirer", "name", "merchants", "link"]), page.next)


def _acquirer_view(app: AppContext, r: dict[str, Any]) -> dict[str, Any]:
    out = {k: r[k] for k in ("institution_id", "name", "merchants", "link_profile", "link_mac")}
    out["created_at"] = iso_local(r["created_at"], app.config.clearing.timezone)
    return out


@acquirer.command("show")
@click.argument("institution_id")
@pass_app
def acquirer_show(app: AppContext, institution_id: str) -> None:
    """An acquirer: its name, link and merchants."""

    async def work(pool: PgPool) -> dict[str, Any]:
        return await pool.run(directory.show_acquirer, institution_id)

    r = _run(app, work)
    link = f"{r['link_profile']} ({r['link_mac']})" if r["link_profile"] else "none (`payswitch host link`)"
    human = "\n".join(
        [
            f"acquirer     {r['institution_id']}  {r['name']}".rstrip(),
            f"link         {link}",
            f"merchants    {r['merchants']}"
            + (f": {', '.join(r['merchant_ids'])}" if r["merchant_ids"] else ""),
        ]
    )
    app.emit({**_acquirer_view(app, r), "merchant_ids": r["merchant_ids"]}, human)


@acquirer.command("add")
@click.argument("institution_id")
@click.option("--name", required=True)
@pass_app
def acquirer_add(app: AppContext, institution_id: str, name: str) -> None:
    """Register an acquirer's name (again: renames it)."""

    async def work(pool: PgPool) -> bool:
        return await pool.run(directory.add_acquirer, institution_id, name)

    new = _run(app, work)
    app.emit(
        {"institution_id": institution_id, "name": name, "new": new},
        f"acquirer {institution_id} ({name}) {'added' if new else 'renamed'}",
    )


# -- ledger ---------------------------------------------------------------------------------------
@click.group()
def ledger() -> None:
    """The double-entry ledger."""


@ledger.command("check")
@pass_app
def ledger_check(app: AppContext) -> None:
    """Check the ledger's invariants; exit 1 naming the offending ids if any fails."""
    from host.check import counts, run_checks

    async def work(pool: PgPool) -> tuple[list[Any], dict[str, int]]:
        return await pool.run(run_checks), await pool.run(counts)

    results, sizes = _run(app, work)
    data = {
        "ok": all(r.ok for r in results),
        "counts": sizes,
        "checks": {r.name: {"ok": r.ok, "offenders": r.offenders} for r in results},
    }
    lines = [
        f"{'OK    ' if r.ok else 'FAILED'} {r.name}"
        + ("" if r.ok else f": {', '.join(r.offenders[:20])}" + (" ..." if len(r.offenders) > 20 else ""))
        for r in results
    ]
    lines.append(", ".join(f"{v} {k}" for k, v in sizes.items()))
    if app.json_output:
        click.echo(json.dumps(data, indent=2, sort_keys=True))
    else:
        click.echo("\n".join(lines))
    if not data["ok"]:
        raise SystemExit(1)
