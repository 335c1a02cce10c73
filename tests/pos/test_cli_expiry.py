"""`pos ... --card NAME --expiry YYMM` keys the expiry given, not the demo card's own (issue 15, item 8):
the way to try a wrong expiry on a demo card. The whole system runs; `--trace` shows DE14 as sent."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

import pytest

from pos.sealed import read_sealed
from pos.system import System


@pytest.fixture(scope="module")
def system() -> Iterator[System]:
    with System() as s:
        s.start(seed=("--load-terminals", "1", "--load-cards", "1"))
        yield s


def _sent_de14(trace: str) -> list[str]:
    """DE14 of each request the terminal sent (the trace prints requests and answers field by field)."""
    return re.findall(r"DE14\b\D*(\d{4})", trace)


def test_expiry_given_with_a_demo_name_is_the_one_sent(system: System) -> None:
    cards = read_sealed(system.root / "var/pos/demo-cards.json", system.seal_key)["cards"]
    alice = next(c for c in cards if c["name"] == "alice")
    wrong = "2001" if alice["expiry"] != "2001" else "2002"

    r = system.cli(
        "--json", "pos", "purchase", "1.00", "--card", "alice", "--expiry", wrong, "--trace", check=False
    )
    assert _sent_de14(r.stderr)[-1:] == [wrong], r.stderr
    receipt = json.loads(r.stdout)
    assert not receipt["approved"], r.stdout  # the host declines it (which code is helper D's rule)
    assert alice["pan"] not in r.stdout + r.stderr

    # without --expiry the card's own date goes, and it is approved
    r = system.cli("--json", "pos", "purchase", "1.00", "--card", "alice", "--trace")
    assert _sent_de14(r.stderr)[-1:] == [alice["expiry"]], r.stderr
    assert json.loads(r.stdout)["approved"], r.stdout


def test_a_bad_expiry_or_one_beside_track2_is_refused_in_a_line(system: System) -> None:
    bad = system.cli("pos", "purchase", "1.00", "--card", "alice", "--expiry", "2013", check=False)
    assert bad.returncode == 1 and "YYMM" in bad.stderr and "Traceback" not in bad.stderr
    both = system.cli(
        "pos", "purchase", "1.00", "--track2", "6212340000000000000=3012", "--expiry", "3012", check=False
    )
    assert both.returncode == 1 and "--expiry" in both.stderr and "Traceback" not in both.stderr
