"""`payswitch product controls` and `payswitch card limits`: spend controls (host.controls), thin callers.

Registered on the `product` and `card` groups at the end of host/catalog_cli.py and host/card_cli.py.
Amounts are typed in yuan (ops.money) and shown with their currency; --json gives them as *_minor.
"""

from __future__ import annotations

from typing import Any

import click

from host import controls, directory
from host.business_day import business_date_now
from host.cli import _run, _table
from host.controls import Changes, ControlsError, GroupCap, HourRange
from host.keys import IssuerCrypto
from ops.cli import AppContext, pass_app
from ops.money import AMOUNT, currency_alpha, format_money, money_json
from ops.pgpool import PgPool

COUNT = click.IntRange(1, 1_000_000)


class HoursParam(click.ParamType[tuple[HourRange, ...]]):
    name = "hours"

    def get_metavar(self, param: click.Parameter, ctx: click.Context | None = None) -> str:
        return "[DAYS@]HH:MM-HH:MM,..."

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> tuple[HourRange, ...]:
        if isinstance(value, tuple):
            return value
        try:
            return controls.parse_hours(str(value))
        except ControlsError as exc:
            self.fail(str(exc), param, ctx)


class GroupCapParam(click.ParamType[GroupCap]):
    name = "group-cap"

    def get_metavar(self, param: click.Parameter, ctx: click.Context | None = None) -> str:
        return "GROUP:SPAN:YUAN[:COUNT]"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> GroupCap:
        if isinstance(value, GroupCap):
            return value
        try:
            return controls.parse_group_cap(str(value))
        except ControlsError as exc:
            self.fail(str(exc), param, ctx)


HOURS = HoursParam()
GROUP_CAP = GroupCapParam()
_HOURS_HELP = (
    "Allowed local times (clearing.timezone), replacing the list: e.g. 06:30-09:00,11:00-13:30 or"
    " mon-fri@11:00-13:30 (days: mon..sun, a-b or a+b)."
)
_CAP_HELP = (
    "Merchant-group cap, e.g. snacks:day:30.00 or snacks:week:100.00:20 (repeatable;"
    " SPAN day|week|month|lifetime)."
)


def _limit_text(key: str, value: int | None, currency: str) -> str:
    if value is None:
        return "-"
    return str(value) if key.endswith("count") else format_money(value, currency)


def _limits_json(rows: list[dict[str, Any]], currency: str) -> list[dict[str, Any]]:
    out = []
    for r in rows:
        if r["measure"] == "count":
            out.append(r)
            continue
        out.append(
            {
                **{k: r[k] for k in ("limit", "span", "measure", "source")},
                **money_json("value", r["value"], currency),
                "used_minor": r["used"],
                "remaining_minor": r["remaining"],
            }
        )
    return out


def _doc_json(view: dict[str, Any]) -> dict[str, Any]:
    """A stored controls document for --json: amount limits as *_minor."""
    limits = {(k if k.endswith("count") else f"{k}_minor"): v for k, v in view["limits"].items()}
    caps = [
        {"group": g["group"], "span": g["span"], "amount_minor": g["amount"], "count": g["count"]}
        for g in view["group_caps"]
    ]
    return {"limits": limits, "hours": view["hours"], "group_caps": caps}


def _doc_lines(view: dict[str, Any], currency: str) -> list[str]:
    lines = [f"  {controls.LABEL[k]:<22} {_limit_text(k, v, currency)}" for k, v in view["limits"].items()]
    if view["hours"]:
        lines.append(f"  {'allowed hours':<22} {', '.join(view['hours'])}")
    for g in view["group_caps"]:
        lines.append(f"  {'group ' + g['group'] + ' ' + g['span']:<22} {_cap_text(g, currency)}")
    return lines or ["  (none)"]


def _cap_text(g: dict[str, Any], currency: str) -> str:
    parts = []
    if g["amount"] is not None:
        parts.append(format_money(g["amount"], currency))
    if g["count"] is not None:
        parts.append(f"{g['count']} purchases")
    return ", ".join(parts)


