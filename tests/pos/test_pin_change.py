"""PIN change at the terminal (issue 16 item 6 a), end to end with the real processes: PostgreSQL,
hsm_sim, host, switch, and `payswitch pos pin-change` as a user types it, on both key profiles
(T0000001 3des, T0000002 sm4). A retransmission is sent in-process with the terminal's own state."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import trio

from ops.cli import COMMANDS
from pos import messages, sealed
from pos import state as state_mod
from pos.client import Connection, Session
from pos.demo import DEMO_PIN
from pos.system import System
from specs.codec import codec_for

NEEDED = ("hsm", "host", "switch", "ledger", "card", "terminal")
missing = [c for c in NEEDED if c not in COMMANDS]
pytestmark = pytest.mark.skipif(bool(missing), reason=f"this build lacks: {', '.join(missing)}")


@pytest.fixture(scope="module")
def system() -> Iterator[System]:
    with System() as s:
        s.start(seed=("--load-terminals", "1", "--load-cards", "2"))
        yield s


def _pos(system: System, *args: str) -> tuple[int, dict[str, Any], str]:
    r = system.cli("--json", "pos", *args, check=False)
    assert "Traceback" not in r.stderr, r.stderr
    return r.returncode, (json.loads(r.stdout) if r.stdout.strip().startswith("{") else {}), r.stderr


def _pin_tries(system: System, card: str) -> int:
    r = system.cli("--json", "card", "show", card)
    return int(json.loads(r.stdout)["pin_tries"])


@pytest.mark.parametrize(("tid", "card"), [("T0000001", "alice"), ("T0000002", "bob")])
def test_pin_change_then_purchases(system: System, tid: str, card: str) -> None:
    code, receipt, err = _pos(system, "pin-change", card, "--old", DEMO_PIN, "--new", "135790", "-t", tid)
    assert code == 0 and receipt["approved"], (receipt, err)
    code, receipt, _ = _pos(system, "purchase", "1.00", "--card", card, "--pin", "135790", "-t", tid)
    assert code == 0 and receipt["approved"], receipt
    code, receipt, _ = _pos(system, "purchase", "1.00", "--card", card, "--pin", DEMO_PIN, "-t", tid)
    assert code == 3 and receipt["code"] == "55", receipt
    # a wrong old PIN: declined 55, a try counted, the PIN unchanged
    tries = _pin_tries(system, card)
    code, receipt, _ = _pos(system, "pin-change", card, "--old", "000000", "--new", "246802", "-t", tid)
    assert code == 3 and receipt["code"] == "55", receipt
    assert _pin_tries(system, card) == tries + 1
    code, receipt, _ = _pos(system, "purchase", "1.00", "--card", card, "--pin", "135790", "-t", tid)
    assert code == 0 and receipt["approved"], receipt  # and the right PIN clears the tries
    assert _pin_tries(system, card) == 0
    code, receipt, _ = _pos(system, "purchase", "1.00", "--card", card, "--pin", "246802", "-t", tid)
    assert code == 3 and receipt["code"] == "55", receipt
    history = system.cli("card", "history", card, "--limit", "20")
    assert "pin_change" in history.stdout or "PIN" in history.stdout


def _send_twice(system: System, tid: str, card: str, old: str, new: str) -> list[str]:
    """The same PIN-change request (same STAN) twice on one connection, as a terminal repeating an
    unanswered one: the response codes of both. Needs the system's seal key in the environment."""
    state = state_mod.load(system.root / "var/pos" / f"{tid}.json")
    cards = sealed.read_sealed(system.root / "var/pos/demo-cards.json", system.seal_key)["cards"]
    demo = next(c for c in cards if c["name"] == card)

    async def main() -> list[str]:
        conn = await Connection.open(state.host, state.port)
        try:
            session = Session(state, codec_for("pos", state.scheme), conn, timeout=20)
            req = messages.pin_change_request(
                stan=state.next_stan(),
                batch=state.batch,
                terminal_id=state.terminal_id,
                merchant_id=state.merchant_id,
                scheme=state.scheme,
                card=messages.Card.keyed(demo["pan"], demo["expiry"]),
                old_pin=old,
                new_pin=new,
                pik=session.pik,
            )
            return [(await session.exchange(req)).code for _ in range(2)]
        finally:
            await conn.aclose()

    codes = trio.run(main)
    state_mod.save(state)  # the STAN used stays used
    return codes


def test_a_retransmission_counts_once(system: System, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(sealed.KEY_ENV, str(system.seal_key))
    tid, card = "T0000001", "carol"
    code, receipt, _ = _pos(system, "signon", "-t", tid)
    assert code == 0, receipt
    tries = _pin_tries(system, card)
    assert _send_twice(system, tid, card, "999999", "111111") == ["55", "55"]
    assert _pin_tries(system, card) == tries + 1  # one try, not two
    assert _send_twice(system, tid, card, DEMO_PIN, "112233") == ["00", "00"]  # changed once
    code, receipt, _ = _pos(system, "purchase", "1.00", "--card", card, "--pin", "112233", "-t", tid)
    assert code == 0 and receipt["approved"], receipt
    assert _pin_tries(system, card) == 0


def test_ledger_check_clean(system: System) -> None:
    r = system.cli("--json", "ledger", "check", check=False)
    assert r.returncode == 0 and "pin_change_moves_nothing" in r.stdout, r.stdout
