"""The catalogue's commands: `product`, `merchant`, `store`, `terminal`, `acquirer` (add, list, show,
change). Thin callers of host.catalog and host.directory; lists page with --limit/--after.
"""


import dataclasses
import re
from collections.abc import Callable
from typing import Any

import click

from host import catalog, directory, kyc
from host.catalog import CatalogError
from host.cli import (
    _check_components,
    _clear_components,
    _emit_page,
    _page_options,
    _run,
    _table,
)
from host.controls_cli import product_controls
from host.keys import IssuerCrypto
from ops.cli import AppContext, pass_app
from ops.localtime import format_local, iso_local
from ops.money import AMOUNT, AMOUNT_OR_ZERO, currency_alpha, format_amount, format_money, money_json
from ops.pgpool import PgPool


# -- product --------------------------------------------------------------------------------------
@click.group()
def product() -> None:
    """Card products and their BIN ranges."""


def _tier_options(*, adding: bool) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """The KYC options of `product add` / `product update` (issue 16 item 2)."""
    defaults = {t: format_amount(v) for t, v in catalog.TIER_DEFAULTS.items()}  # the PBOC caps

    def wrap(f: Callable[..., Any]) -> Callable[..., Any]:
        for tier in reversed(kyc.LEVELS):
            extra = f" (default {defaults[tier]}, at most --max-balance)" if adding else ""
            f = click.option(
                f"--max-balance-{tier}",
                type=AMOUNT,
                default=None,
                help=f"Most a card of the {tier} KYC tier holds, in yuan{extra}.",
            )(f)
        return click.option(
            "--issue-tier",
            type=click.Choice(kyc.LEVELS),
            default="anonymous" if adding else None,
            show_default=adding,
            help="The KYC tier a cardholder needs for a card of the product to be issued to them.",
        )(f)

    return wrap


def _chip_options(*, adding: bool) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """The chip options of `product add` / `product update` (issue 19, host.chip)."""
    defaults = {"chip": "none", "chip_fallback": "decline", "no_cvm_limit": "300.00",
                "no_cvm_cumulative_limit": "1000.00"}

    def default(name: str) -> str | None:
        return defaults[name] if adding else None

    def wrap(f: Callable[..., Any]) -> Callable[..., Any]:
        f = click.option(
            "--no-cvm-cumulative-limit", type=AMOUNT_OR_ZERO, default=default("no_cvm_cumulative_limit"),
            show_default=adding,
            help="Contactless: most a card pays without PIN between two PIN-verified transactions, in yuan.",
        )(f)
        f = click.option(
            "--no-cvm-limit", type=AMOUNT_OR_ZERO, default=default("no_cvm_limit"), show_default=adding,
            help="Contactless: the largest sale without PIN, in yuan (above it the PIN is asked).",
        )(f)
        f = click.option(
            "--chip-fallback", type=click.Choice(catalog.CHIP_FALLBACKS), default=default("chip_fallback"),
            show_default=adding,
            help="A swipe or keyed sale of a chip card: declined (57) or approved and flagged.",
        )(f)
        return click.option(
            "--chip", type=click.Choice(catalog.CHIPS), default=default("chip"), show_default=adding,
            help="The chip of the product's cards; 3des or sm4 generates its IMK-AC in the HSM.",
        )(f)

    return wrap


