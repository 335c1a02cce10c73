"""Payment codes end to end (issue 16 item 7) with the real processes: PostgreSQL, hsm_sim, host,
switch, and `payswitch card code` then `payswitch pos purchase --code` as a user types them, on both
key profiles (T0000001 3des, T0000002 sm4); a void and a refund of code purchases; nothing logs the
code in clear."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from ops.cli import COMMANDS
from pos.system import System

NEEDED = ("hsm", "host", "switch", "ledger", "card", "terminal")
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
    return r.returncode, (json.loads(r.stdout) if r.stdout.strip().startswith("{") else {})


def _code(system: System, card: str, *extra: str) -> str:
    return str(json.loads(system.cli("--json", "card", "code", card, *extra).stdout)["code"])


@pytest.mark.parametrize(("tid", "card"), [("T0000001", "alice"), ("T0000002", "bob")])
def test_pay_with_a_code(system: System, tid: str, card: str) -> None:
    code = _code(system, card)
    rc, receipt = _pos(system, "purchase", "2.00", "--code", code, "-t", tid)
    assert rc == 0 and receipt["approved"], receipt
    rc, again = _pos(system, "purchase", "2.00", "--code", code, "-t", tid)
    assert rc == 3 and again["code"] == "05", again  # a code pays once
    rc, void = _pos(system, "void", "--stan", receipt["stan"], "-t", tid)
    assert rc == 0 and void["approved"], void  # the used code in DE2 (032) finds the card
    capped = _code(system, card, "--max-amount", "1.00")
    rc, over = _pos(system, "purchase", "1.50", "--code", capped, "-t", tid)
    assert rc == 3 and over["code"] == "61", over
    rc, paid = _pos(system, "purchase", "1.00", "--code", capped, "-t", tid)
    assert rc == 0, paid  # the declined attempt did not use it up
    rc, refund = _pos(system, "refund", "--stan", paid["stan"], "--amount", "0.40", "-t", tid)
    assert rc == 0 and refund["approved"], refund
    rc, unknown = _pos(system, "purchase", "1.00", "--code", code[:-2] + "00", "-t", tid)
    assert rc == 3 and unknown["code"] in ("14", "91"), unknown
    for log in system.root.glob("*.log"):
        text = log.read_text(errors="replace")
        assert code not in text and capped not in text, log


def test_ledger_check_clean(system: System) -> None:
    r = system.cli("--json", "ledger", "check", check=False)
    assert r.returncode == 0 and "payment_code_paid_once" in r.stdout, r.stdout
