"""The load generator: many terminals, each a real ``pos.client.Session``, in one trio process.

A pool file (written by ``payswitch demo seed``; it holds TMKs, PANs and PINs of demo data, so it is
sealed by ``pos.sealed``, mode 0600) lists the terminals registered at the switch and the cards to use.
Each terminal signs on, then runs its share of the transaction mix back to back (or paced to a target
rate) until the duration or count is reached. Per-request work is kept small because the generator shares the
machine with the switch, host, HSM and PostgreSQL: PIN blocks are computed once per card and terminal
(after sign-on), cipher contexts are built once per key, messages are small dicts encoded by the
compiled codec.

``run_load`` returns a ``LoadReport``: counts, throughput, latency percentiles, response-code
histogram, errors. Progress lines go to a callback once a second.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from ops.files import write_text_atomic
from pos import messages, terminal
from pos.client import (
    Answer,
    Connection,
    Multiplexer,
    NoAnswer,
    ReversalPending,
    Session,
    TerminalError,
    Transport,
)
from pos.crypto import pin_block
from pos.messages import KINDS, Card
from pos.sealed import SealError, read_sealed
from pos.state import StateError, TerminalState, new_state
from specs.codec import codec_for
from specs.framing import REQUIREMENT_SIGN_ON

MIX_KINDS = ("purchase", "balance", "topup", "echo", "preauth")


class LoadError(Exception):
    """The load cannot start (bad pool file, bad mix, no terminal signs on); one line."""


@dataclass(frozen=True)
class PoolCard:
    pan: str
    expiry: str
    pin: str


@dataclass(frozen=True)
class PoolTerminal:
    terminal_id: str
    merchant_id: str
    scheme: str
    tmk: str
    host: str
    port: int


@dataclass(frozen=True)
class Pool:
    terminals: list[PoolTerminal]
    cards: list[PoolCard]


def read_pool(path: Path, key_file: Path | None = None) -> Pool:
    """The pool at ``path``, sealed under ``key_file`` (default: ``pos.sealed.key_path()``)."""
    try:
        raw = read_sealed(path, key_file)
        terminals = [PoolTerminal(**t) for t in raw["terminals"]]
        cards = [PoolCard(**c) for c in raw["cards"]]
    except FileNotFoundError:
        raise LoadError(f"no load pool at {path}: run `payswitch demo seed` first (or give --pool)") from None
    except SealError as exc:
        raise LoadError(f"{exc}; run `payswitch demo seed` to write it again") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise LoadError(f"load pool {path} is not usable ({exc.__class__.__name__})") from None
    if not terminals or not cards:
        raise LoadError(f"load pool {path} has no terminals or no cards")
    return Pool(terminals, cards)


def stans_path(pool_path: Path) -> Path:
    """Where the load terminals' last STANs are kept between runs: next to the pool."""
    return pool_path.with_name("load-stans.json")


def read_stans(path: Path) -> dict[str, int]:
    """The STAN book (``LoadPlan.stans``); empty when there is none or it cannot be read (a run then
    starts at STAN 1, as after a fresh seed)."""
    try:
        raw = json.loads(path.read_text())
        return {str(k): int(v) % 1_000_000 for k, v in raw.items()}
    except (OSError, ValueError, TypeError, AttributeError):
        return {}


def write_stans(path: Path, stans: dict[str, int]) -> None:
    write_text_atomic(path, json.dumps(stans, sort_keys=True))


def parse_mix(text: str) -> dict[str, float]:
    """'purchase=90,balance=10' -> weights; every name must be one of MIX_KINDS."""
    mix: dict[str, float] = {}
    for part in text.split(","):
        name, sep, weight = part.strip().partition("=")
        if name not in MIX_KINDS:
            raise LoadError(f"unknown transaction {name!r} in the mix (known: {', '.join(MIX_KINDS)})")
        try:
            w = float(weight) if sep else 1.0
        except ValueError:
            raise LoadError(f"the weight of {name} must be a number") from None
        if w < 0 or not math.isfinite(w):
            raise LoadError(f"the weight of {name} must be zero or more")
        mix[name] = w
    if sum(mix.values()) <= 0:
        raise LoadError("the mix has no transaction with a weight above zero")
    return mix


@dataclass
class Stats:
    latencies: list[float] = field(default_factory=list)  # seconds, every answered request
    approved_latencies: list[float] = field(default_factory=list)
    codes: Counter[str] = field(default_factory=Counter)
    by_kind: Counter[str] = field(default_factory=Counter)
    approved_by_kind: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    sent: int = 0

    def record(self, kind: str, code: str, latency: float) -> None:
        self.latencies.append(latency)
        self.codes[code] += 1
        self.by_kind[kind] += 1
        if code == "00":
            self.approved_latencies.append(latency)
            self.approved_by_kind[kind] += 1


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return 0.0
    k = min(len(sorted_values) - 1, max(0, math.ceil(q * len(sorted_values)) - 1))
    return sorted_values[k]


