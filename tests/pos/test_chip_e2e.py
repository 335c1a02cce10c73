"""Chip cards end to end (issue 19 items 1, 2, 6) with the real processes: PostgreSQL, hsm_sim (KW),
host, switch, and `payswitch pos ... --chip | --contactless | --cloned | --receipt` as a user types
them. alice's card is on CAMPUS (3DES chip, a swipe flagged), dave's on CAMPUSSM4 (SM4 chip, a swipe
declined); both terminals (T0000001 3des, T0000002 sm4) take both."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from ops.cli import COMMANDS
from pos.sealed import read_sealed
from pos.system import System

NEEDED = ("hsm", "host", "switch", "ledger", "card", "terminal", "product")
missing = [c for c in NEEDED if c not in COMMANDS]
pytestmark = pytest.mark.skipif(bool(missing), reason=f"this build lacks: {', '.join(missing)}")


@pytest.fixture(scope="module")
def system() -> Iterator[System]:
    with System() as s:
        s.start(seed=("--load-terminals", "1", "--load-cards", "2"))
        yield s


def _pos(system: System, *args: str) -> tuple[int, dict[str, Any]]:
    r = system.cli("--json", "pos", *args, check=False)
    assert "Traceback" not in r.stderr, r.stderr
    return r.returncode, (json.loads(r.stdout) if r.stdout.strip().startswith("{") else {"err": r.stderr})


def _balance(system: System, card: str) -> int:
    rc, r = _pos(system, "balance", "--card", card, "-t", "T0000001")
    assert rc == 0, r
    return int(r["balance_minor"])


def _demo(system: System) -> dict[str, dict[str, Any]]:
    cards = read_sealed(system.root / "var/pos/demo-cards.json", system.seal_key)["cards"]
    return {str(c["name"]): c for c in cards}


@pytest.mark.parametrize(
    ("tid", "card"),
    [("T0000001", "alice"), ("T0000002", "dave"), ("T0000002", "alice"), ("T0000001", "dave")],
)
def test_chip_purchase_arpc_verified(system: System, tid: str, card: str) -> None:
    for _ in range(2):  # the second read has the next ATC: no replay
        rc, r = _pos(system, "purchase", "3.00", "--chip", "--card", card, "-t", tid, "--trace")
        assert rc == 0 and r["approved"], r
        assert r["entry_mode"] == "chip, PIN" and r["issuer_auth"] == "verified", r


def test_a_cloned_card_is_declined_and_nothing_posted(system: System) -> None:
    for card in ("alice", "dave"):
        before = _balance(system, card)
        rc, r = _pos(system, "purchase", "4.00", "--chip", "--cloned", "--card", card)
        assert rc == 3 and r["code"] == "05", r
        assert r.get("issuer_auth") != "verified", r
        assert _balance(system, card) == before
        rc, ok = _pos(system, "purchase", "4.00", "--chip", "--card", card)  # the real card still works
        assert rc == 0 and ok["issuer_auth"] == "verified", ok


@pytest.mark.parametrize("tid", ["T0000001", "T0000002"])
def test_contactless_no_pin_below_the_limit_pin_above(system: System, tid: str) -> None:
    rc, r = _pos(system, "purchase", "12.00", "--contactless", "--card", "dave", "-t", tid)
    assert rc == 0 and r["entry_mode"] == "contactless" and r["issuer_auth"] == "verified", r
    rc, over = _pos(system, "purchase", "300.01", "--contactless", "--card", "alice", "--no-pin", "-t", tid)
    assert rc == 3 and not over["approved"], over
    rc, pinned = _pos(system, "purchase", "300.01", "--contactless", "--card", "alice", "-t", tid)
    assert rc == 0 and pinned["entry_mode"] == "contactless, PIN", pinned
    system.cli("card", "load", "alice", "--amount", "300.01", "--reference", f"chip-e2e-{tid}")


def test_a_swipe_of_a_chip_card_per_product(system: System) -> None:
    demo = _demo(system)
    alice, dave = demo["alice"], demo["dave"]
    rc, flagged = _pos(
        system, "purchase", "1.00", "--track2", f"{alice['pan']}={alice['expiry']}2200000", "--pin", "123456"
    )
    assert rc == 0 and flagged["entry_mode"] == "swipe, PIN", flagged  # CAMPUS: chip_fallback flag
    before = _balance(system, "dave")
    rc, declined = _pos(
        system, "purchase", "1.00", "--track2", f"{dave['pan']}={dave['expiry']}2200000", "--pin", "123456"
    )
    assert rc == 3 and declined["code"] == "57", declined  # CAMPUSSM4: chip_fallback decline
    assert _balance(system, "dave") == before


def test_receipt_files(system: System, tmp_path: Path) -> None:
    pan = str(_demo(system)["alice"]["pan"])
    png, pdf = tmp_path / "r.png", tmp_path / "r.pdf"
    rc, r = _pos(system, "purchase", "2.50", "--chip", "--card", "alice", "--receipt", str(png))
    assert rc == 0, r
    with Image.open(png) as image:
        assert image.format == "PNG" and image.size[0] >= 384 and image.size[1] > 200
    rc, r = _pos(system, "balance", "--chip", "--card", "dave", "-t", "T0000002", "--receipt", str(pdf))
    assert rc == 0 and r["balance_minor"] > 0, r
    data = pdf.read_bytes()
    assert data.startswith(b"%PDF")
    for f in (png, pdf):
        assert pan.encode() not in f.read_bytes()
    r2 = system.cli("pos", "purchase", "1.00", "--receipt", str(tmp_path / "r.jpg"), check=False)
    assert r2.returncode == 1 and "FILE.png or FILE.pdf" in r2.stderr and len(r2.stderr.splitlines()) == 1


def test_no_pan_in_logs_and_ledger_clean(system: System) -> None:
    pans = [str(c["pan"]) for c in _demo(system).values()]
    for log in system.root.glob("*.log"):
        text = log.read_text(errors="replace")
        assert not any(p in text for p in pans), log
    r = system.cli("--json", "ledger", "check", check=False)
    assert r.returncode == 0, r.stdout
