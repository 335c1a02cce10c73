"""Crash safety of the switch: a request is written ahead (switch_write_ahead) before it goes upstream,
and a switch that dies with it in flight reverses it when it starts again.

Real processes (hsm_sim, the authorization host, the switch) on one PostgreSQL database, set up through
the operator CLIs as in test_host_e2e.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from typing import Any

import pytest
import trio

from ops.pgpool import PgPool
from switch.mapping import original_data
from switch.saf import SafQueue, recovered_journal_row, write_ahead_original
from switch.store import Store
from tests.fixtures.hsm import HsmServer
from tests.fixtures.pg import DatabaseAway, query
from tests.fixtures.services import run_cli, start_switch
from tests.switch.terminal import Terminal
from tests.switch.test_host_e2e import System, _until, _wait_link, seeded

# long enough that a purchase to a frozen host is still outstanding when the switch is killed
SWITCH = {"request_timeout_ms": 5000, "saf_retry_s": 1}


@pytest.fixture(scope="module")
def system(db_url: str, hsm_server: HsmServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    stub = seeded(db_url, hsm_server, tmp_path_factory, sm4_terminal=False, link_connections=1)
    env = stub.env
    stub.start_host()
    stub.switch = start_switch(db_url, hsm_server, **SWITCH)
    try:
        t = stub.terminal("3des")
        _wait_link(stub, t)
        t.close()
        yield stub
    finally:
        stub.switch.kill()
        stub.host.stop()
    check = run_cli(["ledger", "check"], env)
    assert check.returncode == 0, check.stdout + check.stderr


def _restart_switch(system: System, t: Terminal) -> None:
    """Start the switch again; ``t`` is connected and signed on again (same batch) once the link is up."""
    system.switch = start_switch(system.db_url, system.hsm, **SWITCH)
    t.connect(system.switch.ports["3des"])
    assert t.sign_on().code == "00"
    _wait_link(system, t)


def _written_ahead(system: System, terminal: Terminal, stan: str, mti: str) -> Any:
    rows: list[Any] = []

    def found() -> bool:
        rows[:] = query(
            system.db_url,
            "SELECT * FROM switch_write_ahead WHERE terminal_id = $1 AND stan = $2 AND mti = $3",
            terminal.terminal_id,
            stan,
            mti,
        )
        return bool(rows)

    _until(found, f"write-ahead record of {mti} {stan}", timeout=5)
    return rows[0]


def _advices(system: System, de90: str) -> list[Any]:
    return query(
        system.db_url,
        "SELECT done_at, response_code FROM switch_saf WHERE message->>'90' = $1 ORDER BY id",
        de90,
    )


def _ledger_clean(system: System) -> None:
    check = run_cli(["ledger", "check"], system.env)
    assert check.returncode == 0, check.stdout + check.stderr


def _kill_switch_while_host_frozen(system: System, t: Terminal, msg: dict[str, Any]) -> Any:
    """Send ``msg`` to a frozen host, SIGKILL the switch once it is written ahead, resume the host."""
    os.kill(system.host.process.pid, signal.SIGSTOP)
    try:
        t.send_raw(t.frame(msg))
        ahead = _written_ahead(system, t, msg["11"], msg["t"])
        time.sleep(0.2)  # the bytes follow the write-ahead commit at once; let them reach the host
        system.switch.process.send_signal(signal.SIGKILL)
        system.switch.process.wait(10)
    finally:
        os.kill(system.host.process.pid, signal.SIGCONT)
    t.close()
    return ahead


def test_switch_killed_with_a_purchase_in_flight_reverses_it_after_restart(system: System) -> None:
    t = system.terminal("3des")
    before = system.balance(0)
    msg = system.buy(t, 0, 900, pin="123456")
    ahead = _kill_switch_while_host_frozen(system, t, msg)
    # the host resumes and posts the purchase the terminal never saw approved
    _until(lambda: system.balance(0) == before - 900, "the host posting the orphaned purchase")
    de90 = original_data(ahead["link_mti"], ahead["link_stan"], ahead["link_de7"], ahead["link_de32"])
    assert _advices(system, de90) == []  # nothing was queued by the dead process

    _restart_switch(system, t)
    _until(
        lambda: (
            [a["response_code"] for a in _advices(system, de90)] == ["00"] and _advices(system, de90)[0][0]
        ),
        "the 0420 for the orphaned purchase answered by the host",
        info=lambda: (_advices(system, de90), system.switch.log()[-3000:]),
    )
    assert system.balance(0) == before
    journal = query(
        system.db_url,
        "SELECT response_code, link_stan, link_de7, rrn FROM switch_journal WHERE dedup_key = $1",
        ahead["dedup_key"],
    )
    assert [tuple(r) for r in journal] == [("98", ahead["link_stan"], ahead["link_de7"], ahead["rrn"])]
    gone = "SELECT 1 FROM switch_write_ahead WHERE dedup_key = $1"
    assert not query(system.db_url, gone, ahead["dedup_key"])

    # the terminal: a retransmission gets 98, nothing goes upstream; its 0400 finds the original (RRN)
    # and is answered 00 without a second reversal
    again = t.exchange(msg)
    assert again.code == "98" and t.verify_mac(again), again.msg
    rev = t.exchange(t.reversal_msg(msg))
    assert rev.code == "00" and rev.msg.get("37") == ahead["rrn"] and t.verify_mac(rev), rev.msg
    t.close()
    assert system.balance(0) == before
    assert len(_advices(system, de90)) == 1
    _ledger_clean(system)


def test_switch_killed_with_a_terminal_reversal_in_flight_reverses_once(system: System) -> None:
    t = system.terminal("3des")
    before = system.balance(1)
    msg = system.buy(t, 1, 1200, pin="123456")
    sale = t.exchange(msg)
    assert sale.code == "00"
    ahead = _kill_switch_while_host_frozen(system, t, t.reversal_msg(msg))
    _until(lambda: system.balance(1) == before, "the host applying the reversal sent before the crash")
    journal = query(
        system.db_url,
        "SELECT link_mti, link_stan, link_de7, link_de32 FROM switch_journal WHERE dedup_key = $1",
        ahead["dedup_key"].replace("|0400", "|0200"),
    )
    assert len(journal) == 1
    original = original_data(*journal[0])
    assert ahead["reverses"] == original  # the write-ahead record names the upstream original

    _restart_switch(system, t)
    _until(
        lambda: (
            [a["response_code"] for a in _advices(system, original)] in (["00"], ["25"])
            and _advices(system, original)[0][0] is not None
        ),
        "the 0420 naming the original purchase answered by the host",
        info=lambda: (_advices(system, original), system.switch.log()[-3000:]),
    )
    assert system.balance(1) == before  # reversed once, not twice
    rev = t.exchange(t.reversal_msg(msg))  # the terminal retries its 0400: the journal has it
    assert rev.code == "00" and t.verify_mac(rev)
    t.close()
    assert system.balance(1) == before and len(_advices(system, original)) == 1
    _ledger_clean(system)


def test_restart_without_a_crash_queues_nothing(system: System) -> None:
    t = system.terminal("3des")
    before = system.balance(1)
    r = t.exchange(system.buy(t, 1, 300, pin="123456"))
    assert r.code == "00"
    t.close()
    assert query(system.db_url, "SELECT 1 FROM switch_write_ahead")  # answered, not pruned yet
    saf = query(system.db_url, "SELECT count(*) FROM switch_saf")[0][0]
    assert system.switch.stop() == 0
    _restart_switch(system, t)
    t.close()
    assert query(system.db_url, "SELECT count(*) FROM switch_saf")[0][0] == saf
    # the earlier process's rows were all answered: start-up deleted them without queueing anything
    old_rows = "SELECT 1 FROM switch_write_ahead WHERE created_at < now() - interval '1 hour'"
    assert not query(system.db_url, old_rows)
    assert system.balance(1) == before - 300
    timed_out = "SELECT 1 FROM switch_journal WHERE response_code = '98' AND amount = 300"
    assert not query(system.db_url, timed_out)


def test_recovery_run_twice_or_concurrently_queues_one_advice(system: System) -> None:
    # an orphan of a dead process on a link that is no longer configured (never sent by the running
    # switch), written twice (a batch replayed after a lost commit acknowledgement)
    for _ in range(2):
        query(
            system.db_url,
            "INSERT INTO switch_write_ahead (created_at, dedup_key, channel, mti, txn_type, proc_code, "
            "terminal_id, merchant_id, batch_no, stan, amount, currency, pan_masked, rrn, link, link_mti, "
            "link_stan, link_de7, link_de32) VALUES "
            "(now() - interval '1 minute', 'pos|TX|MX|1|000777|0200', 'pos-3des', '0200', 'purchase', "
            "'000000', 'TX', 'MX', 1, '000777', 4200, '156', '621234******1234', '512340777777', 'gone', "
            "'0200', '777777', '1125120000', '48880000') ON CONFLICT (dedup_key) DO NOTHING",
        )
    de90 = original_data("0200", "777777", "1125120000", "48880000")

    async def main() -> list[int]:
        with PgPool(system.db_url, min_size=1, max_size=4) as pool:
            store = Store(pool)
            results: list[int] = []

            async def recover() -> None:
                saf = SafQueue(store, {}, retry_seconds=1, timeout=1)
                results.append(await saf.recover("48880000"))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(recover)
                nursery.start_soon(recover)
            await recover()
            return results

    assert sorted(trio.run(main)) == [0, 0, 1]
    advices = query(system.db_url, "SELECT link, message FROM switch_saf WHERE message->>'90' = $1", de90)
    assert len(advices) == 1 and advices[0]["link"] == "gone"
    advice = json.loads(advices[0]["message"])
    assert advice["t"] == "0420" and advice["4"] == "000000004200" and advice["37"] == "512340777777"
    assert advice["41"] == "TX" and "2" not in advice and "35" not in advice and "52" not in advice
    journal = query(
        system.db_url, "SELECT response_code FROM switch_journal WHERE dedup_key = 'pos|TX|MX|1|000777|0200'"
    )
    assert [r[0] for r in journal] == ["98"]
    query(system.db_url, "UPDATE switch_saf SET done_at = now() WHERE link = 'gone'")  # nobody will send it


def test_prune_deletes_only_answered_rows(system: System) -> None:
    t = system.terminal("3des")
    assert t.exchange(system.buy(t, 2, 100, pin="123456")).code == "00"
    t.close()
    query(
        system.db_url,
        "INSERT INTO switch_write_ahead (dedup_key, channel, mti, txn_type, link, link_mti, link_stan, "
        "link_de7, link_de32) VALUES ('in-flight', 'pos-3des', '0200', 'purchase', 'issuer', '0200', "
        "'999999', '0101000000', '48880000')",
    )

    async def main() -> tuple[int, int]:
        with PgPool(system.db_url, min_size=1, max_size=2) as pool:
            saf = SafQueue(Store(pool), {}, retry_seconds=1, timeout=1)
            return await saf.prune(), await saf.prune()

    first, second = trio.run(main)
    assert first >= 1 and second == 0
    left = query(system.db_url, "SELECT dedup_key FROM switch_write_ahead")
    assert [r[0] for r in left] == ["in-flight"]
    query(system.db_url, "DELETE FROM switch_write_ahead WHERE dedup_key = 'in-flight'")


def test_recovered_rows_answer_as_a_timeout_would() -> None:
    base = {
        "dedup_key": "h2h|acq1|12345678|1125120000|000001|T1|0200",
        "channel": "h2h:acq1",
        "mti": "0200",
        "txn_type": "purchase",
        "proc_code": "000000",
        "terminal_id": "T1",
        "merchant_id": "M1",
        "batch_no": None,
        "stan": "000001",
        "amount": 500,
        "currency": "156",
        "pan_masked": "621234******1234",
        "rrn": "512340000001",
        "original": None,
        "link": "issuer",
        "link_mti": "0200",
        "link_stan": "123456",
        "link_de7": "1125120000",
        "link_de32": "12345678",
        "reverses": None,
    }
    assert recovered_journal_row(base)[14] == "91"  # an acquirer's request: 91, as after a timeout
    assert recovered_journal_row({**base, "channel": "pos-3des"})[14] == "98"
    assert recovered_journal_row({**base, "mti": "0400", "txn_type": "reversal"})[14] == "00"
    original = write_ahead_original(base)
    assert original == {
        "t": "0200",
        "7": "1125120000",
        "11": "123456",
        "32": "12345678",
        "3": "000000",
        "37": "512340000001",
        "41": "T1",
        "42": "M1",
        "4": "000000000500",
        "49": "156",
    }


def test_journal_and_write_ahead_rows_round_trip_and_a_replayed_batch_is_not_an_error(system: System) -> None:
    """Every column comes back as written (types, NULLs, non-ASCII, the jsonb answer), and a batch
    written again (its first commit went through, its acknowledgement was lost) is not an error."""
    from switch.store import JOURNAL_COLUMNS, WRITE_AHEAD_COLUMNS

    key = f"pos|T-STORE|M-STORE|7|{time.time_ns() % 1_000_000:06d}|0200"
    journal = dict.fromkeys(JOURNAL_COLUMNS)
    journal |= {
        "dedup_key": key,
        "channel": "pos-3des",
        "mti": "0200",
        "txn_type": "purchase",
        "terminal_id": "T-STORE",
        "merchant_id": "M-STORE",
        "batch_no": 7,
        "amount": 12_345_678_901,
        "pan_masked": "621234******1234",
        "response_code": "00",
        "link": "issuer",
        "link_mti": "0200",
        "link_stan": "000042",
        "link_de7": "1125120000",
        "link_de32": "48880000",
        "us_total": 1500,
        "us_hsm": 300,
        "us_host": 900,
        "response": json.dumps({"39": "00", "43": "食堂 一号窗口"}),
    }
    ahead = {c: journal.get(c) for c in WRITE_AHEAD_COLUMNS} | {"reverses": "0200000001"}
    rows = [tuple(journal[c] for c in JOURNAL_COLUMNS)]
    ahead_rows = [tuple(ahead[c] for c in WRITE_AHEAD_COLUMNS)]

    async def main() -> None:
        with PgPool(system.db_url, min_size=1, max_size=2) as pool:
            store = Store(pool)
            await store.insert_journal(rows, ahead_rows)
            await store.insert_journal(rows, ahead_rows)  # replayed: the journal row is there already
            await store.insert_journal(rows)  # and without write-ahead rows

    trio.run(main)
    cols = ", ".join(JOURNAL_COLUMNS)
    (got,) = query(system.db_url, f"SELECT {cols} FROM switch_journal WHERE dedup_key = $1", key)
    assert {**dict(got), "response": json.loads(got["response"])} == {
        **journal,
        "response": {"39": "00", "43": "食堂 一号窗口"},
    }
    written = query(system.db_url, "SELECT * FROM switch_write_ahead WHERE dedup_key = $1", key)
    # one row: the key is unique since migration 0011 (several switch nodes), the replay took it over
    assert len(written) == 1 and all({c: w[c] for c in WRITE_AHEAD_COLUMNS} == ahead for w in written)
    query(system.db_url, "DELETE FROM switch_write_ahead WHERE dedup_key = $1", key)


def test_a_reversal_advice_waits_out_a_database_outage(db_url: str, pg_cluster: Any) -> None:
    """SafQueue.add returns once the advice is durable, however long the database is away; before, the
    error went up into the request (after its write-ahead, with the request maybe posted upstream): the
    terminal got 96, no advice was queued, and the approval stayed until a restart (tests/faults.py)."""
    original = original_data("0200", "424241", "1202000000", "1")
    advice = {"t": "0420", "11": "424242", "39": "98", "90": original}

    async def main() -> None:
        with PgPool(db_url, min_size=1, max_size=2) as pool:
            saf = SafQueue(Store(pool), {}, retry_seconds=1, timeout=1)
            with DatabaseAway(pg_cluster, db_url) as away:
                async with trio.open_nursery() as n:
                    n.start_soon(saf.add, "issuer", advice, "98")
                    await trio.sleep(0.5)  # the add is retrying, not failed
                    away.back()

    trio.run(main)
    rows = query(db_url, "SELECT message->>'11' FROM switch_saf WHERE message->>'11' = '424242'")
    assert [r[0] for r in rows] == ["424242"]
