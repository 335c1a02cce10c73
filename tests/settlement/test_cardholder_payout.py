"""Unload to the cardholder's bank account, paid by settlement (issue 16 item 5), end to end: a
cardholder registered by host.cardholders (real HSM), a bank account set through the CLI, a card of
theirs loaded and unloaded with `card unload`, `settle`, and the payout file's cardholder payout line
read back; the account changed after an unload does not change where it is paid; a card without a
cardholder is paid at the desk as before; the clear account number is in no file and no table."""

from __future__ import annotations

import asyncio
import csv
import subprocess
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import pytest
import trio

from host import cardholders, pii
from host.cli import open_crypto
from host.keys import IssuerCrypto
from host.ledger import SERVER_SETTINGS
from ops.pgembed import find_bindir
from ops.pgpool import PgPool
from tests.host.helpers import MERCHANT, cli_env, ok, run

T = TypeVar("T")
HOLDER = "Zhang San"
ACCOUNT_TYPED = "6222 0212 3456 7890 123"  # as an operator types it
ACCOUNT = "6222021234567890123"  # its normalised form
ACCOUNT_MASKED = "*" * 15 + "0123"
NEW_ACCOUNT = "6217000011112222"
NEW_MASKED = "*" * 12 + "2222"
ID_NUMBER = "11010119900307123X"


def _hsm(db_url: str, hsm_server: Any, fn: Callable[[PgPool, IssuerCrypto], Awaitable[T]]) -> T:
    """``fn(pool, crypto)`` with the host's pool (as the app role) and the real HSM."""

    async def main() -> T:
        with PgPool(db_url, min_size=1, max_size=4, role="payswitch_app",
                    server_settings=SERVER_SETTINGS) as pool:
            async with hsm_server.client() as hsm:
                return await fn(pool, await open_crypto(pool, hsm))

    return trio.run(main)


def _sql(db_url: str, sql: str, *args: Any) -> list[Any]:
    async def go() -> list[Any]:
        conn = await asyncpg.connect(db_url)
        try:
            return list(await conn.fetch(sql, *args))
        finally:
            await conn.close()

    return asyncio.run(go())


