"""`payswitch pos`: a POS terminal simulator speaking the POS dialect to the switch.

Each terminal keeps a state file (default ``var/pos/<terminal id>.json``, sealed by ``pos.sealed``: it
holds the TMK and working keys, like a terminal's secure element). Create it once with ``pos init`` (the
TMK is the one given to ``payswitch terminal add``), then ``pos signon`` and transact. Amounts are
yuan (``12.50``). The PIN is asked without echo unless given with ``--pin`` or left out with
``--no-pin``. ``--trace`` dumps every message field by field (PAN masked, PIN block, tracks and keys
never shown) on stderr; the root ``--json`` prints the receipt as JSON.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

import click
import trio

from ops.cli import AppContext, pass_app
from ops.digits import is_digits
from ops.money import format_money, money_json, parse_money
from pos import state as state_mod
from pos import terminal
from pos.chip import CONTACT, CONTACTLESS, ChipCard, no_cvm_limit
from pos.client import Connection, Session, TerminalError, Unreachable
from pos.crypto import TerminalCryptoError
from pos.demo import read_demo_cards
from pos.messages import Card, CardError
from pos.receipt_image import ReceiptFileError, file_format, write_receipt
from pos.sealed import SealError
from pos.state import JournalEntry, OfflineSale, StateError, TerminalState
from pos.trace import render
from pos.why import explain
from specs.catalogue import parse_floor_table
from specs.codec import codec_for
from specs.errors import EncodeError

F = TypeVar("F", bound=Callable[..., Any])
# Other files in var/pos (chip-atc.json: the demo chips' counters, pos.chip).
NOT_TERMINALS = {"demo-cards.json", "load-pool.json", "load-stans.json", "chip-atc.json"}
DEFAULT_TERMINAL = Path("var/pos/default-terminal")  # id of the terminal used when several exist
# Exit codes of every pos command: 0 approved, 3 declined (the code and why are printed), 1 an error
# (no answer, a refusal of pos itself: one line), 2 a usage mistake (click's own).
EXIT_DECLINED = 3


def terminal_options(func: F) -> F:
    """--terminal, --state, --trace, --timeout (and --receipt) on every transaction command."""
    func = click.option(
        "--receipt",
        "receipt_file",
        type=click.Path(dir_okay=False, path_type=Path),
        metavar="FILE.png|FILE.pdf",
        help="Also render the receipt into FILE, a PNG or a PDF (masked PAN, as printed).",
    )(func)
    func = click.option(
        "--timeout",
        type=click.FloatRange(0.1, 600),
        default=30.0,
        show_default=True,
        help="Seconds to wait for the switch's answer before reversing.",
    )(func)
    func = click.option("--trace", is_flag=True, help="Show every message field by field (stderr).")(func)
    func = click.option(
        "--state",
        "state_file",
        type=click.Path(dir_okay=False, path_type=Path),
        help="Terminal state file (default var/pos/<terminal id>.json).",
    )(func)
    func = click.option(
        "-t",
        "--terminal",
        "terminal_id",
        envvar="PAYSWITCH_POS_TERMINAL",
        metavar="TID",
        help="Terminal id (default: the only terminal in var/pos/).",
    )(func)
    return func


def card_options(func: F) -> F:
    func = click.option(
        "--cloned",
        is_flag=True,
        help="Play a clone of the demo card: its track data copied, never its chip's key (the ARQC is "
        "wrong, so the issuer declines it); a chip read (--chip unless --contactless).",
    )(func)
    func = click.option(
        "--contactless",
        is_flag=True,
        help="Tap the demo card (entry mode 07x, Quick Pay): no PIN at or below its no-CVM limit (the "
        "sign-on's floor table, else 300.00 CNY), the PIN above it.",
    )(func)
    func = click.option(
        "--chip",
        is_flag=True,
        help="Insert the demo card (entry mode 05x): DE23, DE35 and DE55 with its ARQC; the issuer's "
        "ARPC is checked (the receipt says so).",
    )(func)
    func = click.option("--no-pin", is_flag=True, help="No PIN entered (entry mode xx2).")(func)
    func = click.option("--pin", metavar="PIN", help="The PIN (asked without echo when left out).")(func)
    func = click.option("--track2", metavar="PAN=YYMM...", help="Swipe: track 2 data instead of --card.")(
        func
    )
    func = click.option(
        "--expiry", metavar="YYMM", help="Expiry date for keyed entry (with a demo name: instead of its own)."
    )(func)
    func = click.option("--card", metavar="PAN", help="Card number (keyed entry), or a demo card name.")(func)
    return func


def state_path(terminal_id: str | None, state_file: Path | None) -> Path:
    if state_file is not None:
        return state_file
    if terminal_id:
        return state_mod.default_path(terminal_id)
    found = sorted(p for p in state_mod.DEFAULT_DIR.glob("*.json") if p.name not in NOT_TERMINALS)
    if len(found) == 1:
        return found[0]
    if not found:
        raise click.ClickException(
            "no terminal yet: create one with `payswitch pos init` (or give --terminal)"
        )
    try:
        chosen = DEFAULT_TERMINAL.read_text().strip()
    except OSError:
        chosen = ""
    if chosen and state_mod.default_path(chosen).exists():
        return state_mod.default_path(chosen)
    names = ", ".join(p.stem for p in found)
    raise click.ClickException(f"several terminals ({names}): choose one with --terminal")


def _run(
    app: AppContext,
    opts: dict[str, Any],
    action: Callable[[Session], Awaitable[terminal.Receipt]],
    *,
    sign_on_first: bool = True,
    offline_sale: Callable[[TerminalState], terminal.Receipt] | None = None,
    offline_only: bool = False,
) -> None:
    """Load the state, connect, run ``action``, save the state (always), print the receipt.

    ``opts`` holds the values of ``terminal_options``. A terminal that is not signed on (never, or the
    switch asked for it) signs on first, as terminals do at power-up. ``offline_sale`` (a purchase):
    what the terminal does without the switch (pos.offline), at once with ``offline_only`` (``--offline``),
    else when the switch cannot be reached at all (a line on stderr says so).
    """
    trace: bool = opts["trace"]
    timeout: float = opts["timeout"]
    receipt_file: Path | None = opts.get("receipt_file")
    if receipt_file is not None:  # refused before anything is sent
        try:
            file_format(receipt_file)
        except ReceiptFileError as exc:
            raise click.ClickException(str(exc)) from None
    path = state_path(opts["terminal_id"], opts["state_file"])
    try:
        state = state_mod.load(path)
    except StateError as exc:
        raise click.ClickException(str(exc)) from None
    tracer = None
    if trace:

        def tracer(direction: str, msg: dict[str, Any]) -> None:
            click.echo(render(direction, msg, state.scheme), err=True)

    async def main() -> terminal.Receipt:
        conn = await Connection.open(state.host, state.port, timeout=min(timeout, 10.0))
        try:
            session = Session(
                state,
                codec_for("pos", state.scheme),
                conn,
                timeout=timeout,
                tracer=tracer,
                checkpoint=lambda: state_mod.save(state),
            )
            if sign_on_first and not state.signed_on:
                first = await terminal.signon(session)
                if not first.approved:
                    return first
                receipt = await action(session)
                receipt.notes.append(f"signed on first (batch {state.batch})")
                return receipt
            return await action(session)
        finally:
            await conn.aclose()

    try:
        receipt = _online_or_offline(main, state, offline_sale, offline_only)
    except (TerminalError, StateError, CardError, TerminalCryptoError, EncodeError) as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        if state.path is not None:
            state_mod.save(state)
    receipt.in_zone(app.config.clearing.timezone)  # the terminal's local time, with its offset
    if not receipt.approved and not receipt.reason:
        receipt.reason_code, receipt.reason = explain(
            app.config, state.terminal_id, state.merchant_id, receipt.batch, receipt.stan
        )
    app.emit(receipt.as_dict(), receipt.render())
    if receipt_file is not None:
        try:
            write_receipt(receipt.render(), receipt_file)
        except ReceiptFileError as exc:
            raise click.ClickException(str(exc)) from None
        click.echo(f"receipt written to {receipt_file}", err=True)
    if not receipt.approved:
        raise SystemExit(EXIT_DECLINED)


def _online_or_offline(
    main: Callable[[], Awaitable[terminal.Receipt]],
    state: TerminalState,
    offline_sale: Callable[[TerminalState], terminal.Receipt] | None,
    offline_only: bool,
) -> terminal.Receipt:
    if offline_sale is not None and offline_only:
        return offline_sale(state)
    try:
        return trio.run(main)
    except Unreachable as exc:
        # Only a switch that cannot be reached is bypassed: nothing was sent, nothing can be pending.
        # A switch that answers (or stays silent after the connection) keeps the sale online; a terminal
        # given no floor limits at its sign-on sells nothing offline, so the connection error stands.
        if offline_sale is None or not state.floor_table:
            raise
        click.echo(f"payswitch: {exc}: the purchase is made offline", err=True)
        return offline_sale(state)


def _local_now(app: AppContext) -> datetime:
    """The terminal's clock in the programme's zone (``clearing.timezone``, that of the switch's DE12/13)."""
    return datetime.now(ZoneInfo(app.config.clearing.timezone))


def _card(card: str | None, expiry: str | None, track2: str | None) -> Card:
    try:
        if track2:
            if card or expiry:
                raise click.ClickException("give --track2 alone: it holds the card and --expiry")
            return Card.swiped(track2)
        if not card:
            card = _first_demo_card()
        if not card:
            raise click.ClickException("give the card with --card PAN --expiry YYMM (or --track2)")
        if not is_digits(card):
            return _demo_card(card, expiry)
        if not expiry:
            raise click.ClickException("a keyed card needs --expiry YYMM")
        return Card.keyed(card, expiry)
    except CardError as exc:
        raise click.ClickException(str(exc)) from None


def _first_demo_card() -> str | None:
    """The name of the first demo card (the card used when none is given), if the demo is seeded."""
    try:
        return str((_demo_cards() or [])[0]["name"])
    except (KeyError, IndexError):
        return None


def _demo_cards() -> list[dict[str, Any]] | None:
    try:
        return read_demo_cards()
    except SealError as exc:
        raise click.ClickException(f"{exc}; `payswitch demo seed` writes the demo cards again") from None


def _demo_card(name: str, expiry: str | None = None) -> Card:
    """A card from the demo programme (``payswitch demo seed``), by name, e.g. ``alice``; ``expiry``
    (``--expiry``) keys another date than the card's, e.g. to see a wrong expiry declined."""
    cards = _demo_cards()
    if cards is None:
        raise click.ClickException(f"{name!r} is not a card number and no demo cards are seeded")
    for c in cards:
        if c.get("name") == name:
            return Card.keyed(c["pan"], expiry or c["expiry"])
    raise click.ClickException(f"no demo card named {name!r} (known: {', '.join(c['name'] for c in cards)})")


def _demo_pin(name: str | None) -> str | None:
    if not name or is_digits(name):
        return None
    for c in _demo_cards() or []:
        if c.get("name") == name and "pin" in c:
            return str(c["pin"])
    return None


def _pin(pin: str | None, no_pin: bool, card: str | None, required: bool) -> str | None:
    if no_pin:
        return None
    if pin is None:
        pin = _demo_pin(card)
    if pin is None:
        if not required:
            return None
        pin = click.prompt("PIN", hide_input=True, err=True)
    return _checked_pin(pin)


def _checked_pin(pin: str) -> str:
    """Checked before the terminal connects (pos.crypto refuses it too, but only once a STAN is spent)."""
    if not (is_digits(pin) and 4 <= len(pin) <= 12):
        raise click.ClickException("a PIN is 4 to 12 digits")
    return pin


def _original(
    state: TerminalState, stan: str, kinds: tuple[str, ...], *, current_batch_only: bool = False
) -> JournalEntry:
    if not is_digits(stan) or len(stan) > 6:
        raise click.ClickException("--stan is the original's trace number (up to 6 digits)")
    entry = state.find(stan)
    if entry is None:
        raise click.ClickException(
            f"no approved transaction with trace {stan.zfill(6)} in this or the last batch"
        )
    if entry.kind not in kinds:
        raise click.ClickException(f"trace {entry.stan} is a {entry.kind}, not a {' or '.join(kinds)}")
    if entry.reversed or entry.voided:
        raise click.ClickException(
            f"trace {entry.stan} was already {'reversed' if entry.reversed else 'voided'}"
        )
    if current_batch_only and entry.batch != state.batch:
        raise click.ClickException(
            f"trace {entry.stan} belongs to the settled batch {entry.batch}: a void cancels only within "
            "the current batch (use refund)"
        )
    return entry


def _amount(text: str) -> int:
    try:
        return parse_money(text)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None


@click.group()
def pos() -> None:
    """POS terminal simulator: sign on, transact and settle like a real terminal.

    \b
    With the demo seeded (payswitch run does it): terminal T0000001, demo card alice:
    payswitch pos purchase 12.34 --trace
    payswitch pos balance --card bob -t T0000002
    payswitch pos purchase 12.34 --chip --receipt receipt.png   (alice's chip)
    payswitch pos purchase 25.00 --contactless --card dave -t T0000002
    payswitch pos purchase 1.00 --chip --cloned   (declined: the ARQC is wrong)
    payswitch pos settle
    A terminal of your own (its TMK as given to `payswitch terminal add`):
    payswitch pos init -t T0000009 --merchant 898330160120001 --scheme sm4 --tmk HEX
    payswitch pos purchase 12.50 -t T0000009 --card 6212345678901234567 --expiry 3012

    \b
    A decline prints its code and why, e.g. "declined 51 insufficient funds (balance
    12.00 CNY)": the host's recorded reason when the database is reachable, else the
    code's meaning (all a terminal gets on the wire).
    \b
    Exit codes: 0 approved, 3 declined, 1 error (no answer, a refusal), 2 usage.
    """


@pos.command()
@click.option("-t", "--terminal", "terminal_id", required=True, metavar="TID", help="Terminal id (DE41).")
@click.option("--merchant", required=True, metavar="MID", help="Merchant id (DE42).")
@click.option("--scheme", type=click.Choice(["3des", "sm4"]), default="3des", show_default=True)
@click.option(
    "--tmk", metavar="HEX", help="Terminal master key, 32 hex digits (asked without echo if left out)."
)
@click.option("--host", default="127.0.0.1", show_default=True, help="Switch address.")
@click.option(
    "--port", type=click.IntRange(1, 65535), help="Switch POS port (default: by scheme, from config)."
)
@click.option("--state", "state_file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--force", is_flag=True, help="Replace an existing state file.")
@pass_app
def init(
    app: AppContext,
    terminal_id: str,
    merchant: str,
    scheme: str,
    tmk: str | None,
    host: str,
    port: int | None,
    state_file: Path | None,
    force: bool,
) -> None:
    """Create a terminal's state file with its TMK (from the key ceremony)."""
    path = state_file or state_mod.default_path(terminal_id)
    if path.exists() and not force:
        raise click.ClickException(f"{path} exists: use --force to replace it")
    if tmk is None:
        tmk = click.prompt("TMK (32 hex digits)", hide_input=True, err=True)
    if port is None:
        sw = app.config.switch
        port = sw.pos_3des_port if scheme == "3des" else sw.pos_sm4_port
    try:
        state = state_mod.new_state(terminal_id, merchant, scheme, tmk.strip(), host, port)
    except StateError as exc:
        raise click.ClickException(str(exc)) from None
    state_mod.save(state, path)
    summary = {**state.summary(), "state_file": str(path)}
    app.emit(
        summary,
        f"terminal {terminal_id} ({scheme}) ready in {path}, TMK check value "
        f"{summary['tmk_check_value']}; next: payswitch pos signon -t {terminal_id}",
    )


@pos.command()
@terminal_options
@pass_app
def show(app: AppContext, /, **opts: Any) -> None:
    """The terminal's state (check values, not keys) and its batch journal."""
    try:
        state = state_mod.load(state_path(opts["terminal_id"], opts["state_file"]))
    except StateError as exc:
        raise click.ClickException(str(exc)) from None
    data = state.summary()
    data["journal"] = [
        {k: v for k, v in vars(e).items() if k not in ("pan_enc", "amount")} | money_json("amount", e.amount)
        for e in state.journal
    ]
    lines = [f"{k:<26} {v}" for k, v in data.items() if k != "journal"]
    lines.append("journal:" if state.journal else "journal: empty")
    for e in state.journal:
        flags = " reversed" if e.reversed else " voided" if e.voided else ""
        lines.append(
            f"  {e.stan} {e.kind:<13} {e.pan_masked:<19} {format_money(e.amount):>16} "
            f"rrn {e.rrn} auth {e.auth_id}{flags}"
        )
    app.emit(data, "\n".join(lines))


def _net_command(name: str, help_text: str, action: Callable[[Session], Awaitable[terminal.Receipt]]) -> None:
    @terminal_options
    @pass_app
    def command(app: AppContext, /, **opts: Any) -> None:
        _run(
            app, opts, action, sign_on_first=action not in (terminal.signon, terminal.signoff, terminal.echo)
        )

    command.__doc__ = help_text
    pos.command(name)(command)


_net_command("signon", "Sign on (0800): load working keys and the batch number.", terminal.signon)
_net_command("signoff", "Sign off (0820, 60.3 002).", terminal.signoff)
_net_command("echo", "Echo test (0820, 60.3 301).", terminal.echo)
_net_command(
    "settle", "Settle the batch (0500; 0320 upload when the switch's totals differ).", terminal.settle
)


def _card_command(
    name: str, kind: str, help_text: str, *, amount: bool, pin_required: bool, by_code: bool = False
) -> None:
    @card_options
    @terminal_options
    @pass_app
    def command(
        app: AppContext,
        /,
        card: str | None,
        expiry: str | None,
        track2: str | None,
        pin: str | None,
        no_pin: bool,
        **opts: Any,
    ) -> None:
        chip_read, contactless, cloned = (bool(opts.pop(k, False)) for k in ("chip", "contactless", "cloned"))
        if chip_read and contactless:
            raise click.UsageError("--chip inserts the card, --contactless taps it: give one")
        if (chip_read or contactless or cloned) and opts.get("code") is not None:
            raise click.UsageError("--code is the card: no --chip, --contactless or --cloned with it")
        chip_card: ChipCard | None = None
        value = None
        if amount:
            given, option = opts.pop("amount"), opts.pop("amount_option")
            if (given is None) == (option is None):
                raise click.ClickException("give the amount once: AMOUNT or --amount AMOUNT")
            value = _amount(given or option)
        code = opts.pop("code", None)
        go_offline = bool(opts.pop("offline", False))
        if go_offline:  # no PIN asked: none could be verified, nor sent later (pos.offline)
            no_pin = True
        if code is not None:  # scanned from the customer's app: entry mode 03x, no PIN (host.rules)
            if card or track2 or expiry or pin:
                raise click.UsageError("--code is the card: no --card, --track2, --expiry or --pin with it")
            the_card, the_pin = _code_card(code), None
        else:
            if not card and not track2:
                card = _first_demo_card()
            if chip_read or contactless or cloned:
                chip_card = _chip_card(card, expiry, track2, cloned)
                the_card = Card(
                    chip_card.pan,
                    track2=chip_card.track2,
                    mode=CONTACTLESS if contactless else CONTACT,
                    psn=chip_card.psn,
                )
                if contactless and pin is None and (value or 0) <= _no_cvm_limit(opts, chip_card.pan):
                    the_pin = None  # Quick Pay: no CVM at or below the limit
                else:
                    the_pin = _pin(pin, no_pin, card, pin_required)
            else:
                the_card = _card(card, expiry, track2)
                the_pin = _pin(pin, no_pin, card, pin_required)

        async def action(session: Session) -> terminal.Receipt:
            return await terminal.financial(session, kind, the_card, value, the_pin, chip=chip_card)

        fallback = None
        if kind == "purchase" and value is not None:
            amount_fen = value

            def fallback(state: TerminalState) -> terminal.Receipt:
                return terminal.offline_purchase(state, the_card, amount_fen, _local_now(app))

        _run(app, opts, action, offline_sale=fallback, offline_only=go_offline)

    command.__doc__ = help_text
    if kind == "purchase":
        command = click.option(
            "--offline",
            is_flag=True,
            help="Approve offline under the floor limit of the card's BIN (as when the switch is "
            "unreachable); the advice goes before the next online transaction.",
        )(command)
    if by_code:
        command = click.option(
            "--code",
            metavar="CODE",
            help="Pay with the customer's payment code (18 digits, `payswitch card code`): entry mode 032.",
        )(command)
    if amount:
        command = click.option("--amount", "amount_option", metavar="AMOUNT", help="Same as AMOUNT.")(command)
        command = click.argument("amount", required=False)(command)
    pos.command(name)(command)


def _chip_card(name: str | None, expiry: str | None, track2: str | None, cloned: bool) -> ChipCard:
    """The chip of a demo card (its keys are in the demo card file, as personalised), or its clone."""
    if track2 or expiry:
        raise click.UsageError("a chip read takes the card's own data: --card NAME, no --track2 or --expiry")
    if not name or is_digits(name):
        raise click.ClickException(
            "a chip read needs a demo card's name (--card alice): the simulator holds only the demo "
            "cards' chips"
        )
    cards = _demo_cards() or []
    entry = next((c for c in cards if c.get("name") == name), None)
    if entry is None:
        raise click.ClickException(f"no demo card named {name!r}")
    chip = ChipCard.from_entry(entry)
    if chip is None:
        raise click.ClickException(
            f"demo card {name!r} has no chip yet: `payswitch demo seed` personalises the demo cards' chips"
        )
    return chip.cloned() if cloned else chip


def _no_cvm_limit(opts: dict[str, Any], pan: str) -> int:
    """The card's contactless no-CVM limit as the terminal knows it (its last sign-on's floor table)."""
    try:
        state = state_mod.load(state_path(opts["terminal_id"], opts["state_file"]))
    except StateError as exc:
        raise click.ClickException(str(exc)) from None
    return no_cvm_limit(str(getattr(state, "floor_table", "")), pan)


def _code_card(code: str) -> Card:
    try:
        return Card.payment_code(code.strip())
    except CardError as exc:
        raise click.ClickException(str(exc)) from None


_card_command("balance", "balance", "Balance inquiry (0200, 31).", amount=False, pin_required=True)
_card_command(
    "purchase",
    "purchase",
    "Purchase (0200, 00) of AMOUNT yuan (12.50); --code pays with a payment code.",
    amount=True,
    pin_required=True,
    by_code=True,
)
_card_command(
    "topup", "topup", "Top-up, a cash load (0200, 21): AMOUNT in yuan.", amount=True, pin_required=False
)
_card_command(
    "preauth", "preauth", "Pre-authorization hold (0100, 03): AMOUNT in yuan.", amount=True, pin_required=True
)


@pos.command("pin-change")
@click.argument("card")
@click.option("--expiry", metavar="YYMM", help="Expiry of a keyed card number (a demo name has its own).")
@click.option("--old", "old_pin", metavar="PIN", help="The current PIN (asked without echo when left out).")
@click.option("--new", "new_pin", metavar="PIN", help="The new PIN (asked twice without echo when left out).")
@terminal_options
@pass_app
def pin_change(
    app: AppContext, /, card: str, expiry: str | None, old_pin: str | None, new_pin: str | None, **opts: Any
) -> None:
    """Change CARD's PIN (0200, 96): CARD is a card number (with --expiry) or a demo card name.

    The old and the new PIN travel only as PIN blocks under the terminal's PIK. Not reversed when
    unanswered: sent once more with the same trace number, which gets the first answer.
    """
    the_card = _card(card, expiry, None)
    old = _checked_pin(old_pin if old_pin is not None else click.prompt("Old PIN", hide_input=True, err=True))
    if new_pin is None:
        new_pin = click.prompt("New PIN", hide_input=True, confirmation_prompt=True, err=True)
    new = _checked_pin(new_pin)

    async def action(session: Session) -> terminal.Receipt:
        return await terminal.pin_change(session, the_card, old, new)

    _run(app, opts, action)


def _reference_command(name: str, help_text: str, kinds: tuple[str, ...], *, amount: bool) -> None:
    @click.option("--pin", metavar="PIN", help="PIN, if the card programme asks for one.")
    @click.option("--stan", required=True, metavar="TRACE", help="Trace number (STAN) of the original.")
    @terminal_options
    @pass_app
    def command(app: AppContext, /, stan: str, pin: str | None, **opts: Any) -> None:
        path = state_path(opts["terminal_id"], opts["state_file"])
        try:
            original = _original(state_mod.load(path), stan, kinds, current_batch_only=name == "void")
        except StateError as exc:
            raise click.ClickException(str(exc)) from None
        given = opts.pop("amount", None)
        value = _amount(given) if given else None
        if pin is not None:
            _checked_pin(pin)

        async def action(session: Session) -> terminal.Receipt:
            entry = session.state.find(original.stan)
            assert entry is not None
            kind = _reference_kind(name, entry)
            due = value
            if due is None:
                due = entry.amount - entry.refunded if kind == "refund" else entry.amount
            if kind == "refund" and due > entry.amount - entry.refunded:
                raise TerminalError(
                    f"refund exceeds what is left of the original "
                    f"({format_money(entry.amount - entry.refunded)})"
                )
            if due <= 0:
                raise TerminalError("nothing left to refund on that original")
            card = terminal.journal_card(session, entry)
            return await terminal.financial(session, kind, card, due, pin, original=entry)

        _run(app, opts, action)

    command.__doc__ = help_text
    if amount:
        command = click.option("--amount", metavar="AMOUNT", help="Amount in yuan (default: all of it).")(
            command
        )
    pos.command(name)(command)


def _reference_kind(command: str, entry: JournalEntry) -> str:
    if command == "void":
        return "preauth_void" if entry.kind == "preauth" else "void"
    return "completion" if command == "complete" else "refund"


_reference_command(
    "void",
    "Void a purchase, top-up or pre-auth of the batch by its trace number.",
    ("purchase", "topup", "completion", "preauth"),
    amount=False,
)
_reference_command(
    "refund",
    "Refund (0220) all or part of an earlier purchase by its trace number.",
    ("purchase", "completion"),
    amount=True,
)
_reference_command(
    "complete", "Complete a pre-authorization (0200, 06) by its trace number.", ("preauth",), amount=True
)


@pos.command()
@terminal_options
@pass_app
def reverse(app: AppContext, /, **opts: Any) -> None:
    """Reverse (0400) the pending unanswered transaction, else the last approved one.

    A terminal reverses an approved transaction it could not complete (receipt not printed, card
    pulled out early).
    """
    _run(app, opts, terminal.reverse_last)


@pos.command("upload-offline")
@terminal_options
@pass_app
def upload_offline(app: AppContext, /, **opts: Any) -> None:
    """Send the stored offline sales' advices now (0220, 60.1 36).

    They also go before the next online transaction and before a settlement. Exit 0 when none is left,
    3 when some are kept for later (the answer that stopped the upload is printed).
    """
    _run(app, opts, terminal.upload_offline)


@pos.command("offline")
@terminal_options
@pass_app
def offline_list(app: AppContext, /, **opts: Any) -> None:
    """The floor limits of the last sign-on and the offline sales still to be advised (or refused)."""
    try:
        state = state_mod.load(state_path(opts["terminal_id"], opts["state_file"]))
    except StateError as exc:
        raise click.ClickException(str(exc)) from None
    try:
        table = parse_floor_table(state.floor_table)
    except ValueError:
        table = []

    def sale(s: OfflineSale) -> dict[str, Any]:
        shown = {k: v for k, v in vars(s).items() if k not in ("pan_enc", "amount", "de55")}
        return shown | money_json("amount", s.amount)

    data = {
        "floor_limits": [
            {"bin": e.bin}
            | money_json("floor_limit", e.floor_limit)
            | money_json("no_cvm_limit", e.no_cvm_limit)
            for e in table
        ],
        "pending": [sale(s) for s in state.offline],
        "refused": [sale(s) for s in state.offline_refused],
    }
    limits = ", ".join(f"{e.bin} {format_money(e.floor_limit)}" for e in table)
    lines = [f"floor limits: {limits or 'none'}"]
    for title, sales in (("to be advised", state.offline), ("refused by the issuer", state.offline_refused)):
        total = f" ({format_money(sum(s.amount for s in sales))})" if sales else ""
        lines.append(f"{title}: {len(sales)}{total}")
        lines.extend(
            f"  {s.stan} batch {s.batch} {s.pan_masked:<19} {format_money(s.amount):>16} "
            f"{s.date[:2]}/{s.date[2:]} {s.time[:2]}:{s.time[2:4]}:{s.time[4:]} approval {s.approval}"
            + (f" sent {s.attempts}x, last {s.last_code}" if s.attempts else "")
            for s in sales
        )
    app.emit(data, "\n".join(lines))
