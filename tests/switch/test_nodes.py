"""Several `switch serve` processes on one database (switch/README.md, "Several switch nodes").

Real processes: hsm_sim, the authorization host and TWO switch nodes on one PostgreSQL database, set up
through the operator CLIs as in test_host_e2e. A terminal signs on at one node and transacts at the
other; a retransmission sent to the other node gets the first answer and posts once; an advice is sent
once with both nodes running; node 1 killed with requests in flight is taken over by node 2.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from typing import Any

import pytest

from switch.mapping import original_data, transmission_time
from tests.fixtures.hsm import HsmServer
from tests.fixtures.pg import query
from tests.fixtures.services import ServiceProcess, run_cli, start_switch
from tests.switch.terminal import Terminal
from tests.switch.test_host_e2e import MERCHANT, System, _until, _wait_link, seeded

pytestmark = pytest.mark.slow

# lease 1 s: a dead node is taken over about 4 s after its last renewal
NODE = {"request_timeout_ms": 5000, "saf_retry_s": 1, "lease_seconds": 1}


class Nodes:
    def __init__(self, system: System, second: ServiceProcess) -> None:
        self.system = system
        self.one = system.switch
        self.two = second

    def terminal(self, node: ServiceProcess, *, sign_on: bool = True) -> Terminal:
        t = Terminal("3des", "T3DES001", MERCHANT)
        t.connect(node.ports["3des"])
        if sign_on:
            assert t.sign_on().code == "00"
        return t


@pytest.fixture(scope="module")
def nodes(db_url: str, hsm_server: HsmServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Nodes]:
    stub = seeded(db_url, hsm_server, tmp_path_factory, sm4_terminal=False, link_connections=1)
    stub.start_host()
    stub.switch = start_switch(db_url, hsm_server, **NODE)
    second = start_switch(db_url, hsm_server, **NODE)
    try:
        for node in (stub.switch, second):
            t = Terminal("3des", "T3DES001", MERCHANT)
            t.connect(node.ports["3des"])
            assert t.sign_on().code == "00"
            _wait_link(stub, t)
            t.close()
        yield Nodes(stub, second)
    finally:
        stub.switch.kill()
        second.kill()
        stub.host.stop()
    check = run_cli(["ledger", "check"], stub.env)
    assert check.returncode == 0, check.stdout + check.stderr


def test_nodes_hold_distinct_leases_and_stan_slots(nodes: Nodes) -> None:
    rows = query(nodes.system.db_url, "SELECT node_id, slot FROM switch_nodes WHERE expires_at > now()")
    assert len(rows) == 2 and len({r["slot"] for r in rows}) == 2


def test_sign_on_at_one_node_and_transact_at_the_other(nodes: Nodes) -> None:
    system = nodes.system
    t = nodes.terminal(nodes.two)  # node 2 holds this terminal's keys in memory
    assert t.exchange(system.buy(t, 0, 100, pin="123456")).code == "00"
    t.close()
    t.connect(nodes.one.ports["3des"])
    assert t.sign_on().code == "00"  # new working keys, written by node 1
    assert t.exchange(system.buy(t, 0, 100, pin="123456")).code == "00"
    t.close()
    before = system.balance(0)
    t.connect(nodes.two.ports["3des"])  # node 2's keys are stale: it reads the session again
    r = t.exchange(system.buy(t, 0, 250, pin="123456"))
    assert r.code == "00" and t.verify_mac(r)
    assert system.balance(0) == before - 250
    t.close()


def test_a_retransmission_at_the_other_node_gets_the_first_answer_and_posts_once(nodes: Nodes) -> None:
    system = nodes.system
    t = nodes.terminal(nodes.one)
    before = system.balance(1)
    msg = system.buy(t, 1, 300, pin="123456")
    first = t.exchange(msg)
    assert first.code == "00"
    t.close()
    t.connect(nodes.two.ports["3des"])  # node 2 never saw it: its write-ahead insert conflicts
    second = t.exchange(msg)
    assert second.code == "00" and second.msg["37"] == first.msg["37"] and t.verify_mac(second)
    assert second.msg["38"] == first.msg["38"]
    assert system.balance(1) == before - 300
    rows = query(
        system.db_url,
        "SELECT count(*) FROM switch_journal WHERE terminal_id = $1 AND stan = $2 AND mti = '0200'",
        t.terminal_id,
        msg["11"],
    )
    assert rows[0][0] == 1  # journaled once: the replay is not a new request
    t.close()


def test_an_advice_is_sent_once_with_two_nodes_running(nodes: Nodes) -> None:
    system = nodes.system
    de7 = transmission_time()
    advice = {
        "t": "0420",
        "3": "000000",
        "4": "000000000100",
        "7": de7,
        "11": "000009",
        "32": "48880000",
        "37": "000000000009",
        "39": "98",
        "41": "T3DES001",
        "42": MERCHANT,
        "49": "156",
        "90": original_data("0200", "000008", de7, "48880000"),
    }
    (row,) = query(
        system.db_url,
        "INSERT INTO switch_saf (link, message, reason) VALUES ('issuer', $1::jsonb, 'test') RETURNING id",
        json.dumps(advice),
    )
    saf_id = row[0]
    done = "SELECT attempts FROM switch_saf WHERE id = $1 AND done_at IS NOT NULL"
    _until(lambda: bool(query(system.db_url, done, saf_id)), "the advice delivered")
    time.sleep(1.5)  # a second sender would have sent it by now
    (attempts,) = query(system.db_url, "SELECT attempts FROM switch_saf WHERE id = $1", saf_id)
    assert attempts[0] == 1
    sent = [
        line
        for node in (nodes.one, nodes.two)
        for line in node.log().splitlines()
        if "reversal advice delivered" in line and _field(line, "saf_id") == saf_id
    ]
    assert len(sent) == 1, sent


def _field(line: str, name: str) -> Any:
    try:
        return json.loads(line).get(name)
    except ValueError:
        return None


def test_node_killed_under_load_is_taken_over_and_nothing_is_lost(nodes: Nodes) -> None:
    system = nodes.system
    t = nodes.terminal(nodes.one)
    start = system.balance(2)
    approved = 0
    for _ in range(5):  # approvals the terminal saw at node 1
        r = t.exchange(system.buy(t, 2, 10, pin="123456"))
        assert r.code == "00"
        approved += 10
    # requests in flight when node 1 dies: the host is frozen, so none is answered
    os.kill(system.host.process.pid, signal.SIGSTOP)
    in_flight = [system.buy(t, 2, 7, pin="123456") for _ in range(6)]
    try:
        for msg in in_flight:
            t.send_raw(t.frame(msg))
        stans = [m["11"] for m in in_flight]
        ahead = "SELECT count(*) FROM switch_write_ahead WHERE terminal_id = $1 AND stan = ANY($2::text[])"
        _until(lambda: query(system.db_url, ahead, t.terminal_id, stans)[0][0] == len(stans), "written ahead")
        time.sleep(0.2)  # the bytes follow the write-ahead commit at once; let them reach the host
        nodes.one.process.send_signal(signal.SIGKILL)
        nodes.one.process.wait(10)
    finally:
        os.kill(system.host.process.pid, signal.SIGCONT)
    t.close()
    # the terminal reconnects to node 2 and goes on
    t.connect(nodes.two.ports["3des"])
    for _ in range(3):
        r = t.exchange(system.buy(t, 2, 10, pin="123456"))
        assert r.code == "00"
        approved += 10
    # node 2 takes node 1 over: every unanswered request is journaled 98 and its 0420 delivered
    recovered = (
        "SELECT count(*) FROM switch_journal WHERE terminal_id = $1 AND stan = ANY($2::text[]) "
        "AND response_code = '98' AND reason = 'recovered_after_restart'"
    )
    taken = time.monotonic()
    _until(
        lambda: query(system.db_url, recovered, t.terminal_id, stans)[0][0] == len(stans),
        "node 1's write-ahead recovered by node 2",
        timeout=30,
    )
    took = time.monotonic() - taken
    undelivered = "SELECT count(*) FROM switch_saf WHERE done_at IS NULL AND message->>'41' = $1"
    _until(
        lambda: query(system.db_url, undelivered, t.terminal_id)[0][0] == 0, "advices delivered", timeout=30
    )
    gone = "SELECT 1 FROM switch_nodes WHERE node_id LIKE $1"
    assert not query(system.db_url, gone, f"%:{nodes.one.process.pid}")
    assert "lapsed switch node taken over" in nodes.two.log()
    # every approval seen posted once, every unanswered one reversed
    assert system.balance(2) == start - approved, took
    # a retransmission of a recovered request gets its 98, nothing goes upstream again
    r = t.exchange(in_flight[0])
    assert r.code == "98"
    assert system.balance(2) == start - approved
    t.close()
    check = run_cli(["ledger", "check"], system.env)
    assert check.returncode == 0, check.stdout + check.stderr