@dataclass
class LoadReport:
    terminals: int
    signed_on: int
    elapsed: float
    stats: Stats
    mix: dict[str, float]
    per_connection: int = 1

    def as_dict(self) -> dict[str, Any]:
        lat = sorted(self.stats.latencies)
        approved = sum(self.stats.approved_by_kind.values())
        purchases = self.stats.approved_by_kind.get("purchase", 0)
        el = self.elapsed or 1e-9
        return {
            "terminals": self.terminals,
            "signed_on": self.signed_on,
            "terminals_per_connection": self.per_connection,
            "mix": self.mix,
            "elapsed_s": round(self.elapsed, 3),
            "requests": self.stats.sent,
            "answered": len(lat),
            "approved": approved,
            "throughput_per_s": round(len(lat) / el, 1),
            "approved_per_s": round(approved / el, 1),
            "approved_purchases_per_s": round(purchases / el, 1),
            "latency_ms": {
                "p50": round(percentile(lat, 0.50) * 1000, 2),
                "p95": round(percentile(lat, 0.95) * 1000, 2),
                "p99": round(percentile(lat, 0.99) * 1000, 2),
                "max": round((lat[-1] if lat else 0.0) * 1000, 2),
            },
            "response_codes": dict(sorted(self.stats.codes.items())),
            "by_transaction": dict(sorted(self.stats.by_kind.items())),
            "errors": dict(sorted(self.stats.errors.items())),
        }

    def render(self) -> str:
        d = self.as_dict()
        lat = d["latency_ms"]
        codes = "  ".join(f"{k}:{v}" for k, v in d["response_codes"].items()) or "none"
        errors = "  ".join(f"{k}:{v}" for k, v in d["errors"].items()) or "none"
        kinds = "  ".join(f"{k}:{v}" for k, v in d["by_transaction"].items()) or "none"
        return "\n".join(
            [
                f"terminals        {d['signed_on']} signed on of {d['terminals']}",
                f"elapsed          {d['elapsed_s']} s",
                f"requests         {d['requests']} sent, {d['answered']} answered, {d['approved']} approved",
                f"throughput       {d['throughput_per_s']}/s answered, {d['approved_per_s']}/s approved, "
                f"{d['approved_purchases_per_s']}/s approved purchases",
                f"latency ms       p50 {lat['p50']}  p95 {lat['p95']}  p99 {lat['p99']}  max {lat['max']}",
                f"transactions     {kinds}",
                f"response codes   {codes}",
                f"errors           {errors}",
            ]
        )


class VirtualTerminal:
    """One pool terminal: its in-memory state, its connection, its precomputed PIN blocks."""

    def __init__(self, spec: PoolTerminal, cards: list[PoolCard], timeout: float, rng: random.Random) -> None:
        self.spec = spec
        self.cards = cards
        self.timeout = timeout
        self.rng = rng
        self.state: TerminalState = new_state(
            spec.terminal_id, spec.merchant_id, spec.scheme, spec.tmk, spec.host, spec.port
        )
        self.session: Session | None = None
        self.pin_blocks: dict[int, bytes] = {}
        self.cards_parsed = [Card.keyed(c.pan, c.expiry) for c in cards]
        self.last_card = 0  # index of the card of the last request built

    async def connect_and_sign_on(self, transport: Transport | None = None) -> bool:
        """Sign on over ``transport`` (a multiplexer port), else over a connection of its own."""
        conn = transport or await Connection.open(self.spec.host, self.spec.port, timeout=self.timeout)
        self.session = Session(self.state, codec_for("pos", self.state.scheme), conn, timeout=self.timeout)
        receipt = await terminal.signon(self.session)
        return receipt.approved

    def pin_block_for(self, i: int) -> bytes:
        pb = self.pin_blocks.get(i)
        if pb is None:
            assert self.session is not None
            pb = pin_block(self.session.pik, self.cards[i].pin, self.cards[i].pan)
            self.pin_blocks[i] = pb
        return pb

    def request(self, kind: str, amount: int) -> messages.Message:
        st = self.state
        if kind == "echo":
            return messages.network("0820", "301", st.next_stan(), st.batch, st.terminal_id, st.merchant_id)
        i = self.last_card = self.rng.randrange(len(self.cards))
        card = self.cards_parsed[i]
        with_pin = kind != "topup"
        return messages.financial_request(
            KINDS[kind],
            stan=st.next_stan(),
            batch=st.batch,
            terminal_id=st.terminal_id,
            merchant_id=st.merchant_id,
            scheme=st.scheme,
            card=card,
            amount=None if kind == "balance" else amount,
            pin_block_bytes=self.pin_block_for(i) if with_pin else None,
        )

    async def aclose(self) -> None:
        if self.session is not None:
            await self.session.conn.aclose()


