"""`payswitch cardholder ...`: Cardholders: register, find, update, KYC decisions, close.

Thin callers of host.cardholders and host.kyc. The ID number, phone and e-mail typed here are sealed by
the HSM before they reach the database (host.pii) and are never printed back: output shows the masked
forms. A CARDHOLDER argument is a cardholder id (host.cardholders.resolve_cardholder).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import click

from host import cardholders, kyc
from host.cardholders import CardholderError
from host.cli import _page_options, _run, _table
from host.keys import IssuerCrypto
from ops.actor import cli_actor
from ops.cli import AppContext, pass_app
from ops.localtime import format_local, iso_local
from ops.money import format_money, money_json
from ops.pgpool import PgPool

T = TypeVar("T")
DATE = click.DateTime(formats=["%Y-%m-%d"])


@click.group()
def cardholder() -> None:
    """Cardholders: register, find, update, KYC decisions, close."""


async def _kyc(work: Awaitable[T]) -> T:
    """host.kyc's refusals as the one line every host command prints (KycError is not a CatalogError)."""
    try:
        return await work
    except kyc.KycError as exc:
        raise CardholderError(str(exc)) from None


def _resolved(pool: PgPool, ref: str) -> Awaitable[int]:
    return pool.run(cardholders.resolve_cardholder, ref)


def _hits(hits: list[Any]) -> list[dict[str, Any]]:
    return [dataclasses.asdict(h) if dataclasses.is_dataclass(h) else dict(h) for h in hits]  # type: ignore[arg-type]


def _aml_note(status: str, hits: list[Any]) -> str:
    if status == "clear":
        return "AML clear"
    return (
        f"AML {status} ({len(hits)} watch-list hit{'s' if len(hits) != 1 else ''}): loads above the"
        " anonymous maximum are declined until an operator clears it (`payswitch aml`)"
    )


def _identity_options(f: Callable[..., Any]) -> Callable[..., Any]:
    for opt in reversed(
        [
            click.option(
                "--id-type", type=click.Choice(cardholders.ID_TYPES), default=None, help="Identity document."
            ),
            click.option("--id-number", default=None, help="Its number (sealed by the HSM, shown masked)."),
            click.option("--phone", default=None, help="Phone number (sealed, shown as 138****5678)."),
            click.option("--email", default=None, help="E-mail address (sealed, shown as a***@example.com)."),
            click.option("--birth-date", type=DATE, default=None, help="Date of birth, YYYY-MM-DD."),
            click.option("--address", default=None),
        ]
    ):
        f = opt(f)
    return f


@cardholder.command("add")
@click.option("--name", required=True, help="The cardholder's name (as on the ID).")
@_identity_options
@pass_app
def cardholder_add(
    app: AppContext,
    name: str,
    id_type: str | None,
    id_number: str | None,
    phone: str | None,
    email: str | None,
    birth_date: Any,
    address: str | None,
) -> None:
    """Register a cardholder. With an ID (--id-type and --id-number) they are `named` at once;
    every registration is screened against the AML watch lists."""
    new = cardholders.NewCardholder(
        name=name,
        id_type=id_type,
        id_number=id_number,
        phone=phone,
        email=email,
        birth_date=birth_date.date() if birth_date else None,
        address=address or "",
    )

    async def work(pool: PgPool, crypto: IssuerCrypto) -> tuple[cardholders.Registered, dict[str, Any]]:
        done = await cardholders.register(
            pool, crypto, new, cli_actor(), aml_threshold=app.config.aml.threshold
        )
        return done, await pool.run(cardholders.show_cardholder, done.cardholder_id)

    done, r = _run(app, work, hsm=True)
    app.emit(
        {
            "cardholder_id": done.cardholder_id,
            "kyc_level": done.kyc_level,
            "aml_status": done.aml_status,
            "aml_hits": _hits(done.hits),
            "cardholder": _view(app, r),
        },
        f"cardholder {done.cardholder_id} registered: {r['name']}, {done.kyc_level}"
        + (f" ({_masked(r)})" if _masked(r) else "")
        + f"; {_aml_note(done.aml_status, done.hits)}",
    )


def _masked(r: dict[str, Any]) -> str:
    parts = []
    if r["id_number_masked"]:
        parts.append(f"{r['id_type']} {r['id_number_masked']}")
    if r["phone_masked"]:
        parts.append(f"phone {r['phone_masked']}")
    if r["email_masked"]:
        parts.append(f"e-mail {r['email_masked']}")
    return ", ".join(parts)


def _view(app: AppContext, r: dict[str, Any]) -> dict[str, Any]:
    """A cardholder for --json: masked forms only, dates ISO, times with the programme's offset."""
    tz = app.config.clearing.timezone
    out = {k: r[k] for k in (*cardholders.SHOWN, "address", "cards")}
    out["cardholder_id"] = r["id"]
    out["birth_date"] = r["birth_date"].isoformat() if r["birth_date"] else None
    out["created_at"] = iso_local(r["created_at"], tz)
    out["updated_at"] = iso_local(r["updated_at"], tz)
    return out


