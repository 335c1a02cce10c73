"""Two `host serve` processes on one ledger (issue 20 item 3, host/README.md "Several host processes").

Both hosts post every partition; a batch leases its writer group for its transaction (host.leases), so
two hosts never post the same group at once and each chain's head is read under that lease. The test
loads both hosts at once with purchases on the same cards (every partition overlaps), kills one with
SIGKILL in the middle, keeps loading the survivor, reverses at the survivor what the dead host never
answered (as the switch's SAF would), then checks: every approved purchase posted exactly once, every
unanswered one reversed or absent, money conserved, `ledger check` and `ledger verify` clean.
"""

from __future__ import annotations

import random
import signal
import time
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest
import trio

from host import chain
from host.check import run_checks
from host.cli import open_crypto
from host.ledger import SERVER_SETTINGS
from ops.pgembed import free_port
from ops.pgpool import PgPool
from specs.codec import codec_for
from specs.framing import frame, h2h_splitter
from tests.fixtures.services import ServiceProcess, base_env, start_service
from tests.host.harness import message, programme, reversal

CARDS = 24
WINDOW = 16  # requests in flight per host
LOAD_SECONDS = 6.0
KILL_AFTER = 2.5


class _Stans:
    """DE11 per sender (both hosts share the ledger: the STANs must not meet), one DE7."""

    def __init__(self, start: int) -> None:
        self.n = start

    def next_stan(self) -> str:
        self.n += 1
        return f"{self.n:06d}"

    @staticmethod
    def now_de7() -> str:
        return "1126120000"


@dataclass
class _Sender:
    """One host's load: its requests by STAN, the answers' codes and when each answer came."""

    name: str
    ids: _Stans
    sent: dict[str, dict[str, Any]] = field(default_factory=dict)
    answers: dict[str, str] = field(default_factory=dict)
    answered_at: list[float] = field(default_factory=list)


async def _set_up(db_url: str, hsm_server: Any) -> list[str]:
    with PgPool(db_url, min_size=1, max_size=4, server_settings=SERVER_SETTINGS) as pool:
        async with hsm_server.client() as hsm:
            h = SimpleNamespace(pool=pool, crypto=await open_crypto(pool, hsm))
            return await programme(
                h,  # type: ignore[arg-type]
                "NODES",
                cards=CARDS,
                load=1_000_000,
                bin_prefix="621255",
                max_balance=10_000_000,
                max_balance_anonymous=10_000_000,
                daily_count_limit=100_000,
                daily_amount_limit=10**9,
            )


async def _load(port: int, s: _Sender, pans: list[str], until: float, rng: random.Random) -> None:
    """Purchases on random cards, WINDOW in flight, until ``until`` (monotonic) or the host dies."""
    codec = codec_for("h2h", "3des")
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    splitter = h2h_splitter()
    slots = trio.Semaphore(WINDOW)

    async def send() -> None:
        with trio.move_on_after(until - time.monotonic()):
            while True:
                await slots.acquire()
                m = message(s.ids, rng.choice(pans), 100 + rng.randrange(50))  # type: ignore[arg-type]
                s.sent[m["11"]] = m
                with trio.CancelScope(shield=True):  # the deadline never cuts a request half sent
                    await stream.send_all(frame(codec.encode(m)))

    async def receive(scope: trio.CancelScope) -> None:
        while True:
            data = await stream.receive_some(65536)
            if not data:  # the host is gone: stop sending too
                scope.cancel()
                return
            for body in splitter.feed(data):
                answer = codec.decode(body)
                s.answers[answer["11"]] = answer["39"]
                s.answered_at.append(time.monotonic())
                slots.release()

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(receive, nursery.cancel_scope)
            await send()
            with trio.move_on_after(10):  # the survivor answers what is in flight
                while len(s.answers) < len(s.sent):
                    await trio.sleep(0.01)
            nursery.cancel_scope.cancel()
    except* (trio.BrokenResourceError, OSError):
        pass  # the host was killed: what it never answered is reversed later
    finally:
        await stream.aclose()


async def _reverse_unanswered(port: int, s: _Sender) -> dict[str, str]:
    """A 0400 at ``port`` for each of ``s``'s unanswered purchases (the switch's SAF, by hand)."""
    codec = codec_for("h2h", "3des")
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    splitter = h2h_splitter()
    ids = _Stans(900_000)
    by_stan: dict[str, str] = {}
    frames = []
    for stan, original in s.sent.items():
        if stan not in s.answers:
            r = reversal(ids, original)  # type: ignore[arg-type]
            by_stan[r["11"]] = stan
            frames.append(frame(codec.encode(r)))
    await stream.send_all(b"".join(frames))
    codes: dict[str, str] = {}
    with trio.fail_after(30):
        while len(codes) < len(frames):
            data = await stream.receive_some(65536)
            assert data, "the survivor closed the connection"
            for body in splitter.feed(data):
                answer = codec.decode(body)
                codes[by_stan[answer["11"]]] = answer["39"]
    await stream.aclose()
    return codes