@dataclass
class LoadPlan:
    pool: Pool
    terminals: int
    mix: dict[str, float]
    duration: float | None = 10.0
    count: int | None = None
    rate: float | None = None  # total requests per second, None = as fast as answers come
    amount: int = 100  # minor units per purchase / top-up / pre-auth
    timeout: float = 10.0
    seed: int = 1
    per_connection: int = 1  # terminals sharing one TCP connection (a concentrator); 1 = each its own
    # Terminal id -> the last STAN it used, updated in place by the run. A terminal's STAN goes on from
    # one run to the next: the switch answers a STAN used again in the same batch as a retransmission
    # (the first answer again, from memory), which would count replays as purchases.
    stans: dict[str, int] = field(default_factory=dict)


Progress = Callable[[dict[str, Any]], None]


async def run_load(plan: LoadPlan, progress: Progress | None = None) -> LoadReport:
    if plan.terminals < 1:
        raise LoadError("at least one terminal")
    pool_terminals = plan.pool.terminals
    if plan.terminals > len(pool_terminals):
        raise LoadError(f"the pool has {len(pool_terminals)} terminals, {plan.terminals} asked for")
    rng = random.Random(plan.seed)
    try:
        vts = [
            VirtualTerminal(s, plan.pool.cards, plan.timeout, random.Random(rng.random()))
            for s in pool_terminals[: plan.terminals]
        ]
    except (StateError, messages.CardError) as exc:
        raise LoadError(f"load pool: {exc}") from None
    for vt in vts:
        vt.state.stan = plan.stans.get(vt.spec.terminal_id, 0)
    stats = Stats()
    muxes: list[Multiplexer] = []
    transports: dict[str, Transport] = {}
    reports: list[LoadReport] = []
    # No exception is raised inside the nursery (trio would wrap it in an ExceptionGroup).
    try:
        async with trio.open_nursery() as links:
            if plan.per_connection > 1:
                await _multiplex(plan, vts, links, muxes, transports, stats)
            signed = await _sign_on_all(vts, transports, stats)
            if signed:
                reports.append(await _drive_all(plan, vts, signed, stats, progress))
            links.cancel_scope.cancel()
    finally:
        for vt in vts:
            plan.stans[vt.spec.terminal_id] = vt.state.stan
            await vt.aclose()
        for mux in muxes:
            await mux.conn.aclose()
    if not reports:
        reasons = ", ".join(stats.errors)
        raise LoadError("no terminal could sign on" + (f": {reasons}" if reasons else ""))
    return reports[0]


async def _sign_on_all(
    vts: list[VirtualTerminal], transports: dict[str, Transport], stats: Stats
) -> list[VirtualTerminal]:
    signed: list[VirtualTerminal] = []

    async def sign_on(vt: VirtualTerminal) -> None:
        try:
            if await vt.connect_and_sign_on(transports.get(vt.spec.terminal_id)):
                signed.append(vt)
            else:
                stats.errors["sign-on declined"] += 1
        except TerminalError as exc:
            stats.errors[f"sign-on: {_short(exc)}"] += 1

    async with trio.open_nursery() as nursery:
        for vt in vts:
            nursery.start_soon(sign_on, vt)
    return signed