@cardholder.command("show")
@click.argument("ref", metavar="CARDHOLDER")
@pass_app
def cardholder_show(app: AppContext, ref: str) -> None:
    """A cardholder (personal data masked), the cards they own and their KYC events."""

    async def work(pool: PgPool) -> dict[str, Any]:
        return await pool.run(cardholders.show_cardholder, await _resolved(pool, ref))

    r = _run(app, work)
    tz = app.config.clearing.timezone
    data = _view(app, r)
    data["owned_cards"] = [
        {
            "card_id": c["id"],
            "label": c["label"],
            "pan_masked": c["pan_masked"],
            "state": c["state"],
            "form": c["form"],
            "product": c["product"],
            **money_json("balance", c["balance"], c["currency"]),
        }
        for c in r["owned_cards"]
    ]
    data["kyc_events"] = [{**e, "at": iso_local(e["at"], tz)} for e in r["kyc_events"]]
    held = r["aml_status"] != "clear"
    tier = r["tier"] + (f" (AML {r['aml_status']}: an anonymous card's limits)" if held else "")
    id_shown = f"{r['id_type']} {r['id_number_masked']}" if r["id_number_masked"] else "-"
    lines = [
        f"cardholder   {r['id']}  {r['name']}" + ("  (closed)" if r["state"] == "closed" else ""),
        f"KYC level    {r['kyc_level']}; card limits of {tier}",
        f"AML status   {r['aml_status']}",
        f"ID           {id_shown}",
        f"phone        {r['phone_masked'] or '-'}",
        f"e-mail       {r['email_masked'] or '-'}",
        f"born         {r['birth_date'].isoformat() if r['birth_date'] else '-'}",
        f"address      {r['address'] or '-'}",
        f"registered   {format_local(r['created_at'], tz)}",
        f"updated      {format_local(r['updated_at'], tz)}",
        "cards:",
        _table(
            [
                {
                    "card": c["id"],
                    "label": c["label"] or "",
                    "pan": c["pan_masked"],
                    "state": c["state"],
                    "product": c["product"],
                    "balance": format_money(c["balance"], c["currency"]),
                }
                for c in r["owned_cards"]
            ],
            ["card", "label", "pan", "state", "product", "balance"],
        ),
        "KYC events:",
        _table(
            [
                {
                    "at": format_local(e["at"], tz),
                    "decision": e["decision"],
                    "level": f"{e['from_level']} -> {e['to_level']}",
                    "actor": e["actor"],
                    "reason": e["reason"],
                }
                for e in r["kyc_events"]
            ],
            ["at", "decision", "level", "actor", "reason"],
        ),
    ]
    app.emit(data, "\n".join(lines))


@cardholder.command("list")
@click.option("--name", default=None, help="Part of the name (any case).")
@click.option("--phone", default=None, help="A phone number (looked up by its keyed hash through the HSM).")
@click.option("--email", default=None, help="An e-mail address (looked up by its keyed hash).")
@click.option("--id-number", default=None, help="An ID number (looked up by its keyed hash).")
@click.option("--kyc-level", type=click.Choice(kyc.LEVELS), default=None)
@click.option("--aml-status", type=click.Choice(cardholders.AML_STATUSES), default=None)
@click.option("--state", type=click.Choice(cardholders.STATES), default=None)
@_page_options
@pass_app
def cardholder_list(
    app: AppContext,
    name: str | None,
    phone: str | None,
    email: str | None,
    id_number: str | None,
    kyc_level: str | None,
    aml_status: str | None,
    state: str | None,
    limit: int,
    after: str | None,
) -> None:
    """Find cardholders: by name, phone, e-mail, ID number, KYC level, AML status or state (all that are
    given must match)."""
    flt = cardholders.Filter(name, phone, email, id_number, kyc_level, aml_status, state)
    hashed = any(v is not None for v in (phone, email, id_number))

    async def work(pool: PgPool, crypto: IssuerCrypto | None = None) -> Any:
        return await cardholders.list_cardholders(pool, crypto, flt, after=after, limit=limit)

    page = _run(app, work, hsm=hashed)
    rows = [_view(app, r) for r in page.rows]
    tz = app.config.clearing.timezone
    human = _table(
        [
            {
                "id": r["id"],
                "name": r["name"],
                "kyc": r["kyc_level"],
                "aml": r["aml_status"],
                "state": r["state"],
                "phone": r["phone_masked"] or "",
                "ID": r["id_number_masked"] or "",
                "cards": r["cards"],
                "registered": format_local(r["created_at"], tz, seconds=False),
            }
            for r in page.rows
        ],
        ["id", "name", "kyc", "aml", "state", "phone", "ID", "cards", "registered"],
    )
    # Not host.cli._emit_page: its next-page command line would repeat a clear phone, e-mail or ID.
    tail = f"\nnext page: the same command with --after {page.next}" if page.next is not None else ""
    app.emit({"cardholders": rows, "next": page.next}, human + tail)


