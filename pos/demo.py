"""`payswitch demo`: a seeded demo programme and a scripted tour of every transaction.

``demo seed`` (idempotent; ``payswitch run`` calls it) creates, through the admin commands of the host
and the switch run as subprocesses (pos imports neither): a demo issuer programme (a reloadable
product on BIN 621234 and a load-test product), named demo cards with printed demo PINs, a merchant,
a store, two terminals with known TMKs (T0000001 on the 3des port, T0000002 on the sm4 port), the
route from the switch to the host; and on the terminal side the two terminals' state files and the
load pool used by ``payswitch load`` (``var/pos/``, sealed by ``pos.sealed``: demo TMKs, PANs and
PINs). Its output names the cards with masked PANs; ``--show-cards`` (or ``demo cards`` later) shows
their PANs and PINs.

``demo tour`` drives the running system through sign-on, echo, balance, purchase, void, refund,
top-up, pre-auth and completion, pre-auth void, a wrong PIN, a reversal and settlement on both
terminals, printing every receipt; then it ends with the day's payout (``demo payout``, through the
admin commands): the business date closed early (``clearing close-day``), its clearing file written,
settled, and where the demo merchant's report and the payout file are, with what it was paid.

The demo keys and PINs are public test data: never use them for real cards.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import subprocess
import sys
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import click
import trio

from hsm_sim.crypto import set_odd_parity
from hsm_sim.emv import Algorithm
from ops import processes
from ops.cli import COMMANDS, AppContext, pass_app
from ops.localtime import format_local
from ops.logs import mask_pan
from ops.money import format_money
from pos import state as state_mod
from pos import terminal
from pos.chip import CONTACT, CONTACTLESS, ChipCard
from pos.client import Connection, Session, TerminalError
from pos.messages import Card
from pos.sealed import SealError, read_sealed, write_sealed
from pos.state import StateError
from specs.codec import codec_for

POS_DIR = Path("var/pos")
DEMO_CARDS = POS_DIR / "demo-cards.json"
LOAD_POOL = POS_DIR / "load-pool.json"

MERCHANT_ID = "898330160120001"
MERCHANT_NAME = "Campus Canteen"
STORE_CODE = "S001"
TERMINALS = (
    # terminal id, key scheme, TMK (public demo key; the 3des one is the contract's worked example)
    ("T0000001", "3des", "0123456789ABCDEFFEDCBA9876543210"),
    ("T0000002", "sm4", "00112233445566778899AABBCCDDEEFF"),
)
DEMO_PRODUCT = "CAMPUS"
LOAD_PRODUCT = "LOADTEST"
DEMO_BIN = "621234"
LOAD_BIN = "621299"
CARD_NAMES = ("alice", "bob", "carol")
DEMO_PIN = "123456"
# Chip cards (issue 19): CAMPUS's cards carry a 3DES chip (a swipe or keyed sale of one is approved and
# flagged, so the keyed demo cards keep working), CAMPUSSM4's an SM4 chip (a swipe of one is declined);
# dave's card is on CAMPUSSM4. Each IMK-AC is formed in the HSM from two published components (XORed,
# `product chip-key`; public test data, never for real cards); the simulator personalises the demo
# cards' chips from the same IMK (their MK-AC in demo-cards.json, EMV option A with PSN 01).
SM4_PRODUCT = "CAMPUSSM4"
SM4_BIN = "621235"
SM4_CARD_NAME = "dave"
CHIP_PSN = "01"
DEMO_CHIPS: dict[str, tuple[Algorithm, str, tuple[str, str]]] = {
    # product: chip, chip fallback, IMK-AC components (the 3DES IMK has odd parity, as the HSM needs)
    DEMO_PRODUCT: ("3des", "flag", ("85404A3B6252F15238988F456E1F137C", "0F1E2D3C4B5A69788796A5B4C3D2E1F0")),
    SM4_PRODUCT: ("sm4", "decline", ("B1F3315CA33CC17373FBA8E29A15710E", "0F1E2D3C4B5A69788796A5B4C3D2E1F0")),
}
LOAD_TERMINALS = 32
LOAD_CARDS = 500
LOAD_BALANCE = "100000.00"  # yuan per load card
LINK_NAME = "host"
DEMO_ZPK = "89ABCDEF01234567FEDCBA9876543210"  # clear demo link PIN key (public test data)
DEMO_ZAK = "3D5B97F10E68A4C2E0D3B5868679B5D3"  # clear demo link MAC key, odd parity (public test data)
API_LINK_NAME = "api"  # the HTTP API's acquirer link into the switch (api.institution_id)
DEMO_API_ZPK = "4A7C1F2F3D5B6879A1B3C2D5E5F70719"  # clear demo keys of that link (public test data)
DEMO_API_ZAK = "2C4A6B8C0E1F3254769889ABCDEF0123"  # odd parity


class DemoError(Exception):
    """A seed or tour step failed; str() names the step."""


@dataclass
class Admin:
    """Runs `payswitch ...` admin commands of the other components as subprocesses."""

    config_path: str | None

    def available(self, name: str) -> bool:
        return name in COMMANDS

    def run(self, *args: str, ok_if: tuple[str, ...] = (), stdin: str | None = None) -> Any:
        argv = [sys.executable, "-m", "ops"]
        if self.config_path:
            argv += ["--config", self.config_path]
        argv += ["--json", *args]
        proc = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=1800, input=stdin)
        if proc.returncode != 0:
            err = (proc.stderr.strip() or proc.stdout.strip()).splitlines()
            line = err[-1] if err else f"exit status {proc.returncode}"
            if any(marker in line.lower() for marker in ok_if):
                return None
            raise DemoError(f"`payswitch {' '.join(_shown(args))}`: {line}")
        try:
            return json.loads(proc.stdout) if proc.stdout.strip() else None
        except ValueError:
            return proc.stdout

    def run_many(self, commands: list[tuple[str, ...]], ok_if: tuple[str, ...] = ()) -> list[Any]:
        """Several admin commands in ONE process (``payswitch`` run in-process once per command, its
        audit rows included): a process start costs about a second, the command itself milliseconds.
        Their outputs in order (None for a failure matching ``ok_if``); the first other failure raises."""
        if not commands:
            return []
        argv = [sys.executable, "-c", "import sys, pos.demo; sys.exit(pos.demo.run_commands())"]
        if self.config_path:
            argv += ["--config", self.config_path]
        proc = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            check=False,
            timeout=1800,
            input=json.dumps([list(c) for c in commands]),
        )
        try:
            results = json.loads(proc.stdout)
        except ValueError:
            err = (proc.stderr.strip() or proc.stdout.strip()).splitlines()
            why = err[-1] if err else f"exit status {proc.returncode}"
            raise DemoError(f"admin commands: {why}") from None
        out: list[Any] = []
        for args, (ok, text) in zip(commands, results, strict=True):
            if not ok:
                if any(marker in text.lower() for marker in ok_if):
                    out.append(None)
                    continue
                raise DemoError(f"`payswitch {' '.join(_shown(args))}`: {text}")
            try:
                out.append(json.loads(text) if text.strip() else None)
            except ValueError:
                out.append(text)
        return out

    def known_card(self, pan: str) -> bool:
        """Whether the host knows this card (`card show` succeeds)."""
        try:
            return self.run("card", "show", pan) is not None
        except DemoError:
            return False


def run_commands() -> int:
    """``Admin.run_many``'s other end, in its own process: argv lists (JSON on stdin) run one after the
    other through ``ops.cli``'s command group, as ``payswitch --json ...`` would; prints a JSON list of
    [ok, output or the error's last line]. Stops at the first unexpected failure."""
    import io

    from ops.cli import _ONE_LINE_ERRORS, cli

    args = sys.argv[1:]
    prefix = ["--config", args[1]] if args[:1] == ["--config"] and len(args) > 1 else []
    results: list[tuple[bool, str]] = []
    for command in json.loads(sys.stdin.read()):
        out, err = io.StringIO(), io.StringIO()
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                status = cli.main([*prefix, "--json", *command], standalone_mode=False, prog_name="payswitch")
        except click.ClickException as exc:
            results.append((False, (exc.format_message().strip().splitlines() or ["failed"])[-1]))
            continue
        except _ONE_LINE_ERRORS as exc:  # what `payswitch` prints as one line, not a traceback
            text = str(exc)
            results.append((False, (text.strip().splitlines() or ["failed"])[-1]))
            continue
        if isinstance(status, int) and status:
            lines = (err.getvalue().strip() or out.getvalue().strip()).splitlines()
            results.append((False, lines[-1] if lines else f"exit status {status}"))
            continue
        results.append((True, out.getvalue()))
    print(json.dumps(results))
    return 0


def _shown(args: tuple[str, ...]) -> list[str]:
    """Arguments as they may be printed: values after key-bearing options hidden."""
    out, hide = [], False
    for a in args:
        out.append("***" if hide else a)
        hide = a in ("--tmk", "--pin", "--component", "--id-number", "--phone", "--email")
    return out


def load_tmk(terminal_id: str) -> str:
    """The demo TMK of a load-test terminal: derived from its id (public test data), odd parity per
    byte as DES keys need (the HSM refuses a 3DES key with bad parity; SM4 ignores it)."""
    raw = hashlib.sha256(f"payswitch demo load terminal {terminal_id}".encode()).digest()[:16]
    return set_odd_parity(raw).hex().upper()


def _read_or_none(path: Path) -> Any:
    """A sealed demo file's data, or None when it is absent or cannot be opened (the seed then writes
    it again: demo data, issued afresh)."""
    try:
        return read_sealed(path)
    except (OSError, SealError):
        return None


def _write_if_changed(path: Path, data: Any) -> None:
    """Seal ``data`` into ``path`` unless it already holds it: a seed run that changes nothing leaves
    the file as it was (a fresh nonce would rewrite every byte)."""
    if _read_or_none(path) != data:
        write_sealed(path, data)


def read_demo_cards() -> list[dict[str, Any]] | None:
    """The demo cards (name, pan, expiry, pin) of ``demo seed``, or None when there are none;
    SealError when the file is there but does not open (the caller says what to run)."""
    try:
        data = read_sealed(DEMO_CARDS)
    except FileNotFoundError:
        return None
    cards = data.get("cards") if isinstance(data, dict) else None
    if not isinstance(cards, list) or not all(isinstance(c, dict) for c in cards):
        return None
    return cards


@click.group()
def demo() -> None:
    """The demo programme: `demo seed` once (payswitch run does it), then `demo tour`."""


@demo.command()
@click.option(
    "--load-terminals",
    type=click.IntRange(0, 2000),
    default=LOAD_TERMINALS,
    show_default=True,
    help="Terminals registered for `payswitch load`.",
)
@click.option(
    "--load-cards",
    type=click.IntRange(1, 100_000),
    default=LOAD_CARDS,
    show_default=True,
    help="Cards issued and loaded for `payswitch load`.",
)
@click.option("--show-cards", is_flag=True, help="Print the demo cards' PANs and PINs (masked otherwise).")
@click.option(
    "--link-mac/--no-link-mac",
    default=True,
    show_default=True,
    help="DE128 on the switch-host link; --no-link-mac declares it --no-mac (loopback only: for "
    "measuring what the MAC costs, bench/e2e --no-link-mac).",
)
@pass_app
def seed(app: AppContext, load_terminals: int, load_cards: int, show_cards: bool, link_mac: bool) -> None:
    """Create the demo programme (idempotent): products, cards, merchant, store, terminals, route."""
    try:
        summary = seed_programme(app, load_terminals, load_cards, link_mac=link_mac)
    except (DemoError, SealError) as exc:
        raise click.ClickException(str(exc)) from None
    if not show_cards:
        summary["cards"] = [_masked_card(c) for c in summary["cards"]]
    app.emit(summary, render_seed(summary))


def _masked_card(card: dict[str, Any]) -> dict[str, Any]:
    """What the seed prints by default: the name and a masked PAN (the PIN only on request)."""
    return {"name": card["name"], "pan": mask_pan(str(card["pan"])), "expiry": card["expiry"]}


@demo.command()
@pass_app
def cards(app: AppContext) -> None:
    """The demo cards with their PANs and demo PINs (public test data), from the sealed card file."""
    try:
        known = read_demo_cards()
    except SealError as exc:
        raise click.ClickException(f"{exc}; `payswitch demo seed` writes them again") from None
    if known is None:
        raise click.ClickException("no demo cards: run `payswitch demo seed` (or `payswitch run`) first")
    shown = [{k: c.get(k, "") for k in ("name", "pan", "expiry", "pin")} for c in known]
    app.emit(
        {"cards": shown},
        "\n".join(f"{c['name']:<6} {c['pan']}  expiry {c['expiry']}  PIN {c['pin']}" for c in shown),
    )


def seed_programme(
    app: AppContext, load_terminals: int, load_cards: int, *, link_mac: bool = True
) -> dict[str, Any]:
    missing = [
        c
        for c in ("hsm", "host", "switch", "product", "card", "merchant", "store", "terminal")
        if c not in COMMANDS
    ]
    if missing:
        raise DemoError(f"this build lacks {', '.join(missing)}: nothing seeded")
    admin = Admin(app.config_path)
    if not app.json_output:
        click.echo(
            "seeding the demo programme (the first time takes a minute: terminals and cards are "
            "registered through the host's admin commands)",
            err=True,
        )
    with _hsm_running(app, admin):
        return _seed(app, admin, load_terminals, load_cards, link_mac)


@contextlib.contextmanager
def _hsm_running(app: AppContext, admin: Admin) -> Iterator[None]:
    """Card issue and terminal add need the HSM service: start one for the seed if none listens
    (``payswitch run`` seeds before it starts the services)."""
    hsm = app.config.hsm
    if processes.answers(hsm.host, hsm.port):
        yield
        return
    argv = [
        sys.executable,
        "-m",
        "ops",
        *(["--config", admin.config_path] if admin.config_path else []),
        "hsm",
        "serve",
        "--metrics-port",
        "0",
    ]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        try:
            processes.wait_listening(hsm.port, proc, what="the HSM", host=hsm.host, timeout=30)
        except processes.NotListening:
            processes.stop(proc)  # its stderr is read to the end below
            err = (proc.stderr.read().decode(errors="replace") if proc.stderr else "").strip().splitlines()
            why = err[-1] if err else "no output"
            raise DemoError(f"could not start the HSM for the seed: {why}") from None
        yield
    finally:
        processes.stop(proc, timeout=15)


def demo_imk_ac(product: str) -> bytes:
    """The clear IMK-AC of a demo chip product: the XOR of its published components."""
    first, second = DEMO_CHIPS[product][2]
    return bytes(a ^ b for a, b in zip(bytes.fromhex(first), bytes.fromhex(second), strict=True))


def personalise(card: dict[str, Any], product: str) -> dict[str, Any]:
    """A demo card's entry with its chip: algorithm, PSN and the MK-AC derived from the IMK-AC."""
    algorithm = DEMO_CHIPS[product][0]
    chip = ChipCard.personalise(
        algorithm, demo_imk_ac(product), str(card["pan"]), str(card["expiry"]), CHIP_PSN
    )
    return {**card, "chip": algorithm, "psn": CHIP_PSN, "mk_ac": chip.mk_ac.hex().upper()}


def _chip_products(admin: Admin, exists: tuple[str, ...]) -> None:
    """The SM4 chip product, and both demo products' chips with their published IMK-AC (every seed:
    `product chip-key` replaces a key generated earlier by `product update --chip`)."""
    admin.run(
        "product",
        "add",
        SM4_PRODUCT,
        "--kind",
        "reloadable",
        "--bin",
        SM4_BIN,
        "--name",
        "Campus card (SM4 chip)",
        "--max-balance",
        "5000.00",
        ok_if=exists,
    )
    for code, (algorithm, fallback, components) in DEMO_CHIPS.items():
        admin.run("product", "update", code, "--chip", algorithm, "--chip-fallback", fallback)
        admin.run("product", "chip-key", code, *(a for c in components for a in ("--component", c)))


def _sm4_card(admin: Admin) -> dict[str, Any]:
    """dave's card on the SM4 chip product: the one of an earlier seed while the host knows it."""
    try:
        known = read_demo_cards() or []
    except SealError:
        known = []
    for c in known:
        if c.get("name") == SM4_CARD_NAME and admin.known_card(str(c["pan"])):
            return {k: c[k] for k in ("name", "pan", "expiry", "pin")}
    issued = admin.run(
        "card", "issue", "--product", SM4_PRODUCT, "--count", "1", "--pin", DEMO_PIN, "--activate"
    )
    card = _card_list(issued)[0]
    admin.run(
        "card", "load", card["card_id"], "--amount", "500.00", "--reference", f"demo-seed-{SM4_CARD_NAME}"
    )
    _label_card(admin, str(card["card_id"]), SM4_CARD_NAME)
    return {"name": SM4_CARD_NAME, "pan": card["pan"], "expiry": card["expiry"], "pin": DEMO_PIN}


def _seed(
    app: AppContext, admin: Admin, load_terminals: int, load_cards: int, link_mac: bool
) -> dict[str, Any]:
    exists = ("already exists",)
    sw = app.config.switch
    admin.run(
        "product",
        "add",
        DEMO_PRODUCT,
        "--kind",
        "reloadable",
        "--bin",
        DEMO_BIN,
        "--name",
        "Campus card",
        "--max-balance",
        "5000.00",
        ok_if=exists,
    )
    # Load-test cards: fixed-amount cards are active with their face value at once (no load per card),
    # with limits high enough for a benchmark.
    admin.run(
        "product",
        "add",
        LOAD_PRODUCT,
        "--kind",
        "fixed_amount",
        "--bin",
        LOAD_BIN,
        "--name",
        "Load-test card",
        "--face-value",
        LOAD_BALANCE,
        "--max-balance",
        LOAD_BALANCE,
        "--max-balance-anonymous",  # anonymous cards, above the PBOC 1,000 yuan: a benchmark's own product
        LOAD_BALANCE,
        "--per-txn-limit",
        LOAD_BALANCE,
        "--daily-amount-limit",
        LOAD_BALANCE,
        "--daily-count-limit",
        "100000000",
        ok_if=exists,
    )
    _chip_products(admin, exists)
    admin.run("merchant", "add", MERCHANT_ID, "--name", MERCHANT_NAME, "--mcc", "5814", ok_if=exists)
    admin.run("store", "add", MERCHANT_ID, STORE_CODE, "--name", "North campus", ok_if=exists)
    _link(app, admin, mac=link_mac)
    _api_link(app, admin)
    for tid, scheme, tmk in TERMINALS:
        admin.run(
            "terminal",
            "add",
            tid,
            "--merchant",
            MERCHANT_ID,
            "--store",
            STORE_CODE,
            "--scheme",
            scheme,
            "--tmk",
            tmk,
            ok_if=exists,
        )
        path = state_mod.default_path(tid)
        port = sw.pos_3des_port if scheme == "3des" else sw.pos_sm4_port
        try:
            state_mod.load(path)
        except StateError:  # none yet, or one that cannot be opened (another seal key): a fresh one
            state_mod.save(state_mod.new_state(tid, MERCHANT_ID, scheme, tmk, "127.0.0.1", port), path)
    default = POS_DIR / "default-terminal"
    if not default.exists():
        default.write_text(TERMINALS[0][0] + "\n")
    pool_terms = _load_terminals(app, admin, load_terminals, exists)
    cards = [personalise(c, DEMO_PRODUCT) for c in _demo_cards(admin)]
    cards.append(personalise(_sm4_card(admin), SM4_PRODUCT))
    load_pool_cards = _load_cards(admin, load_cards)
    _write_if_changed(DEMO_CARDS, {"cards": cards})
    _write_if_changed(LOAD_POOL, {"terminals": pool_terms, "cards": load_pool_cards})
    return {
        "merchant": MERCHANT_ID,
        "terminals": [
            {"terminal_id": t, "scheme": s, "state_file": str(state_mod.default_path(t))}
            for t, s, _ in TERMINALS
        ],
        "cards": [
            {"name": c["name"], "pan": c["pan"], "expiry": c["expiry"], "pin": c["pin"]} for c in cards
        ],
        "load_pool": {"file": str(LOAD_POOL), "terminals": len(pool_terms), "cards": len(load_pool_cards)},
    }


def _link(app: AppContext, admin: Admin, *, mac: bool = True) -> None:
    """The H2H link switch -> host with a demo ZPK and ZAK (DE128 on every request and answer: the host
    refuses a link without a MAC key unless it is declared --no-mac), and the routes of both demo BINs
    over it. A link seeded before it had a ZAK gets one (its `mac` column in `switch link list`).
    ``mac=False`` declares it without one instead (loopback only; for measuring what the MAC costs)."""
    links = admin.run("switch", "link", "list") or []
    if any(
        isinstance(link, dict) and link.get("name") == LINK_NAME and bool(link.get("mac")) == mac
        for link in _as_list(links, "links")
    ):
        return
    profile = app.config.host.profile  # the link's key scheme is the host listener's
    scheme = "S" if profile == "sm4" else "U"
    zpk = str(_form_key(admin, "001", DEMO_ZPK, scheme)["key_under_lmk"])
    zak = str(_form_key(admin, "008", DEMO_ZAK, scheme)["key_under_lmk"]) if mac else ""  # 008: ZAK
    admin.run(
        "host", "link", app.config.switch.institution_id, "--profile", profile, "--zpk", zpk,
        *(("--zak", zak) if mac else ("--no-mac",)),
    )
    host = app.config.host.listen if app.config.host.listen not in ("", "0.0.0.0") else "127.0.0.1"
    admin.run(
        "switch",
        "link",
        "add",
        LINK_NAME,
        "--host",
        host,
        "--port",
        str(app.config.host.port),
        "--scheme",
        profile,
        "--zpk",
        zpk,
        *(("--zak", zak) if mac else ()),
        "--connections",
        "2",
        "--replace",
        "--yes",  # the host link above was just given the same keys
    )
    for bin_ in (DEMO_BIN, LOAD_BIN, SM4_BIN):
        admin.run("switch", "route", "add", bin_, "--link", LINK_NAME, ok_if=("already", "overlap"))


def _api_link(app: AppContext, admin: Admin) -> None:
    """The HTTP API's own acquirer link into the switch (issue 17): an ``in`` link ``api`` for DE32
    ``api.institution_id`` with a demo ZPK and ZAK, and the same keys for the API (`api link set`), so
    `api serve` signs on at once. Kept when both sides have it already."""
    links = _as_list(admin.run("switch", "link", "list") or [], "links")
    have_switch = any(isinstance(x, dict) and x.get("name") == API_LINK_NAME for x in links)
    have_api = admin.run("api", "link", "show", ok_if=("no api link keys",)) is not None
    if have_switch and have_api:
        return
    profile = app.config.host.profile
    scheme = "S" if profile == "sm4" else "U"
    zpk = str(_form_key(admin, "001", DEMO_API_ZPK, scheme)["key_under_lmk"])
    zak = str(_form_key(admin, "008", DEMO_API_ZAK, scheme)["key_under_lmk"])
    admin.run(
        "switch", "link", "add", API_LINK_NAME, "--direction", "in", "--institution-id",
        app.config.api.institution_id, "--scheme", profile, "--zpk", zpk, "--zak", zak, "--replace", "--yes",
    )
    admin.run("api", "link", "set", "--scheme", profile, "--zpk", zpk, "--zak", zak)


def _form_key(admin: Admin, key_type: str, clear: str, scheme: str) -> dict[str, Any]:
    """A key under the LMK from a clear demo key: two components (the key XOR a mask, the mask)."""
    mask = "F0E1D2C3B4A5968778695A4B3C2D1E0F"
    c1 = f"{int(clear, 16) ^ int(mask, 16):032X}"
    answer = admin.run(
        "hsm",
        "form-key",
        "--type",
        key_type,
        "--components",
        "2",
        "--scheme",
        scheme,
        stdin=f"{c1}\n{c1}\n{mask}\n{mask}\n",
    )
    if not isinstance(answer, dict) or "key_under_lmk" not in answer:
        raise DemoError("`payswitch hsm form-key` did not return a key under the LMK")
    return answer


def _as_list(data: Any, key: str) -> list[Any]:
    if isinstance(data, dict):
        data = data.get(key, [])
    return data if isinstance(data, list) else []


def _load_terminals(
    app: AppContext, admin: Admin, count: int, exists: tuple[str, ...]
) -> list[dict[str, Any]]:
    sw = app.config.switch
    terms: list[dict[str, Any]] = []
    for i in range(count):
        tid = f"L{i + 1:07d}"
        scheme = "3des" if i % 2 == 0 else "sm4"
        terms.append(
            {
                "terminal_id": tid,
                "merchant_id": MERCHANT_ID,
                "scheme": scheme,
                "tmk": load_tmk(tid),
                "host": "127.0.0.1",
                "port": sw.pos_3des_port if scheme == "3des" else sw.pos_sm4_port,
            }
        )
    known: set[str] = set()
    try:
        known = {t["terminal_id"] for t in _read_or_none(LOAD_POOL)["terminals"]}
    except (KeyError, TypeError):
        known = set()
    if terms and terms[0]["terminal_id"] in known:
        # One add tells whether the pool's terminals are still registered (the database may be new).
        first = terms[0]
        added = admin.run(
            "terminal",
            "add",
            first["terminal_id"],
            "--merchant",
            MERCHANT_ID,
            "--store",
            STORE_CODE,
            "--scheme",
            first["scheme"],
            "--tmk",
            first["tmk"],
            ok_if=exists,
        )
        if added is not None:
            known = set()
        known.add(first["terminal_id"])
    todo = [t for t in terms if t["terminal_id"] not in known]

    # Every add in one process (Admin.run_many): a process start per terminal took about a second each.
    admin.run_many(
        [
            (
                "terminal",
                "add",
                t["terminal_id"],
                "--merchant",
                MERCHANT_ID,
                "--store",
                STORE_CODE,
                "--scheme",
                t["scheme"],
                "--tmk",
                t["tmk"],
            )
            for t in todo
        ],
        ok_if=exists,
    )
    return terms


def _demo_cards(admin: Admin) -> list[dict[str, Any]]:
    try:
        known = read_demo_cards()
    except SealError:
        known = None  # another seal key: issued afresh
    try:
        known = known and known[: len(CARD_NAMES)]  # dave's chip card follows them (_sm4_card)
        if known and [c["name"] for c in known] == list(CARD_NAMES) and admin.known_card(known[0]["pan"]):
            for c in known:  # a seed of before card labels: every card command takes the names from now on
                _label_card(admin, str(c["pan"]), str(c["name"]))
            _demo_owners(admin)
            return [{k: c[k] for k in ("name", "pan", "expiry", "pin")} for c in known]
    except KeyError:
        pass
    issued = admin.run(
        "card",
        "issue",
        "--product",
        DEMO_PRODUCT,
        "--count",
        str(len(CARD_NAMES)),
        "--pin",
        DEMO_PIN,
        "--activate",
    )
    cards = []
    for name, card in zip(CARD_NAMES, _card_list(issued), strict=False):
        admin.run("card", "load", card["card_id"], "--amount", "500.00", "--reference", f"demo-seed-{name}")
        _label_card(admin, str(card["card_id"]), name)
        cards.append({"name": name, "pan": card["pan"], "expiry": card["expiry"], "pin": DEMO_PIN})
    _demo_owners(admin)
    return cards


# Synthetic cardholders (issue 16) who own alice's and bob's cards, so the tour shows owned, named cards;
# carol's stays anonymous, like a gift card. Test data: no real person's ID, phone or e-mail.
DEMO_CARDHOLDERS = {
    "alice": ("Alice Demo", "110101199001010018", "13800000001", "alice@example.com"),
    "bob": ("Bob Demo", "110101199202020029", "13800000002", "bob@example.com"),
}


def _demo_owners(admin: Admin) -> None:
    """Give alice's and bob's cards their cardholders (named: an ID is given), once."""
    if not admin.available("cardholder"):
        return
    for card, (name, id_number, phone, email) in DEMO_CARDHOLDERS.items():
        if admin.run("card", "show", card).get("cardholder_id") is not None:
            continue
        added = admin.run(
            "cardholder",
            "add",
            "--name",
            name,
            "--id-type",
            "resident_id",
            "--id-number",
            id_number,
            "--phone",
            phone,
            "--email",
            email,
            ok_if=("already",),
        )
        if added is None:  # registered by an earlier seed whose card was issued again
            found = admin.run("cardholder", "list", "--id-number", id_number, "--state", "active")
            (added,) = found["cardholders"]
        admin.run("card", "assign", card, str(added["cardholder_id"]))


def _label_card(admin: Admin, card: str, name: str) -> None:
    """Label a demo card with its name (`card show alice`, like `pos ... alice`); a card of an earlier
    seed that still has the name gives it up first."""
    try:
        if admin.run("card", "label", card, name, ok_if=("is card",)) is None:
            admin.run("card", "label", name, "--clear")
            admin.run("card", "label", card, name)
    except DemoError as exc:  # the command line it names may hold the PAN
        raise DemoError(str(exc).replace(card, mask_pan(card))) from None


def _load_cards(admin: Admin, count: int) -> list[dict[str, Any]]:
    known: list[dict[str, Any]] = []
    try:
        known = list(_read_or_none(LOAD_POOL)["cards"])
    except (KeyError, TypeError):
        known = []
    if known and not admin.known_card(known[0]["pan"]):
        known = []  # the database was reset since the pool was written
    if len(known) >= count:
        return known[:count]
    issued = admin.run(
        "card",
        "issue",
        "--product",
        LOAD_PRODUCT,
        "--count",
        str(count - len(known)),
        "--pin",
        DEMO_PIN,
        "--activate",
    )
    return known + [{"pan": c["pan"], "expiry": c["expiry"], "pin": DEMO_PIN} for c in _card_list(issued)]


def _card_list(issued: Any) -> list[dict[str, str]]:
    items = _as_list(issued, "cards")
    if not items or not all(isinstance(c, dict) and "pan" in c for c in items):
        raise DemoError("`payswitch card issue --json` did not list the issued cards with their PANs")
    return [
        {"card_id": str(c.get("card_id", "")), "pan": str(c["pan"]), "expiry": str(c.get("expiry", ""))}
        for c in items
    ]


def render_seed(summary: dict[str, Any]) -> str:
    lines = [f"demo merchant {summary['merchant']} ({MERCHANT_NAME})"]
    for t in summary["terminals"]:
        lines.append(f"terminal {t['terminal_id']} ({t['scheme']}), state {t['state_file']}")
    shown = all("pin" in c for c in summary["cards"])
    lines.append("demo cards (public test data):" if shown else "demo cards (`demo cards` shows them):")
    for c in summary["cards"]:
        pin = f"  PIN {c['pin']}" if "pin" in c else ""
        lines.append(f"  {c['name']:<6} {c['pan']}  expiry {c['expiry']}{pin}")
    lp = summary["load_pool"]
    lines.append(f"load pool {lp['file']}: {lp['terminals']} terminals, {lp['cards']} cards")
    return "\n".join(lines)


# -- the tour ------------------------------------------------------------------------------------------
Step = tuple[str, Callable[[Session], Awaitable[terminal.Receipt]]]


@demo.command()
@click.option("--timeout", type=click.FloatRange(0.5, 120), default=15.0, show_default=True)
@click.option("--no-payout", is_flag=True, help="Stop after the receipts: do not close the day and settle.")
@pass_app
def tour(app: AppContext, timeout: float, no_payout: bool) -> None:
    """Every transaction against the running system, receipt by receipt, on both terminals; then the
    day's payout: close the business date, write its clearing file, settle it (`demo payout`)."""
    try:
        cards = read_demo_cards() or []
    except SealError as exc:
        raise click.ClickException(f"{exc}; `payswitch demo seed` writes them again") from None
    try:
        alice, bob = (Card.keyed(c["pan"], c["expiry"]) for c in cards[:2])
        pin = cards[0]["pin"]
    except (ValueError, KeyError, TypeError):
        raise click.ClickException(
            "no demo cards: run `payswitch demo seed` (or `payswitch run`) first"
        ) from None
    results: list[dict[str, Any]] = []
    for tid, _scheme, _tmk in TERMINALS:
        try:
            state = state_mod.load(state_mod.default_path(tid))
        except StateError as exc:
            raise click.ClickException(str(exc)) from None
        steps = _steps(alice, bob, pin) if tid == TERMINALS[0][0] else _short_steps(alice, pin)
        steps = steps[:-1] + _chip_steps(tid, cards, pin) + steps[-1:]  # chip reads before settlement

        async def main(state: state_mod.TerminalState = state, steps: list[Step] = steps) -> None:
            conn = await Connection.open(state.host, state.port, timeout=timeout)
            try:
                session = Session(state, codec_for("pos", state.scheme), conn, timeout=timeout)
                for title, step in steps:
                    receipt = (await step(session)).in_zone(app.config.clearing.timezone)
                    results.append({"step": title, **receipt.as_dict()})
                    if not app.json_output:
                        click.echo(f"\n== {title}\n{receipt.render()}")
            finally:
                await conn.aclose()

        if not app.json_output:
            click.echo(f"\n##### terminal {tid} ({state.scheme}, switch {state.host}:{state.port})")
        try:
            trio.run(main)
        except TerminalError as exc:
            raise click.ClickException(f"terminal {tid}: {exc}") from None
        finally:
            state_mod.save(state)
    if no_payout:
        if app.json_output:
            click.echo(json.dumps(results, indent=2))
        return
    paid = _payout(app)
    if app.json_output:
        click.echo(json.dumps({"receipts": results, "payout": paid}, indent=2))
    else:
        click.echo(f"\n##### the day's payout\n{render_payout(paid, app.config.clearing.timezone)}")


@demo.command()
@pass_app
def payout(app: AppContext) -> None:
    """Close the current business date, write its clearing file and settle it: where the demo merchant's
    report and the payout file are, and what it was paid (the end of `demo tour`; needs only the
    database)."""
    paid = _payout(app)
    app.emit(paid, render_payout(paid, app.config.clearing.timezone))


def _payout(app: AppContext) -> dict[str, Any]:
    """close-day -> clearing emit -> settle -> settlement run show, through the admin commands."""
    admin = Admin(app.config_path)
    try:
        closed = admin.run("clearing", "close-day")
        day = closed["business_date"]
        emitted = admin.run("clearing", "emit", "--date", day)
        if not emitted.get("path"):
            raise DemoError(f"`payswitch clearing emit --date {day}`: {emitted.get('reason')}")
        settled = admin.run("settle", emitted["path"])
        run_id = (settled.get("run") or {}).get("run_id")
        shown = admin.run("settlement", "run", "show", str(run_id)) if run_id is not None else None
    except (DemoError, KeyError, TypeError, AttributeError) as exc:
        raise click.ClickException(f"demo payout: {exc}") from None
    mine = [p for p in (shown or {}).get("payouts", []) if p["merchant_id"] == MERCHANT_ID]
    return {"business_date": day, "closed_at": closed["closed_at"], "closed_by": closed["closed_by"],
            "clearing_file": emitted["path"], "details": emitted["details"], "run_id": run_id,
            "payout_file": shown["payout_file"] if shown else None,
            "merchant_id": MERCHANT_ID, "merchant_report": mine[0]["report"] if mine else None,
            "net_minor": mine[0]["net_minor"] if mine else 0,
            "gross_minor": mine[0]["gross_minor"] if mine else 0,
            "fee_minor": mine[0]["fee_minor"] if mine else 0, "currency": "CNY",
            "carried": [c for c in (settled.get("run") or {}).get("carried", [])
                        if c["merchant_id"] == MERCHANT_ID]}


def render_payout(paid: dict[str, Any], timezone: str) -> str:
    shown = format_local(datetime.fromisoformat(paid["closed_at"]), timezone)
    lines = [f"business date {paid['business_date']} closed at {shown} by {paid['closed_by']}",
             f"clearing file: {paid['clearing_file']} ({paid['details']} details)"]
    if paid["merchant_report"]:
        lines += [
            f"settlement run {paid['run_id']}: {MERCHANT_NAME} ({paid['merchant_id']}) is paid "
            f"{format_money(paid['net_minor'])} (gross {format_money(paid['gross_minor'])}, fee "
            f"{format_money(paid['fee_minor'])})",
            f"merchant report: {paid['merchant_report']}",
            f"payout file: {paid['payout_file']}",
        ]
    else:
        why = "; ".join(c["reason"] for c in paid["carried"]) or "nothing due"
        lines.append(f"{MERCHANT_NAME} ({paid['merchant_id']}) is not paid this time: {why}")
    return "\n".join(lines)


def _steps(alice: Card, bob: Card, pin: str) -> list[Step]:
    last: dict[str, Any] = {}  # journal entries of earlier steps, for void/refund/completion

    def fin(
        kind: str,
        card: Card,
        amount: int | None,
        with_pin: bool = True,
        key: str | None = None,
        orig: str | None = None,
        pin_: str | None = None,
    ) -> Callable[[Session], Awaitable[terminal.Receipt]]:
        async def run(session: Session) -> terminal.Receipt:
            original = last.get(orig) if orig else None
            r = await terminal.financial(
                session, kind, card, amount, (pin_ or pin) if with_pin else None, original=original
            )
            if key and r.approved:
                last[key] = session.state.journal[-1]
            return r

        return run

    return [
        ("sign-on: working keys under the TMK, batch number", terminal.signon),
        ("echo test", terminal.echo),
        ("balance inquiry (alice)", fin("balance", alice, None)),
        ("purchase 25.00 CNY (alice, PIN)", fin("purchase", alice, 2500, key="p1")),
        ("purchase 8.80 CNY (alice)", fin("purchase", alice, 880, key="p2")),
        ("void of the 8.80 CNY purchase", fin("void", alice, 880, with_pin=False, orig="p2")),
        (
            "partial refund 5.00 CNY of the 25.00 CNY purchase",
            fin("refund", alice, 500, with_pin=False, orig="p1"),
        ),
        ("top-up 50.00 CNY (bob)", fin("topup", bob, 5000, with_pin=False)),
        ("pre-authorization 60.00 CNY (bob)", fin("preauth", bob, 6000, key="h1")),
        (
            "completion 45.50 CNY of the pre-auth (the rest is released)",
            fin("completion", bob, 4550, with_pin=False, orig="h1"),
        ),
        ("pre-authorization 20.00 CNY (bob)", fin("preauth", bob, 2000, key="h2")),
        ("pre-auth void", fin("preauth_void", bob, 2000, with_pin=False, orig="h2")),
        ("purchase with a wrong PIN (declined 55)", fin("purchase", alice, 100, pin_="999999")),
        ("purchase 3.00 CNY (bob) ...", fin("purchase", bob, 300)),
        ("... reversed by the terminal (receipt not printed)", terminal.reverse_last),
        ("balance inquiry (alice) after all that", fin("balance", alice, None)),
        ("settlement: 0500 totals (0320 upload if they differ)", terminal.settle),
    ]


def _chip_steps(tid: str, cards: list[dict[str, Any]], pin: str) -> list[Step]:
    """Chip reads (issue 19): alice's 3DES chip and its clone on T0000001, dave's SM4 chip tapped and
    inserted on T0000002; none when the demo cards have no chips yet (a seed of before)."""
    chips = {str(c.get("name")): ChipCard.from_entry(c) for c in cards}
    alice, dave = chips.get(CARD_NAMES[0]), chips.get(SM4_CARD_NAME)

    def read(
        chip: ChipCard, mode: str, amount: int, with_pin: bool
    ) -> Callable[[Session], Awaitable[terminal.Receipt]]:
        card = Card(chip.pan, track2=chip.track2, mode=mode, psn=chip.psn)

        async def run(session: Session) -> terminal.Receipt:
            return await terminal.financial(
                session, "purchase", card, amount, pin if with_pin else None, chip=chip
            )

        return run

    if tid == TERMINALS[0][0] and alice is not None:
        return [
            ("chip purchase 6.60 CNY (alice's 3DES chip: ARQC, ARPC)", read(alice, CONTACT, 660, True)),
            (
                "a clone of alice's card (track copied, not the chip's key): declined",
                read(alice.cloned(), CONTACT, 660, True),
            ),
        ]
    if tid == TERMINALS[1][0] and dave is not None:
        return [
            ("contactless 15.00 CNY (dave's SM4 chip: no PIN)", read(dave, CONTACTLESS, 1500, False)),
            ("contactless 320.00 CNY (above the no-CVM limit: PIN)", read(dave, CONTACTLESS, 32000, True)),
        ]
    return []


def _short_steps(alice: Card, pin: str) -> list[Step]:
    async def purchase(session: Session) -> terminal.Receipt:
        return await terminal.financial(session, "purchase", alice, 1200, pin)

    async def balance(session: Session) -> terminal.Receipt:
        return await terminal.financial(session, "balance", alice, None, pin)

    return [
        ("sign-on (SM4 keys)", terminal.signon),
        ("purchase 12.00 CNY (alice, SM4 PIN block and MAC)", purchase),
        ("balance inquiry (alice)", balance),
        ("settlement", terminal.settle),
    ]
