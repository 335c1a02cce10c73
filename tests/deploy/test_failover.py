"""The database fails over under load (issue 20 item 4): the whole topology of `payswitch cluster up`
(etcd, three Patroni members with synchronous replication, HAProxy, HSM, host, switch), terminals buying
through HAProxy's POS port, the PostgreSQL primary's box killed (SIGKILL to its Patroni, its postmaster
and every backend) mid-load. Patroni promotes the synchronous standby, HAProxy follows it, the services
reconnect on their own; the terminals keep buying until approvals come back, then deliver the reversals
of what they never saw answered. Afterwards every purchase a terminal saw approved is in the ledger once,
nothing else of the run is kept, no SAF or write-ahead row is open, `ledger check` and `ledger verify`
are clean (tests/faults.py's check). Printed: the time without service (RTO: the first purchase that
failed after the kill to the first approved again) and the approvals lost (asserted 0). The same run with
one of the two hosts killed for good instead of the primary: the other host of the route group takes its
share and its reversal advices.

Skipped, with one line, only when Debian's patroni, etcd-server or haproxy is not installed.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio

from ops import cluster
from pos.client import NoAnswer, ReversalPending, TerminalError
from pos.load import read_pool
from specs.framing import REQUIREMENT_SIGN_ON
from tests import faults
from tests.faults import FaultTerminal, Outcome, Seen
from tests.fixtures.pg import query

MISSING = cluster.missing_tools()
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(bool(MISSING), reason=f"database failover test needs {', '.join(MISSING)} installed"),
    pytest.mark.timeout(400),
]

TERMINALS = 6
BEFORE_KILL = 4.0  # seconds of load on the first primary
AFTER_BACK = 4.0  # seconds of load once approvals are back
OUTAGE_LIMIT = 60.0  # the test fails if approvals are not back within this after the kill


@dataclass
class ClusterSystem:
    """What tests/faults.py's checks need of a system: the database URL and the CLI."""

    state: cluster.State

    @property
    def db_url(self) -> str:
        return self.state.db_url

    def cli(self, *args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [sys.executable, "-m", "ops", *args],
            cwd=self.state.root,
            env=self.state.env(),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        assert not check or proc.returncode == 0, proc.stderr
        return proc


class TimedTerminal(FaultTerminal):
    """A fault terminal that also notes when it saw each answer, and buys until told to stop."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.at: dict[int, float] = {}  # id(Seen) -> when its outcome was known (monotonic)
        self.sent: dict[int, float] = {}  # id(Seen) -> when it was sent
        self.failures: list[float] = []  # when a connect or sign-on failed

    async def buy_until(self, stop: trio.Event) -> None:
        while not stop.is_set():
            if not self.online and not await self.connect():
                self._note_failure()
                continue
            assert self.vt.session is not None
            amount = self.rng.randrange(1, 100)
            req = self.vt.request("purchase", amount)
            seen = Seen(self.vt.spec.terminal_id, str(req["11"]), amount)
            self.sent[id(seen)] = time.monotonic()
            try:
                answer = await self.vt.session.transact(req)
            except ReversalPending:
                await trio.sleep(0.1)
                continue
            except NoAnswer:
                self._record(seen)
                continue
            except TerminalError:
                self._record(seen)
                self.online = False
                continue
            seen.code, seen.rrn = answer.code, str(answer.msg.get("37", ""))
            if answer.approved:
                seen.outcome = "reversed" if answer.mac_ok is False else "approved"
            else:
                seen.outcome = "declined"
            self._record(seen)
            if answer.head.requirement == REQUIREMENT_SIGN_ON:
                self.online = False

    def _record(self, seen: Seen) -> None:
        self.seen.append(seen)
        self.at[id(seen)] = time.monotonic()

    def _note_failure(self) -> None:
        """A sign-on that failed is time without service too (a purchase could not even be tried)."""
        self.failures.append(time.monotonic())


def test_primary_killed_under_load(tmp_path: Path) -> None:
    _under_load(tmp_path, "primary")


def test_host_killed_under_load(tmp_path: Path) -> None:
    """One of the two hosts dies for good (SIGKILL, never restarted): the switches send its share to the
    other host of the route group, and the reversal advices of what it never answered go over the other
    host's link (switch/README.md "Route groups"), so SAF drains with the dead host still down."""
    _under_load(tmp_path, "host")


def _under_load(tmp_path: Path, victim: str) -> None:
    started = time.monotonic()
    state = cluster.up(
        tmp_path / "cluster",
        hosts=2,  # the topology: two hosts (one route group) and two switches behind HAProxy
        switches=2,
        seed=("--load-terminals", str(TERMINALS), "--load-cards", "20"),
        settings=dict(faults.SETTINGS),
        progress=print,
    )
    print(f"cluster up in {time.monotonic() - started:.1f}s")
    try:
        _failover_under_load(state, victim)
    finally:
        cluster.down(Path(state.root), remove=False)


def _failover_under_load(state: cluster.State, victim: str) -> None:
    system = ClusterSystem(state)
    before = faults._snapshot(system)  # type: ignore[arg-type]
    outcome = Outcome(seed=0, faults=[], before=before)
    pool = read_pool(Path(state.root) / "var/pos/load-pool.json", state.seal_key)
    rng = random.Random(20)
    terminals = [
        TimedTerminal(spec, pool.cards, random.Random(rng.random()), 0) for spec in pool.terminals[:TERMINALS]
    ]
    first = cluster.primary(state)
    assert first is not None
    times: dict[str, float] = {}
    names: dict[str, str] = {}

    async def run() -> None:
        stop = trio.Event()

        async def fault() -> None:
            await trio.sleep(BEFORE_KILL)
            times["kill"] = time.monotonic()
            if victim == "primary":
                await trio.to_thread.run_sync(cluster.kill_member, state, first)
                names["new"] = await trio.to_thread.run_sync(
                    lambda: cluster.wait_primary(state, OUTAGE_LIMIT, other_than=first)
                )
            else:  # the first host, whose link is the seeded one ("host"): host-2 is left
                os.kill(state.pids["host-1"], signal.SIGKILL)
                names["new"] = "host-2"
            times["promoted"] = time.monotonic()
            while not _approved_since(terminals, times["promoted"]):
                if time.monotonic() - times["kill"] > OUTAGE_LIMIT:
                    break
                await trio.sleep(0.1)
            await trio.sleep(AFTER_BACK)
            stop.set()

        async with trio.open_nursery() as nursery:
            for t in terminals:
                nursery.start_soon(t.buy_until, stop)
            nursery.start_soon(fault)
        until = time.monotonic() + faults.SETTLE_TIMEOUT
        async with trio.open_nursery() as nursery:
            for t in terminals:
                nursery.start_soon(faults._settle_one, t, until, outcome)
        for t in terminals:
            await t.vt.aclose()

    trio.run(run)
    for t in terminals:
        outcome.seen.extend(t.seen)

    # RTO: from the sending of the first purchase after the kill that failed (declined, unanswered) or
    # the first failed sign-on, to the answer of the first approved after it.
    kill = times["kill"]
    failures = [
        t.sent[id(s)] for t in terminals for s in t.seen if s.outcome != "approved" and id(s) in t.sent
    ]
    failures += [at for t in terminals for at in t.failures]
    failed = min((at for at in failures if at >= kill), default=kill)
    back = min(
        (
            t.at[id(s)]
            for t in terminals
            for s in t.seen
            if s.outcome == "approved" and t.sent[id(s)] > failed
        ),
        default=None,
    )
    assert back is not None, f"no approval after the kill within {OUTAGE_LIMIT:.0f}s"
    rto = back - failed
    approved = [s for s in outcome.seen if s.outcome == "approved"]
    counts = {
        k: sum(1 for s in outcome.seen if s.outcome == k)
        for k in ("approved", "declined", "unanswered", "reversed")
    }

    faults._settle(system, outcome)  # type: ignore[arg-type]
    faults.check(system, before, outcome)  # type: ignore[arg-type]
    posted = {
        (r[0], r[1])
        for r in query(
            state.db_url,
            "SELECT r.terminal_id, r.rrn FROM transfers t JOIN auth_requests r ON r.key = t.key "
            "WHERE t.id > $1 AND t.code = 'purchase'",
            before.last_transfer,
        )
    }
    lost = [s for s in approved if (s.terminal_id, s.rrn) not in posted]
    killed = f"primary {first}" if victim == "primary" else "host-1"
    advices = query(
        state.db_url,
        "SELECT link, count(*), count(*) FILTER (WHERE done_at IS NOT NULL) FROM switch_saf GROUP BY link",
    )
    print(
        f"failover: {killed} killed, {names['new']} serving after {times['promoted'] - kill:.1f}s; "
        f"RTO {rto:.1f}s (kill to approved again {back - kill:.1f}s); "
        f"purchases {counts}; approvals lost {len(lost)}; SAF advices (link, queued, done) {advices}"
    )
    assert not lost, f"{len(lost)} approvals the terminals saw are not in the ledger"
    assert not outcome.problems, "\n".join(outcome.problems)
    assert counts["approved"] > 0


def _approved_since(terminals: list[TimedTerminal], since: float) -> bool:
    return any(s.outcome == "approved" and t.at.get(id(s), 0) > since for t in terminals for s in t.seen)
