"""The terminal's offline mode (pos.offline) against the stand-in switch: the floor table kept from the
sign-on, offline approvals and declines, the automatic fallback when the switch is unreachable, the
advices sent before the next online transaction (0220, 60.1 36, MAC'd, DE61 naming the sale), kept
when unanswered, dropped when refused, and a settlement that balances with them."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from click.testing import CliRunner, Result

from ops.cli import cli
from ops.pgembed import free_port
from pos import messages, offline
from pos import state as state_mod
from pos.crypto import KeyCipher
from pos.messages import Card
from specs.catalogue import De60, De61, FloorLimit, floor_table_de48, is_offline_advice
from specs.codec import codec_for
from tests.pos.fakeswitch import FakeSwitch

TMK = "0123456789ABCDEFFEDCBA9876543210"
PAN = "6212345678901234567"
OTHER_BIN = "6299995678901234563"
TABLE = floor_table_de48([FloorLimit("621234", 50_000, 30_000), FloorLimit("62123456", 2_000, 0)])
NOW = datetime(2026, 12, 2, 18, 30, 5, tzinfo=ZoneInfo("Asia/Shanghai"))


@pytest.fixture(params=["3des", "sm4"])
def switch(request: pytest.FixtureRequest) -> Iterator[FakeSwitch]:
    fake = FakeSwitch(request.param, {"T0000001": bytes.fromhex(TMK)}, floor_table=TABLE).start()
    yield fake
    fake.stop()


def run(state: Path, *args: str, json_out: bool = True) -> Result:
    root = ["--json"] if json_out else []
    cmd, rest = args[0], args[1:]
    return CliRunner().invoke(cli, [*root, "pos", cmd, "--state", str(state), *rest], catch_exceptions=False)


def init(state: Path, switch: FakeSwitch) -> None:
    args = ["pos", "init", "-t", "T0000001", "--merchant", "898330160120001", "--scheme", switch.scheme]
    args += ["--tmk", TMK, "--port", str(switch.port), "--state", str(state)]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output


def set_port(state: Path, port: int) -> None:
    st = state_mod.load(state)
    st.port = port
    state_mod.save(st)


def signed_on_state(scheme: str = "3des") -> state_mod.TerminalState:
    st = state_mod.new_state("T0000001", "898330160120001", scheme, TMK, "127.0.0.1", 1)
    st.floor_table = TABLE
    return st


# -- the decision, pure -----------------------------------------------------------------------------
def test_the_longest_bin_decides() -> None:
    st = signed_on_state()
    sale = offline.decide(st, Card.keyed(PAN, "3012"), 2_000, NOW)  # 62123456: 20.00 at most
    assert (sale.stan, sale.batch, sale.date, sale.time, sale.approval) == (
        "000001",
        "000001",
        "1202",
        "183005",
        "Y10001",
    )
    assert sale.entry == "01" and sale.pan_masked == "621234*********4567"
    assert st.open_card(sale.pan_enc) == (PAN, "3012") and PAN not in json.dumps(vars(sale))
    with pytest.raises(offline.OfflineDeclined, match=r"above the floor limit of 20\.00"):
        offline.decide(st, Card.keyed(PAN, "3012"), 2_001, NOW)
    other = "6212349999999999994"  # only 621234 matches: 500.00
    assert offline.decide(st, Card.swiped(other + "=3012101"), 50_000, NOW).entry == "02"
    assert [s.stan for s in st.offline] == ["000001", "000002"]  # a declined sale spends no STAN
    assert st.stan == 2


@pytest.mark.parametrize(
    ("card", "table", "why"),
    [
        (Card.keyed(OTHER_BIN, "3012"), TABLE, "no offline sales for this card's BIN"),
        (Card.keyed(PAN, "3012"), "", "no floor limits"),
        (Card.keyed(PAN, "2611"), TABLE, "expired card"),
        (Card("621234567890123456", by_code=True), TABLE, "payment code"),
        (
            Card.keyed("6212340000000000", "3012"),
            floor_table_de48([FloorLimit("621234", 0, 30_000)]),
            "no offline",
        ),
    ],
)
def test_declined_offline(card: Card, table: str, why: str) -> None:
    st = signed_on_state()
    st.floor_table = table
    with pytest.raises(offline.OfflineDeclined, match=why):
        offline.decide(st, card, 100, NOW)
    assert st.offline == [] and st.stan == 0


@pytest.mark.parametrize("scheme", ["3des", "sm4"])
def test_the_advice(scheme: str) -> None:
    st = signed_on_state(scheme)
    sale = offline.decide(st, Card.keyed(PAN, "3012"), 1_234, NOW)
    st.batch = "000002"  # sent in a later batch: DE61 still names the sale's own
    msg = offline.advice(st, sale)
    assert msg["t"] == "0220" and msg["3"] == "000000" and msg["25"] == "00" and msg["4"] == "000000001234"
    assert De60.parse(msg["60"]) == De60("36", "000002", "000")
    assert De61.parse(msg["61"]) == De61("000001", "000001", "1202")
    assert (msg["11"], msg["12"], msg["13"], msg["38"], msg["22"]) == (
        "000001",
        "183005",
        "1202",
        "Y10001",
        "012",
    )
    assert (msg["2"], msg["14"]) == (PAN, "3012") and "35" not in msg and "52" not in msg
    assert is_offline_advice(msg["t"], msg["3"], msg["60"])
    codec = codec_for("pos", scheme)
    assert codec.decode(codec.encode(msg))["61"] == "0000010000011202"


def test_a_sign_on_keeps_the_floor_table() -> None:
    st = signed_on_state()
    assert offline.keep_floor_table(st, TABLE) == "floor limits 621234 500.00 CNY, 62123456 20.00 CNY"
    assert offline.keep_floor_table(st, None) == "no floor limits: no offline sales" and st.floor_table == ""
    assert "does not parse" in offline.keep_floor_table(st, "01" + "9" * 5) and st.floor_table == ""


# -- the CLI against the stand-in switch -----------------------------------------------------------
def test_offline_day_at_the_terminal(tmp_path: Path, switch: FakeSwitch) -> None:
    state = tmp_path / "T0000001.json"
    init(state, switch)
    r = run(state, "signon")
    assert r.exit_code == 0 and any("floor limits 621234" in n for n in json.loads(r.stdout)["notes"]), (
        r.output
    )
    card = ["--card", PAN, "--expiry", "3012"]

    r = run(state, "purchase", "15.00", *card, "--offline")  # no PIN asked: none is verifiable offline
    assert r.exit_code == 0, r.output
    receipt = json.loads(r.stdout)
    assert receipt["offline"] is True and receipt["code"] == "00" and receipt["auth_id"].startswith("Y1")
    assert receipt["transaction"] == "PURCHASE (OFFLINE)" and receipt["at"]
    assert "OFFLINE" in run(state, "purchase", "1", *card, "--offline", json_out=False).output
    r = run(state, "purchase", "20.01", *card, "--offline")
    assert r.exit_code == 3 and json.loads(r.stdout)["code"] == "Z3", r.output
    assert "above the floor limit" in json.loads(r.stdout)["reason"]
    assert [m["t"] for m in switch.seen] == ["0800"]  # nothing of it reached the switch

    # The switch unreachable: the purchase is made offline by itself, and says so.
    set_port(state, free_port())
    r = run(state, "purchase", "3", *card, "--no-pin")
    assert r.exit_code == 0 and json.loads(r.stdout)["offline"] is True, r.output
    assert "the purchase is made offline" in r.stderr
    r = run(state, "balance", *card, "--no-pin", json_out=False)  # only a purchase goes offline
    assert r.exit_code == 1 and "cannot connect" in r.output
    listing = json.loads(run(state, "offline").stdout)
    assert [s["amount_minor"] for s in listing["pending"]] == [1500, 100, 300]
    assert PAN not in json.dumps(listing) and PAN.encode() not in state.read_bytes()
    assert listing["floor_limits"][0]["bin"] == "621234"

    # Back: the advices go before the next online transaction, in order, MAC'd.
    set_port(state, switch.port)
    r = run(state, "purchase", "10", *card, "--no-pin")
    assert r.exit_code == 0, r.output
    assert any(
        "3 offline sale(s) advised and accepted (19.00 CNY)" in n for n in json.loads(r.stdout)["notes"]
    )
    advices = [m for m in switch.seen if m["t"] == "0220"]
    assert [m["11"] for m in advices] == [s["stan"] for s in listing["pending"]]
    assert all(m["60"][:2] == "36" and m["61"][6:12] == m["11"] and "64" in m for m in advices)
    assert [m["t"] for m in switch.seen][-1] == "0200"
    st = state_mod.load(state)
    assert st.offline == [] and [e.kind for e in st.journal] == ["offline"] * 3 + ["purchase"]
    r = run(state, "settle")
    assert r.exit_code == 0, r.output
    assert "totals balanced" in " ".join(json.loads(r.stdout)["notes"])  # the switch counted them too


def test_an_unanswered_advice_is_kept_and_sent_again_never_reversed(
    tmp_path: Path, switch: FakeSwitch
) -> None:
    state = tmp_path / "T0000001.json"
    init(state, switch)
    assert run(state, "signon").exit_code == 0
    card = ["--card", PAN, "--expiry", "3012"]
    for amount in ("1", "2", "3"):
        assert run(state, "purchase", amount, *card, "--offline").exit_code == 0
    switch.silent.add(("0220", "000003"))  # the second sale's advice
    switch.refuse[("0220", "000002")] = "14"  # the first: the issuer does not know the card
    r = run(state, "upload-offline", "--timeout", "0.3")
    assert r.exit_code == 3, r.output
    out = json.loads(r.stdout)
    assert out["code"] == "98" and "kept for later" in out["reason"]
    assert any("refused by the issuer (14)" in n for n in out["notes"])
    assert not [m for m in switch.seen if m["t"] == "0400"]  # an advice is never reversed
    st = state_mod.load(state)
    assert [s.stan for s in st.offline] == ["000003", "000004"] and st.offline[0].attempts == 1
    assert [s.stan for s in st.offline_refused] == ["000002"]
    # settle refuses while advices wait (the switch would count them, the terminal not yet)
    r = run(state, "settle", "--timeout", "0.3", json_out=False)
    assert r.exit_code == 1 and "not yet accepted" in r.output
    switch.silent.clear()
    switch.refuse[("0220", "000003")] = "96"  # its HSM away: kept again
    r = run(state, "upload-offline")
    assert r.exit_code == 3 and json.loads(r.stdout)["code"] == "96"
    r = run(state, "upload-offline")
    assert r.exit_code == 0, r.output
    sent = [m["11"] for m in switch.seen if m["t"] == "0220"]
    assert sent == ["000002"] + ["000003"] * 4 + ["000004"]  # same STAN each time (settle tried too)
    st = state_mod.load(state)
    assert st.offline == [] and [e.stan for e in st.journal] == ["000003", "000004"]
    shown = run(state, "offline", json_out=False).output
    assert "to be advised: 0" in shown and "refused by the issuer: 1 (1.00 CNY)" in shown
    r = run(state, "settle")
    assert r.exit_code == 0 and "totals balanced" in " ".join(json.loads(r.stdout)["notes"])


def test_the_advice_mac_is_the_terminals(tmp_path: Path, switch: FakeSwitch) -> None:
    """The stand-in switch checks every 0220's MAC under the session's MAK (A0 otherwise): a stored sale
    goes with the keys of the sign-on it is sent under, here a new one after the first keys went."""
    state = tmp_path / "T0000001.json"
    init(state, switch)
    assert run(state, "signon").exit_code == 0
    assert run(state, "purchase", "4", "--card", PAN, "--expiry", "3012", "--offline").exit_code == 0
    assert run(state, "signon").exit_code == 0  # new working keys
    r = run(state, "upload-offline")
    assert r.exit_code == 0, r.output
    advice = [m for m in switch.seen if m["t"] == "0220"][-1]
    st = state_mod.load(state)
    mak = KeyCipher(st.scheme, st.working_keys().mak)
    body = codec_for("pos", st.scheme).encode({**advice, "64": messages.MAC_PLACEHOLDER})
    assert mak.pos_mac(body[:-8]) == advice["64"]