async def _ledger(db_url: str) -> tuple[dict[str, int], int, list[Any], Any, int]:
    """Purchase postings by STAN (net of reversals), purchase transfers per key at most, check, verify."""
    with PgPool(db_url, min_size=1, max_size=2) as pool:

        async def read(conn: Any) -> tuple[dict[str, int], int]:
            rows = await conn.fetch(
                "SELECT q.stan::text AS stan, coalesce(sum(t.amount) FILTER (WHERE t.code = 'purchase'), 0)"
                "   - coalesce(sum(t.amount) FILTER (WHERE t.code <> 'purchase'), 0) AS net"
                " FROM auth_requests q JOIN transfers t ON t.key = q.key OR t.original_key = q.key"
                " WHERE q.txn = 'purchase' AND q.posted GROUP BY q.stan"
            )
            twice = await conn.fetchval(
                "SELECT count(*) FROM (SELECT key FROM transfers WHERE code = 'purchase'"
                " GROUP BY key HAVING count(*) > 1) x"
            )
            return {r["stan"].strip(): int(r["net"]) for r in rows}, int(twice)

        net, twice = await pool.run(read)
        problems = [r for r in await pool.run(run_checks) if not r.ok]
        checked, _, broken = await pool.run(chain.verify)
        return net, twice, problems, broken, checked


def _start_host(db_url: str, hsm_server: Any) -> tuple[ServiceProcess, int]:
    port = free_port()
    env = {
        **base_env(db_url, hsm_server),
        "PAYSWITCH_HOST_PORT": str(port),
        "PAYSWITCH_HOST_METRICS_PORT": "0",
        "PAYSWITCH_HOST_WRITERS": "2",
        "PAYSWITCH_HOST_BATCH_MAX": "50",
    }
    return start_service("host", ["host", "serve"], env, port), port


@pytest.mark.slow
def test_two_hosts_one_killed_under_load(db_url: str, hsm_server: Any) -> None:
    pans = trio.run(_set_up, db_url, hsm_server)
    (a, port_a), (b, port_b) = _start_host(db_url, hsm_server), _start_host(db_url, hsm_server)
    sa, sb = _Sender("a", _Stans(100_000)), _Sender("b", _Stans(500_000))
    killed_at = 0.0
    try:

        async def run() -> None:
            nonlocal killed_at
            until = time.monotonic() + LOAD_SECONDS
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_load, port_a, sa, pans, until, random.Random(1))
                nursery.start_soon(_load, port_b, sb, pans, until, random.Random(2))
                await trio.sleep(KILL_AFTER)
                killed_at = time.monotonic()
                a.stop(signal.SIGKILL)

        trio.run(run)
        unanswered = [stan for stan in sa.sent if stan not in sa.answers]
        assert sa.answers and sb.answers
        assert len(sb.answers) == len(sb.sent), "the survivor left requests unanswered"
        assert set(sb.answers.values()) == {"00"}, sorted(set(sb.answers.values()))
        # the survivor's longest silence from the kill on: its wait for the dead host's leases
        after = [t for t in sb.answered_at if t >= killed_at]
        assert after, "the survivor answered nothing after the kill"
        gaps = [y - x for x, y in zip([killed_at, *after], after, strict=False)]
        takeover = max(gaps)
        print(f"takeover: the survivor's longest silence after the kill {takeover * 1000:.0f} ms; "
              f"{len(sa.answers)} answered by a, {len(unanswered)} unanswered, {len(sb.answers)} by b")
        assert takeover < 5.0

        reversed_ = trio.run(_reverse_unanswered, port_b, sa)
        assert set(reversed_.values()) <= {"00", "25"}, reversed_  # 25: the original never posted

        net, twice, problems, broken, checked = trio.run(_ledger, db_url)
        assert twice == 0
        assert not problems, problems
        assert broken is None and checked > 0, broken
        for s in (sa, sb):
            for stan, code in s.answers.items():
                assert code == "00" and net.get(stan) == int(s.sent[stan]["4"]), (s.name, stan)
        for stan in unanswered:
            assert net.get(stan, 0) == 0, stan  # reversed, or never posted
    finally:
        b.stop()
        a.stop()

