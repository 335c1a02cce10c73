"""The terminal simulator end to end against a stand-in switch: CLI, state file, journal, reversal."""

from __future__ import annotations

import json
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from ops.cli import cli
from ops.pgembed import free_port
from pos import state as state_mod
from tests.pos.fakeswitch import FakeSwitch

TMK = "0123456789ABCDEFFEDCBA9876543210"
PAN = "6212345678901234567"


@pytest.fixture(params=["3des", "sm4"])
def switch(request: pytest.FixtureRequest) -> Iterator[FakeSwitch]:
    fake = FakeSwitch(request.param, {"T0000001": bytes.fromhex(TMK)}).start()
    yield fake
    fake.stop()


def run(state: Path, *args: str, json_out: bool = True) -> Result:
    root = ["--json"] if json_out else []
    cmd, rest = args[0], args[1:]
    return CliRunner().invoke(cli, [*root, "pos", cmd, "--state", str(state), *rest], catch_exceptions=False)


def init(state: Path, switch: FakeSwitch) -> None:
    result = CliRunner().invoke(
        cli,
        [
            "pos",
            "init",
            "-t",
            "T0000001",
            "--merchant",
            "898330160120001",
            "--scheme",
            switch.scheme,
            "--tmk",
            TMK,
            "--port",
            str(switch.port),
            "--state",
            str(state),
        ],
    )
    assert result.exit_code == 0, result.output


def test_sign_on_purchase_void_refund_settle(tmp_path: Path, switch: FakeSwitch) -> None:
    state = tmp_path / "T0000001.json"
    init(state, switch)
    assert stat.S_IMODE(state.stat().st_mode) == 0o600
    r = run(state, "signon")
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["approved"]
    assert state_mod.load(state).tmk == TMK  # the secure-element stand-in holds it, sealed (test_sealed)...
    assert TMK not in r.output  # ...and never shows it

    card = ["--card", PAN, "--expiry", "3012"]
    r = run(state, "purchase", "123.45", *card, "--pin", "123456", "--trace")
    assert r.exit_code == 0, r.output
    receipt = json.loads(r.stdout)
    assert receipt["amount_minor"] == 12345 and receipt["pan"] == "621234*********4567"
    assert PAN not in r.output and "123456" not in r.stderr
    assert "[pin data, " in r.stderr and "DE52" in r.stderr

    r = run(state, "purchase", "10", *card, "--pin", "123456")
    second = json.loads(r.stdout)["stan"]
    r = run(state, "balance", *card, "--pin", "123456")
    assert json.loads(r.stdout)["balance_minor"] == 98766

    r = run(state, "void", "--stan", second)
    assert r.exit_code == 0, r.output
    r = run(state, "refund", "--stan", receipt["stan"], "--amount", "0.45")
    assert r.exit_code == 0, r.output
    r = run(state, "refund", "--stan", receipt["stan"], "--amount", "200")
    assert r.exit_code == 1 and "exceeds" in r.output

    st = state_mod.load(state)
    assert [e.kind for e in st.journal] == ["purchase", "purchase", "void", "refund"]
    shown = run(state, "show", json_out=False).output
    assert "621234*********4567" in shown and "voided" in shown and PAN not in shown and TMK not in shown
    assert st.stan == 6  # sign-on, 2 purchases, balance, void, refund; the refused refund used none

    r = run(state, "settle")
    assert r.exit_code == 0, r.output
    notes = " ".join(json.loads(r.stdout)["notes"])
    assert "totals balanced" in notes and "debits 1 (123.45 CNY), credits 1 (0.45 CNY)" in notes
    st = state_mod.load(state)
    assert st.journal == [] and len(st.previous) == 4 and st.batch == "000002"
    r = run(state, "void", "--stan", receipt["stan"], json_out=False)
    assert r.exit_code == 1 and "settled batch 000001" in r.output