# -- product controls -----------------------------------------------------------------------------
_PRODUCT_CLEAR = (
    "week-amount",
    "week-count",
    "month-amount",
    "month-count",
    "lifetime-amount",
    "lifetime-count",
    "hours",
    "group-caps",
    "all",
)


@click.command("controls")
@click.argument("code")
@click.option("--week-amount", type=AMOUNT, default=None, help="Purchases per ISO week (Monday start), yuan.")
@click.option("--week-count", type=COUNT, default=None, help="Purchases per ISO week.")
@click.option("--month-amount", type=AMOUNT, default=None, help="Purchases per calendar month, yuan.")
@click.option("--month-count", type=COUNT, default=None, help="Purchases per calendar month.")
@click.option("--lifetime-amount", type=AMOUNT, default=None, help="Purchases over the card's life, yuan.")
@click.option("--lifetime-count", type=COUNT, default=None, help="Purchases over the card's life.")
@click.option("--hours", type=HOURS, default=None, help=_HOURS_HELP)
@click.option("--group-cap", "group_caps", type=GROUP_CAP, multiple=True, help=_CAP_HELP)
@click.option(
    "--clear",
    "clears",
    type=click.Choice(_PRODUCT_CLEAR),
    multiple=True,
    help="Remove a control (repeatable).",
)
@pass_app
def product_controls(
    app: AppContext,
    code: str,
    week_amount: int | None,
    week_count: int | None,
    month_amount: int | None,
    month_count: int | None,
    lifetime_amount: int | None,
    lifetime_count: int | None,
    hours: tuple[HourRange, ...] | None,
    group_caps: tuple[GroupCap, ...],
    clears: tuple[str, ...],
) -> None:
    """Show or set a product's spend controls beyond its per-transaction and daily limits: weekly,
    monthly and lifetime windows, allowed hours and merchant-group caps. A running host applies them
    from its next request; without options, shows them."""
    limits = {
        k: v
        for k, v in (
            ("week_amount", week_amount),
            ("week_count", week_count),
            ("month_amount", month_amount),
            ("month_count", month_count),
            ("lifetime_amount", lifetime_amount),
            ("lifetime_count", lifetime_count),
        )
        if v is not None
    }
    clear = frozenset("groups" if c == "group-caps" else c.replace("-", "_") for c in clears)
    if set(limits) & clear or (hours is not None and "hours" in clear) or (group_caps and "groups" in clear):
        raise click.UsageError("an option and --clear of the same control exclude each other")
    changes = Changes(limits, hours, group_caps, clear)
    changing = bool(limits or hours is not None or group_caps or clear)

    async def work(pool: PgPool) -> dict[str, Any]:
        if changing:
            return await pool.run(controls.set_product_controls, code, changes)
        return await pool.run(controls.product_controls, code)

    view = _run(app, work)
    cur = view["currency"]
    head = f"product {view['product']}: controls{' changed' if changing else ''}"
    app.emit(
        {"product": view["product"], "currency": currency_alpha(cur), "changed": changing, **_doc_json(view)},
        "\n".join([head, *_doc_lines(view, cur)]),
    )