async def _new_imk(crypto: IssuerCrypto, chip: str) -> tuple[str, str]:
    """A new IMK-AC (key type 109) of the chip's algorithm, generated in the HSM: under LMK, check value."""
    if chip == "sm4":
        key = await crypto.hsm.generate_sm4_key(catalog.IMK_AC_TYPE)
    else:
        key = await crypto.hsm.generate_key(catalog.IMK_AC_TYPE, "U")
    return key.under_lmk, key.check_value


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
@_tier_options(adding=True)
@_chip_options(adding=True)
@click.option(
    "--offline-floor-limit", type=AMOUNT_OR_ZERO, default="0", show_default=True,
    help="Most a terminal approves offline for a card of the product, in yuan (0: never offline).",
)
@click.option(
    "--form",
    type=click.Choice(["physical", "virtual"]),
    default="physical",
    show_default=True,
    help="Form of the product's cards: virtual ones are issued to a cardholder, active at once, no PIN"
    " mailer, and pay by payment code.",
)
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
    issue_tier: str = "anonymous",
    max_balance_anonymous: int | None = None,
    max_balance_named: int | None = None,
    max_balance_verified: int | None = None,
    form: str = "physical",
    chip: str = "none",
    chip_fallback: str = "decline",
    no_cvm_limit: int = 30_000,
    no_cvm_cumulative_limit: int = 100_000,
    offline_floor_limit: int = 0,
) -> None:
    """Add a card product with its BIN range."""
    if kind == "usage_limited" and uses is None:
        raise click.ClickException("a usage_limited product needs --uses")
    if kind == "fixed_amount" and face_value <= 0:
        raise click.ClickException("a fixed_amount product needs --face-value")
    if not re.fullmatch(r"[0-9]{6,11}", bin_prefix):
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
        issue_tier=issue_tier,
        max_balance_anonymous=max_balance_anonymous,
        max_balance_named=max_balance_named,
        max_balance_verified=max_balance_verified,
        form=form,
        chip=chip,
        chip_fallback=chip_fallback,
        no_cvm_limit=no_cvm_limit,
        no_cvm_cumulative_limit=no_cvm_cumulative_limit,
        offline_floor_limit=offline_floor_limit,
    )

    async def work(pool: PgPool) -> int:
        if await pool.run(catalog.product_exists, code):
            raise CatalogError(f"product {code} already exists")
        return await pool.run(catalog.add_product, spec, bin_prefix, pan_length)

    async def work_chip(pool: PgPool, crypto: IssuerCrypto) -> int:
        nonlocal spec
        if await pool.run(catalog.product_exists, code):
            raise CatalogError(f"product {code} already exists")
        imk, check = await _new_imk(crypto, chip)
        spec = dataclasses.replace(spec, imk_ac=imk, imk_ac_check=check)
        return await pool.run(catalog.add_product, spec, bin_prefix, pan_length)

    pid = _run(app, work_chip, hsm=True) if chip != "none" else _run(app, work)
    data: dict[str, Any] = {"product": code, "id": pid, "bin": bin_prefix}
    human = f"product {code} ({kind}) on BIN {bin_prefix}"
    if spec.imk_ac_check:  # only the check value is ever shown
        data["imk_ac_check_value"] = spec.imk_ac_check[:6]
        human += f"; {chip} chip, IMK-AC check value {spec.imk_ac_check[:6]}"
    app.emit(data, human)


def _tier_line(r: dict[str, Any]) -> str:
    caps = ", ".join(
        f"{t} {format_money(min(r[f'max_balance_{t}'], r['max_balance']), r['currency'])}" for t in kyc.LEVELS
    )
    return f"issued to {r['issue_tier']} cardholders and above; balance up to {caps}"


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
            "chip": r["chip"] if r["chip"] != "none" else "-",
            # contactless without PIN: per sale / in all until a PIN is entered; offline floor limit
            "no CVM": format_money(r["no_cvm_limit"], r["currency"]),
            "no CVM sum": format_money(r["no_cvm_cumulative_limit"], r["currency"]),
            "floor": _money_or_dash(r["offline_floor_limit"], r["currency"]),
            "cards": r["cards"],
        }
        for r in page.rows
    ]
    cols = ["code", "kind", "bins", "max balance", "per txn", "daily", "count/day", "PIN", "chip", "no CVM",
            "no CVM sum", "floor", "cards"]
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
        f"KYC tiers    {_tier_line(r)}",
        f"form         {r['form']}",
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
        f"chip         {_chip_line(r)}",
        f"offline      {_offline_line(r)}",
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
@_tier_options(adding=False)
@_chip_options(adding=False)
@click.option(
    "--offline-floor-limit", type=AMOUNT_OR_ZERO, default=None,
    help="Most a terminal approves offline for a card of the product, in yuan (0: never offline).",
)
@click.option(
    "--form", type=click.Choice(["physical", "virtual"]), default=None, help="For cards issued from now on."
)
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
    issue_tier: str | None = None,
    max_balance_anonymous: int | None = None,
    max_balance_named: int | None = None,
    max_balance_verified: int | None = None,
    form: str | None = None,
    chip: str | None = None,
    chip_fallback: str | None = None,
    no_cvm_limit: int | None = None,
    no_cvm_cumulative_limit: int | None = None,
    offline_floor_limit: int | None = None,
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
            ("issue_tier", issue_tier),
            ("max_balance_anonymous", max_balance_anonymous),
            ("max_balance_named", max_balance_named),
            ("max_balance_verified", max_balance_verified),
            ("form", form),
            ("chip", chip),
            ("chip_fallback", chip_fallback),
            ("no_cvm_limit", no_cvm_limit),
            ("no_cvm_cumulative_limit", no_cvm_cumulative_limit),
            ("offline_floor_limit", offline_floor_limit),
        )
        if v is not None
    }
    if not changes:
        raise click.UsageError("nothing to change: give at least one option (see --help)")

    async def work(pool: PgPool) -> tuple[dict[str, tuple[Any, Any]], dict[str, Any]]:
        changed = await pool.run(catalog.update_product, code, changes)
        return changed, await pool.run(directory.show_product, code)

    async def work_chip(
        pool: PgPool, crypto: IssuerCrypto | None = None
    ) -> tuple[dict[str, tuple[Any, Any]], dict[str, Any]]:
        # a new chip algorithm comes with a new IMK-AC of it (generated in the HSM); "none" drops the key
        current = (await pool.run(catalog.product, code))["chip"]
        if chip is not None and chip != current:
            if crypto is None:
                changes.update(imk_ac=None, imk_ac_check=None)
            else:
                changes["imk_ac"], changes["imk_ac_check"] = await _new_imk(crypto, chip)
        return await work(pool)

    changed, r = _run(app, work_chip, hsm=chip not in (None, "none"))
    changed.pop("imk_ac", None)  # never shown: its check value is

    def shown(k: str, v: Any) -> str:
        if k in ("max_balance", "per_txn_limit", "daily_amount_limit", "no_cvm_limit",
                 "no_cvm_cumulative_limit", "offline_floor_limit", *catalog.TIER_COLUMNS) and v:
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


