"""Secrets scan: after an end-to-end run, nothing the system wrote holds a clear PAN, PIN, key or track.

One ``pos.system.System`` is seeded with the demo and driven as an operator would: ``demo seed``
again, ``demo tour`` (sign-on, purchases with PIN, void, refund, top-up, pre-auth and completion, a
wrong PIN, a reversal, terminal settlement on both terminals), single transactions with ``--trace``
(a PIN purchase, a swiped purchase with track 2, a top-up, a reversal, a balance inquiry), a short
``load`` run, the day's clearing file and a settlement run; then the card lifecycle of issue 16: the
demo's cardholders (registered by ``demo seed`` with a synthetic ID number, phone and e-mail), a bank
account registered for alice's cardholder and an unload paid into it by a second ``demo payout``, a PIN
reset with its mailer, and a one-time payment code paid at a terminal. Then it reads:

- the database: ``pg_dump`` of the System's database (binaries found as ``ops.pgembed`` finds them),
  the event outbox (``events``: the webhooks' payloads, issue 17) included;
- every file under the scratch folder (service logs, PostgreSQL's server log, ``var/``: terminal
  state, pool, demo cards, clearing files, settlement reports, PIN mailers, the HSM's files), except
  the PostgreSQL data files (their rows are what the dump shows);
- everything the commands printed (stdout and stderr).

It fails on any known clear secret: the PANs of the demo and load cards (and any Luhn-valid 13-19
digit number on the programme's BINs), the demo PINs where a PIN is named, the clear format-0 PIN
blocks of those cards, the demo's clear keys (``DEMO_ZPK``, the demo and load terminals' TMKs, the
working keys the terminals hold), track 2 data (``PAN=YYMM``), the cardholders' ID numbers, phone
numbers, e-mail addresses and the bank account number, and the payment code. Masked forms (PAN first 6
and last 4, phone 138****0001, ...) are fine. The payment code is a bearer credential shown once, by
``card code`` to the cardholder's screen, and scanned by ``pos purchase --code``: what those two
commands print is not scanned for it; everything else is. The secrets themselves come from the sealed
files (``pos.sealed``, the System's own seal key):
the terminal's secure element holds them, which is the one place they may be.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from hsm_sim import pin as pin_blocks
from hsm_sim.client import account_from_pan
from ops.pgembed import find_bindir
from pos.demo import DEMO_BIN, DEMO_CARDHOLDERS, DEMO_PIN, DEMO_ZPK, LOAD_BIN, TERMINALS, load_tmk
from pos.sealed import read_sealed
from pos.system import System

WRONG_PIN = "999999"  # the tour's wrong PIN (pos/demo.py, _steps)
BINS = (DEMO_BIN, LOAD_BIN)
SEED = ("--load-terminals", "2", "--load-cards", "3")
BANK_ACCOUNT = "6222020200112233445"  # synthetic: alice's cardholder's bank account


@dataclass
class Secret:
    kind: str  # pan | pin | pin block | key | track
    name: str  # what it is, shown in a finding (never the value itself)
    pattern: re.Pattern[bytes]


@dataclass
class EndToEnd:
    system: System
    outputs: list[tuple[str, bytes]] = field(default_factory=list)  # (command, what it printed)
    codes: dict[str, int] = field(default_factory=dict)  # command -> exit status
    cards: list[dict[str, str]] = field(default_factory=list)  # pan, expiry, pin
    keys: dict[str, str] = field(default_factory=dict)  # name -> clear hex
    personal: dict[str, str] = field(default_factory=dict)  # what it is -> the clear value
    codes_shown: set[str] = field(default_factory=set)  # commands that print the payment code on purpose


@pytest.fixture(scope="module")
def e2e() -> Iterator[EndToEnd]:
    system = System(settings={"log.level": "info"})  # info: every line a service may write
    try:
        system.start(seed=SEED)
        run = EndToEnd(system)
        _drive(run)
        _collect_secrets(run)
        yield run
    finally:
        system.stop()


def _drive(run: EndToEnd) -> None:
    system = run.system

    def cli(*args: str, check: bool = True) -> str:
        result = system.cli(*args, check=check, timeout=300)
        # the command as a finding names it: the values of --track2, --pin, --account, --code left out
        hidden = ("--track2", "--pin", "--account", "--code")
        name = " ".join("..." if i and args[i - 1] in hidden else a for i, a in enumerate(args))
        run.outputs.append((name, (result.stdout + result.stderr).encode()))
        run.codes[name] = result.returncode
        return result.stdout

    def pos(*args: str) -> None:
        cli("pos", *args, check=False)  # a decline exits 3: checked in test_the_run_did_what_it_should

    cli("demo", "seed", *SEED)  # again: its stdout names the cards
    cli("demo", "tour")
    demo = read_sealed(system.root / "var/pos/demo-cards.json", system.seal_key)["cards"]
    alice = demo[0]
    t1, t2 = TERMINALS[0][0], TERMINALS[1][0]
    pos("purchase", "1.00", "--card", "alice", "--pin", DEMO_PIN, "--trace", "-t", t1)
    track2 = f"{alice['pan']}={alice['expiry']}1010000000000"
    pos("purchase", "2.00", "--track2", track2, "--pin", DEMO_PIN, "--trace", "-t", t1)
    pos("topup", "5.00", "--card", "bob", "--trace", "-t", t1)
    pos("reverse", "--trace", "-t", t1)
    pos("balance", "--card", "alice", "--pin", DEMO_PIN, "--trace", "-t", t2)
    pos("purchase", "3.00", "--card", "alice", "--pin", WRONG_PIN, "--trace", "-t", t2)
    cli("load", "--duration", "2", "--quiet", "--no-ledger-check", "--mix", "purchase=80,balance=20")
    # issue 16: a bank account for alice's cardholder, an unload paid into it, a PIN reset, a payment code
    holder = str(json.loads(cli("--json", "card", "show", "alice"))["cardholder_id"])
    cli("cardholder", "bank-account", "set", holder, "--bank", "Demo Bank", "--account", BANK_ACCOUNT)
    cli("card", "unload", "alice", "--amount", "1.00", "--reference", "scan-unload-1")
    cli("card", "pin", "reset", "carol", "--mailer-dir", str(system.root / "var/mailers"))
    shown = "--json card code alice"
    code = json.loads(cli(*shown.split()))["code"]
    run.personal["payment code"] = code
    run.codes_shown |= {shown, f"pos purchase 1.50 --code ... -t {t1}"}
    pos("purchase", "1.50", "--code", code, "-t", t1)
    cli("demo", "payout")  # settles the unload too: a cardholder payout line in the payout file
    # Today's business date is still open (cut-over 23:00), so its clearing file cannot be emitted
    # here; the host wrote the files of the closed dates at start, and those are settled.
    files = sorted(str(p) for p in (system.root / "var/clearing").glob("CLR_*"))
    if files:
        cli("settle", *files, "--as-of", dt.date.today().isoformat(), check=False)
    cli("ledger", "check")


def _collect_secrets(run: EndToEnd) -> None:
    root, key = run.system.root / "var/pos", run.system.seal_key
    demo = read_sealed(root / "demo-cards.json", key)["cards"]
    pool = read_sealed(root / "load-pool.json", key)
    run.cards = [{"pan": c["pan"], "expiry": c["expiry"], "pin": c["pin"]} for c in demo + pool["cards"]]
    run.keys["DEMO_ZPK"] = DEMO_ZPK
    for who, (_name, id_number, phone, email) in DEMO_CARDHOLDERS.items():
        run.personal[f"ID number of {who}'s cardholder"] = id_number
        run.personal[f"phone of {who}'s cardholder"] = phone
        run.personal[f"e-mail of {who}'s cardholder"] = email
    run.personal["bank account of alice's cardholder"] = BANK_ACCOUNT
    for tid, _scheme, tmk in TERMINALS:
        run.keys[f"TMK of {tid}"] = tmk
    for t in pool["terminals"]:
        run.keys[f"TMK of {t['terminal_id']}"] = t["tmk"]
        assert t["tmk"] == load_tmk(t["terminal_id"])
    for tid, _scheme, _tmk in TERMINALS:
        state = read_sealed(root / f"{tid}.json", key)
        for name in ("pik", "mak", "tdk"):
            if state.get(name):
                run.keys[f"{name.upper()} of {tid}"] = state[name]


def _secrets(run: EndToEnd) -> list[Secret]:
    out: list[Secret] = []
    pins = sorted({c["pin"] for c in run.cards} | {WRONG_PIN})
    for c in run.cards:
        pan = c["pan"].encode()
        shown = f"PAN {c['pan'][:6]}...{c['pan'][-4:]}"
        out.append(Secret("pan", shown, re.compile(rb"(?<!\d)" + pan + rb"(?!\d)")))
        out.append(Secret("track", f"track 2 of {shown}", re.compile(re.escape(pan) + rb"[=Dd]\d{4}")))
        block = pin_blocks.encode(c["pin"], account_from_pan(c["pan"])).hex().encode()
        out.append(Secret("pin block", f"clear PIN block of {shown}", re.compile(block, re.IGNORECASE)))
    for pin in pins:
        # a PIN is six digits: only where a PIN is named (pin=, "pin": , PIN ...) is it one
        named = rb"(?i)pin[a-z_]*[\"']?\s*[:=]?\s*[\"']?" + pin.encode() + rb"(?!\d)"
        out.append(Secret("pin", f"PIN {pin[0]}***** named as a PIN", re.compile(named)))
    for name, value in run.keys.items():
        out.append(Secret("key", name, re.compile(re.escape(value.encode()), re.IGNORECASE)))
    out.append(Secret("track", "track 2 (PAN=YYMM)", re.compile(rb"(?<!\d)\d{13,19}=\d{4}")))
    for name, value in run.personal.items():
        kind = "code" if name == "payment code" else "personal"
        exact = rb"(?<![0-9A-Za-z])" + re.escape(value.encode()) + rb"(?![0-9])"
        out.append(Secret(kind, name, re.compile(exact, re.IGNORECASE)))
    return out


def _luhn(digits: bytes) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ch - 48
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


_BIN_PANS = re.compile(rb"(?<!\d)(?:" + b"|".join(b.encode() for b in BINS) + rb")\d{7,13}(?!\d)")


def _findings(text: bytes, where: str, secrets: list[Secret]) -> list[str]:
    found = [f"{where}: {s.kind} ({s.name})" for s in secrets if s.pattern.search(text)]
    found += [
        f"{where}: a Luhn-valid {len(m.group())}-digit number on the programme BIN {m.group()[:6].decode()}"
        for m in _BIN_PANS.finditer(text)
        if _luhn(m.group())
    ][:3]
    return found


def _written_files(system: System) -> list[Path]:
    """Every file under the scratch folder, and PostgreSQL's server logs (an error's DETAIL quotes
    the row: a clear PAN in a key would show there), but not its data files (the dump shows rows)."""
    pg = system.root / "pg"  # a link to the data folder (ops.pgembed), which rglob does not follow
    files = [p for p in sorted(system.root.rglob("*")) if p.is_file() and not p.is_symlink()]
    data = pg.resolve()
    files += sorted(p for p in [*data.glob("*.log"), *data.glob("log/*")] if p.is_file())
    return files


def _pg_dump(system: System) -> bytes:
    result = subprocess.run(
        [str(find_bindir() / "pg_dump"), "--no-owner", "--dbname", system.db_url],
        capture_output=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr.decode(errors="replace")[-500:]
    return result.stdout


def test_the_run_did_what_it_should(e2e: EndToEnd) -> None:
    """The scan means something only if the secrets went through the system: the cards were used."""
    dump = _pg_dump(e2e.system)
    assert b"switch_journal" in dump and len(e2e.cards) >= 4 and len(e2e.keys) >= 6
    # the outbox got the run's events (host.events): their payloads are scanned with the rest
    for kind in (b"authorization.approved", b"authorization.declined", b"cardholder.kyc_changed"):
        assert kind in dump, kind
    names = {p.name for p in _written_files(e2e.system)}
    assert {"host.log", "switch.log", "hsm.log", "server.log", "demo-cards.json"} <= names, names
    pos = {c: code for c, code in e2e.codes.items() if c.startswith("pos ")}
    assert list(pos.values()) == [0, 0, 0, 0, 0, 3, 0], pos  # approved but the wrong PIN (declined: 3)
    assert [c for c, code in e2e.codes.items() if code and not c.startswith("pos ")] == [], e2e.codes
    tour = dict(e2e.outputs)["demo tour"]
    assert tour.count(b"APPROVED") >= 5, tour[-800:]
    masked = [c["pan"][:6] + "*" for c in e2e.cards[:1]]
    assert masked[0].encode() in tour, "the tour prints masked PANs (first 6 digits shown)"
    # the scan's own patterns find what they look for
    alice = e2e.cards[0]
    probe = f'pan={alice["pan"]} "pin": "{alice["pin"]}" {alice["pan"]}={alice["expiry"]} {DEMO_ZPK.lower()}'
    probe += f' phone={DEMO_CARDHOLDERS["bob"][2]} {e2e.personal["payment code"]}'
    kinds = {f.split(": ")[1].split(" ")[0] for f in _findings(probe.encode(), "probe", _secrets(e2e))}
    assert {"pan", "pin", "track", "key", "a", "personal", "code"} <= kinds, kinds


def test_the_scan_finds_the_secure_elements_contents_in_clear(e2e: EndToEnd) -> None:
    """What var/pos/*.json held before they were sealed (plain JSON) is found: the scan would have
    failed on the unsealed files, and fails again if they ever go back to clear."""
    found: list[str] = []
    for name in ("demo-cards.json", "load-pool.json", f"{TERMINALS[0][0]}.json"):
        clear = json.dumps(read_sealed(e2e.system.root / "var/pos" / name, e2e.system.seal_key)).encode()
        found += _findings(clear, name, _secrets(e2e))
    kinds = {f.split(": ")[1].split(" ")[0] for f in found}
    assert {"pan", "pin", "key"} <= kinds, found


def test_no_secret_in_the_database(e2e: EndToEnd) -> None:
    assert _findings(_pg_dump(e2e.system), "pg_dump", _secrets(e2e)) == []


def test_no_secret_in_the_logs_and_files(e2e: EndToEnd) -> None:
    secrets = _secrets(e2e)
    found: list[str] = []
    for path in _written_files(e2e.system):
        root = e2e.system.root
        where = str(path.relative_to(root)) if path.is_relative_to(root) else f"pg/{path.name}"
        found += _findings(path.read_bytes(), where, secrets)
    assert found == []


def test_no_secret_in_what_the_commands_printed(e2e: EndToEnd) -> None:
    secrets = _secrets(e2e)
    found: list[str] = []
    code = e2e.personal["payment code"].encode()
    for command, printed in e2e.outputs:
        if command in e2e.codes_shown:  # shown there on purpose: only the code itself is let through
            printed = printed.replace(code, b"<the payment code>")
        found += _findings(printed, f"`payswitch {command}`", secrets)
    assert found == []


def test_the_lifecycle_went_through(e2e: EndToEnd) -> None:
    """The personal data and the code went through the system (so their absence means something): the
    unload was paid to the bank account in the payout file, masked, and the code paid once."""
    printed = dict(e2e.outputs)
    registered = next(c for c in printed if c.startswith("cardholder bank-account"))
    assert b"unloads are paid to" in printed[registered]
    files = [p for p in _written_files(e2e.system) if p.suffix in (".csv", ".txt", ".json", ".jsonl")]
    lines = [ln for p in files for ln in p.read_text(errors="replace").splitlines()]
    bank = [ln for ln in lines if "cardholder_bank_account" in ln]
    assert bank and all(BANK_ACCOUNT[-4:] in ln and BANK_ACCOUNT not in ln for ln in bank), lines[-5:]
    assert e2e.codes[f"pos purchase 1.50 --code ... -t {TERMINALS[0][0]}"] == 0
