"""Money out of a card (issue 15 item 2): `card unload` to the cash-out payable that settlement pays,
`card close` refused while money is on it, `--forfeit` to breakage income, the invariants `ledger
check` names for them, and `card expire --as-of` in the future needing --yes. Real database, real HSM,
the real commands."""

from __future__ import annotations

import asyncio
import csv
import datetime as dt
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from host.ledger import Ledger
from host.model import Txn
from tests.host.helpers import MERCHANT, cli_env, ok, req, run

NEW_INVARIANTS = ("cash_out_from_unloads_only", "cash_out_paid_once", "breakage_from_forfeits_only")


@pytest.fixture(scope="module")
def env(db_url: str, hsm_server: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    e = cli_env(tmp_path_factory.mktemp("cardclose"), db_url, hsm_server.env)
    ok(e, "product", "add", "OUT", "--kind", "reloadable", "--bin", "621260", "--no-pin")
    ok(e, "merchant", "add", MERCHANT, "--name", "Canteen", "--mcc", "5812")
    return e


def _card(env: dict[str, str], load: str | None = "500.00") -> str:
    cid = str(ok(env, "card", "issue", "--product", "OUT", "--activate")["cards"][0]["card_id"])
    if load:
        ok(env, "card", "load", cid, "--amount", load)
    return cid


def _sql(db_url: str, sql: str, *args: Any) -> list[Any]:
    async def go() -> list[Any]:
        conn = await asyncpg.connect(db_url)
        try:
            return list(await conn.fetch(sql, *args))
        finally:
            await conn.close()

    return asyncio.run(go())


def _hold(db_url: str, card_id: str, amount: int) -> None:
    """A pre-auth hold on the card, posted by the engine as `host serve` would."""

    async def go() -> None:
        conn = await asyncpg.connect(db_url)
        try:
            [d] = await Ledger().post_batch(conn, [req(Txn.PREAUTH, None, amount, card_id=int(card_id))])
            assert d.code == "00", d
        finally:
            await conn.close()

    asyncio.run(go())


def test_unload_is_idempotent_and_takes_at_most_the_available(env: dict[str, str], db_url: str) -> None:
    cid = _card(env)
    first = ok(env, "card", "unload", cid, "--amount", "120.50", "--reference", "U-1")
    assert first["unloaded_minor"] == 12_050 and first["currency"] == "CNY" and not first["duplicate"]
    again = ok(env, "card", "unload", cid, "--amount", "120.50", "--reference", "U-1")
    assert again["duplicate"] and again["unloaded_minor"] == 12_050
    assert ok(env, "card", "show", cid)["balance_minor"] == 50_000 - 12_050  # unloaded once
    other = run(env, "card", "unload", cid, "--amount", "1.00", "--reference", "U-1")
    assert other.exit_code == 1 and "reference U-1 already unloaded 120.50 CNY" in other.output

    _hold(db_url, cid, 30_000)
    over = run(env, "card", "unload", cid, "--amount", "100.00", "--reference", "U-2")
    assert over.exit_code == 1 and "Traceback" not in over.output
    assert "100.00 CNY is more than its available balance 79.50 CNY" in over.output
    assert "300.00 CNY held by pending pre-auths" in over.output
    # a refusal leaves the reference free: all that is available, under the same reference
    rest = ok(env, "card", "unload", cid, "--reference", "U-2")
    assert rest["unloaded_minor"] == 7_950 and rest["held_minor"] == 30_000
    human = run(env, "card", "unload", cid, "--reference", "U-2")
    assert human.exit_code == 0 and "already unloaded 79.50 CNY under reference U-2" in human.output
    assert "settlement" in human.output
    nothing = run(env, "card", "unload", cid, "--reference", "U-3")
    assert nothing.exit_code == 1 and "nothing available to unload" in nothing.output
    assert run(env, "card", "unload", cid, "--amount", "0", "--reference", "U-4").exit_code == 2
    assert ok(env, "ledger", "check")["ok"] is True


def test_close_refused_while_money_is_on_the_card(env: dict[str, str], db_url: str) -> None:
    cid = _card(env)
    refused = run(env, "card", "close", cid)
    assert refused.exit_code == 1 and "Traceback" not in refused.output
    assert (
        f"card {cid} holds 500.00 CNY: unload it first (`payswitch card unload {cid} --reference ...`)"
        " or give --forfeit to post it to breakage income"
    ) in refused.output
    assert ok(env, "card", "show", cid)["state"] == "active"
    ok(env, "card", "unload", cid, "--reference", f"CLOSE-{cid}")
    closed = ok(env, "card", "close", cid)
    assert closed["to"] == "closed" and closed["forfeited_minor"] == 0
    assert run(env, "card", "close", cid).exit_code == 1  # closed already
    assert run(env, "card", "close", _card(env, load=None)).exit_code == 0  # never loaded: fine

    held = _card(env)
    _hold(db_url, held, 10_000)
    for args in ((), ("--forfeit",)):
        r = run(env, "card", "close", held, *args)
        assert r.exit_code == 1 and "100.00 CNY of it held by pending pre-auths" in r.output, r.output
    assert ok(env, "card", "show", held)["state"] == "active"


def test_forfeit_posts_the_balance_to_breakage_and_closes(env: dict[str, str], db_url: str) -> None:
    cid = _card(env, load="42.10")
    out = run(env, "card", "close", cid, "--forfeit")
    assert out.exit_code == 0 and "closed; 42.10 CNY forfeited to breakage income" in out.output
    shown = ok(env, "card", "show", cid)
    assert shown["state"] == "closed" and shown["balance_minor"] == 0
    [row] = _sql(
        db_url,
        "SELECT t.amount, a.kind, a.credits_posted FROM transfers t JOIN accounts a"
        " ON a.id = t.credit_account_id WHERE t.code = 'forfeit' AND t.card_id = $1",
        int(cid),
    )
    assert (row["amount"], row["kind"]) == (4_210, "breakage") and row["credits_posted"] >= 4_210
    check = ok(env, "ledger", "check")
    assert check["ok"] is True and all(check["checks"][n]["ok"] for n in NEW_INVARIANTS)
    # nothing of a forfeit in the clearing file's view (no merchant, no float)
    assert not _sql(db_url, "SELECT 1 FROM clearing_postings WHERE posting_id IN"
                    " (SELECT id FROM transfers WHERE code IN ('forfeit', 'admin_unload'))")


def test_settlement_pays_each_cash_out_exactly_once(
    env: dict[str, str], db_url: str, tmp_path: Path
) -> None:
    cid = _card(env, load="88.00")
    ok(env, "card", "unload", cid, "--amount", "60.00", "--reference", "PAYME-1")
    unpaid = {r["key"] for r in _sql(db_url, "SELECT key FROM transfers WHERE code = 'admin_unload'")}
    out = tmp_path / "out"
    first = ok(env, "settle", "--output-dir", str(out))
    run_id = first["run"]["run_id"]
    paid = {c["reference"]: c for c in first["run"]["cash_outs"]}
    assert paid["PAYME-1"]["amount_minor"] == 6_000 and paid["PAYME-1"]["card_id"] == int(cid)
    assert len(paid) == len(unpaid)  # every unpaid unload of the module, each once
    lines = list(csv.DictReader((out / f"run_{run_id}" / f"payouts_{run_id}.csv").read_text().splitlines()))
    mine = [x for x in lines if x["reference"] == "PAYME-1"]
    assert mine == [
        {"reference": "PAYME-1", "merchant_id": "", "payout_account": f"cardholder:card:{cid}",
         "amount": "6000", "value_date": mine[0]["value_date"], "payee_type": "cardholder_desk",
         "bank_name": "", "account_masked": "", "account_holder": "", "account_enc": ""}
    ]
    assert "PAYME-1" in (out / f"run_{run_id}" / f"cashouts_{run_id}.csv").read_text()

    again = ok(env, "settle", "--output-dir", str(out))
    assert again["run"]["run_id"] is None and again["run"]["cash_outs"] == []
    payouts = _sql(db_url, "SELECT original_key, amount FROM transfers WHERE code = 'cash_out_payout'")
    assert sorted(p["original_key"] for p in payouts) == sorted(unpaid)
    assert ok(env, "ledger", "check")["ok"] is True
    assert ok(env, "settlement", "check")["ok"] is True

    # the database itself refuses a second payout of the same unload
    def second_payout() -> None:
        _sql(db_url, "INSERT INTO transfers (key, debit_account_id, credit_account_id, amount, currency,"
             " phase, code, card_id, original_key) SELECT 'cashout:' || key, credit_account_id,"
             " debit_account_id, amount, currency, 'single', 'cash_out_payout', card_id, key"
             " FROM transfers WHERE key = 'unload:PAYME-1'")

    with pytest.raises(asyncpg.UniqueViolationError):
        second_payout()

    # a later unload goes in the next run
    ok(env, "card", "unload", cid, "--reference", "PAYME-2")
    third = run(env, "settle", "--output-dir", str(out))
    assert third.exit_code == 0 and "cash-out PAYME-2: 28.00 CNY to the cardholder of card" in third.output


def test_expire_as_of_in_the_future_needs_yes(env: dict[str, str]) -> None:
    refused = run(env, "card", "expire", "--as-of", "2099-05-01")
    assert refused.exit_code == 1 and "Traceback" not in refused.output
    assert "--as-of 2099-05-01 is in the future" in refused.output
    assert "cards not yet expired would be expired; give --yes to do it" in refused.output
    assert ok(env, "card", "expire", "--as-of", "2099-05-01", "--dry-run")["count"] >= 1  # no --yes needed
    tomorrow = (dt.datetime.now(dt.UTC).date() + dt.timedelta(days=2)).isoformat()
    assert ok(env, "card", "expire", "--as-of", tomorrow, "--yes")["count"] == 0
    assert ok(env, "card", "expire", "--as-of", "2020-01-01")["count"] == 0  # the past: no --yes


def test_ledger_check_names_the_new_invariants_and_fails_on_them(env: dict[str, str], db_url: str) -> None:
    cid = _card(env, load="10.00")
    ok(env, "card", "close", cid, "--forfeit")
    ok(env, "card", "unload", _card(env, load="5.00"), "--reference", "CORRUPT-BASE")
    clean = run(env, "ledger", "check")
    assert clean.exit_code == 0 and all(f"OK     {n}" in clean.output for n in NEW_INVARIANTS)

    # A transfer that is not a forfeit into breakage income, and one that is not an unload into the
    # cash-out payable; the account sums moved with them, so only these invariants break.
    _sql(db_url, """
        WITH f AS (SELECT id FROM accounts WHERE kind = 'funding' AND currency = '156' ORDER BY id LIMIT 1),
             b AS (SELECT id FROM accounts WHERE kind = 'breakage' AND currency = '156'),
             c AS (SELECT id FROM accounts WHERE kind = 'cash_out' AND currency = '156'),
             ins AS (
                INSERT INTO transfers (key, debit_account_id, credit_account_id, amount, currency, phase,
                                       code, card_id)
                SELECT 'corrupt-breakage', f.id, b.id, 100, '156', 'single', 'admin_load', 1 FROM f, b
                UNION ALL
                SELECT 'corrupt-cash-out', f.id, c.id, 100, '156', 'single', 'admin_load', 1 FROM f, c)
        UPDATE accounts SET
            debits_posted = debits_posted + CASE WHEN id = (SELECT id FROM f) THEN 200 ELSE 0 END,
            credits_posted = credits_posted + CASE WHEN id = (SELECT id FROM f) THEN 0 ELSE 100 END
        WHERE id IN (SELECT id FROM f UNION SELECT id FROM b UNION SELECT id FROM c)""")
    failed = run(env, "ledger", "check")
    assert failed.exit_code == 1
    assert "FAILED breakage_from_forfeits_only: corrupt-breakage" in failed.output
    assert "FAILED cash_out_from_unloads_only: " in failed.output and "corrupt-cash-out" in failed.output
    assert "OK     accounts_match_entries" in failed.output and "OK     ledger_sums_to_zero" in failed.output
