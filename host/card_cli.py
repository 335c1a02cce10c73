"""`payswitch card ...`: issue, find, change the state of, load, unload, close and expire cards.

A CARD argument is whatever `pos` accepts: a card id, a PAN (looked up through the HSM's keyed hash;
never stored or logged), a masked PAN or a label such as the demo's ``alice`` (host.directory.
resolve_card). Money is typed in yuan (ops.money) and shown with its currency; operator mistakes are
one line and exit 1.
"""


import dataclasses
from pathlib import Path
from typing import Any

import click

from host import cardholders, catalog, directory, kyc, rules
from host.admin import admin_load, load_refusal
from host.bank_accounts import Destination, To
from host.business_day import business_date_now, business_today
from host.catalog import CatalogError
from host.cli import (
    _emit_page,
    _export_for,
    _page_options,
    _run,
    _table,
)
from host.controls_cli import card_limits
from host.keys import IssuerCrypto
from ops.cli import AppContext, pass_app
from ops.digits import is_digits
from ops.localtime import format_local, iso_local
from ops.logs import mask_pan
from ops.money import AMOUNT, format_amount, format_money, money_json
from ops.pgpool import PgPool


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
@click.option(
    "--cardholder",
    "cardholder_ref",
    default=None,
    metavar="CARDHOLDER",
    help="Issue the cards to this cardholder (refused below the product's issue tier, when closed or AML"
    " confirmed).",
)
@click.option(
    "--virtual",
    is_flag=True,
    help="Virtual (digital) cards, whatever the product's form: active at once, no PIN mailer, they pay by"
    " payment code (`card code`); --cardholder required.",
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
    cardholder_ref: str | None = None,
    virtual: bool = False,
) -> None:
    """Issue cards: Luhn-valid PANs in the product's BIN, PINs through the HSM, a PIN-mailer file.

    Virtual cards (--virtual, or the product's form): issued to the --cardholder and active at once,
    without a PIN mailer (host.issue.issue_cards).

    The clear PANs are printed (for embossing) and never stored; the mailer file holds no clear PAN or PIN.
    """
    from host.issue import issue_cards

    if pin is not None and not (is_digits(pin) and 4 <= len(pin) <= 12):
        raise click.ClickException("--pin: 4 to 12 digits")
    folder = mailer_dir or Path(app.config.host.mailer_dir)

    async def work(pool: PgPool, crypto: IssuerCrypto) -> tuple[list[Any], Path | None, int | None]:
        export = await _export_for(pool, crypto, producer_name) if producer_name else None
        options: dict[str, Any] = {
            "pin": pin,
            "activate": activate,
            "mailer_dir": folder,
            "producer": export,
            "today": business_today(app.config),
            "form": "virtual" if virtual else None,  # None: the product's (host.issue.issue_cards)
        }
        if cardholder_ref is None:
            return (*await issue_cards(pool, crypto, product_code, count, **options), None)
        # checked, issued, then given to them (host.cardholders.issue_to)
        owner = await pool.run(cardholders.resolve_cardholder, cardholder_ref)
        issued = await cardholders.issue_to(pool, crypto, owner, product_code, count, **options)
        return (*issued, owner)

    cards, mailer, owner = _run(app, work, hsm=True)
    form = cards[0].form
    data = {
        "cards": [{"card_id": c.card_id, "pan": c.pan, "expiry": c.expiry} for c in cards],
        "mailer": str(mailer) if mailer else None,
        "state": "active" if activate or form == "virtual" else "inventory",
        "form": form,
        "producer": producer_name,
        "cardholder_id": owner,
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
            cid = await directory.resolve_card(pool, crypto, card_ref)
            if name == "activate":
                from host.issue import activate_card

                await activate_card(pool, cid, business_today(app.config))
                return cid, "inventory", "active"
            today = business_today(app.config) if name == "unfreeze" else None
            action = "unfreeze" if name == "unfreeze" else None
            old, new = await pool.run(
                lambda conn: catalog.set_card_state(conn, cid, target, action=action, today=today)
            )
            return cid, old, new

        cid, old, new = _run(app, work, hsm=directory.needs_hsm(card_ref))
        app.emit({"card_id": cid, "from": old, "to": new}, f"card {cid}: {old} -> {new}")


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
        return await close_card(pool, await directory.resolve_card(pool, crypto, card_ref), forfeit=forfeit)

    done = _run(app, work, hsm=directory.needs_hsm(card_ref))
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


def _four_eyes(app: AppContext, kind: str, card_ref: str, minor: int) -> None:
    """A manual load or unload above console.four_eyes_minor is not made from the CLI either: it is
    requested, and another person approves it (host.approvals; the console's Approvals page)."""
    from host.approvals import needs_approval

    config = app.config.console
    if needs_approval(kind, minor, config):
        raise click.ClickException(
            f"a {kind} of more than {format_money(config.four_eyes_minor)} takes a second person's approval"
            f" (console.four_eyes_minor): `payswitch approval request {kind} {card_ref} --amount "
            f"{format_amount(minor)} --reason WHY`, then a supervisor approves it")


@card.command("unload")
@click.argument("card_ref", metavar="CARD")
@click.option("--amount", type=AMOUNT, default=None, help="Yuan to unload (default: all that is available).")
@click.option(
    "--reference", required=True, help="Your reference for the payout: the same one twice unloads once."
)
@click.option(
    "--to",
    "to",
    type=click.Choice(["bank", "desk"]),
    default=None,
    help="bank: the cardholder's registered bank account (refused without one); desk: paid at the"
    " programme's desk. Default: the bank account when one is registered, else the desk.",
)
@pass_app
def card_unload(app: AppContext, card_ref: str, amount: int | None, reference: str, to: To | None) -> None:
    """Take money off a card to the cash-out payable; the next settlement run pays it out to the
    cardholder under REFERENCE: to their bank account registered now (`cardholder bank-account set`),
    else at the programme's desk. Held money (pending pre-auths) stays on the card."""
    from host.admin import Unload, admin_unload

    if amount is not None:
        _four_eyes(app, "unload", card_ref, amount)

    async def work(pool: PgPool, crypto: IssuerCrypto | None = None) -> Unload:
        cid = await directory.resolve_card(pool, crypto, card_ref)
        return await admin_unload(pool, cid, reference, amount, to=to)

    u = _run(app, work, hsm=directory.needs_hsm(card_ref))
    verb = "already unloaded" if u.duplicate else "unloaded"
    held = f" ({format_money(u.held, u.currency)} held)" if u.held else ""
    dest = u.destination or Destination("desk", why="unloaded before payout destinations were kept")
    app.emit(
        {
            "card_id": u.card_id,
            "reference": u.reference,
            "duplicate": u.duplicate,
            **money_json("unloaded", u.amount, u.currency),
            "balance_minor": u.balance,
            "held_minor": u.held,
            "destination": dest.as_json(),
        },
        f"card {u.card_id}: {verb} {format_money(u.amount, u.currency)} under reference {u.reference};"
        f" balance {format_money(u.balance, u.currency)}{held}.\n"
        f"The next settlement run (`payswitch settle`) pays it out with this reference to {dest.describe()}.",
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

    today = business_today(app.config)
    day = as_of.date() if as_of else today
    if not (dry_run or yes) and day > today:
        raise click.ClickException(
            f"--as-of {day.isoformat()} is in the future (today's business date is"
            f" {today.isoformat()}): cards not yet expired would be expired;"
            " give --yes to do it (or --dry-run to count them)"
        )

    async def work(pool: PgPool) -> ExpiryResult:
        from ops.actor import cli_actor

        return await expire_cards(pool, day, dry_run=dry_run, actor=cli_actor())

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
        cid = await directory.resolve_card(pool, crypto, card_ref)
        return cid, await pool.run(catalog.reset_pin_tries, cid)

    cid, old = _run(app, work, hsm=directory.needs_hsm(card_ref))
    app.emit({"card_id": cid, "pin_tries_were": old}, f"card {cid}: PIN tries reset (were {old})")


@card.command("show")
@click.argument("card_ref", metavar="CARD")
@pass_app
def card_show(app: AppContext, card_ref: str) -> None:
    """A card (id, PAN, masked PAN or label): state, product, balances, limits and the day's use, PIN
    tries, batch, label, issue and update times."""

    async def work(pool: PgPool, crypto: IssuerCrypto | None = None) -> dict[str, Any]:
        from host.replace import links

        cid = await directory.resolve_card(pool, crypto, card_ref)
        today = await pool.run(business_date_now, app.config)  # the day the ledger counts in
        return {**await pool.run(directory.show_card, cid), **await pool.run(links, cid), "today": today}

    r = _run(app, work, hsm=directory.needs_hsm(card_ref))
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
            "form",
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
    # the owner and the KYC tier that caps the balance (the lower of the product's and the tier's maximum)
    cap = min(r["tier_max_balance"], r["max_balance"])
    data.update(cardholder_id=r["cardholder_id"], cardholder_name=r["cardholder_name"], tier=r["tier"])
    data.update(money_json("tier_max_balance", cap, cur))
    owner = f"{r['cardholder_id']}  {r['cardholder_name']}" if r["cardholder_id"] else "- (anonymous card)"
    today = r["today"]
    data["today_amount_minor"] = r["day_amount"] if r["day"] == today else 0
    data["today_count"] = r["day_count"] if r["day"] == today else 0
    used = (
        f"{format_money(data['today_amount_minor'], cur)} in {data['today_count']} purchases "
        f"(business day {today.isoformat()}"
        + (
            f"; last purchase day {day}: {format_money(r['day_amount'], cur)} in {r['day_count']})"
            if day is not None and r["day"] != today
            else ")"
        )
    )
    lines = [
        f"card         {r['id']}" + (f"  label {r['label']}" if r["label"] else ""),
        f"PAN          {r['pan_masked']}  expiry {r['expiry'][2:]}/{r['expiry'][:2]}",
        f"state        {r['state']}",
        f"form         {r['form']}" + (" (pays by payment code)" if r["form"] == "virtual" else ""),
        f"product      {r['product']} ({r['kind']})",
        f"balance      {format_money(r['balance'], cur)}",
        f"available    {format_money(r['available'], cur)}",
        f"held         {format_money(r['held'], cur)}",
        f"limits       {format_money(r['per_txn_limit'], cur)} per purchase, "
        f"{format_money(r['daily_amount_limit'], cur)} and {r['daily_count_limit']} purchases a day, "
        f"balance up to {format_money(r['max_balance'], cur)}",
        f"today        {used}",
        f"cardholder   {owner}; KYC tier {r['tier']}: balance up to {format_money(cap, cur)}",
    ]
    if r["uses_left"] is not None:
        lines.append(f"uses left    {r['uses_left']}")
    lines += [
        f"PIN tries    {r['pin_tries']}" + (" (PIN required)" if r["pin_required"] else ""),
        f"batch        {r['issue_batch'] or '-'}",
        f"issued       {format_local(r['issued_at'], tz)}",
        f"updated      {format_local(r['updated_at'], tz)}",
    ]
    # the two cards of a replacement name each other (host.replace)
    data.update(replaced_by=r["replaced_by"], replaces=r["replaces"])
    if r["replaced_by"] is not None:
        lines.append(f"replaced by  card {r['replaced_by']}")
    if r["replaces"] is not None:
        lines.append(f"replaces     card {r['replaces']}")
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
@click.option("--cardholder", "cardholder_ref", default=None, metavar="CARDHOLDER", help="Cards they own.")
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
    cardholder_ref: str | None = None,
) -> None:
    """Find cards: by last 4 digits, masked PAN, state, product, issue batch or label (all that are
    given must match)."""
    clear_pan = pan is not None and directory.needs_hsm(pan.replace(" ", ""))

    async def work(pool: PgPool, crypto: IssuerCrypto | None = None) -> directory.Page:
        flt = directory.CardFilter(state=state, product=product_code, batch=batch, label=label)
        if cardholder_ref is not None:
            owner = await pool.run(cardholders.resolve_cardholder, cardholder_ref)
            flt = dataclasses.replace(flt, cardholder=owner)
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
            "cardholder_id": r["cardholder_id"],
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
        cid = await directory.resolve_card(pool, crypto, card_ref)
        return cid, await pool.run(directory.set_card_label, cid, name)

    cid, old = _run(app, work, hsm=directory.needs_hsm(card_ref))
    human = f"card {cid}: label {name}" if name is not None else f"card {cid}: label {old or '-'} removed"
    app.emit({"card_id": cid, "label": name, "label_was": old}, human)


@card.command("assign")
@click.argument("card_ref", metavar="CARD")
@click.argument("cardholder_ref", metavar="CARDHOLDER")
@pass_app
def card_assign(app: AppContext, card_ref: str, cardholder_ref: str) -> None:
    """Give an anonymous card an owner (refused below the product's issue tier, for a closed or AML
    confirmed cardholder, or a card that has one). Its limits follow the owner's tier from the next
    request on."""

    async def work(pool: PgPool, crypto: IssuerCrypto | None = None) -> tuple[int, int, str]:
        cid = await directory.resolve_card(pool, crypto, card_ref)
        owner = await pool.run(cardholders.resolve_cardholder, cardholder_ref)
        await pool.run(cardholders.assign_cards, [cid], owner)
        return cid, owner, await pool.run(kyc.card_tier, cid)

    cid, owner, tier = _run(app, work, hsm=directory.needs_hsm(card_ref))
    app.emit(
        {"card_id": cid, "cardholder_id": owner, "tier": tier},
        f"card {cid}: now cardholder {owner}'s (KYC tier {tier})",
    )


@card.command("load")
@click.argument("card_ref", metavar="CARD")
@click.option("--amount", "minor", type=AMOUNT, required=True, help="Yuan to load, e.g. 500.00.")
@click.option("--reference", default=None, help="Idempotency reference: the same one twice loads once.")
@pass_app
def card_load(app: AppContext, card_ref: str, minor: int, reference: str | None) -> None:
    """Load money onto a card from the issuer's funding account (more than console.four_eyes_minor: a
    request for a second person's approval instead, `payswitch approval request load`)."""
    _four_eyes(app, "load", card_ref, minor)

    async def work(pool: PgPool, crypto: IssuerCrypto | None = None) -> tuple[int, Any, dict[str, Any]]:
        cid = await directory.resolve_card(pool, crypto, card_ref)
        d = await admin_load(pool, cid, minor, reference)
        if d.code != "00":
            raise CatalogError(f"card {cid}: load refused: {await load_refusal(pool, cid, d)}")
        return cid, d, await pool.run(catalog.card_info, cid)

    cid, d, info = _run(app, work, hsm=directory.needs_hsm(card_ref))
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
        cid = await directory.resolve_card(pool, crypto, card_ref)
        rows = await pool.run(catalog.card_history, cid, limit)
        return rows, (await pool.run(catalog.card_info, cid))["currency"]

    rows, cur = _run(app, work, hsm=directory.needs_hsm(card_ref))
    tz = app.config.clearing.timezone  # times in the programme's zone with the offset
    # the reason the host declined (host.rules.REASONS), in words for people; JSON keeps the key too
    shown = [
        {
            **r,
            "at": format_local(r["at"], tz),
            # a balance inquiry moves no money and a decline posts nothing: blank, not 0.00 / None
            "amount": format_money(r["amount"], cur) if r["amount"] or r["txn"] != "balance" else "",
            "reason": rules.describe(r["reason"]),
            "posting_id": "" if r["posting_id"] is None else r["posting_id"],
            "reference": r.get("reference") or "",  # a programme load's funding reference (the API's)
            "flags": ",".join(r.get("flags") or []),  # an approval's flags: chip_fallback (host.chip)
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
            ["at", "txn", "mti", "amount", "rc", "reason", "auth_id", "rrn", "terminal_id", "posting_id",
             "reference", "flags"],
        ),
    )


@card.command("replace")
@click.argument("card_ref", metavar="CARD")
@click.option(
    "--reason",
    type=click.Choice(["lost", "stolen", "damaged", "expiring"]),
    required=True,
    help="lost / stolen: the old card is blocked as such (41 / 43); damaged / expiring (the renewal, which"
    " keeps the PIN): closed.",
)
@click.option(
    "--mailer-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where a physical card's PIN-mailer line goes (default: host.mailer_dir).",
)
@pass_app
def card_replace(app: AppContext, card_ref: str, reason: str, mailer_dir: Path | None) -> None:
    """Replace a named card: a new PAN on the same product; the balance, today's use and the
    cardholder move to it in one ledger transfer; the old card is blocked. Not while holds are pending."""
    from host.replace import Replacement, replace_card
    from ops.actor import cli_actor

    folder = mailer_dir or Path(app.config.host.mailer_dir)

    async def work(pool: PgPool, crypto: IssuerCrypto) -> Replacement:
        cid = await directory.resolve_card(pool, crypto, card_ref)
        return await replace_card(
            pool,
            crypto,
            cid,
            reason,
            actor=cli_actor(),
            today=business_today(app.config),
            mailer_dir=folder,
            timezone=app.config.clearing.timezone,
        )

    r = _run(app, work, hsm=True)
    pin = {
        "new": "a new PIN",
        "kept": "the PIN kept",
        "new_no_pin_lmk": "a new PIN (the old card's PIN was not kept at its issue)",
    }.get(r.pin, "")
    data = {
        "old_card_id": r.old_card_id,
        "card_id": r.new_card_id,
        "reason": r.reason,
        "from": r.old_from,
        "to": r.old_to,
        "state": r.new_state,
        "form": r.form,
        "pan": r.pan,
        "pan_masked": r.pan_masked,
        "expiry": r.expiry,
        **money_json("moved", r.moved, r.currency),
        "pin": r.pin or None,
        "mailer": str(r.mailer) if r.mailer else None,
        "duplicate": r.duplicate,
    }
    if r.duplicate:
        human = (
            f"card {r.old_card_id} was replaced already by card {r.new_card_id} ({r.pan_masked},"
            f" {r.new_state}); {format_money(r.moved, r.currency)} moved then"
        )
    else:
        human = (
            f"card {r.old_card_id}: {r.old_from} -> {r.old_to}; replaced by card {r.new_card_id}"
            f" ({r.form}, {r.new_state}) with {pin}; {format_money(r.moved, r.currency)} moved\n"
            f"new card number {r.pan}  expiry {r.expiry[2:]}/{r.expiry[:2]}"
            + (f"\nPIN mailer {r.mailer}" if r.mailer else "")
            + "\nThe card number is shown this once: the database keeps it only encrypted and its hash."
        )
    app.emit(data, human)


@card.command("events")
@click.argument("card_ref", metavar="CARD")
@click.option("--limit", type=click.IntRange(1, 10_000), default=50, show_default=True)
@pass_app
def card_events_command(app: AppContext, card_ref: str, limit: int) -> None:
    """The card's state changes, newest first: when, who, from -> to, the action and why."""
    from host.card_events import events

    async def work(pool: PgPool, crypto: IssuerCrypto | None = None) -> list[dict[str, Any]]:
        cid = await directory.resolve_card(pool, crypto, card_ref)
        return await pool.run(events, cid, limit)

    rows = _run(app, work, hsm=directory.needs_hsm(card_ref))
    tz = app.config.clearing.timezone
    shown = [
        {
            "at": format_local(r["at"], tz),
            "who": r["actor"],
            "change": f"{r['from_state'] or '(new)'} -> {r['to_state']}",
            "action": r["action"],
            "reason": r["reason"],
        }
        for r in rows
    ]
    for r in rows:
        r["at"] = iso_local(r["at"], tz)
    app.emit(rows, _table(shown, ["at", "who", "change", "action", "reason"]))


# -- card pin -------------------------------------------------------------------------------------
@card.group("pin")
def card_pin() -> None:
    """PINs without a clear PIN anywhere: the issuer's SM2 key for apps, a PIN set by an app, a reset."""


@card_pin.command("public-key")
@pass_app
def card_pin_public_key(app: AppContext) -> None:
    """The issuer's SM2 public key that apps encrypt PIN blocks under (made in the HSM the first time)."""
    from host.pins import IssuerSm2Key, issuer_key

    async def work(pool: PgPool, crypto: IssuerCrypto) -> IssuerSm2Key:
        return await issuer_key(pool, crypto)

    key = _run(app, work, hsm=True)
    app.emit(
        key.public(),
        f"SM2 public key (sm2p256v1, 04 || x || y)\n{key.public_key}\ncheck value {key.check_value}\n"
        f"{key.pem()}An app encrypts (C1C3C2) a format-0 PIN block (8 bytes) + UTC seconds (8 bytes).",
    )


@card_pin.command("set")
@click.argument("card_ref", metavar="CARD")
@click.option(
    "--sm2-block",
    "block_hex",
    required=True,
    help="The app's PIN block under the issuer's SM2 public key, C1C3C2 in hex (`card pin public-key`).",
)
@pass_app
def card_pin_set(app: AppContext, card_ref: str, block_hex: str) -> None:
    """Set the PIN an app encrypted under the issuer's SM2 key: decrypted and turned into a PVV only
    inside the HSM; PIN tries cleared."""
    from host.pins import PinChanged, parse_block, set_pin_sm2

    async def work(pool: PgPool, crypto: IssuerCrypto) -> PinChanged:
        block = parse_block(block_hex)
        cid = await directory.resolve_card(pool, crypto, card_ref)
        return await set_pin_sm2(pool, crypto, cid, block, today=business_today(app.config))

    done = _run(app, work, hsm=True)
    app.emit(
        {"card_id": done.card_id, "action": done.action, "state": done.state, "pin_tries": 0},
        f"card {done.card_id}: PIN set from the app's SM2 block; PIN tries cleared",
    )


@card_pin.command("reset")
@click.argument("card_ref", metavar="CARD")
@click.option(
    "--mailer-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where the new PIN-mailer file goes (default: host.mailer_dir).",
)
@click.option(
    "--producer",
    "producer_name",
    default=None,
    help="Card producer: the PAN under its mailer key, the key under its ZMK in the file's header line.",
)
@pass_app
def card_pin_reset(
    app: AppContext, card_ref: str, mailer_dir: Path | None, producer_name: str | None
) -> None:
    """A new random PIN drawn inside the HSM, its PVV, PIN tries cleared, and a new PIN mailer."""
    from host.pins import PinChanged, reset_pin

    folder = mailer_dir or Path(app.config.host.mailer_dir)

    async def work(pool: PgPool, crypto: IssuerCrypto) -> PinChanged:
        cid = await directory.resolve_card(pool, crypto, card_ref)
        export = await _export_for(pool, crypto, producer_name) if producer_name else None
        return await reset_pin(
            pool, crypto, cid, mailer_dir=folder, producer=export, today=business_today(app.config)
        )

    done = _run(app, work, hsm=True)
    app.emit(
        {
            "card_id": done.card_id,
            "action": done.action,
            "state": done.state,
            "pin_tries": 0,
            "mailer": str(done.mailer),
            "producer": producer_name,
        },
        f"card {done.card_id}: PIN reset; PIN tries cleared; PIN mailer {done.mailer}",
    )


card.add_command(card_limits)  # `card limits`: host/controls_cli.py (spend controls)


@card.command("code")
@click.argument("card_ref", metavar="CARD")
@click.option(
    "--max-amount", type=AMOUNT, default=None, help="The most the code may pay, in yuan (default: no cap)."
)
@click.option(
    "--png",
    "png",
    type=click.Path(dir_okay=False, writable=True, path_type=Path),
    default=None,
    help="Also write the QR code to this PNG file (mode 0600).",
)
@pass_app
def card_code(app: AppContext, card_ref: str, max_amount: int | None, png: Path | None) -> None:
    """A one-time payment code for an active card: 18 digits and their QR code, paying once within
    host.payment_code_seconds (a merchant scans it: POS entry mode 03). Only its keyed hash is kept:
    the code is shown this once."""
    from host import payment_codes
    from ops.actor import cli_actor

    if png is not None and not png.parent.is_dir():
        raise click.ClickException(f"--png {png}: no folder {png.parent}")
    seconds = app.config.host.payment_code_seconds

    async def work(pool: PgPool, crypto: IssuerCrypto) -> payment_codes.NewCode:
        cid = await directory.resolve_card(pool, crypto, card_ref)
        return await payment_codes.make_code(
            pool,
            crypto,
            cid,
            seconds=seconds,
            today=business_today(app.config),
            actor=cli_actor(),
            max_amount=max_amount,
        )

    made = _run(app, work, hsm=True)
    if png is not None:
        try:
            payment_codes.write_png(made.code, png)
        except OSError as exc:
            raise click.ClickException(f"--png {png}: {exc.strerror or exc}") from None
    tz = app.config.clearing.timezone
    data = {
        "card_id": made.card_id,
        "code": made.code,
        "code_masked": made.masked,
        "created_at": iso_local(made.created_at, tz),
        "expires_at": iso_local(made.expires_at, tz),
        "seconds": seconds,
        **money_json("max_amount", made.max_amount, made.currency),
        "png": str(png) if png is not None else None,
    }
    cap = f", at most {format_money(made.max_amount, made.currency)}" if made.max_amount else ""
    app.emit(
        data,
        f"{payment_codes.qr_text(made.code)}\n"
        f"payment code {made.code} for card {made.card_id}: pays once until"
        f" {format_local(made.expires_at, tz)}{cap}"
        + (f"\nQR code written to {png}" if png is not None else ""),
    )
