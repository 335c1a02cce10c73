"""Random sequences through the real H2H socket into the real ledger, against a simple model.

One host runs for the whole test in a background thread (trio); the state machine drives it from the
test thread with a blocking client. Each example gets two fresh cards (issued up front through the
HSM) and a model of each: its balance, its holds, and every approved request with what has happened to
it since. After every step a balance inquiry per card must match the model; after every example
`ledger check` must pass.

Rules: top-up, purchase, refund (part of a purchase), void, pre-auth, completion (up to the tolerance),
pre-auth void, reversal of any earlier request (including declined ones and ones already undone),
a retransmission of any earlier request (same answer, nothing posted), a reversal of a request never
sent followed by that late request, and several purchases in flight at once on one connection.

Issue 16 adds the card lifecycle: every card is owned by a named cardholder; KYC tier changes (the
tier's maximum balance decides each top-up from the next request on), operator unloads, card
replacement (the whole balance and the cardholder move to a new PAN; the old card is blocked, and
requests that name it are declined by its state while reversals still undo onto it), and purchases by
one-time payment code (entry mode 03; a code pays once, within its cap). `ledger check` runs after
every step, not only at the end of an example.
"""

from __future__ import annotations

import datetime as dt
import itertools
import os
import shutil
import socket
import tempfile
import threading
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
import trio
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from host import cardholders, kyc
from host.admin import admin_unload
from host.catalog import CatalogError
from host.check import run_checks
from host.issue import activate_card, issue_cards
from host.payment_codes import make_code
from host.replace import replace_card
from specs.codec import codec_for
from specs.framing import frame, h2h_splitter
from tests.host.harness import PIN, Harness, message, programme, reversal, running_host

MAX_BALANCE = 50_000
TOLERANCE_PCT = 15
CARDS_NEEDED = 8
# The product's maximum balance per KYC tier (each capped by MAX_BALANCE), low enough that top-ups hit them.
TIER_CAPS = {"anonymous": 20_000, "named": 35_000, "verified": MAX_BALANCE}
# What a replaced card becomes, and what a request naming it is then declined with (host.rules).
OLD_BECOMES = {"lost": "lost", "stolen": "stolen", "damaged": "closed", "expiring": "closed"}
STATE_CODES = {"lost": "41", "stolen": "43", "closed": "14"}
ACTOR = "test:stateful"
T = TypeVar("T")


_STANS = itertools.count(700_000)


