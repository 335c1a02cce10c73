"""The admin commands end to end: real database, real HSM, click's runner; and `ledger check` failing."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from tests.host.helpers import cli_env, ok, run


@pytest.fixture(scope="module")
def env(db_url: str, hsm_server: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return cli_env(tmp_path_factory.mktemp("hostcli"), db_url, hsm_server.env)


def test_programme_from_the_command_line(env: dict[str, str], db_url: str) -> None:
    ok(env, "product", "add", "CLI", "--kind", "reloadable", "--bin", "621250", "--max-balance", "1000.00")
    again = run(env, "product", "add", "CLI", "--kind", "reloadable", "--bin", "621250")
    assert again.exit_code == 1 and "already exists" in again.output and "Traceback" not in again.output
    ok(
        env,
        "product",
        "add",
        "GIFTC",
        "--kind",
        "fixed_amount",
        "--bin",
        "621251",
        "--face-value",
        "50.00",
        "--no-pin",
    )
    assert run(env, "product", "add", "X", "--kind", "usage_limited", "--bin", "621252").exit_code == 1
    ok(env, "merchant", "add", "898330160120009", "--name", "Shop", "--mcc", "5812")
    ok(env, "store", "add", "898330160120009", "S1")
    t1 = ok(
        env,
        "terminal",
        "add",
        "T0000009",
        "--merchant",
        "898330160120009",
        "--store",
        "S1",
        "--scheme",
        "3des",
        "--tmk",
        "0123456789ABCDEFFEDCBA9876543210",
    )
    assert t1["check_value"] == "08D7B4"  # the contract's check value of that key
    ok(
        env,
        "terminal",
        "add",
        "T0000010",
        "--merchant",
        "898330160120009",
        "--scheme",
        "sm4",
        "--tmk",
        "0123456789ABCDEFFEDCBA9876543210",
    )
    bad = run(
        env,
        "terminal",
        "add",
        "T0000011",
        "--merchant",
        "898330160120009",
        "--scheme",
        "3des",
        "--tmk",
        "00" * 16,
    )
    assert bad.exit_code == 1 and "parity" in bad.output

    issued = ok(env, "card", "issue", "--product", "CLI", "--count", "3", "--pin", "123456")
    pans = [c["pan"] for c in issued["cards"]]
    assert all(len(p) == 19 and p.startswith("621250") for p in pans)
    mailer = Path(issued["mailer"]).read_text()
    assert all(p not in mailer for p in pans) and "pin_under_lmk" in mailer
    assert oct(Path(issued["mailer"]).stat().st_mode)[-3:] == "600"
    cid = str(issued["cards"][0]["card_id"])
    assert run(env, "card", "load", cid, "--amount", "10").exit_code == 1  # inventory: not active
    ok(env, "card", "activate", pans[0])
    loaded = ok(env, "card", "load", pans[0], "--amount", "500.00", "--reference", "r1")
    assert loaded["balance_minor"] == 50_000 and loaded["currency"] == "CNY"
    assert ok(env, "card", "load", cid, "--amount", "500.00", "--reference", "r1")["duplicate"] is True
    over = run(env, "card", "load", cid, "--amount", "600.00")
    assert over.exit_code == 1 and "maximum balance" in over.output
    ok(env, "card", "freeze", cid)
    assert run(env, "card", "freeze", cid).exit_code == 1
    ok(env, "card", "unfreeze", cid)
    shown = ok(env, "card", "show", cid)
    assert (
        shown["state"] == "active"
        and shown["balance_minor"] == 50_000
        and shown["pan_masked"].endswith(pans[0][-4:])
    )
    assert ok(env, "card", "reset-pin-tries", cid)["pin_tries_were"] == 0
    history = ok(env, "card", "history", cid)
    assert [h["rc"] for h in history] == ["61", "00", "05"]  # newest first; the inventory load too

    gift = ok(env, "card", "issue", "--product", "GIFTC", "--count", "1", "--activate")["cards"][0]
    assert ok(env, "card", "show", str(gift["card_id"]))["balance_minor"] == 5_000

    check = ok(env, "ledger", "check")
    assert check["ok"] is True

    async def corrupt() -> int:
        conn = await asyncpg.connect(db_url)
        try:
            acct = await conn.fetchval("SELECT account_id FROM cards WHERE id = $1", int(cid))
            await conn.execute("UPDATE accounts SET credits_posted = credits_posted + 1 WHERE id = $1", acct)
            return int(acct)
        finally:
            await conn.close()

    acct = asyncio.run(corrupt())
    failed = run(env, "ledger", "check")
    assert failed.exit_code == 1
    assert f"FAILED accounts_match_entries: {acct}" in failed.output
    assert "FAILED ledger_sums_to_zero: 156" in failed.output
