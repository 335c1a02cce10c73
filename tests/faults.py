"""Fault schedules: a whole payswitch under steady terminal load, crashed at seeded moments, then checked.

One ``pos.system.System`` (PostgreSQL, hsm_sim, host, switch as child processes, the demo seeded) serves
every schedule of a run. A schedule is drawn from its seed alone (``schedule(seed, duration)``): one to
three faults, each a target (``host``, ``switch``, ``hsm`` killed with SIGKILL, or ``postgres`` crashed
as by ``pg_ctl -m immediate``), a moment in the load and a time kept down before the restart. During
the schedule independent terminals (``pos.load.VirtualTerminal``: real keys, PIN and MAC) buy back to
back and reverse, as a real terminal does, every purchase they never saw answered; a terminal whose
connection broke connects and signs on again. Each terminal writes down what it saw: approved (STAN,
RRN, amount), declined, or unanswered (and so reversed).

After the last fault the terminals stop buying and deliver their pending reversals; the system settles
(SAF drained, no write-ahead row without its journal row); then ``check`` compares what the terminals
saw with the ledger:

- money conserved: the card accounts lost exactly what the terminals saw approved, the other accounts
  gained exactly that, and all accounts still sum to zero (posted and pending);
- every approval a terminal saw is posted once and not reversed; nothing else of the schedule is
  posted (every unanswered or declined purchase left no money behind);
- no SAF advice and no unanswered write-ahead row left; no service exited that was not killed;
- ``payswitch ledger check`` clean, and ``payswitch ledger verify``: every batch sealed in its chain.

``python -m tests.faults --seeds 1000`` runs seeds 1..1000 and prints how many passed, and each
failing seed with what broke; ``--seed N`` runs one seed again. tests/test_faults.py runs a few.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import shutil
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from pos.client import NoAnswer, ReversalPending, TerminalError
from pos.load import PoolCard, PoolTerminal, VirtualTerminal, read_pool
from pos.system import System
from specs.framing import REQUIREMENT_SIGN_ON
from tests.fixtures.pg import query

TARGETS = ("host", "switch", "hsm", "postgres")
TERMINALS = 8
CARDS = 20
# Settings of every process: a short upstream timeout so an outage turns into reversals within a
# schedule; SAF retried every second so the settle wait is short.
SETTINGS = {"switch.request_timeout_ms": "2000", "switch.saf_retry_s": "1", "log.level": "warning"}
TERMINAL_TIMEOUT = 3.0  # seconds a terminal waits for an answer (above the switch's upstream timeout)
SETTLE_TIMEOUT = 90.0  # seconds for reversals, SAF and write-ahead to settle after the last restart


@dataclass(frozen=True)
class Fault:
    at: float  # seconds after the load started
    target: str  # one of TARGETS
    down: float  # seconds between the crash and the restart

    def __str__(self) -> str:
        return f"{self.target}@{self.at:.2f}s/{self.down:.2f}s"


def schedule(seed: int, duration: float) -> list[Fault]:
    """The faults of a seed: the same seed gives the same schedule (targets, moments, downtimes)."""
    rng = random.Random(seed)
    n = rng.choice((1, 1, 2, 2, 3))
    moments = sorted(rng.uniform(0.3, max(0.4, duration - 0.3)) for _ in range(n))
    return [Fault(at, rng.choice(TARGETS), rng.uniform(0.0, 1.5)) for at in moments]


@dataclass
class Seen:
    """One purchase as its terminal saw it."""

    terminal_id: str
    stan: str
    amount: int
    outcome: str = "unanswered"  # approved | declined | unanswered | reversed (approved, bad MAC: A0)
    code: str = ""
    rrn: str = ""


@dataclass
class Outcome:
    seed: int
    faults: list[Fault]
    seen: list[Seen] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    before: Snapshot | None = None  # the ledger when the schedule started

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        counts = Counter(s.outcome + (f"/{s.code}" if s.outcome == "declined" else "") for s in self.seen)
        what = " ".join(f"{k}:{counts[k]}" for k in sorted(counts))
        faults = " ".join(map(str, self.faults))
        head = f"seed {self.seed}: {'ok' if self.ok else 'FAILED'} [{faults}] {what}"
        return "\n  ".join([head, *self.problems, *(f"note: {n}" for n in self.notes)])


# -- the system ----------------------------------------------------------------------------------------
def start_system(root: Path | None = None) -> System:
    """A durable system (fsync and synchronous commit on: a PostgreSQL crash must not take commits
    that were answered with it) seeded with the demo data and a load pool of TERMINALS terminals."""
    system = (
        System(durable=True, settings=dict(SETTINGS))
        if root is None
        else System(root=root, durable=True, keep=True, settings=dict(SETTINGS))
    )
    try:
        system.start(seed=("--load-terminals", str(TERMINALS), "--load-cards", str(CARDS)))
    except BaseException:
        system.stop()
        raise
    return system


def _restart(system: System, target: str) -> None:
    if target == "postgres":
        system.restart_postgres()
    else:
        system.start_service(target)


def _crash(system: System, target: str) -> None:
    if target == "postgres":
        system.crash_postgres()
    else:
        system.kill_service(target)


def _revive(system: System, outcome: Outcome) -> None:
    """Start every service that is not running: one that exited without being killed is a finding."""
    for name in system.available():
        svc = system.services.get(name)
        if svc is not None and svc.proc.poll() is None:
            continue
        if svc is not None:
            # start_service writes the log again: keep this one (with --keep it stays for reading)
            kept = svc.log.with_name(f"{name}-exit-seed{outcome.seed}.log")
            shutil.copyfile(svc.log, kept)
            outcome.problems.append(
                f"{name} exited by itself (status {svc.proc.returncode}) during "
                f"[{' '.join(map(str, outcome.faults))}]: {_last_error(svc.log)} (log: {kept.name})"
            )
            system.services.pop(name)
        system.start_service(name)


# -- the terminals -------------------------------------------------------------------------------------
class FaultTerminal:
    """A pool terminal that keeps buying through outages and records what it saw."""

    def __init__(self, spec: PoolTerminal, cards: list[PoolCard], rng: random.Random, stan: int) -> None:
        self.vt = VirtualTerminal(spec, cards, TERMINAL_TIMEOUT, rng)
        self.vt.state.stan = stan
        self.rng = rng
        self.online = False
        self.seen: list[Seen] = []
        self.errors: Counter[str] = Counter()

    async def connect(self) -> bool:
        """Connect and sign on; False (after a short pause) while the switch cannot sign it on."""
        await self.vt.aclose()
        self.vt.session = None
        try:
            self.online = await self.vt.connect_and_sign_on()
            self.vt.pin_blocks.clear()  # new PIK
        except (TerminalError, OSError) as exc:
            self.errors[f"sign-on: {str(exc)[:50]}"] += 1
            self.online = False
        if not self.online:
            await trio.sleep(0.2)
        return self.online

    async def buy(self, until: float) -> None:
        while time.monotonic() < until:
            if not self.online and not await self.connect():
                continue
            assert self.vt.session is not None
            amount = self.rng.randrange(1, 100)
            req = self.vt.request("purchase", amount)
            seen = Seen(self.vt.spec.terminal_id, str(req["11"]), amount)
            try:
                answer = await self.vt.session.transact(req)
            except ReversalPending:
                await trio.sleep(0.1)  # not sent: the last reversal goes first
                continue
            except NoAnswer:
                self.seen.append(seen)  # transact tried the reversal; it stays pending if unanswered
                continue
            except TerminalError:
                self.seen.append(seen)  # maybe sent; its reversal is pending in the terminal state
                self.online = False
                continue
            seen.code, seen.rrn = answer.code, str(answer.msg.get("37", ""))
            if answer.approved:
                seen.outcome = "reversed" if answer.mac_ok is False else "approved"
            else:
                seen.outcome = "declined"
            self.seen.append(seen)
            if answer.head.requirement == REQUIREMENT_SIGN_ON:
                self.online = False

    async def settle(self, until: float) -> bool:
        """Deliver the pending reversal, if any; False when it is still pending at ``until``."""
        while self.vt.state.pending_reversal is not None and time.monotonic() < until:
            if not self.online and not await self.connect():
                continue
            assert self.vt.session is not None
            try:
                answer = await self.vt.session.flush_reversal()
            except TerminalError:
                self.online = False
                continue
            if self.vt.state.pending_reversal is not None:
                self.errors[f"reversal answered {answer.code if answer else 'nothing'}"] += 1
                await trio.sleep(0.3)
        return self.vt.state.pending_reversal is None


# -- one schedule --------------------------------------------------------------------------------------
def run_schedule(system: System, seed: int, duration: float, stans: dict[str, int]) -> Outcome:
    faults = schedule(seed, duration)
    before = _snapshot(system)
    outcome = Outcome(seed, faults, before=before)
    pool = read_pool(system.root / "var/pos/load-pool.json", system.seal_key)
    rng = random.Random(seed)
    terminals = [
        FaultTerminal(spec, pool.cards, random.Random(rng.random()), stans.get(spec.terminal_id, 0))
        for spec in pool.terminals[:TERMINALS]
    ]
    try:
        trio.run(_load_and_faults, system, terminals, faults, duration, outcome)
    finally:
        for t in terminals:
            stans[t.vt.spec.terminal_id] = t.vt.state.stan
            outcome.seen.extend(t.seen)
    if not outcome.problems:
        _settle(system, outcome)
        check(system, before, outcome)
    return outcome


async def _load_and_faults(
    system: System, terminals: list[FaultTerminal], faults: list[Fault], duration: float, outcome: Outcome
) -> None:
    started = time.monotonic()

    async def inject() -> None:
        for f in faults:
            await trio.sleep_until(_trio_at(started + f.at))
            await trio.to_thread.run_sync(_crash, system, f.target)
            await trio.sleep(f.down)
            await trio.to_thread.run_sync(_restart, system, f.target)
            await trio.to_thread.run_sync(_revive, system, outcome)

    async with trio.open_nursery() as nursery:
        for t in terminals:
            nursery.start_soon(t.buy, started + duration)
        await inject()
    # Buying has stopped and every service runs: the reversals still pending go out now.
    await trio.to_thread.run_sync(_revive, system, outcome)
    until = time.monotonic() + SETTLE_TIMEOUT
    async with trio.open_nursery() as nursery:
        for t in terminals:
            nursery.start_soon(_settle_one, t, until, outcome)
    for t in terminals:
        await t.vt.aclose()


async def _settle_one(t: FaultTerminal, until: float, outcome: Outcome) -> None:
    if not await t.settle(until):
        rev = t.vt.state.pending_reversal or {}
        outcome.problems.append(
            f"terminal {t.vt.spec.terminal_id}: the reversal of STAN {rev.get('11')} was never answered "
            f"({dict(t.errors)})"
        )


def _trio_at(monotonic_deadline: float) -> float:
    """time.monotonic() deadline -> trio clock."""
    return trio.current_time() + (monotonic_deadline - time.monotonic())


_OPEN_SAF = "SELECT count(*) FROM switch_saf WHERE done_at IS NULL"
# A write-ahead row is answered by the journal row with its upstream identity (switch/README.md, "Crash
# safety"); an answered one may wait for the next prune, an unanswered one is a request the switch lost.
_UNANSWERED_AHEAD = """
    SELECT count(*) FROM switch_write_ahead w WHERE NOT EXISTS (
        SELECT 1 FROM switch_journal j
        WHERE j.link = w.link AND j.link_de7 = w.link_de7 AND j.link_stan = w.link_stan)"""


def _settle(system: System, outcome: Outcome) -> None:
    """Wait until no SAF advice is open and every write-ahead row is answered."""
    deadline = time.monotonic() + SETTLE_TIMEOUT
    while True:
        saf = query(system.db_url, _OPEN_SAF)[0][0]
        ahead = query(system.db_url, _UNANSWERED_AHEAD)[0][0]
        if saf == 0 and ahead == 0:
            return
        if time.monotonic() > deadline:
            outcome.problems.append(
                f"after {SETTLE_TIMEOUT:.0f}s: {saf} SAF advice(s) still open, {ahead} write-ahead row(s) "
                "without a journal row"
            )
            return
        time.sleep(0.5)


# -- the checks ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Snapshot:
    last_transfer: int
    cards: int  # sum of card balances (posted)
    others: int  # sum of every other account's balance (posted)
    pending: int  # sum over all accounts of credits_pending - debits_pending


def _snapshot(system: System) -> Snapshot:
    row = query(
        system.db_url,
        """SELECT (SELECT coalesce(max(id), 0) FROM transfers),
                  coalesce(sum(credits_posted - debits_posted) FILTER (WHERE kind = 'card'), 0),
                  coalesce(sum(credits_posted - debits_posted) FILTER (WHERE kind <> 'card'), 0),
                  coalesce(sum(credits_pending - debits_pending), 0)
           FROM accounts""",
    )[0]
    return Snapshot(*(int(v) for v in row))


def check(system: System, before: Snapshot, outcome: Outcome) -> None:
    """What the terminals saw against the ledger, the SAF queue and the write-ahead table."""
    problems = outcome.problems
    after = _snapshot(system)
    approved = {(s.terminal_id, s.rrn): s for s in outcome.seen if s.outcome == "approved"}
    total = sum(s.amount for s in approved.values())
    spent = before.cards - after.cards
    if spent != total:
        problems.append(f"cards lost {spent} fen, the terminals saw {total} approved ({spent - total:+d})")
    if after.others - before.others != spent:
        problems.append(f"the other accounts gained {after.others - before.others}, the cards lost {spent}")
    if after.cards + after.others != 0 or after.pending != 0:
        problems.append(
            f"accounts do not sum to zero: posted {after.cards + after.others}, pending {after.pending}"
        )

    # Every purchase of the schedule the host posted, with whether it was reversed since.
    rows = query(
        system.db_url,
        """SELECT r.terminal_id, r.rrn, t.amount,
                  EXISTS (SELECT 1 FROM transfers v WHERE v.original_key = t.key AND v.code = 'reversal')
           FROM transfers t JOIN auth_requests r ON r.key = t.key
           WHERE t.id > $1 AND t.code = 'purchase'""",
        before.last_transfer,
    )
    kept: Counter[tuple[str, str]] = Counter()
    for terminal_id, rrn, amount, reversed_ in rows:
        key = (terminal_id, rrn)
        seen = approved.get(key)
        if reversed_:
            if seen is not None:
                problems.append(f"{_name(seen)} was approved at the terminal and then reversed")
            continue
        kept[key] += 1
        if seen is None:
            what = _unanswered_or_declined(outcome, terminal_id, rrn, system)
            problems.append(f"{terminal_id} RRN {rrn}: {amount} fen posted and kept, but {what}")
        elif seen.amount != amount:
            problems.append(f"{_name(seen)}: {amount} fen posted")
    for key, seen in approved.items():
        if kept[key] != 1:
            problems.append(f"{_name(seen)} approved at the terminal, posted {kept[key]} times")
    for name, sql in (
        ("SAF advice(s) open", _OPEN_SAF),
        ("unanswered write-ahead row(s)", _UNANSWERED_AHEAD),
    ):
        n = query(system.db_url, sql)[0][0]
        if n:
            problems.append(f"{n} {name}")
    result = system.cli("ledger", "check", check=False)
    if result.returncode != 0:
        lines = [ln for ln in result.stdout.splitlines() if "FAIL" in ln] or result.stdout.splitlines()[-3:]
        problems.append("ledger check: " + " / ".join(lines)[:400])
    result = system.cli("ledger", "verify", check=False)  # the chain survived the crashes (host.chain)
    if result.returncode != 0:
        problems.append("ledger verify: " + result.stdout.strip()[:400])


def _name(seen: Seen) -> str:
    return f"{seen.terminal_id} STAN {seen.stan} RRN {seen.rrn} ({seen.amount} fen)"


def _unanswered_or_declined(outcome: Outcome, terminal_id: str, rrn: str, system: System) -> str:
    """What the terminal saw of a posted purchase it did not see approved (via the switch journal)."""
    rows = query(
        system.db_url,
        "SELECT stan, response_code FROM switch_journal WHERE terminal_id = $1 AND rrn = $2 AND mti = '0200'",
        terminal_id,
        rrn,
    )
    stans = {r[0]: r[1] for r in rows}
    for s in outcome.seen:
        if s.terminal_id == terminal_id and s.stan in stans:
            return f"the terminal saw STAN {s.stan} {s.outcome} {s.code} (journal {stans[s.stan]})"
    return f"no terminal request of the schedule matches it (journal: {stans or 'none'})"


def _last_error(log: Path) -> str:
    """The last exception line of a log (a traceback's last ``SomeError: ...``), else its last line."""
    try:
        text = log.read_text(errors="replace").strip().splitlines()
    except OSError:
        return "(no log)"
    errors = [ln.strip(" |+-") for ln in text if re.search(r"(Error|Exception)(:|\b)", ln)]
    return (errors[-1] if errors else text[-1] if text else "(empty log)")[:300]


# -- the command ---------------------------------------------------------------------------------------
def run_seeds(
    seeds: list[int], duration: float, *, out: Any = sys.stdout, keep: Path | None = None
) -> list[Outcome]:
    """Every seed on one system; a seed whose system is left broken (a problem) gets a fresh one."""
    outcomes: list[Outcome] = []
    system = start_system(keep)
    stans: dict[str, int] = {}
    try:
        for seed in seeds:
            outcome = run_schedule(system, seed, duration, stans)
            outcomes.append(outcome)
            print(outcome.summary(), file=out, flush=True)
            if not outcome.ok and seed != seeds[-1]:
                system.stop()
                system, stans = start_system(), {}
    finally:
        system.stop()
    return outcomes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.faults", description=__doc__.splitlines()[0])
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--seeds", type=int, default=10, help="run seeds 1..N (default 10)")
    which.add_argument("--seed", type=int, action="append", help="run this seed (repeatable)")
    parser.add_argument("--duration", type=float, default=4.0, help="seconds of load per schedule")
    parser.add_argument("--keep", type=Path, help="keep the system's folder (logs) here")
    parser.add_argument("--json", action="store_true", help="one JSON summary line at the end")
    args = parser.parse_args(argv)
    seeds = args.seed or list(range(1, args.seeds + 1))
    outcomes = run_seeds(seeds, args.duration, keep=args.keep)
    failed = [o for o in outcomes if not o.ok]
    faults = sum(len(o.faults) for o in outcomes)
    print(f"{len(outcomes) - len(failed)} of {len(outcomes)} seeds passed ({faults} faults)")
    if failed:
        print("failing seeds: " + " ".join(str(o.seed) for o in failed) + "  (again: --seed N)")
    if args.json:
        print(
            json.dumps(
                {
                    "seeds": len(outcomes),
                    "passed": len(outcomes) - len(failed),
                    "faults": faults,
                    "failed": {o.seed: o.problems for o in failed},
                }
            )
        )
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
