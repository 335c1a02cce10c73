"""The ledger chained per posting batch (host.chain, migration 0023): the worked example recomputed with
gmssl's SM3, purchases through the real host verified OK, then the database owner's edits named by
`ledger verify`: a transfer's amount changed, a digest row deleted."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import trio
from gmssl import func, sm3

from host import chain
from host.check import run_checks
from ops.audit import GENESIS
from settlement.cycles import Cycle
from settlement.importer import import_file
from settlement.reports import write_run_outputs
from settlement.run import run_settlement
from specs.clearing import write_file
from tests.host.harness import Harness, message, programme, running_host
from tests.host.helpers import cli_env, ok, run
from tests.settlement.db import db
from tests.settlement.factories import detail, header
from tests.settlement.test_settle import setup_rates


def test_the_worked_example_with_gmssl_as_oracle() -> None:
    decision = ("pos:1", "0200", "purchase", "000000", 7, 3, "ACQ001", "T0000001", "M00000000000001",
                "000001", "1202080000", "000000000001", "1202080000", 1234, "156", "00", "123456", "",
                None, None, True, None, None)
    transfer = ("pos:1", 21, 9, 1234, "156", "single", "purchase", 7, None, None, None, None)
    lines = [chain.line(decision), chain.line(transfer)]
    assert lines[1] == '["pos:1", 21, 9, 1234, "156", "single", "purchase", 7, null, null, null, null]'
    at = dt.datetime(2026, 12, 2, 8, 0, tzinfo=dt.UTC)
    text = chain.canonical(0, 1, at, lines[:1], lines[1:])
    assert text.splitlines()[0] == '{"at":"2026-12-02T08:00:00.000000+00:00","chain":0,"seq":1}'
    sealed = chain.seal(0, (0, GENESIS), at, lines[:1], lines[1:])
    oracle = sm3.sm3_hash(func.bytes_to_list((GENESIS + text).encode()))
    assert sealed.hash == oracle and sealed.seq == 1 and sealed.prev_hash == GENESIS
    assert (sealed.decisions, sealed.transfers, len(sealed.row_crc)) == (1, 1, 8)


@pytest.fixture(scope="module")
def env(db_url: str, hsm_server: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return cli_env(tmp_path_factory.mktemp("chaincli"), db_url, hsm_server.env)


def owner(db_url: str, sql: str) -> list[Any]:
    """Run ``sql`` as the database owner (who may disable the append-only triggers); its rows."""

    async def go() -> list[Any]:
        conn = await asyncpg.connect(db_url)
        try:
            if ";" in sql:
                await conn.execute(sql)
                return []
            return list(await conn.fetch(sql))
        finally:
            await conn.close()

    return asyncio.run(go())


def test_purchases_verify_then_the_owners_edits_are_named(
    db_url: str, hsm_server: Any, env: dict[str, str], tmp_path: Path
) -> None:
    async def body(h: Harness) -> None:
        pans = await programme(h, "CHAIN", cards=8, load=50_000)  # loads: the shared chain (-1)
        async with trio.open_nursery() as n:  # purchases at once: several batches, several writers
            for round_ in range(3):
                for i, pan in enumerate(pans):
                    n.start_soon(h.client.request, message(h.client, pan, 100 + 10 * i + round_))
        decline = await h.client.request(message(h.client, pans[0], 10_000_000))
        assert decline["39"] != "00"  # a decline is sealed too
        checked, heads, broken = await h.pool.run(chain.verify)
        assert broken is None, broken
        assert {x.chain for x in heads} >= {-1} and len(heads) >= 2, heads
        assert checked == sum(x.seq for x in heads)
        failed = [r for r in await h.pool.run(run_checks) if not r.ok]
        assert not failed, failed

    trio.run(_run, db_url, hsm_server, body)
    unsealed = owner(db_url, "SELECT (SELECT count(*) FROM transfers WHERE batch_id IS NULL) AS t,"
                        " (SELECT count(*) FROM auth_requests WHERE batch_id IS NULL) AS a")
    assert (unsealed[0]["t"], unsealed[0]["a"]) == (0, 0)

    fine = ok(env, "ledger", "verify")
    assert fine["ok"] and fine["broken"] is None and fine["batches"] == sum(x["seq"] for x in fine["heads"])
    text = run(env, "ledger", "verify").output
    assert text.startswith(f"OK {fine['batches']} batches")
    for x in fine["heads"]:
        assert f"chain {x['chain']}: seq {x['seq']} batch {x['batch_id']} {x['hash']}" in text

    # the settlement report prints the chain heads, equal to what verify reports after the run (its
    # setup loaded the merchants' payables through the ledger: more batches on the shared chain)
    page = _settlement_report(db_url, tmp_path)
    after = ok(env, "ledger", "verify")
    assert after["ok"] and after["batches"] > fine["batches"]
    for x in after["heads"]:
        assert f"<td>ledger chain {x['chain']}, batch {x['seq']}</td><td><code>{x['hash']}</code>" in page
    assert "<td>audit row " in page

    # the owner edits a purchase's amount: its batch, and the transfer in it, are named
    victim = owner(db_url, "SELECT id, key, batch_id, amount FROM transfers WHERE code = 'purchase'"
                      " ORDER BY id LIMIT 1 OFFSET 5")[0]
    edit = ("ALTER TABLE transfers DISABLE TRIGGER transfers_append_only;"
            " UPDATE transfers SET amount = amount + {d} WHERE id = {id};"
            " ALTER TABLE transfers ENABLE TRIGGER transfers_append_only")
    owner(db_url, edit.format(d=1, id=victim["id"]))
    result = run(env, "--json", "ledger", "verify")
    assert result.exit_code == 1
    broken = json.loads(result.output)["broken"]
    assert broken["batch_id"] == victim["batch_id"]
    assert broken["row"] == f"transfer {victim['id']} (key {victim['key']})"
    assert "edited" in broken["reason"]
    human = run(env, "ledger", "verify")
    assert human.exit_code == 1 and f"ledger batch {victim['batch_id']}" in human.output
    assert f"transfer {victim['id']}" in human.output

    owner(db_url, edit.format(d=-1, id=victim["id"]))  # restored: the chain follows again
    assert ok(env, "ledger", "verify")["ok"]

    # the owner deletes a digest row in the middle of a chain: that batch is named
    gone = owner(db_url, "SELECT id, chain, seq FROM ledger_batches WHERE chain = -1 AND seq = 2")[0]
    owner(db_url, "ALTER TABLE ledger_batches DISABLE TRIGGER ledger_batches_append_only;"
             f" DELETE FROM ledger_batches WHERE id = {gone['id']};"
             " ALTER TABLE ledger_batches ENABLE TRIGGER ledger_batches_append_only")
    result = run(env, "--json", "ledger", "verify")
    assert result.exit_code == 1
    broken = json.loads(result.output)["broken"]
    assert broken["batch_id"] == gone["id"] and "missing" in broken["reason"]


def _settlement_report(db_url: str, tmp_path: Path) -> str:
    """A settlement run over a clearing file (tests/settlement's factories); its merchant page."""
    m = "CHN"
    setup_rates(db_url, m)
    day1, day2 = dt.date(2026, 11, 24), dt.date(2026, 11, 25)
    f1, _ = write_file(tmp_path, header(day1, "33330000"),
                       [detail(1, "PURCHASE", 10000, merchant_id=f"{m}A", store_id="S01")])
    db(db_url, lambda c: import_file(c, f1))
    result = db(db_url, lambda c: run_settlement(c, day2, Cycle()))
    assert result.run_id is not None
    run_id: int = result.run_id
    written = db(db_url, lambda c: write_run_outputs(c, run_id, tmp_path / "out"))
    (page,) = [p for p in written if p.name == f"merchant_{m}A.html"]
    again = db(db_url, lambda c: write_run_outputs(c, run_id, tmp_path / "again"))
    assert [p.read_bytes() for p in again] == [p.read_bytes() for p in written]  # the same bytes again
    return page.read_text()


async def _run(db_url: str, hsm_server: Any, body: Any) -> None:
    async with running_host(db_url, hsm_server, writers=4) as h:
        await body(h)


def test_the_digest_rows_are_append_only_for_the_application(db_url: str) -> None:
    async def body() -> None:
        conn = await asyncpg.connect(db_url)
        try:
            await conn.execute("SET ROLE payswitch_app")
            with pytest.raises(asyncpg.PostgresError):
                await conn.execute("UPDATE ledger_batches SET hash = repeat('0', 64)")
            with pytest.raises(asyncpg.PostgresError):
                await conn.execute("DELETE FROM ledger_batches")
        finally:
            await conn.close()

    asyncio.run(body())