def test_a_terminal_not_signed_on_signs_on_first(tmp_path: Path, switch: FakeSwitch) -> None:
    state = tmp_path / "t.json"
    init(state, switch)
    r = run(state, "purchase", "2", "--card", PAN, "--expiry", "3012", "--no-pin")
    assert r.exit_code == 0, r.output
    assert any("signed on first" in n for n in json.loads(r.stdout)["notes"])
    assert [m["t"] for m in switch.seen] == ["0800", "0200"]


def test_unanswered_purchase_is_reversed_and_pending_reversal_survives(
    tmp_path: Path, switch: FakeSwitch
) -> None:
    state = tmp_path / "t.json"
    init(state, switch)
    assert run(state, "signon").exit_code == 0
    switch.silent.add(("0200", "000002"))
    card = ["--card", PAN, "--expiry", "3012", "--no-pin", "--timeout", "0.3"]
    r = run(state, "purchase", "5", *card)
    assert r.exit_code == 3  # not approved (98, reversed): a decline's exit code
    assert json.loads(r.stdout)["code"] == "98"
    rev = [m for m in switch.seen if m["t"] == "0400"]
    assert len(rev) == 1 and rev[0]["11"] == "000002" and rev[0]["39"] == "98"
    assert "52" not in rev[0] and "64" in rev[0] and rev[0]["4"] == "000000000500"
    assert state_mod.load(state).pending_reversal is None

    # The reversal unanswered too: it stays pending (PAN sealed in the file) and goes out first next time.
    switch.silent |= {("0200", "000003"), ("0400", "000003")}
    r = run(state, "purchase", "6", *card)
    assert "pending" in " ".join(json.loads(r.stdout)["notes"])
    assert state_mod.load(state).pending_reversal is not None
    assert PAN.encode() not in state.read_bytes()
    r = run(state, "purchase", "8", *card)  # the reversal still unanswered: nothing new goes out
    assert r.exit_code == 1 and "reversal of trace 000003 is still unanswered" in r.output
    assert [(m["t"], m["11"]) for m in switch.seen[-1:]] == [("0400", "000003")]
    switch.silent.clear()
    r = run(state, "purchase", "7", *card)
    assert r.exit_code == 0, r.output
    assert [(m["t"], m["11"]) for m in switch.seen[-2:]] == [("0400", "000003"), ("0200", "000005")]
    assert state_mod.load(state).pending_reversal is None


def test_a_reversal_answered_96_stays_pending(tmp_path: Path, switch: FakeSwitch) -> None:
    """96 (the switch could not act: its HSM was away) does not settle a reversal; 00 does, sent again
    before the next transaction (specs/README.md, "Retransmissions and reversals")."""
    state = tmp_path / "t.json"
    init(state, switch)
    assert run(state, "signon").exit_code == 0
    card = ["--card", PAN, "--expiry", "3012", "--no-pin", "--timeout", "0.3"]
    switch.silent.add(("0200", "000002"))
    switch.refuse[("0400", "000002")] = "96"
    r = run(state, "purchase", "5", *card)
    assert r.exit_code == 3
    pending = state_mod.load(state).pending_reversal
    assert pending is not None and pending["11"] == "000002"
    r = run(state, "purchase", "6", *card)
    assert r.exit_code == 0, r.output
    assert [(m["t"], m["11"]) for m in switch.seen[-3:]] == [
        ("0400", "000002"),
        ("0400", "000002"),
        ("0200", "000003"),
    ]
    assert state_mod.load(state).pending_reversal is None


def test_connection_lost_mid_request_leaves_the_reversal_pending(tmp_path: Path, switch: FakeSwitch) -> None:
    state = tmp_path / "t.json"
    init(state, switch)
    run(state, "signon")
    switch.hang_up.add(("0200", "000002"))
    r = run(state, "purchase", "3", "--card", PAN, "--expiry", "3012", "--no-pin")
    assert r.exit_code == 1 and "closed the connection" in r.output
    pending = state_mod.load(state).pending_reversal
    assert pending is not None and pending["11"] == "000002" and pending["39"] == "98"
    r = run(state, "balance", "--card", PAN, "--expiry", "3012", "--no-pin")
    assert r.exit_code == 0, r.output
    assert [(m["t"], m["11"]) for m in switch.seen[-2:]] == [("0400", "000002"), ("0200", "000003")]
    assert state_mod.load(state).pending_reversal is None