@cardholder.command("update")
@click.argument("ref", metavar="CARDHOLDER")
@click.option("--name", default=None)
@_identity_options
@pass_app
def cardholder_update(
    app: AppContext,
    ref: str,
    name: str | None,
    id_type: str | None,
    id_number: str | None,
    phone: str | None,
    email: str | None,
    birth_date: Any,
    address: str | None,
) -> None:
    """Change a cardholder's name, ID, phone, e-mail, date of birth or address. A name or birth-date
    change is screened again; a new ID makes an anonymous or verified cardholder `named`."""
    changes = cardholders.Changes(
        name, id_type, id_number, phone, email, birth_date.date() if birth_date else None, address
    )
    if changes.empty():
        raise click.UsageError("nothing to change: give at least one option (see --help)")

    async def work(pool: PgPool, crypto: IssuerCrypto) -> cardholders.Updated:
        cid = await _resolved(pool, ref)
        return await cardholders.update_cardholder(
            pool, crypto, cid, changes, cli_actor(), aml_threshold=app.config.aml.threshold
        )

    u = _run(app, work, hsm=True)
    human = (
        f"cardholder {u.cardholder_id}: changed {', '.join(u.changed)}; KYC {u.kyc_level}"
        + (f"; screened again: {_aml_note(u.aml_status, u.hits)}" if u.screened else "")
        if u.changed
        else f"cardholder {u.cardholder_id}: nothing changed"
    )
    app.emit(
        {
            "cardholder_id": u.cardholder_id,
            "changed": u.changed,
            "kyc_level": u.kyc_level,
            "aml_status": u.aml_status,
            "screened": u.screened,
            "aml_hits": _hits(u.hits),
        },
        human,
    )


@cardholder.command("close")
@click.argument("ref", metavar="CARDHOLDER")
@click.option("--reason", default="", help="Why (kept with the KYC events).")
@pass_app
def cardholder_close(app: AppContext, ref: str, reason: str) -> None:
    """Close a cardholder for good (refused while they own a card that is not closed)."""

    async def work(pool: PgPool) -> tuple[int, str]:
        cid = await _resolved(pool, ref)
        return cid, await pool.run(cardholders.close_cardholder, cid, cli_actor(), reason)

    cid, _level = _run(app, work)
    app.emit({"cardholder_id": cid, "state": "closed"}, f"cardholder {cid}: closed")


@cardholder.command("kyc")
@click.argument("ref", metavar="CARDHOLDER")
@click.option("--approve", is_flag=True, help="The document check passed: the cardholder is verified.")
@click.option("--reject", is_flag=True, help="The document check failed (the level stays).")
@click.option("--downgrade-to", type=click.Choice(kyc.LEVELS), default=None, help="Take the level down.")
@click.option("--reason", required=True, help="Why (kept with the decision, with who and when).")
@pass_app
def cardholder_kyc(
    app: AppContext, ref: str, approve: bool, reject: bool, downgrade_to: str | None, reason: str
) -> None:
    """A KYC decision: --approve, --reject or --downgrade-to LEVEL, with --reason. A card's limits
    follow from its next request."""
    if approve + reject + (downgrade_to is not None) != 1:
        raise click.UsageError("give one of --approve, --reject and --downgrade-to LEVEL")
    decision = "approve" if approve else "reject" if reject else "downgrade"

    async def work(pool: PgPool) -> kyc.Decided:
        cid = await _resolved(pool, ref)
        return await _kyc(
            pool.run(
                lambda conn: kyc.decide(
                    conn, cid, decision, reason=reason, actor=cli_actor(), to_level=downgrade_to
                )
            )
        )

    d = _run(app, work)
    tz = app.config.clearing.timezone
    app.emit(
        {
            "cardholder_id": d.cardholder_id,
            "event_id": d.event_id,
            "decision": d.decision,
            "from_level": d.from_level,
            "to_level": d.to_level,
            "actor": d.actor,
            "reason": d.reason,
            "at": iso_local(d.at, tz),
        },
        f"cardholder {d.cardholder_id}: {d.decision}, {d.from_level} -> {d.to_level}"
        f" (by {d.actor}, {format_local(d.at, tz)})",
    )


# `cardholder bank-account` (host/bank_cli.py, engineer D), registered here at the end of the module.
from host.bank_cli import bank_account  # noqa: E402

cardholder.add_command(bank_account)