class SyncClient:
    """Blocking H2H client for the test thread: pipelined sends, answers matched on DE11."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=15)
        self.codec = codec_for("h2h", "3des")
        self.splitter = h2h_splitter()
        self.answers: dict[str, dict[str, Any]] = {}

    def next_stan(self) -> str:
        return f"{next(_STANS) % 1_000_000:06d}"  # shared by every client: a STAN never repeats

    @staticmethod
    def now_de7() -> str:
        import datetime as dt

        return dt.datetime.now(dt.UTC).strftime("%m%d%H%M%S")

    def exchange(self, msgs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        self.sock.sendall(b"".join(frame(self.codec.encode(m)) for m in msgs))
        wanted = [m["11"] for m in msgs]
        while not all(s in self.answers for s in wanted):
            data = self.sock.recv(65536)
            assert data, "host closed the connection"
            for body in self.splitter.feed(data):
                answer = self.codec.decode(body)
                self.answers[answer["11"]] = answer
        return [self.answers.pop(s) for s in wanted]

    def one(self, msg: dict[str, Any]) -> dict[str, Any]:
        return self.exchange([msg])[0]


class HostThread:
    def __init__(self, db_url: str, hsm_server: Any) -> None:
        self.db_url = db_url
        self.hsm_server = hsm_server
        self.ready = threading.Event()
        self.pans: list[str] = []
        self.port = 0
        self.harness: Harness | None = None
        self.token: trio.lowlevel.TrioToken | None = None
        self.error: BaseException | None = None
        self._stop: trio.Event | None = None
        self.thread = threading.Thread(target=self._main, daemon=True)
        self.thread.start()
        assert self.ready.wait(60), "host did not start"
        if self.error:
            raise self.error

    def _main(self) -> None:
        try:
            trio.run(self._run)
        except BaseException as exc:  # reported to the test thread
            self.error = exc
            self.ready.set()

    async def _run(self) -> None:
        async with running_host(self.db_url, self.hsm_server, completion_tolerance_pct=TOLERANCE_PCT) as h:
            self.harness = h
            self.pans = await programme(
                h,
                "STATE",
                cards=CARDS_NEEDED,
                load=0,
                bin_prefix="621239",
                max_balance=MAX_BALANCE,
                max_balance_anonymous=TIER_CAPS["anonymous"],
                max_balance_named=TIER_CAPS["named"],
                max_balance_verified=TIER_CAPS["verified"],
                per_txn_limit=MAX_BALANCE,
                daily_amount_limit=10**9,
                daily_count_limit=10**6,
            )
            self.port = h.port
            self.token = trio.lowlevel.current_trio_token()
            self._stop = trio.Event()
            self.ready.set()
            await self._stop.wait()

    def call(self, work: Callable[[Any, Any], Awaitable[T]]) -> T:
        """``work(pool, crypto)`` on the host's trio thread: the host functions the CLI calls."""

        async def run() -> T:
            assert self.harness is not None
            return await work(self.harness.pool, self.harness.crypto)

        return trio.from_thread.run(run, trio_token=self.token)

    def new_cards(self, n: int) -> list[tuple[int, str, int]]:
        """Fresh active cards with nothing on them, each owned by its own named cardholder (registered
        with an ID number, so ``named``), so an example can be replayed exactly: (card id, PAN, holder)."""

        async def issue(pool: Any, crypto: Any) -> list[tuple[int, str, int]]:
            cards, _ = await issue_cards(pool, crypto, "STATE", n, pin=PIN, activate=True)
            out = []
            for c in cards:
                new = cardholders.NewCardholder(
                    name="Stateful Holder", id_type="resident_id", id_number=f"SM{uuid.uuid4().hex[:16]}"
                )
                holder = await cardholders.register(pool, crypto, new, ACTOR, aml_threshold=88)
                await pool.run(cardholders.assign_cards, [c.card_id], holder.cardholder_id)
                out.append((c.card_id, c.pan, holder.cardholder_id))
            return out

        return self.call(issue)

    def balances(self, card_ids: list[int]) -> dict[int, tuple[int, int]]:
        """card id -> (ledger balance, held), read from the accounts (any state: a blocked card too)."""

        async def read(pool: Any, _crypto: Any) -> dict[int, tuple[int, int]]:
            rows = await pool.run(
                lambda conn: conn.fetch(
                    "SELECT c.id, a.credits_posted - a.debits_posted AS balance, a.debits_pending AS held"
                    " FROM cards c JOIN accounts a ON a.id = c.account_id WHERE c.id = ANY($1::bigint[])",
                    card_ids,
                )
            )
            return {r["id"]: (r["balance"], r["held"]) for r in rows}

        return self.call(read)

    def ledger_problems(self) -> list[Any]:
        async def check() -> list[Any]:
            assert self.harness is not None
            return [r for r in await self.harness.pool.run(run_checks) if not r.ok]

        return trio.from_thread.run(check, trio_token=self.token)

    def stop(self) -> None:
        if self._stop is not None and self.token is not None:
            trio.from_thread.run_sync(self._stop.set, trio_token=self.token)
        self.thread.join(30)


@dataclass
class Sent:
    """A request the model knows about: its message, the answer, and what happened to it since."""

    msg: dict[str, Any]
    kind: str
    card: int
    amount: int
    code: str
    auth_id: str = ""
    undone: bool = False  # voided or reversed (money given back)
    reversed: bool = False  # an approved reversal named it
    refunded: int = 0
    parent: Sent | None = None  # refund/void/completion/pre-auth void: the original
    hold: int = 0  # pre-auth: the amount still held (0 when posted, voided or released)