def test_settle_uploads_when_unbalanced(tmp_path: Path, switch: FakeSwitch) -> None:
    state = tmp_path / "t.json"
    init(state, switch)
    run(state, "signon")
    run(state, "purchase", "1.00", "--card", PAN, "--expiry", "3012", "--no-pin")
    switch.approved_totals["debit"] += 1  # the switch disagrees
    r = run(state, "settle")
    assert r.exit_code == 0, r.output
    assert any("uploaded" in n for n in json.loads(r.stdout)["notes"])
    upload = [m for m in switch.seen if m["t"] == "0320"]
    assert len(upload) == 1 and upload[0]["60"].endswith("202")
    assert state_mod.load(state).batch == "000002"  # the next batch comes with the last 0330
    assert upload[0]["48"] == "01" + "00" + "000002" + PAN.rjust(20, "0") + "000000000100"


def test_bad_input_gives_one_line_and_non_zero_exit(tmp_path: Path) -> None:
    state = tmp_path / "t.json"
    runner = CliRunner()
    r = runner.invoke(
        cli, ["pos", "init", "-t", "T1", "--merchant", "M", "--tmk", "XYZ", "--state", str(state)]
    )
    assert r.exit_code == 1 and r.output.count("\n") == 1 and "TMK" in r.output
    closed = free_port()  # nothing listens there
    r = runner.invoke(
        cli,
        [
            "pos",
            "init",
            "-t",
            "T1",
            "--merchant",
            "M",
            "--tmk",
            TMK,
            "--state",
            str(state),
            "--port",
            str(closed),
        ],
    )
    assert r.exit_code == 0
    for args in (
        ["purchase", "12.345", "--card", PAN, "--expiry", "3012", "--pin", "1234"],
        ["purchase", "abc", "--card", PAN, "--expiry", "3012", "--pin", "1234"],
        ["purchase", "1", "--card", "12ab", "--expiry", "3012", "--pin", "1234"],
        ["purchase", "1", "--card", PAN, "--expiry", "3013", "--pin", "1234"],
        ["purchase", "1", "--card", PAN, "--expiry", "3012", "--pin", "12"],
        ["purchase", "1", "--card", PAN, "--expiry", "3012", "--pin", "1234"],  # no switch there
        ["void", "--stan", "000009"],
    ):
        r = run(state, *args, json_out=False)
        assert r.exit_code == 1, (args, r.output)
        assert r.output.count("\n") == 1, (args, r.output)
        assert PAN not in r.output


def test_settle_sends_the_pending_reversal_before_counting(tmp_path: Path, switch: FakeSwitch) -> None:
    state = tmp_path / "t.json"
    init(state, switch)
    card = ["--card", PAN, "--expiry", "3012", "--no-pin", "--timeout", "0.3"]
    assert run(state, "purchase", "4", *card).exit_code == 0  # signs on first: STAN 1, purchase STAN 2
    switch.silent.add(("0400", "000002"))
    r = run(state, "reverse", "--timeout", "0.3")  # the operator reverses it; no answer: pending
    assert "pending" in " ".join(json.loads(r.stdout)["notes"])
    r = run(state, "settle", "--timeout", "0.3")
    assert r.exit_code == 1 and "still unanswered" in r.output
    switch.silent.clear()
    switch.approved_totals["debit"] -= 400  # the switch applies the reversal too
    r = run(state, "settle")
    assert r.exit_code == 0, r.output
    notes = " ".join(json.loads(r.stdout)["notes"])
    assert "debits 0 (0.00 CNY)" in notes and "totals balanced" in notes