def _money_or_dash(value: int, currency: str) -> str:
    return format_money(value, currency) if value else "-"


def _offline_line(r: dict[str, Any]) -> str:
    floor = r["offline_floor_limit"]
    return f"floor limit {format_money(floor, r['currency'])}" if floor else "no offline sales"


def _chip_line(r: dict[str, Any]) -> str:
    if r["chip"] == "none":
        return "none"
    cv = r["imk_ac_check"][:6] if r["imk_ac_check"] else "no key yet (product chip-key)"
    cur = r["currency"]
    return (
        f"{r['chip']} (IMK-AC {cv}), fallback {r['chip_fallback']}, no CVM up to"
        f" {format_money(r['no_cvm_limit'], cur)} ({format_money(r['no_cvm_cumulative_limit'], cur)} in all)"
    )


@product.command("chip-key")
@click.argument("code")
@click.option(
    "--component", "components", multiple=True, metavar="HEX",
    help="A clear IMK-AC component (32 hex), one per custodian (repeat; at least 2). Prompted, not"
    " echoed, when none is given.",
)
@click.option("--components", "count", type=click.IntRange(2, 9), default=2, show_default=True,
              help="How many components to prompt for (without --component).")
@pass_app
def product_chip_key(app: AppContext, code: str, components: tuple[str, ...], count: int) -> None:
    """Form the product's IMK-AC (the issuer key of its chips' cryptograms) in the HSM from clear
    components held by custodians, replacing the one it had; prints only the key's check value."""

    async def chip_of(pool: PgPool) -> str:  # said before any custodian types a component
        chip: str = (await pool.run(catalog.product, code))["chip"]
        if chip == "none":
            raise CatalogError(f"product {code} has no chip: give it one first (product update --chip)")
        return chip

    chip = _run(app, chip_of)
    given = list(components) if components else _clear_components("IMK-AC", count)
    if len(given) < 2:
        raise click.ClickException("give at least two --component (one per custodian)")
    _check_components("IMK-AC", given)

    async def work(pool: PgPool, crypto: IssuerCrypto) -> tuple[str, str]:
        from hsm_sim.client import HsmCommandError

        try:
            if chip == "sm4":
                key = await crypto.hsm.form_sm4_key(catalog.IMK_AC_TYPE, given)
            else:
                key = await crypto.hsm.form_key(catalog.IMK_AC_TYPE, given, "U")
        except HsmCommandError as exc:
            raise CatalogError(f"the HSM refused the IMK-AC ({exc.code}: parity or format)") from None
        # set_chip_key checks under the row lock that the chip is still the one the key was formed for
        if await pool.run(catalog.set_chip_key, code, key.under_lmk, key.check_value) != chip:
            raise CatalogError(f"product {code}: its chip changed meanwhile; form the key again")
        return chip, key.check_value

    chip, cv = _run(app, work, hsm=True)
    app.emit(
        {"product": code, "chip": chip, "imk_ac_check_value": cv[:6]},
        f"product {code}: {chip} IMK-AC formed from {len(given)} components; check value {cv[:6]}",
    )


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
    out["issue_tier"] = r["issue_tier"]
    out["form"] = r["form"]
    out["chip"], out["chip_fallback"] = r["chip"], r["chip_fallback"]
    out["imk_ac_check_value"] = r["imk_ac_check"][:6] if r["imk_ac_check"] else None
    for k in ("no_cvm_limit", "no_cvm_cumulative_limit"):
        out.update(money_json(k, r[k], cur))
    for k in catalog.TIER_COLUMNS:  # as enforced: each capped by the product's max balance
        out.update(money_json(k, min(r[k], r["max_balance"]), cur))
    out["created_at"] = iso_local(r["created_at"], app.config.clearing.timezone)
    return out


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
    if not re.fullmatch(r"[0-9]{4}", mcc):
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


product.add_command(product_controls)  # `product controls`: host/controls_cli.py (spend controls)