async def _drive_all(
    plan: LoadPlan,
    vts: list[VirtualTerminal],
    signed: list[VirtualTerminal],
    stats: Stats,
    progress: Progress | None,
) -> LoadReport:
    kinds = list(plan.mix)
    weights = [plan.mix[k] for k in kinds]
    remaining = [plan.count if plan.count is not None else -1]
    started = time.perf_counter()
    deadline = started + plan.duration if plan.duration else math.inf
    interval = len(signed) / plan.rate if plan.rate else 0.0

    async def drive(vt: VirtualTerminal, index: int) -> None:
        assert vt.session is not None
        session = vt.session
        next_at = started + (index / plan.rate if plan.rate else 0.0)
        while time.perf_counter() < deadline:
            if remaining[0] == 0:
                return
            if remaining[0] > 0:
                remaining[0] -= 1
            if interval:
                now = time.perf_counter()
                if next_at > now:
                    await trio.sleep(next_at - now)
                next_at += interval
            kind = kinds[0] if len(kinds) == 1 else vt.rng.choices(kinds, weights)[0]
            try:
                if kind == "preauth":
                    await _preauth_pair(vt, plan.amount, stats)
                    continue
                answer = await _transact(vt, kind, vt.request(kind, plan.amount), stats)
            except _TerminalLost:
                return
            if answer is None:
                continue
            if answer.head.requirement == REQUIREMENT_SIGN_ON:
                try:
                    await terminal.signon(session)
                    vt.pin_blocks.clear()
                except TerminalError as exc:
                    stats.errors[f"re-sign-on: {_short(exc)}"] += 1
                    return

    async def report_progress() -> None:
        last_n, last_t = 0, started
        while True:
            await trio.sleep(1.0)
            now = time.perf_counter()
            n = len(stats.latencies)
            window = sorted(stats.latencies[last_n:n])
            if progress:
                progress(
                    {
                        "elapsed_s": round(now - started, 1),
                        "rate_per_s": round((n - last_n) / (now - last_t), 1),
                        "p50_ms": round(percentile(window, 0.5) * 1000, 2),
                        "p99_ms": round(percentile(window, 0.99) * 1000, 2),
                        "answered": n,
                        "declined": n - len(stats.approved_latencies),
                        "errors": sum(stats.errors.values()),
                    }
                )
            last_n, last_t = n, now

    async with trio.open_nursery() as outer:
        outer.start_soon(report_progress)
        async with trio.open_nursery() as nursery:
            for i, vt in enumerate(signed):
                nursery.start_soon(drive, vt, i)
        outer.cancel_scope.cancel()
    elapsed = time.perf_counter() - started
    return LoadReport(len(vts), len(signed), elapsed, stats, plan.mix, plan.per_connection)


async def _multiplex(
    plan: LoadPlan,
    vts: list[VirtualTerminal],
    links: trio.Nursery,
    muxes: list[Multiplexer],
    transports: dict[str, Transport],
    stats: Stats,
) -> None:
    """Open one connection per ``plan.per_connection`` terminals (same switch port) and give each
    terminal its port on it."""
    groups: dict[tuple[str, int], list[VirtualTerminal]] = {}
    for vt in vts:
        groups.setdefault((vt.spec.host, vt.spec.port), []).append(vt)
    for (host, port), members in groups.items():
        for i in range(0, len(members), plan.per_connection):
            chunk = members[i : i + plan.per_connection]
            try:
                conn = await Connection.open(host, port, timeout=plan.timeout)
            except TerminalError as exc:
                stats.errors[f"connect: {_short(exc)}"] += len(chunk)
                continue
            mux = Multiplexer(conn)
            muxes.append(mux)
            links.start_soon(mux.run)
            for vt in chunk:
                line = transports[vt.spec.terminal_id] = mux.port()
                vt.state.tpdu_src = line.nii  # the concentrator routes the answers by it


async def _preauth_pair(vt: VirtualTerminal, amount: int, stats: Stats) -> None:
    """A pre-auth and, when approved, its completion for the same amount."""
    req = vt.request("preauth", amount)
    answer = await _transact(vt, "preauth", req, stats)
    if answer is None or not answer.approved:
        return
    st = vt.state
    i = vt.last_card
    comp = messages.financial_request(
        KINDS["completion"],
        stan=st.next_stan(),
        batch=st.batch,
        terminal_id=st.terminal_id,
        merchant_id=st.merchant_id,
        scheme=st.scheme,
        card=vt.cards_parsed[i],
        amount=amount,
        original={
            "rrn": str(answer.msg.get("37", "")),
            "auth_id": str(answer.msg.get("38", "")),
            "batch": st.batch,
            "stan": str(req["11"]),
            "date": str(answer.msg.get("13", "0101")),
        },
    )
    await _transact(vt, "completion", comp, stats)


class _TerminalLost(Exception):
    """The terminal's connection is gone (already counted): its driver stops."""


async def _transact(vt: VirtualTerminal, kind: str, req: messages.Message, stats: Stats) -> Answer | None:
    """One request, counted; None when it went unanswered or waits behind a reversal."""
    assert vt.session is not None
    stats.sent += 1
    try:
        answer = await (vt.session.exchange(req) if kind == "echo" else vt.session.transact(req))
    except NoAnswer:
        stats.errors["timeout"] += 1
        return None
    except ReversalPending:
        stats.errors["reversal pending"] += 1
        await trio.sleep(0.1)
        return None
    except TerminalError as exc:
        stats.errors[_short(exc)] += 1
        raise _TerminalLost from exc
    stats.record(kind, answer.code, answer.latency)
    return answer


def _short(exc: BaseException) -> str:
    return str(exc).split(" (")[0][:60]