@dataclass
class CardModel:
    card_id: int
    pan: str
    holder: int  # cardholders.id: a replacement card keeps it, and with it the tier
    balance: int = 0
    held: int = 0
    tier: str = "named"
    state: str = "active"  # lost, stolen or closed once replaced

    @property
    def available(self) -> int:
        return self.balance - self.held


@dataclass
class World:
    host: HostThread
    cursor: int = 0


WORLD: dict[str, World] = {}


class HostMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        world = WORLD["w"]
        self.host = world.host
        self.client = SyncClient(self.host.port)
        # Every card the example has used (index = Sent.card); ``live`` names the two in use now: a
        # replacement puts its new card in the old one's place.
        self.cards = [CardModel(cid, pan, holder) for cid, pan, holder in self.host.new_cards(2)]
        self.live = [0, 1]
        self.sent: list[Sent] = []
        self.mailers = Path(tempfile.mkdtemp(prefix="stateful-mailers-"))

    # -- helpers ---------------------------------------------------------------------------------
    def _send(self, kind: str, card: int, amount: int | None, **kw: Any) -> tuple[Sent, dict[str, Any]]:
        msg = message(self.client, self.cards[card].pan, amount, **kw)  # type: ignore[arg-type]
        answer = self.client.one(msg)
        s = Sent(msg, kind, card, amount or 0, answer["39"], answer.get("38", ""))
        self.sent.append(s)
        return s, answer

    def _of(self, *kinds: str) -> list[Sent]:
        """Earlier requests of these kinds, approved or not (the draws must not depend on answers)."""
        return [s for s in self.sent if s.kind in kinds]

    def _blocked(self, card: int) -> str | None:
        """The code a request naming a replaced card is declined with (its state decides first)."""
        state = self.cards[card].state
        return None if state == "active" else STATE_CODES[state]

    # -- rules -----------------------------------------------------------------------------------
    @initialize()
    def learn_cards(self) -> None:
        for card in (0, 1):
            answer = self.client.one(message(self.client, self.cards[card].pan, None, proc="310000"))  # type: ignore[arg-type]
            ledger, available = int(answer["54"][8:20]), int(answer["54"][28:40])
            self.cards[card].balance, self.cards[card].held = ledger, ledger - available

    @rule(card=st.integers(0, 1), amount=st.integers(1, 30_000))
    def top_up(self, card: int, amount: int) -> None:
        card = self.live[card]
        m = self.cards[card]
        s, _ = self._send("topup", card, amount, proc="210000")
        cap = min(MAX_BALANCE, TIER_CAPS[m.tier])  # the tier as the operator last set it
        expected = "00" if m.balance + amount <= cap else "61"
        assert s.code == expected
        if s.code == "00":
            m.balance += amount

    @rule(card=st.integers(0, 1), amount=st.integers(1, 20_000))
    def purchase(self, card: int, amount: int) -> None:
        card = self.live[card]
        m = self.cards[card]
        s, _ = self._send("purchase", card, amount)
        assert s.code == ("00" if m.available >= amount else "51")
        if s.code == "00":
            m.balance -= amount

    @precondition(lambda self: self._of("purchase"))
    @rule(data=st.data())
    def refund(self, data: st.DataObject) -> None:
        p = data.draw(st.sampled_from(self._of("purchase")))
        amount = data.draw(st.integers(1, p.amount + 10))
        s, _ = self._send("refund", p.card, amount, mti="0220", proc="200000", **{"102": p.msg["37"]})
        s.parent = p
        if (blocked := self._blocked(p.card)) is not None:
            assert s.code == blocked
        elif p.code != "00":
            assert s.code == "25"
        elif p.undone:
            assert s.code == "12"
        elif amount > p.amount - p.refunded:
            assert s.code == "13"
        else:
            assert s.code == "00"
            p.refunded += amount
            self.cards[p.card].balance += amount

    @precondition(lambda self: self._of("purchase"))
    @rule(data=st.data())
    def void(self, data: st.DataObject) -> None:
        p = data.draw(st.sampled_from(self._of("purchase")))
        s, _ = self._send("void", p.card, p.amount, proc="200000", **{"102": p.msg["37"]})
        s.parent = p
        if (blocked := self._blocked(p.card)) is not None:
            assert s.code == blocked
        elif p.code != "00":
            assert s.code == "25"
        elif p.undone or p.refunded:
            assert s.code == "12"
        else:
            assert s.code == "00"
            p.undone = True
            self.cards[p.card].balance += p.amount

    @rule(card=st.integers(0, 1), amount=st.integers(1, 20_000))
    def preauth(self, card: int, amount: int) -> None:
        card = self.live[card]
        m = self.cards[card]
        s, _ = self._send("preauth", card, amount, mti="0100", proc="030000", cond="06")
        assert s.code == ("00" if m.available >= amount else "51")
        if s.code == "00":
            m.held += amount
            s.hold = amount

    @precondition(lambda self: self._of("preauth"))
    @rule(data=st.data())
    def completion(self, data: st.DataObject) -> None:
        h = data.draw(st.sampled_from(self._of("preauth")))
        limit = h.amount + h.amount * TOLERANCE_PCT // 100
        amount = data.draw(st.integers(1, limit + 5))
        m = self.cards[h.card]
        s, _ = self._send("completion", h.card, amount, cond="06", **{"102": h.msg["37"]})
        s.parent = h
        if (blocked := self._blocked(h.card)) is not None:
            assert s.code == blocked
        elif h.code != "00":
            assert s.code == "25"
        elif not h.hold or h.reversed:
            assert s.code == "12"
        elif amount > h.hold + h.hold * TOLERANCE_PCT // 100:
            assert s.code == "13"
        elif amount > h.hold and m.available < amount - h.hold:
            assert s.code == "51"
        else:
            assert s.code == "00"
            m.held -= h.hold
            m.balance -= amount
            h.hold = 0

    @precondition(lambda self: self._of("preauth"))
    @rule(data=st.data())
    def preauth_void(self, data: st.DataObject) -> None:
        h = data.draw(st.sampled_from(self._of("preauth")))
        s, _ = self._send(
            "preauth_void", h.card, h.amount, mti="0100", proc="200000", cond="06", **{"102": h.msg["37"]}
        )
        s.parent = h
        s.amount = h.hold
        if (blocked := self._blocked(h.card)) is not None:
            assert s.code == blocked
        elif h.code != "00":
            assert s.code == "25"
        elif not h.hold or h.reversed:
            assert s.code == "12"
        else:
            assert s.code == "00"
            self.cards[h.card].held -= h.hold
            h.hold = 0

    @precondition(lambda self: self.sent)
    @rule(data=st.data())
    def reverse(self, data: st.DataObject) -> None:
        o = data.draw(st.sampled_from(self.sent))
        answer = self.client.one(reversal(self.client, o.msg))  # type: ignore[arg-type]
        m = self.cards[o.card]
        expected, effect = self._reversal_effect(o, m)
        assert answer["39"] == expected, (o.kind, o.code, answer["39"])
        if expected == "00":
            effect()

    def _reversal_effect(self, o: Sent, m: CardModel) -> tuple[str, Any]:
        def nothing() -> None:
            o.reversed = o.reversed or o.code == "00"

        if o.code != "00" or o.reversed or o.undone or o.kind == "balance":
            return "00", nothing
        if o.kind in ("purchase", "completion"):
            amount = o.amount - o.refunded

            def give_back() -> None:
                o.reversed = o.undone = True
                m.balance += max(amount, 0)

            return "00", give_back
        if o.kind in ("topup", "refund", "void"):
            if m.available < o.amount:
                return "51", nothing

            def take_back() -> None:
                o.reversed = o.undone = True
                m.balance -= o.amount
                if o.kind == "refund" and o.parent is not None:
                    o.parent.refunded -= o.amount

            return "00", take_back
        if o.kind == "preauth":

            def release() -> None:
                o.reversed = True
                m.held -= o.hold
                o.hold = 0

            return "00", release
        # a pre-auth void: the hold comes back
        assert o.kind == "preauth_void" and o.parent is not None
        if m.available < o.amount:
            return "51", nothing
        parent = o.parent

        def rehold() -> None:
            o.reversed = o.undone = True
            m.held += o.amount
            parent.hold = o.amount

        return "00", rehold

    @precondition(lambda self: self.sent)
    @rule(data=st.data())
    def retransmit(self, data: st.DataObject) -> None:
        o = data.draw(st.sampled_from(self.sent))
        answer = self.client.one(o.msg)
        if o.reversed and o.code == "00":  # its key now names an undone approval: not a retransmission
            assert answer["39"] == "94"
            return
        assert answer["39"] == o.code
        if o.code == "00" and o.kind != "balance":
            assert answer.get("38", "") == o.auth_id

    @rule(card=st.integers(0, 1), amount=st.integers(1, 1000))
    def late_original_after_reversal(self, card: int, amount: int) -> None:
        late = message(self.client, self.cards[self.live[card]].pan, amount)  # type: ignore[arg-type]
        assert self.client.one(reversal(self.client, late))["39"] == "00"  # type: ignore[arg-type]
        assert self.client.one(late)["39"] == "05"

    @rule(card=st.integers(0, 1), amounts=st.lists(st.integers(1, 5_000), min_size=2, max_size=8))
    def concurrent_purchases(self, card: int, amounts: list[int]) -> None:
        card = self.live[card]
        m = self.cards[card]
        msgs = [message(self.client, m.pan, a) for a in amounts]  # type: ignore[arg-type]
        answers = self.client.exchange(msgs)
        for msg, a, answer in zip(msgs, amounts, answers, strict=True):
            expected = "00" if m.available >= a else "51"
            assert answer["39"] == expected
            if expected == "00":
                m.balance -= a
            self.sent.append(Sent(msg, "purchase", card, a, answer["39"], answer.get("38", "")))

    # -- the card lifecycle (issue 16) -----------------------------------------------------------
    @rule(card=st.integers(0, 1), level=st.sampled_from(kyc.LEVELS))
    def kyc_decision(self, card: int, level: str) -> None:
        """An operator moves the cardholder's tier: up to verified by approval, down by a downgrade."""
        m = self.cards[self.live[card]]
        if level == m.tier or (level == "named" and m.tier == "anonymous"):
            return  # named again needs a new ID document (cardholder update), not a decision
        decision = "approve" if level == "verified" else "downgrade"
        to_level = None if level == "verified" else level

        async def decide(pool: Any, _crypto: Any) -> Any:
            return await pool.run(
                lambda conn: kyc.decide(
                    conn, m.holder, decision, reason="stateful test", actor=ACTOR, to_level=to_level
                )
            )

        self.host.call(decide)
        for other in self.cards:  # the tier is the cardholder's: every card they own has it
            if other.holder == m.holder:
                other.tier = level

    @rule(card=st.integers(0, 1), amount=st.integers(1, 20_000))
    def unload(self, card: int, amount: int) -> None:
        m = self.cards[self.live[card]]
        reference = f"stateful-{uuid.uuid4().hex}"

        async def work(pool: Any, _crypto: Any) -> Any:
            return await admin_unload(pool, m.card_id, reference, amount)

        try:
            self.host.call(work)
            done = True
        except CatalogError:
            done = False
        assert done == (amount <= m.available), (amount, m)
        if done:
            m.balance -= amount

    @rule(card=st.integers(0, 1), reason=st.sampled_from(sorted(OLD_BECOMES)))
    def replace(self, card: int, reason: str) -> None:
        slot = card
        m = self.cards[self.live[slot]]
        today = dt.datetime.now(dt.UTC).date()  # the harness host's business day is the UTC day

        async def work(pool: Any, crypto: Any) -> Any:
            done = await replace_card(
                pool, crypto, m.card_id, reason, actor=ACTOR, today=today, mailer_dir=self.mailers
            )
            await activate_card(pool, done.new_card_id, today, actor=ACTOR)  # a physical card: in inventory
            return done

        try:
            done = self.host.call(work)
        except CatalogError:
            done = None
        # only named or verified cards, and never while a hold is pending (its completion posts on it)
        assert (done is not None) == (m.tier != "anonymous" and m.held == 0), (reason, m)
        if done is None:
            return
        assert done.moved == m.balance and not done.duplicate
        self.cards.append(CardModel(done.new_card_id, done.pan, m.holder, balance=m.balance, tier=m.tier))
        self.live[slot] = len(self.cards) - 1
        m.balance, m.state = 0, OLD_BECOMES[reason]

    @rule(
        card=st.integers(0, 1),
        amount=st.integers(1, 20_000),
        cap=st.none() | st.integers(1, 20_000),
        again=st.integers(1, 20_000) | st.none(),
    )
    def pay_by_code(self, card: int, amount: int, cap: int | None, again: int | None) -> None:
        """A one-time code pays once, within its cap; a declined attempt leaves it usable."""
        card = self.live[card]
        m = self.cards[card]
        today = dt.datetime.now(dt.UTC).date()

        async def work(pool: Any, crypto: Any) -> Any:
            return await make_code(
                pool, crypto, m.card_id, seconds=600, today=today, actor=ACTOR, max_amount=cap
            )

        code = self.host.call(work).code
        used = False
        for value in [amount] if again is None else [amount, again]:
            msg = message(self.client, code, value, **{"22": "032"})  # type: ignore[arg-type]
            answer = self.client.one(msg)
            if used:
                expected = "05"  # payment_code_used
            elif cap is not None and value > cap:
                expected = "61"  # payment_code_cap, before the funds are looked at
            else:
                expected = "00" if m.available >= value else "51"
            assert answer["39"] == expected, (value, cap, m, answer["39"])
            self.sent.append(Sent(msg, "purchase", card, value, answer["39"], answer.get("38", "")))
            if expected == "00":
                m.balance -= value
                used = True

    @invariant()
    def balances_match(self) -> None:
        for card in self.live:
            m = self.cards[card]
            answer = self.client.one(message(self.client, m.pan, None, proc="310000"))  # type: ignore[arg-type]
            assert answer["39"] == "00"
            assert answer["54"] == f"1001156C{m.balance:012d}1002156C{m.available:012d}", (m, answer["54"])
        blocked = [m for m in self.cards if m.state != "active"]
        if blocked:  # a replaced card answers no balance inquiry: its account is read instead
            found = self.host.balances([m.card_id for m in blocked])
            assert {m.card_id: (m.balance, m.held) for m in blocked} == found

    @invariant()
    def ledger_clean(self) -> None:
        problems = self.host.ledger_problems()
        assert not problems, problems

    def teardown(self) -> None:
        self.client.sock.close()
        shutil.rmtree(self.mailers, ignore_errors=True)
        problems = self.host.ledger_problems()
        assert not problems, problems


@pytest.fixture(scope="module")
def host_thread(db_url: str, hsm_server: Any) -> Any:
    host = HostThread(db_url, hsm_server)
    WORLD["w"] = World(host)
    yield host
    host.stop()


def test_random_sequences(host_thread: HostThread) -> None:
    run = settings(
        max_examples=int(os.environ.get("HOST_STATEFUL_EXAMPLES", "30")),
        stateful_step_count=25,
        deadline=None,
    )(HostMachine)
    run.TestCase().runTest()