# -- card limits ----------------------------------------------------------------------------------
@click.command("limits")
@click.argument("card_ref", metavar="CARD")
@click.option("--per-txn", type=AMOUNT, default=None, help="Largest purchase, yuan (at most the product's).")
@click.option("--daily", type=AMOUNT, default=None, help="Purchases per business day, yuan.")
@click.option("--daily-count", type=COUNT, default=None, help="Purchases per business day.")
@click.option("--week", type=AMOUNT, default=None, help="Purchases per ISO week, yuan.")
@click.option("--week-count", type=COUNT, default=None)
@click.option("--month", type=AMOUNT, default=None, help="Purchases per calendar month, yuan.")
@click.option("--month-count", type=COUNT, default=None)
@click.option("--lifetime", type=AMOUNT, default=None, help="Purchases over the card's life, yuan.")
@click.option("--lifetime-count", type=COUNT, default=None)
@click.option("--hours", type=HOURS, default=None, help=_HOURS_HELP + " Narrows the product's.")
@click.option("--group-cap", "group_caps", type=GROUP_CAP, multiple=True, help=_CAP_HELP)
@click.option("--clear", is_flag=True, help="Drop all the card's overrides first (back to the product's).")
@pass_app
def card_limits(
    app: AppContext,
    card_ref: str,
    per_txn: int | None,
    daily: int | None,
    daily_count: int | None,
    week: int | None,
    week_count: int | None,
    month: int | None,
    month_count: int | None,
    lifetime: int | None,
    lifetime_count: int | None,
    hours: tuple[HourRange, ...] | None,
    group_caps: tuple[GroupCap, ...],
    clear: bool,
) -> None:
    """Show a card's effective limits and what is left of them now (today, this week, ...), or lower
    them for this card: an override may only lower its product's limit (a parent lowers a child's
    daily limit), never raise it."""
    limits = {
        k: v
        for k, v in (
            ("per_txn", per_txn),
            ("day_amount", daily),
            ("day_count", daily_count),
            ("week_amount", week),
            ("week_count", week_count),
            ("month_amount", month),
            ("month_count", month_count),
            ("lifetime_amount", lifetime),
            ("lifetime_count", lifetime_count),
        )
        if v is not None
    }
    changes = Changes(limits, hours, group_caps, frozenset({"all"}) if clear else frozenset())
    changing = bool(limits or hours is not None or group_caps or clear)
    async def work(pool: PgPool, crypto: IssuerCrypto | None = None) -> dict[str, Any]:
        cid = await directory.resolve_card(pool, crypto, card_ref)
        today = await pool.run(business_date_now, app.config)  # the day the ledger counts in
        if changing:
            return await pool.run(controls.set_card_limits, cid, changes, today)
        return await pool.run(controls.card_limits, cid, today)

    v = _run(app, work, hsm=directory.needs_hsm(card_ref))
    cur = v["currency"]
    rows = [
        {
            "limit": controls.LABEL[r["limit"]],
            "value": _limit_text(r["limit"], r["value"], cur),
            "used": "-" if r["limit"] == "per_txn" else _limit_text(r["limit"], r["used"], cur),
            "left": "-" if r["limit"] == "per_txn" else _limit_text(r["limit"], r["remaining"], cur),
            "from": r["source"],
        }
        for r in v["limits"]
    ]
    own_caps = {(c["group"], c["span"]) for c in v["overrides"]["group_caps"]}
    for g in v["group_caps"]:
        used = [format_money(g["used_amount"], cur)] if g["amount"] is not None else []
        left = [format_money(g["remaining_amount"], cur)] if g["amount"] is not None else []
        if g["count"] is not None:
            used.append(str(g["used_count"]))
            left.append(str(g["remaining_count"]))
        rows.append(
            {
                "limit": f"group {g['group']} {g['span']}",
                "value": _cap_text(g, cur),
                "used": ", ".join(used),
                "left": ", ".join(left),
                "from": "card" if (g["group"], g["span"]) in own_caps else "product",
            }
        )
    hours_p, hours_c = v["hours"]["product"], v["hours"]["card"]
    lines = [
        f"card {v['card_id']} (product {v['product']}), business date {v['business_date'].isoformat()}"
        + (": limits changed" if changing else ""),
        _table(rows, ["limit", "value", "used", "left", "from"]),
        f"allowed hours: {', '.join(hours_p) if hours_p else 'any'} (product)"
        + (f"; {', '.join(hours_c)} (card)" if hours_c else ""),
    ]
    app.emit(
        {
            "card_id": v["card_id"],
            "product": v["product"],
            "currency": currency_alpha(cur),
            "business_date": v["business_date"].isoformat(),
            "changed": changing,
            "limits": _limits_json(v["limits"], cur),
            "hours": v["hours"],
            "group_caps": [
                {
                    "group": g["group"],
                    "span": g["span"],
                    "amount_minor": g["amount"],
                    "count": g["count"],
                    "used_amount_minor": g["used_amount"],
                    "used_count": g["used_count"],
                    "remaining_amount_minor": g["remaining_amount"],
                    "remaining_count": g["remaining_count"],
                }
                for g in v["group_caps"]
            ],
            "overrides": _doc_json(v["overrides"]),
        },
        "\n".join(lines),
    )
