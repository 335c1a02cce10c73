"""The offline day (issue 19 item 4, "done when") with the real processes: PostgreSQL, hsm_sim, host,
switch. The demo product gets a floor limit, T0000001 signs on (the floor table reaches its state), the
switch is stopped, 50 sales are made offline (the first by the automatic fallback, one by --offline,
the rest in-process through pos.terminal as the CLI does; carol's go beyond her balance), the switch
comes back, the upload sends the advices: every sale is posted exactly once, by its natural key; the
same upload again (the terminal lost its state after sending) posts nothing; carol is declined online
until her receivable is repaid; the 0500 balances and `ledger check` is clean."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg
import pytest

from ops.cli import COMMANDS
from pos import state as state_mod
from pos import terminal
from pos.messages import Card
from pos.sealed import read_sealed
from pos.system import System

NEEDED = ("hsm", "host", "switch", "ledger", "card", "product", "terminal")
missing = [c for c in NEEDED if c not in COMMANDS]
pytestmark = [
    pytest.mark.skipif(bool(missing), reason=f"this build lacks: {', '.join(missing)}"),
    pytest.mark.slow,
]

TID, MID = "T0000001", "898330160120001"
FLOOR = "30.00"  # yuan, CAMPUS (alice, bob, carol)


@pytest.fixture(scope="module")
def system() -> Iterator[System]:
    with System() as s:
        s.start(
            ("hsm",), seed=("--load-terminals", "1", "--load-cards", "2")
        )  # demo seed, then the floor limit, then host and switch read it
        s.cli("product", "update", "CAMPUS", "--offline-floor-limit", FLOOR)
        s.start_service("host")
        s.start_service("switch")
        yield s


def _pos(system: System, *args: str) -> tuple[int, dict[str, Any], str]:
    r = system.cli("--json", "pos", *args, "-t", TID, check=False)
    assert "Traceback" not in r.stderr, r.stderr
    out = json.loads(r.stdout) if r.stdout.strip().startswith("{") else {}
    return r.returncode, out, r.stderr


def _query(system: System, sql: str) -> list[asyncpg.Record]:
    async def go() -> list[asyncpg.Record]:
        conn = await asyncpg.connect(system.db_url)
        try:
            return list(await conn.fetch(sql))
        finally:
            await conn.close()

    return asyncio.run(go())


def _upload(system: System) -> dict[str, Any]:
    """pos upload-offline until nothing is left (a sign-on may be asked for once, after the restart)."""
    for _ in range(3):
        rc, out, _err = _pos(system, "upload-offline")
        if rc == 0:
            return out
    raise AssertionError(out)


def test_an_offline_day(system: System, monkeypatch: pytest.MonkeyPatch) -> None:
    rc, signon, _ = _pos(system, "signon")
    assert rc == 0 and any("floor limits 621234 30.00" in n for n in signon["notes"]), signon
    path = system.root / "var" / "pos" / f"{TID}.json"
    monkeypatch.setenv("PAYSWITCH_POS_SEAL_KEY_FILE", str(system.seal_key))
    cards = {c["name"]: c for c in read_sealed(system.root / "var/pos/demo-cards.json")["cards"]}

    system.stop_service("switch")
    rc, first, err = _pos(system, "purchase", "25.00", "--card", "carol", "--no-pin")
    assert rc == 0 and first["offline"] and "the purchase is made offline" in err, (first, err)
    rc, second, _ = _pos(system, "purchase", "25.00", "--card", "carol", "--offline")
    assert rc == 0 and second["offline"], second
    rc, over, _ = _pos(system, "purchase", "30.01", "--card", "alice", "--offline")
    assert rc == 3 and over["code"] == "Z3" and "floor limit" in over["reason"], over

    # 48 more as the CLI makes them (in-process: a CLI start-up per sale would cost a second each).
    zone = ZoneInfo("Asia/Shanghai")
    st = state_mod.load(path)
    for i in range(48):
        c = cards["carol"] if i % 2 == 0 else cards["alice"]
        amount = 2_500 if c["name"] == "carol" else 300
        receipt = terminal.offline_purchase(st, Card.keyed(c["pan"], c["expiry"]), amount, datetime.now(zone))
        assert receipt.approved, receipt
    state_mod.save(st)
    stans = [s.stan for s in state_mod.load(path).offline]
    assert len(stans) == len(set(stans)) == 50
    batch = state_mod.load(path).batch
    expected = {f"offline:{MID}:{TID}:{batch}:{stan}" for stan in stans}

    system.start_service("switch")
    before = path.read_bytes()  # the terminal's state as it was before sending
    out = _upload(system)
    assert any("50 offline sale(s) advised and accepted (722.00 CNY)" in n for n in out["notes"]), out
    assert state_mod.load(path).offline == []

    def postings() -> list[asyncpg.Record]:
        return _query(system, "SELECT key, amount FROM transfers WHERE code = 'offline' ORDER BY key")

    posted = postings()
    assert {r["key"] for r in posted} == expected and len(posted) == 50  # each once, by its natural key
    assert sum(r["amount"] for r in posted) == 26 * 2_500 + 24 * 300
    shortfall = _query(system, "SELECT sum(amount) AS s FROM transfers WHERE code = 'offline_shortfall'")
    assert shortfall[0]["s"] == 26 * 2_500 - 50_000  # carol had 500.00: 150.00 is owed

    # The terminal lost its state after sending: it sends every advice again; nothing posts twice.
    path.write_bytes(before)
    _upload(system)
    assert postings() == posted
    assert len(state_mod.load(path).journal) == 50

    rc, blocked, _ = _pos(system, "purchase", "1.00", "--card", "carol")  # the demo PIN
    assert rc == 3 and blocked["code"] == "51", blocked  # until a top-up repays the receivable
    rc, topup, _ = _pos(system, "topup", "160.00", "--card", "carol")
    assert rc == 0, topup
    rc, again, _ = _pos(system, "purchase", "1.00", "--card", "carol")
    assert rc == 0 and again["approved"], again
    rc, balance, _ = _pos(system, "balance", "--card", "carol")
    assert rc == 0 and balance["balance_minor"] == 900, balance  # 150.00 repaid, 10.00 left, 1.00 spent

    rc, settled, _ = _pos(system, "settle")
    assert rc == 0 and "totals balanced" in " ".join(settled["notes"]), settled
    check = system.cli("--json", "ledger", "check", check=False)
    assert check.returncode == 0, check.stdout + check.stderr
    for log in system.root.glob("*.log"):
        text = log.read_text(errors="replace")
        assert cards["carol"]["pan"] not in text and "Traceback" not in text, log
    assert cards["carol"]["pan"].encode() not in Path(path).read_bytes()