@pytest.fixture(scope="module")
def env(db_url: str, hsm_server: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("payout")
    e = cli_env(root, db_url, hsm_server.env)
    ok(e, "product", "add", "PAYOUT", "--kind", "reloadable", "--bin", "621270", "--no-pin")
    ok(e, "merchant", "add", MERCHANT, "--name", "Canteen", "--mcc", "5812")

    async def register(pool: PgPool, crypto: IssuerCrypto) -> int:
        new = cardholders.NewCardholder(HOLDER, id_type="resident_id", id_number=ID_NUMBER)
        return (await cardholders.register(pool, crypto, new, "test:payout", aml_threshold=88)).cardholder_id

    chid = _hsm(db_url, hsm_server, register)
    return {"env": e, "root": root, "cardholder": chid}


def _card(e: dict[str, str], db_url: str, hsm_server: Any, owner: int | None, load: str) -> str:
    cid = str(ok(e, "card", "issue", "--product", "PAYOUT", "--activate")["cards"][0]["card_id"])
    if owner is not None:
        async def assign(pool: PgPool, _crypto: IssuerCrypto) -> None:
            await pool.run(cardholders.assign_cards, [int(cid)], owner)

        _hsm(db_url, hsm_server, assign)
    ok(e, "card", "load", cid, "--amount", load)
    return cid


def test_bank_account_rules(env: dict[str, Any]) -> None:
    e, chid = env["env"], str(env["cardholder"])
    shown = ok(e, "cardholder", "bank-account", "show", chid)
    assert shown["bank_account"] is None and shown["events"] == []
    wrong = run(e, "cardholder", "bank-account", "set", chid, "--bank", "ICBC", "--account", ACCOUNT,
                "--holder", "Li Si")
    assert wrong.exit_code == 1 and "Traceback" not in wrong.output
    assert "is not cardholder" in wrong.output and "own account" in wrong.output
    bad = run(e, "cardholder", "bank-account", "set", chid, "--bank", "ICBC", "--account", "12-34")
    assert bad.exit_code == 1 and "a bank account number is 8 to 34 digits" in bad.output
    assert "12-34" not in bad.output
    nobody = run(e, "cardholder", "bank-account", "set", "999999", "--bank", "ICBC", "--account", ACCOUNT)
    assert nobody.exit_code == 1 and "no cardholder 999999" in nobody.output
    assert run(e, "cardholder", "bank-account", "clear", chid).exit_code == 1  # nothing to clear

    # the holder defaults to the cardholder; case and spacing of the name do not matter
    s = ok(e, "cardholder", "bank-account", "set", chid, "--bank", "ICBC Beijing", "--holder", "zhang  SAN",
           input=ACCOUNT_TYPED + "\n")
    assert s["bank_account"] == {"bank_name": "ICBC Beijing", "account_masked": ACCOUNT_MASKED,
                                 "account_holder": "zhang SAN"}
    human = run(e, "cardholder", "bank-account", "set", chid, "--bank", "ICBC Beijing",
                "--account", ACCOUNT_TYPED, "--reason", "payout")
    assert human.exit_code == 0 and f"unloads are paid to {ACCOUNT_MASKED} at ICBC Beijing, holder {HOLDER}" \
        in human.output
    shown = ok(e, "cardholder", "bank-account", "show", chid)
    assert shown["bank_account"]["account_holder"] == HOLDER
    assert [x["action"] for x in shown["events"]] == ["set", "set"]
    assert shown["events"][0]["reason"] == "payout"
    assert shown["events"][0]["actor"].startswith("cli:")


def test_unload_to_the_bank_account_paid_by_settlement(
    env: dict[str, Any], db_url: str, hsm_server: Any, tmp_path: Path
) -> None:
    e, chid = env["env"], env["cardholder"]
    ok(e, "cardholder", "bank-account", "set", str(chid), "--bank", "ICBC Beijing", "--account", ACCOUNT)
    cid = _card(e, db_url, hsm_server, chid, "500.00")
    u = ok(e, "card", "unload", cid, "--amount", "300.00", "--reference", "BANK-1")
    assert u["unloaded_minor"] == 30_000
    assert u["destination"] == {"payee": "bank_account", "cardholder_id": chid, "bank_name": "ICBC Beijing",
                                "account_masked": ACCOUNT_MASKED, "account_holder": HOLDER, "why": ""}
    again = run(e, "card", "unload", cid, "--amount", "300.00", "--reference", "BANK-1")
    assert again.exit_code == 0 and f"bank account {ACCOUNT_MASKED} at ICBC Beijing" in again.output
    refused = run(e, "card", "unload", cid, "--reference", "BANK-1", "--to", "desk")
    assert refused.exit_code == 1 and "already unloaded to the bank account" in refused.output

    # the account changes after the unload: BANK-1 is still paid to the old one, BANK-2 to the new one
    ok(e, "cardholder", "bank-account", "set", str(chid), "--bank", "CCB", "--account", NEW_ACCOUNT)
    u2 = ok(e, "card", "unload", cid, "--amount", "50.00", "--reference", "BANK-2")
    assert u2["destination"]["account_masked"] == NEW_MASKED and u2["destination"]["bank_name"] == "CCB"
    desk = ok(e, "card", "unload", cid, "--amount", "20.00", "--reference", "ASKED-DESK", "--to", "desk")
    assert desk["destination"]["payee"] == "desk" and desk["destination"]["why"] == "--to desk"
    # cleared: later unloads go to the desk, saying why; --to bank is refused
    ok(e, "cardholder", "bank-account", "clear", str(chid), "--reason", "account closed")
    no_bank = run(e, "card", "unload", cid, "--amount", "10.00", "--reference", "NO-BANK", "--to", "bank")
    assert no_bank.exit_code == 1 and f"cardholder {chid} has no bank account registered" in no_bank.output
    cleared = run(e, "card", "unload", cid, "--amount", "10.00", "--reference", "CLEARED")
    assert cleared.exit_code == 0
    assert f"to the programme's desk (cardholder {chid} has no bank account registered)" in cleared.output

    # a card with no cardholder: paid at the desk, as before
    anon = _card(e, db_url, hsm_server, None, "80.00")
    a = ok(e, "card", "unload", anon, "--reference", "ANON-1")
    assert a["destination"]["payee"] == "desk" and a["destination"]["why"] == "the card has no cardholder"
    assert run(e, "card", "unload", anon, "--reference", "ANON-2", "--to", "bank").exit_code == 1

    out = tmp_path / "out"
    settled = ok(e, "settle", "--output-dir", str(out))
    run_id = settled["run"]["run_id"]
    paid = {c["reference"]: c for c in settled["run"]["cash_outs"]}
    assert paid["BANK-1"]["payee"] == "bank_account" and paid["BANK-1"]["account_masked"] == ACCOUNT_MASKED
    assert paid["ANON-1"]["payee"] == "desk" and paid["ANON-1"]["account_masked"] is None

    folder = out / f"run_{run_id}"
    lines = {x["reference"]: x for x in csv.DictReader((folder / f"payouts_{run_id}.csv").open())}
    enc = {r["unload_key"]: r["account_enc"] for r in _sql(db_url, "SELECT * FROM unload_destinations")}
    assert lines["BANK-1"] == {
        "reference": "BANK-1", "merchant_id": "", "payout_account": f"cardholder:{chid}", "amount": "30000",
        "value_date": lines["BANK-1"]["value_date"], "payee_type": "cardholder_bank_account",
        "bank_name": "ICBC Beijing", "account_masked": ACCOUNT_MASKED, "account_holder": HOLDER,
        "account_enc": enc["unload:BANK-1"]}
    assert (lines["BANK-2"]["account_masked"], lines["BANK-2"]["bank_name"]) == (NEW_MASKED, "CCB")
    for ref in ("ASKED-DESK", "CLEARED"):
        assert lines[ref]["payee_type"] == "cardholder_desk"
        assert lines[ref]["payout_account"] == f"cardholder:card:{cid}"
    assert lines["ANON-1"] == {
        "reference": "ANON-1", "merchant_id": "", "payout_account": f"cardholder:card:{anon}",
        "amount": "8000", "value_date": lines["ANON-1"]["value_date"], "payee_type": "cardholder_desk",
        "bank_name": "", "account_masked": "", "account_holder": "", "account_enc": ""}
    cash = {x["reference"]: x for x in csv.DictReader((folder / f"cashouts_{run_id}.csv").open())}
    assert cash["BANK-1"]["account_masked"] == ACCOUNT_MASKED and cash["BANK-1"]["account_holder"] == HOLDER

    # what the payout file carries is the account as stored: the bank gateway's HSM turns it back
    async def reveal(_pool: PgPool, crypto: IssuerCrypto) -> list[str]:
        return [await pii.reveal(crypto, lines[r]["account_enc"]) for r in ("BANK-1", "BANK-2")]

    assert _hsm(db_url, hsm_server, reveal) == [ACCOUNT, NEW_ACCOUNT]

    shown = run(e, "settlement", "run", "show", str(run_id), "--output-dir", str(out))
    assert shown.exit_code == 0
    assert f"cash-out BANK-1  card {cid}" in shown.output
    assert f"300.00 CNY to bank account {ACCOUNT_MASKED} at ICBC Beijing (holder {HOLDER})" in shown.output
    assert "cash-out ANON-1" in shown.output and "80.00 CNY to the programme's desk" in shown.output
    shown_json = {c["reference"]: c for c in ok(e, "settlement", "run", "show", str(run_id), "--output-dir",
                                                 str(out))["cash_outs"]}
    assert shown_json["BANK-2"]["account_masked"] == NEW_MASKED
    assert shown_json["BANK-2"]["amount_minor"] == 5_000
    assert ok(e, "ledger", "check")["ok"] is True
    assert ok(e, "settlement", "check")["ok"] is True

    # the clear account number is in no file and no table (normalised or as typed)
    files = [p for p in sorted([*env["root"].rglob("*"), *out.rglob("*")]) if p.is_file()]
    dump = subprocess.run([str(find_bindir() / "pg_dump"), "--no-owner", "--dbname", db_url],
                          capture_output=True, timeout=300, check=True).stdout
    rows = _sql(db_url, "SELECT row_to_json(h)::text AS j FROM cardholders h")
    for clear in (ACCOUNT, ACCOUNT_TYPED, NEW_ACCOUNT, ACCOUNT[-12:], NEW_ACCOUNT[-12:]):
        assert clear.encode() not in dump, clear
        assert not [r for r in rows if clear in r["j"]]
        assert not [p for p in files if clear.encode() in p.read_bytes()], clear
    assert ACCOUNT_MASKED.encode() in dump and b"unload_destinations" in dump  # the dump is the real one


def test_a_posted_destination_is_fixed_and_checked(
    env: dict[str, Any], db_url: str, hsm_server: Any
) -> None:
    e, chid = env["env"], env["cardholder"]
    ok(e, "cardholder", "bank-account", "set", str(chid), "--bank", "BOC", "--account", "6013820000001111")
    cid = _card(e, db_url, hsm_server, chid, "30.00")
    ok(e, "card", "unload", cid, "--reference", "FIXED-1")
    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="fixed once the unload is posted"):
        _sql(db_url, "UPDATE unload_destinations SET account_masked = '****9999' WHERE unload_key = $1",
             "unload:FIXED-1")
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        _sql(db_url, "DELETE FROM unload_destinations WHERE unload_key = $1", "unload:FIXED-1")

    # a destination that is not of its unload's card breaks `ledger check` (trigger set aside for it)
    other = _card(e, db_url, hsm_server, None, "1.00")
    _sql(db_url, "ALTER TABLE unload_destinations DISABLE TRIGGER unload_destinations_fixed")
    try:
        _sql(db_url, "UPDATE unload_destinations SET card_id = $2 WHERE unload_key = $1", "unload:FIXED-1",
             int(other))
        broken = run(e, "ledger", "check")
        assert broken.exit_code == 1 and "unload_destination_of_its_unload" in broken.output
        assert "unload:FIXED-1" in broken.output
    finally:
        _sql(db_url, "UPDATE unload_destinations SET card_id = $2 WHERE unload_key = $1", "unload:FIXED-1",
             int(cid))
        _sql(db_url, "ALTER TABLE unload_destinations ENABLE TRIGGER unload_destinations_fixed")
    assert ok(e, "ledger", "check")["ok"] is True

    # a cash-out recorded as paid elsewhere than its destination breaks `settlement check`
    ok(e, "settle", "--output-dir", str(env["root"] / "out"))
    _sql(db_url, "UPDATE settlement_cashouts SET account_masked = '****0000' WHERE reference = 'FIXED-1'")
    try:
        broken = run(e, "settlement", "check")
        assert broken.exit_code == 1 and "cash-out FIXED-1" in broken.output
    finally:
        _sql(db_url, "UPDATE settlement_cashouts SET account_masked = $1 WHERE reference = 'FIXED-1'",
             "*" * 12 + "1111")
    assert ok(e, "settlement", "check")["ok"] is True
