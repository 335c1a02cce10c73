"""The posting engine: decide a batch of requests and post them to the ledger in one transaction.

``Ledger.post_batch(conn, requests)`` runs on the asyncio side (through ops.pgpool) or, for the CLI,
on a plain asyncpg connection. One batch is one transaction:

1. read: which keys were already answered (duplicates get the stored answer back), the cards and
   merchants, and the originals that voids, refunds, completions and reversals refer to;
2. lock the touched card and card-account rows in id order (``FOR UPDATE``), so two writers can never
   deadlock on cards and a card's balance cannot change under the decision;
3. decide each request in arrival order in Python against the locked balances (host.rules), editing
   the in-memory balances as it goes, so request n+1 sees request n's effect;
4. write everything in bulk: auth_requests and transfers with one INSERT ... unnest each, the account
   sums and card counters with one UPDATE ... unnest each, the outbox's events (host.events:
   authorization.*, card.balance_low, card.state_changed) and the batch's seal (host.chain: one
   chained SM3 digest row over its decisions and transfers, on the writer's chain) in the same
   statement; commit; only then are answers released.

If a batch fails (a unique key raced with another writer, a constraint, a lost connection) it is rolled
back and its requests are retried one per transaction, so one bad request cannot fail the others; a
request that still fails is answered 96 and nothing of it is stored. Nothing of a rolled-back batch
outlives it in memory either: an account a batch creates (funding, cash-out, breakage) is cached in the
Ledger only once its transaction has committed, so concurrent batches never post to another's
uncommitted (or rolled-back) account.

Partitions: every card has a partition (cards.part); a purchase credits the merchant's payable
sub-account of the card's partition, so the hot merchant's rows are spread over all partitions and a
partition is posted by one writer at a time (host.engine). No row is touched by every purchase.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import random
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from host import chain as ledger_chain
from host import chip, controls, events, kyc, leases, offline, payment_codes, rules
from host.business_day import BusinessDay, utc_now
from host.model import (
    FINANCIAL,
    TOMBSTONE,
    CardState,
    Decision,
    Merchant,
    Pin,
    Product,
    Rc,
    Request,
    Txn,
)
from ops.actor import cli_actor
from ops.audit import GENESIS
from ops.db import DatabaseUnavailable
from ops.logs import get_logger
from ops.pgpool import UNAVAILABLE

log = get_logger(__name__)

# Approved requests answered with the card's balances after them (DE54), besides a balance inquiry.
BALANCE_AFTER = frozenset({Txn.PURCHASE, Txn.PREAUTH, Txn.COMPLETION, Txn.TOPUP, Txn.VOID, Txn.REFUND})

MERCHANT_CACHE_SECONDS = 30.0
CACHE_LIMIT = 100_000

# Connection settings for whoever posts: the batch queries take arrays of varying size over tables
# that grow from empty, and a cached generic plan made early (a sequential scan) would stay.
SERVER_SETTINGS = {"plan_cache_mode": "force_custom_plan"}

# A posting batch opens its transaction with these, in BEGIN's round trip. Its statements are few and
# fixed, and every one of them finds its rows through an index: planned once per connection (generic,
# with sequential scans ruled out so a plan made while a table is still empty never scans it) they
# cost PostgreSQL about a third less CPU per purchase than planned afresh at every batch, where the
# planning itself (and the lseek per relation it does) was as dear as the execution. A plan is made
# again by PostgreSQL when ANALYZE changes a table's statistics. Other statements keep the settings above.
# No JIT either: a statement that could only scan would carry the disabled scan's huge cost estimate,
# which would otherwise buy it a JIT compilation (milliseconds) at every execution.
_BATCH_BEGIN = (
    "BEGIN; SET LOCAL plan_cache_mode = force_generic_plan; SET LOCAL enable_seqscan = off;"
    " SET LOCAL jit = off"
)


@dataclass
class TransferRow:
    key: str
    debit: int
    credit: int
    amount: int
    phase: str
    code: str
    card_id: int
    currency: str
    pending_key: str | None = None
    hold_of: str | None = None
    original_key: str | None = None
    expires_at: dt.datetime | None = None


@dataclass
class Original:
    """A request that a later one refers to, with what has happened to it since."""

    key: str
    txn: str
    code: str
    posted: bool
    card_id: int | None
    amount: int
    rrn: str
    transfer: TransferRow | None = None  # the transfer it made
    undone: bool = False  # voided or reversed (its transfer undone)
    reversed: bool = False  # an approved reversal names it
    refunded: int = 0
    # A top-up or load: what of it repaid offline sales owed (host.offline), given back to the
    # receivable when the load is reversed.
    repaid: int = 0
    hold: TransferRow | None = None  # pre-auth: its hold while still pending
    hold_state: str = ""  # pre-auth: pending / posted / voided / expired
    day: dt.date | None = None  # the business date it was decided: its use counts against that day's limits
    group: str | None = None  # its merchant's group: its use counts against that group's caps (host.controls)


@dataclass
class _Batch:
    now: dt.datetime
    today: dt.date  # the programme's business date at ``now`` (host.business_day), not the UTC date
    cards: dict[int, CardState] = field(default_factory=dict)
    done: dict[str, Decision] = field(default_factory=dict)
    originals: dict[str, Original] = field(default_factory=dict)
    by_rrn: dict[tuple[int, str], list[Original]] = field(default_factory=dict)
    preauths: dict[int, list[Original]] = field(default_factory=dict)  # card -> its pre-auths, oldest first
    deltas: dict[int, list[int]] = field(default_factory=dict)  # account -> [dpend, dpost, cpend, cpost]
    auth_rows: list[tuple[Any, ...]] = field(default_factory=list)
    transfers: list[TransferRow] = field(default_factory=list)
    # Per answered key: what a retransmission must repeat (card, amount, DE3), and the keys reversed since.
    fingerprints: dict[str, tuple[int | None, int, str]] = field(default_factory=dict)
    reversed: set[str] = field(default_factory=set)
    closing: list[int] = field(default_factory=list)  # cards a forfeit closes in this transaction
    # Payment codes of the batch's requests, locked (host.payment_codes.lock), by hash; those consumed.
    codes: dict[str, payment_codes.PaymentCode] = field(default_factory=dict)
    codes_used: list[payment_codes.PaymentCode] = field(default_factory=list)
    # Replacements decided: (old card, new card, old card's state it was decided in, old -> , new -> ).
    replaced: list[tuple[int, int, str, str, str]] = field(default_factory=list)
    # card_events of the state changes written in this transaction (host.card_events): (card id, from,
    # to, action, actor, reason).
    card_events: list[tuple[int, str, str, str, str, str]] = field(default_factory=list)
    # PIN changes approved: card id -> (new PVV, new PIN under LMK), the last one of the batch.
    pin_changes: dict[int, tuple[str, str]] = field(default_factory=dict)
    # The outbox (host.events): each card's masked PAN from the batch's read, and the events decided,
    # as [type, card id, merchant id, payload] rows for the write statement's JSON parameter.
    masked: dict[int, str] = field(default_factory=dict)
    events: list[list[Any]] = field(default_factory=list)
    stamp: str = ""  # the events' occurred_at (b.now, RFC 3339)
    chain: int | None = None  # the ledger chain the batch is sealed on (host.chain; None: not chained)
    # the engine chain's head (seq, hash) read by the batch under its writer group's lock (host.leases)
    head: tuple[int, str] | None = None
    flags: list[tuple[str, tuple[str, ...]]] = field(default_factory=list)  # approved keys' flags (host.chip)
    # Funding and issuer account ids this transaction created (or met while creating): its own until it
    # commits, so they reach the Ledger's caches only then (post_batch). Cached at once, an uncommitted
    # id was used by a concurrent batch, whose sums UPDATE cannot see the row (its transfers then move
    # money from an account that never counts them), or, rolled back, named no account at all.
    accounts: dict[tuple[str, str, int], int] = field(default_factory=dict)  # (kind, currency, part) -> id


# Requests that write no authorization event (host.events): not requests of a card's holder or
# merchant but the ledger's own housekeeping, or a state change (card.state_changed says it).
_NO_EVENT = frozenset({Txn.EXPIRY, Txn.REPLACEMENT})


def _fingerprint(r: Request) -> tuple[int | None, int, str]:
    return (r.card_id, r.amount, r.proc_code)


class Ledger:
    """Posting engine state that outlives a batch: caches of static lookups and the rule settings."""

    def __init__(
        self,
        *,
        pin_tries: int = 3,
        hold_days: int = 7,
        completion_tolerance_pct: int = 0,
        business_day: BusinessDay | None = None,
        clock: Callable[[], dt.datetime] = utc_now,
        balance_low: int = 0,
        write_events: bool = True,
        chained: bool = True,
    ) -> None:
        self.pin_tries = pin_tries
        self.hold_days = hold_days
        self.completion_tolerance_pct = completion_tolerance_pct
        # Daily limits roll over at the programme's business-day boundary (clearing.timezone/cutover);
        # without one (tests, bench) the business day is the UTC day. ``clock`` is the time of a batch.
        self.business_day = business_day or BusinessDay()
        self.clock = clock
        # The outbox (host.events): card.balance_low below this (minor units; 0 = never), and whether
        # the batch writes its events at all (host.events = false only to measure their cost: bench.host).
        self.balance_low = balance_low
        self.write_events = write_events
        # The ledger chain (host.chain): each batch sealed by a digest row in its own write statement
        # (host.ledger_chain = false only to measure its cost: bench.host --chain). The head is read in
        # each batch, under its writer group's lock: another host may have extended the chain meanwhile.
        self.chained = chained
        self._card_ids: dict[str, int] = {}  # pan_hash -> card id (never changes)
        self._merchants: dict[str, tuple[float, Merchant | None]] = {}
        self._funding: dict[tuple[str, int], int] = {}
        self._issuer_accounts: dict[tuple[str, str], int] = {}  # (kind, currency) -> cash_out / breakage

    # -- entry point ----------------------------------------------------------------------------
    async def post_batch(
        self,
        conn: Any,
        reqs: list[Request],
        now: dt.datetime | None = None,
        *,
        raced: bool = False,
        writer: int | None = None,
    ) -> list[Decision]:
        """``writer``: the engine's writer task posting the batch (its chain, host.chain); None for a
        batch posted outside the engine (the shared chain, serialized by an advisory lock)."""
        now = now or self.clock()
        chain = (ledger_chain.SHARED_CHAIN if writer is None else writer) if self.chained else None
        created: dict[tuple[str, str, int], int] = {}
        try:
            # an engine batch leases its writer group for its transaction (host.leases): no other host
            # posts the group's partitions or extends its chain until it commits or rolls back
            async with _batch_transaction(conn, writer):
                decisions = await self._run_batch(conn, reqs, now, chain, created)
            if created:  # committed: the accounts the batch created are everyone's now
                self._learn(created)
            return decisions
        except UNAVAILABLE:
            raise  # maybe committed (its COMMIT's answer lost): the engine decides it again, later
        except Exception as exc:
            if conn.is_closed():  # whatever was raised, the connection went with it: as above
                raise DatabaseUnavailable(f"connection lost in a posting batch: {exc!r}") from exc
            if len(reqs) == 1:
                if isinstance(exc, asyncpg.UniqueViolationError) and not raced:
                    # Another writer committed this key between our read and our write (an original and
                    # its reversal decided on two partitions at once): decide again against what it wrote.
                    log.info("key raced with another writer; deciding again", request=reqs[0].key)
                    return await self.post_batch(conn, reqs, now, raced=True, writer=writer)
                log.error("posting failed", request=reqs[0].key, txn=str(reqs[0].txn), error=repr(exc))
                return [_declined("posting_failed")]
            log.warning("batch failed; retrying one by one", size=len(reqs), error=repr(exc))
            out: list[Decision] = []
            for req in reqs:
                out.extend(await self.post_batch(conn, [req], now, writer=writer))
            return out

    async def card_id_for(self, conn: Any, pan_hash: str) -> int | None:
        if pan_hash not in self._card_ids:
            await self._load_card_ids(conn, [pan_hash])
        return self._card_ids.get(pan_hash)

    # -- the batch ------------------------------------------------------------------------------
    def _learn(self, created: dict[tuple[str, str, int], int]) -> None:
        for (kind, currency, part), acct in created.items():
            if kind == "funding":
                self._funding[(currency, part)] = acct
            else:
                self._issuer_accounts[(kind, currency)] = acct

    async def _run_batch(
        self,
        conn: Any,
        reqs: list[Request],
        now: dt.datetime,
        chain: int | None = None,
        created: dict[tuple[str, str, int], int] | None = None,
    ) -> list[Decision]:
        b = _Batch(now=now, today=self.business_day.today(now), chain=chain)
        if created is not None:
            b.accounts = created  # the caller publishes them once the transaction has committed
        await self._load_card_ids(conn, [r.pan_hash for r in reqs if r.card_id is None and r.pan_hash])
        for r in reqs:
            if r.card_id is None and r.pan_hash:
                r.card_id = self._card_ids.get(r.pan_hash)
        merchants = await self._merchants_for(conn, {r.merchant_id for r in reqs if r.merchant_id})
        await self._load_originals(conn, b, reqs)
        card_ids = sorted(
            {r.card_id for r in reqs if r.card_id is not None}
            | {o.card_id for o in b.originals.values() if o.card_id is not None}
            | {r.replacing.new_card_id for r in reqs if r.replacing is not None}
        )
        if code_hashes := [r.payment_code for r in reqs if r.payment_code is not None]:
            b.codes = await payment_codes.lock(conn, code_hashes)  # rare: a statement of its own
        await self._answered_and_locked(conn, b, list({r.key for r in reqs}), card_ids)

        decisions = []
        for r in reqs:
            d = b.done.get(r.key)
            if d is None:
                card = self._card_of(b, r) if self.write_events else None
                before = card.available if card is not None else 0
                d = await self._decide(conn, b, r, merchants.get(r.merchant_id))
                b.done[r.key] = d
                b.fingerprints[r.key] = _fingerprint(r)
                if self.write_events:
                    self._events_of(b, r, d, self._card_of(b, r) if card is None else card, before)
            elif r.key in b.reversed or b.fingerprints.get(r.key, _fingerprint(r)) != _fingerprint(r):
                # The key of an answered request with another card, amount or processing code, or of
                # one reversed since: not a retransmission, and its answer is not this one's (94, not
                # stored: the key is the first request's).
                d = _declined("key_reused")
            elif not d.duplicate:
                d = Decision(d.code, d.auth_id, d.balance_field, duplicate=True)
            decisions.append(d)
        await self._write(conn, b)
        return decisions

    def _card_of(self, b: _Batch, r: Request) -> CardState | None:
        """The card a request concerns: its own, or a reversal's original's."""
        cid = r.card_id
        if cid is None and r.txn is Txn.REVERSAL and (o := b.originals.get(r.original_key or "")) is not None:
            cid = o.card_id
        return b.cards.get(cid) if cid is not None else None

    def _events_of(self, b: _Batch, r: Request, d: Decision, card: CardState | None, before: int) -> None:
        """The outbox rows of one request just decided (host.events; written by ``_write``): an
        authorization.approved / .declined per financial request (reversals included; balance inquiries
        only when declined, PIN changes both ways; hold expiries, replacements and an operator's refused
        unload or forfeit none: they are not journaled either), and card.balance_low when it took the
        available balance from at least host.balance_low to below it."""
        if r.txn in _NO_EVENT or (r.txn is Txn.BALANCE and d.code == Rc.APPROVED):
            return
        if r.txn in (Txn.ADMIN_UNLOAD, Txn.FORFEIT) and not d.posted:
            return
        if not b.stamp:
            b.stamp = events.stamp(b.now)
        currency = r.currency or (card.product.currency if card is not None else None)
        cid = card.card_id if card is not None else None
        masked = b.masked.get(cid) if cid is not None else None
        e = events.authorization(
            card_id=cid,
            pan_masked=masked,
            txn=str(r.txn),
            mti=r.mti,
            amount=r.amount,
            currency=currency,
            response_code=d.code,
            reason=d.reason,
            merchant_id=r.merchant_id,
            terminal_id=r.terminal_id,
            rrn=r.rrn,
            stan=r.stan,
            acquirer_id=r.acquirer_id,
            auth_code=d.auth_id,
            balance=card.balance if card is not None else None,
            available=card.available if card is not None else None,
            business_date=b.today,
            occurred_at=b.stamp,
        )
        b.events.append([e.type, e.card_id, e.merchant_id, e.payload])
        low = self.balance_low
        if low and card is not None and r.txn is not Txn.FORFEIT and before >= low > card.available:
            e = events.balance_low(
                card_id=card.card_id,
                pan_masked=masked,
                available=card.available,
                threshold=low,
                currency=card.product.currency,
                txn=str(r.txn),
                rrn=r.rrn,
                merchant_id=r.merchant_id,
                occurred_at=b.stamp,
            )
            b.events.append([e.type, e.card_id, e.merchant_id, e.payload])

    async def _load_card_ids(self, conn: Any, pan_hashes: list[str]) -> None:
        missing = [h for h in set(pan_hashes) if h not in self._card_ids]
        if missing:
            for row in await conn.fetch(
                "SELECT id, pan_hash FROM cards WHERE pan_hash = ANY($1::text[])", missing
            ):
                self._card_ids[row["pan_hash"]] = row["id"]

    def forget_merchants(self) -> None:
        """Drop the merchant cache (the catalogue changed: host_catalog.version, host/service.py): the next
        batch reads its merchants again. A batch in flight keeps the snapshot it started with."""
        self._merchants = {}

    async def _merchants_for(self, conn: Any, ids: set[str]) -> dict[str, Merchant]:
        clock = time.monotonic()
        cache = self._merchants  # forget_merchants() replaces the dict while this batch awaits
        out = {m: e[1] for m in ids if (e := cache.get(m)) is not None and e[0] >= clock}
        missing = [m for m in ids if m not in out]
        if missing:
            rows = await conn.fetch(
                """SELECT m.id, m.merchant_id, m.mcc, m.group_code, m.currency, m.state,
                          array_agg(a.part) FILTER (WHERE a.id IS NOT NULL) AS parts,
                          array_agg(a.id) FILTER (WHERE a.id IS NOT NULL) AS accounts
                   FROM merchants m LEFT JOIN accounts a ON a.merchant_id = m.id AND a.kind = 'merchant'
                   WHERE m.merchant_id = ANY($1::text[]) GROUP BY m.id""",
                missing,
            )
            found = {
                row["merchant_id"]: Merchant(
                    row["id"],
                    row["merchant_id"],
                    row["mcc"],
                    row["group_code"],
                    row["currency"],
                    row["state"],
                    dict(zip(row["parts"] or [], row["accounts"] or [], strict=True)),
                )
                for row in rows
            }
            if len(cache) > CACHE_LIMIT:  # unknown DE42 values must not grow it for ever
                cache.clear()
            for m in missing:
                cache[m] = (clock + MERCHANT_CACHE_SECONDS, found.get(m))
                out[m] = found.get(m)
        return {m: merchant for m, merchant in out.items() if merchant is not None}

    async def _load_originals(self, conn: Any, b: _Batch, reqs: list[Request]) -> None:
        rev_keys = [r.original_key for r in reqs if r.txn is Txn.REVERSAL and r.original_key]
        rrn_pairs = [
            (r.card_id, r.original_rrn)
            for r in reqs
            if r.original_rrn
            and r.card_id is not None
            and r.txn in (Txn.VOID, Txn.REFUND, Txn.COMPLETION, Txn.PREAUTH_VOID)
        ]
        hold_keys = [r.hold_key for r in reqs if r.txn is Txn.EXPIRY and r.hold_key]
        hold_cards = list(
            {
                r.card_id
                for r in reqs
                if r.txn in (Txn.COMPLETION, Txn.PREAUTH_VOID)
                and not r.original_rrn
                and r.card_id is not None
            }
        )
        if not (rev_keys or rrn_pairs or hold_keys or hold_cards):
            return
        cols = (
            "key, txn, response_code, posted, card_id, amount, rrn, received_at,"
            " (SELECT m.group_code FROM merchants m WHERE m.id = merchant_ref) AS group_code"
        )
        rows = list(
            await conn.fetch(f"SELECT {cols} FROM auth_requests WHERE key = ANY($1::text[])", rev_keys)
        )
        if rrn_pairs:
            rows += await conn.fetch(
                f"""SELECT {cols} FROM auth_requests
                    WHERE (card_id, rrn) IN (SELECT * FROM unnest($1::bigint[], $2::text[]))
                      AND response_code = '00' AND txn = ANY($3::text[])
                    ORDER BY received_at""",
                [p[0] for p in rrn_pairs],
                [p[1] for p in rrn_pairs],
                [Txn.PURCHASE, Txn.COMPLETION, Txn.PREAUTH, Txn.OFFLINE],
            )
        if hold_cards:
            rows += await conn.fetch(
                f"""SELECT {cols} FROM auth_requests
                    WHERE card_id = ANY($1::bigint[]) AND txn = 'preauth' AND response_code = '00'
                    ORDER BY received_at""",
                hold_cards,
            )
        for row in rows:
            if row["key"] not in b.originals:
                o = Original(
                    row["key"],
                    row["txn"],
                    row["response_code"],
                    row["posted"],
                    row["card_id"],
                    row["amount"],
                    row["rrn"],
                    day=self.business_day.date_of(row["received_at"]),
                    group=row["group_code"],
                )
                self._register(b, o)
        for row in await conn.fetch(
            "SELECT reversal_of FROM auth_requests"
            " WHERE reversal_of = ANY($1::text[]) AND response_code = '00'",
            rev_keys,
        ):
            if (rev := b.originals.get(row["reversal_of"])) is not None:
                rev.reversed = True
        okeys = list(b.originals)
        trows = await conn.fetch(
            """SELECT key, debit_account_id, credit_account_id, amount, phase, code, card_id, currency,
                      pending_key, hold_of, original_key, expires_at
               FROM transfers
               WHERE key = ANY($1::text[]) OR original_key = ANY($1::text[]) OR hold_of = ANY($1::text[])
                  OR key = ANY($2::text[])
               ORDER BY id""",
            okeys,
            hold_keys,
        )
        pending: dict[str, TransferRow] = {}
        for t in trows:
            tr = _transfer_from_row(t)
            if (own := b.originals.get(tr.key)) is not None:
                own.transfer = tr
            if tr.original_key and (ref := b.originals.get(tr.original_key)) is not None:
                if tr.code in (Txn.VOID, Txn.REVERSAL):
                    ref.undone = True
                elif tr.code == Txn.REFUND:
                    ref.refunded += tr.amount
                elif tr.code == "offline_repay":
                    ref.repaid += tr.amount
            if tr.phase == "pending":
                pending[tr.key] = tr
        refunds = {
            t["key"]: t["original_key"] for t in trows if t["code"] == Txn.REFUND and t["original_key"]
        }
        if refunds:
            for row in await conn.fetch(
                "SELECT original_key, amount FROM transfers"
                " WHERE code = 'reversal' AND original_key = ANY($1::text[])",
                list(refunds),
            ):
                if (parent := b.originals.get(refunds[row["original_key"]])) is not None:
                    parent.refunded -= row["amount"]
        if pending:
            resolved = {
                row["pending_key"]: row["state"]
                for row in await conn.fetch(
                    """SELECT pending_key, CASE WHEN phase = 'post_pending' THEN 'posted'
                                                WHEN code = 'expiry' THEN 'expired' ELSE 'voided' END AS state
                       FROM transfers WHERE pending_key = ANY($1::text[])""",
                    list(pending),
                )
            }
            for pkey, tr in pending.items():
                owner = b.originals.get(tr.hold_of or "")
                state = resolved.get(pkey, "pending")
                if owner is not None:
                    if state == "pending":
                        owner.hold = tr
                        owner.hold_state = "pending"
                    elif owner.hold is None:
                        owner.hold_state = state
                if tr.key in hold_keys and state == "pending":
                    b.originals.setdefault(
                        "hold:" + tr.key,
                        Original(
                            "hold:" + tr.key,
                            "hold",
                            Rc.APPROVED,
                            True,
                            tr.card_id,
                            tr.amount,
                            "",
                            hold=tr,
                            hold_state="pending",
                        ),
                    )

    def _register(self, b: _Batch, o: Original) -> None:
        b.originals[o.key] = o
        if o.card_id is not None and o.rrn:
            b.by_rrn.setdefault((o.card_id, o.rrn), []).append(o)
        if o.card_id is not None and o.txn == Txn.PREAUTH:
            b.preauths.setdefault(o.card_id, []).append(o)

    async def _answered_and_locked(self, conn: Any, b: _Batch, keys: list[str], card_ids: list[int]) -> None:
        """One round trip: which keys were answered already, and the cards' account rows locked."""
        row = await conn.fetchrow(_READ_SQL, keys, card_ids)
        if b.chain is not None and b.chain != ledger_chain.SHARED_CHAIN:
            b.head = leases.parse_head(row["head"]) or (0, GENESIS)
        for key, code, auth_id, balance, txn, card_id, amount, proc, reversed_ in json.loads(row["answered"]):
            b.done[key] = Decision(code, auth_id, balance, duplicate=True)
            if txn == TOMBSTONE:  # a late original named by an early reversal: 05, whatever it carries
                continue
            b.fingerprints[key] = (card_id, amount, proc or "")
            if reversed_ and code == Rc.APPROVED:  # a reversal of a decline undid nothing
                b.reversed.add(key)
        for c in json.loads(row["cards"]):
            b.masked[c["id"]] = c["pan_masked"]
            product = Product(
                c["product_id"],
                c["code"],
                c["kind"],
                c["currency"],
                c["max_balance"],
                c["per_txn_limit"],
                c["daily_amount_limit"],
                c["daily_count_limit"],
                c["pin_required"],
                tuple(c["allowed_mccs"]) if c["allowed_mccs"] is not None else None,
                tuple(c["allowed_groups"]) if c["allowed_groups"] is not None else None,
                chip=c["chip"],
                chip_fallback=c["chip_fallback"],
                no_cvm_limit=c["no_cvm_limit"],
                no_cvm_cumulative_limit=c["no_cvm_cumulative_limit"],
                offline_floor_limit=c["offline_floor_limit"],
            )
            b.cards[c["id"]] = CardState(
                c["id"],
                c["account_id"],
                product,
                c["state"],
                c["expiry"],
                c["part"],
                c["uses_left"],
                c["pin_tries"],
                dt.date.fromisoformat(c["day"]) if c["day"] else None,
                c["day_amount"],
                c["day_count"],
                c["debits_pending"],
                c["debits_posted"],
                c["credits_pending"],
                c["credits_posted"],
                tier_max_balance=c["tier_max_balance"],
                controls=controls.effective(c["product_controls"], c["card_controls"]),
                spend=controls.spend_of(c),
                no_cvm_amount=c["no_cvm_amount"],
                no_cvm_count=c["no_cvm_count"],
                last_atc=c["last_atc"],
                receivable_id=c["offline_receivable_id"],
            )
        await offline.load_dues(conn, b.cards.values())  # only cards owing offline sales: rare

    # -- deciding -------------------------------------------------------------------------------
    async def _decide(self, conn: Any, b: _Batch, r: Request, merchant: Merchant | None) -> Decision:
        if r.txn is Txn.EXPIRY:
            return self._expire(b, r)
        if r.txn is Txn.REVERSAL:
            d = self._reverse(b, r)
            self._record(b, r, d, original_key=r.original_key, reversal_of=r.original_key, merchant=merchant)
            return d
        card = b.cards.get(r.card_id) if r.card_id is not None else None
        original: Original | None = None
        if card is None:
            d = _declined("card_unknown")
        else:
            if r.txn in (Txn.VOID, Txn.REFUND, Txn.COMPLETION, Txn.PREAUTH_VOID):
                original = self._find_by_rrn(b, r, card.card_id)
            d = await self._decide_card_or_code(conn, b, r, card, merchant, original)
            if d.posted and r.txn in BALANCE_AFTER and not d.balance_field:
                # the balance after it, for the terminal's receipt (specs/README.md, "Balance after")
                d.balance_field = rules.balance_field(card)
            if r.pin is Pin.OK or card.product.chip != "none":  # no-CVM counters (host.chip)
                chip.after_decision(card, r, d)
            if r.flags and d.code == Rc.APPROVED:
                b.flags.append((r.key, r.flags))
        self._record(b, r, d, original_key=original.key if original else None, merchant=merchant)
        if r.txn in FINANCIAL or r.txn is Txn.BALANCE:
            self._register(
                b,
                Original(
                    r.key, r.txn, d.code, d.posted, r.card_id, r.amount, r.rrn, day=b.today,
                    group=merchant.group_code if merchant is not None else None,
                ),
            )
            if d.posted and b.transfers and b.transfers[-1].key == r.key:
                o = b.originals[r.key]
                o.transfer = b.transfers[-1]
                if len(b.transfers) > 1 and b.transfers[-2].key == r.key + offline.REPAY:
                    o.repaid = b.transfers[-2].amount
                if o.transfer.phase == "pending":
                    o.hold, o.hold_state = o.transfer, "pending"
        return d

    async def _decide_card_or_code(
        self,
        conn: Any,
        b: _Batch,
        r: Request,
        card: CardState,
        merchant: Merchant | None,
        original: Original | None,
    ) -> Decision:
        """A request by payment code (host.payment_codes) passes the code's rules first, and an approved
        purchase or pre-auth consumes the code in this transaction; any other request goes straight on."""
        if r.payment_code is None:
            return await self._decide_card(conn, b, r, card, merchant, original)
        code = b.codes.get(r.payment_code)
        reason = payment_codes.refusal(code, r, b.now)
        if reason is not None:
            return _declined(reason)
        d = await self._decide_card(conn, b, r, card, merchant, original)
        if code is not None and d.posted and r.txn in payment_codes.PAYS:
            payment_codes.consume(code, r)
            b.codes_used.append(code)
        return d

    def _find_by_rrn(self, b: _Batch, r: Request, card_id: int) -> Original | None:
        if not r.original_rrn and r.txn in (Txn.COMPLETION, Txn.PREAUTH_VOID):
            # no RRN: the card's latest pre-auth still on hold (for a void, preferably of that amount)
            mine = [o for o in b.preauths.get(card_id, []) if o.code == Rc.APPROVED]
            held = [o for o in mine if o.hold is not None]
            exact = [o for o in held if o.hold is not None and o.hold.amount == r.amount]
            if r.txn is Txn.PREAUTH_VOID and exact:
                return exact[-1]
            return held[-1] if held else (mine[-1] if mine else None)
        wanted = {
            Txn.VOID: (Txn.PURCHASE, Txn.COMPLETION),
            Txn.REFUND: (Txn.PURCHASE, Txn.COMPLETION, Txn.OFFLINE),  # an offline sale is refundable
            Txn.COMPLETION: (Txn.PREAUTH,),
            Txn.PREAUTH_VOID: (Txn.PREAUTH,),
        }[r.txn]
        for o in reversed(b.by_rrn.get((card_id, r.original_rrn or ""), [])):
            if o.txn in wanted and o.code == Rc.APPROVED and o.key != r.key:
                return o
        return None

    async def _decide_card(
        self,
        conn: Any,
        b: _Batch,
        r: Request,
        card: CardState,
        merchant: Merchant | None,
        original: Original | None,
    ) -> Decision:
        if r.txn in (Txn.ADMIN_UNLOAD, Txn.FORFEIT):
            return await self._money_out(conn, b, r, card)
        if r.txn is Txn.REPLACEMENT:
            return self._replace(b, r, card)
        if r.txn is Txn.OFFLINE:  # the sale happened: no state rule but its own, no limits (host.offline)
            return await offline.post_advice(self, conn, b, r, card, merchant)
        reason = rules.check_card(card, r, b.today)
        if reason is None and (r.chip is not None or card.product.chip != "none"):
            reason = chip.check(card, r)  # cryptogram, ATC, fallback (host.chip)
        if reason is None and r.txn is not Txn.ADMIN_LOAD:
            reason = rules.check_pin(card, r, self.pin_tries)
        if reason is not None:
            return _declined(reason)
        if r.txn is Txn.PIN_CHANGE:
            return await self._pin_change(conn, b, r, card)
        if r.txn is Txn.BALANCE:
            return Decision(Rc.APPROVED, _auth_id(), rules.balance_field(card))
        reason = rules.check_amount(card, r)
        if reason is not None:
            return _declined(reason)
        if r.txn in (Txn.PURCHASE, Txn.PREAUTH, Txn.TOPUP):
            if merchant is None or merchant.state != "active":
                return _declined(_merchant_reason(merchant))
            macct = merchant.accounts.get(card.part)
            if macct is None:
                return _declined("merchant_account_missing")
            if r.txn is Txn.TOPUP:
                # what repays offline sales owed (host.offline) does not stay on the card
                reason = rules.check_topup(card, r.amount - offline.repayable(card, r.amount))
                if reason is not None:
                    return _declined(reason)
                offline.repay(self, b, r, card)
                return self._post(b, r, macct, card.account_id, card, "single", Txn.TOPUP)
            reason = rules.check_merchant_allowed(card, merchant)
            reason = reason or offline.due_reason(card)
            reason = reason or rules.check_limits(card, r.amount, b.today)
            reason = reason or controls.check(
                card, merchant.group_code, r.amount, b.today, b.now, self.business_day.timezone
            )
            if reason is None and card.available < r.amount:
                reason = "insufficient_funds"
            if reason is not None:
                return _declined(reason)
            rules.count_use(card, r.amount)
            controls.count(card, merchant.group_code, r.amount, b.today)
            if r.txn is Txn.PURCHASE:
                return self._post(b, r, card.account_id, macct, card, "single", Txn.PURCHASE)
            expires = b.now + dt.timedelta(days=self.hold_days)
            return self._post(
                b, r, card.account_id, macct, card, "pending", Txn.PREAUTH, hold_of=r.key, expires_at=expires
            )
        if r.txn is Txn.ADMIN_LOAD:
            # a gift card's one load is its face value, at activation; after that it is not reloadable
            first_gift_load = card.product.kind == "fixed_amount" and card.credits_posted == 0
            kept = r.amount - offline.repayable(card, r.amount)  # the rest repays offline sales owed
            reason = None if first_gift_load else rules.check_topup(card, kept)
            if reason is not None:
                return _declined(reason)
            funding = await self._funding_account(conn, b, card.product.currency, card.part)
            offline.repay(self, b, r, card)
            return self._post(b, r, funding, card.account_id, card, "single", Txn.ADMIN_LOAD)
        if original is None:
            return _declined("original_not_found")
        if r.txn in (Txn.VOID, Txn.REFUND):
            t = original.transfer
            if t is None or original.undone or original.reversed:
                return _declined("original_undone")
            if r.txn is Txn.VOID:
                if original.refunded:
                    return _declined("original_refunded")
                if r.amount != t.amount:
                    return _declined("void_amount_differs")
                original.undone = True
                self._restore_use(b, card, original, t.amount, whole=True)
            else:
                if r.amount > t.amount - original.refunded:
                    return _declined("refund_exceeds_original")
                original.refunded += r.amount
            return self._post(b, r, t.credit, t.debit, card, "single", r.txn, original_key=original.key)
        # completion or pre-auth void of a hold
        hold = original.hold
        if hold is None or original.reversed:
            return _declined("hold_not_pending")
        if r.txn is Txn.PREAUTH_VOID:
            return self._void_hold(b, r, card, original, Txn.PREAUTH_VOID)
        limit = hold.amount + hold.amount * self.completion_tolerance_pct // 100
        if r.amount > limit:
            return _declined("completion_over_hold")
        if r.amount > hold.amount and card.available < r.amount - hold.amount:
            return _declined("insufficient_funds")
        original.hold, original.hold_state = None, "posted"
        return self._post(
            b,
            r,
            hold.debit,
            hold.credit,
            card,
            "post_pending",
            Txn.COMPLETION,
            pending=hold,
            original_key=original.key,
        )

    async def _pin_change(self, conn: Any, b: _Batch, r: Request, card: CardState) -> Decision:
        """A PIN change whose old PIN the HSM verified (card state and try counter already checked, the
        counter cleared by check_pin): the new PVV and PIN under LMK are written with the batch, nothing
        else (no transfer, nothing posted). Only while the card still has the PVV the old PIN was
        verified against: another change decided in between (this batch or one before) makes the old
        PIN wrong, 55 without counting a try."""
        if r.pin is not Pin.OK or r.new_pvv is None or r.new_pin_lmk is None:
            return _declined("pin_missing")
        changed = b.pin_changes.get(card.card_id)
        if changed is not None:
            current = changed[0]
        else:  # the card's row: its accounts row is locked, so no other batch changes it meanwhile
            current = await conn.fetchval("SELECT pvv FROM cards WHERE id = $1", card.card_id)
        if current != r.verified_pvv:
            return _declined("pin_changed_meanwhile")
        b.pin_changes[card.card_id] = (r.new_pvv, r.new_pin_lmk)
        return Decision(Rc.APPROVED, _auth_id())

    def _reverse(self, b: _Batch, r: Request) -> Decision:
        """Undo the original once. Unknown original: answer 00 and leave a tombstone under its key."""
        okey = r.original_key
        if not okey:
            return Decision(Rc.APPROVED, posted=False)
        o = b.originals.get(okey)
        if o is None:
            if okey not in b.done:
                tomb = Request(
                    okey,
                    r.original_mti or okey[-4:],
                    Txn.REVERSAL,
                    acquirer_id=r.acquirer_id,
                    terminal_id=r.terminal_id,
                    merchant_id=r.merchant_id,
                    card_id=r.card_id,
                )
                dec = _declined("reversed_before_arrival")
                b.done[okey] = dec
                self._record(
                    b, tomb, dec, txn=TOMBSTONE, stan=okey.split(":")[2], transmitted=okey.split(":")[1]
                )
                self._register(
                    b, Original(okey, TOMBSTONE, Rc.DO_NOT_HONOUR, False, r.card_id, 0, "", reversed=True)
                )
            return Decision(Rc.APPROVED)
        if o.reversed or o.code != Rc.APPROVED or not o.posted or o.undone:
            o.reversed = o.reversed or o.code == Rc.APPROVED
            return Decision(Rc.APPROVED)
        card = b.cards.get(o.card_id) if o.card_id is not None else None
        t = o.transfer
        if card is None or t is None:
            o.reversed = True
            return Decision(Rc.APPROVED)
        if t.phase in ("single", "post_pending"):
            amount = t.amount
            if r.actual_amount is not None and 0 <= r.actual_amount < t.amount:
                amount = t.amount - r.actual_amount
            amount = min(amount, t.amount - o.refunded)  # what was refunded already is not given twice
            if amount <= 0:
                o.reversed = True
                return Decision(Rc.APPROVED)
            # A load that repaid offline sales owed: that part went on to the receivable, and comes
            # back from it (the debt is owed again), so only the rest must still be on the card.
            owed_again = min(o.repaid, amount) if card.receivable_id is not None else 0
            if t.credit == card.account_id and card.available + owed_again < amount:
                return _declined("credit_already_spent")  # a credit already spent: nothing undone
            if owed_again:
                offline.owe_again(self, b, r, card, owed_again)
                o.repaid -= owed_again
            o.reversed = o.undone = True
            if o.txn in (Txn.PURCHASE, Txn.COMPLETION):
                self._restore_use(b, card, o, amount, whole=amount == t.amount)
            if o.txn == Txn.REFUND and (parent := b.originals.get(t.original_key or "")) is not None:
                parent.refunded -= amount  # the refund did not happen: that much may be refunded again
            return self._post(
                b, r, t.credit, t.debit, card, "single", Txn.REVERSAL, amount=amount, original_key=o.key
            )
        if t.phase == "pending":  # a pre-auth: release its hold if still there
            o.reversed = True
            if o.hold is None:
                return Decision(Rc.APPROVED)
            return self._void_hold(b, r, card, o, Txn.REVERSAL)
        # a pre-auth void: the hold comes back
        pre_key = t.original_key  # the pre-auth whose hold the void released
        pre = b.originals.get(pre_key) if pre_key else None
        if card.available < t.amount:
            return _declined("credit_already_spent")
        o.reversed = o.undone = True
        d = self._post(
            b,
            r,
            t.debit,
            t.credit,
            card,
            "pending",
            Txn.REVERSAL,
            amount=t.amount,
            hold_of=pre_key,
            original_key=o.key,
            expires_at=b.now + dt.timedelta(days=self.hold_days),
        )
        if pre is not None:
            pre.hold, pre.hold_state = b.transfers[-1], "pending"
        return d

    def _expire(self, b: _Batch, r: Request) -> Decision:
        o = b.originals.get("hold:" + (r.hold_key or ""))
        if o is None or o.hold is None:
            return Decision(Rc.INVALID_TXN)
        hold = o.hold
        card = b.cards.get(hold.card_id)
        if card is None:
            return Decision(Rc.INVALID_CARD)
        o.hold = None
        owner = b.originals.get(hold.hold_of or "")
        if owner is not None and owner.hold is not None and owner.hold.key == hold.key:
            owner.hold, owner.hold_state = None, "expired"
        return self._post(
            b,
            r,
            hold.debit,
            hold.credit,
            card,
            "void_pending",
            Txn.EXPIRY,
            amount=hold.amount,
            pending=hold,
            original_key=hold.hold_of,
        )

    def _void_hold(self, b: _Batch, r: Request, card: CardState, o: Original, txn: Txn) -> Decision:
        """Release the original's pending hold (pre-auth void or reversal of a pre-auth) exactly once."""
        hold = o.hold
        assert hold is not None
        o.hold, o.hold_state = None, "voided"
        self._restore_use(b, card, o, hold.amount, whole=True)
        return self._post(
            b,
            r,
            hold.debit,
            hold.credit,
            card,
            "void_pending",
            txn,
            amount=hold.amount,
            pending=hold,
            original_key=o.key,
        )

    def _restore_use(self, b: _Batch, card: CardState, o: Original, amount: int, *, whole: bool) -> None:
        """Undoing a counted use gives back what it took: the amount from the day's total if it was
        counted today (yesterday's total is gone anyway), and, when all of it is undone, the day's count
        and a usage-limited card's use. A partial reversal leaves the use spent: the sale happened."""
        if whole and card.uses_left is not None:
            card.uses_left += 1
            card.card_dirty = True
        if o.day is not None and o.day == b.today and card.day == b.today:
            card.day_amount = max(0, card.day_amount - amount)
            if whole:
                card.day_count = max(0, card.day_count - 1)
            card.counters_dirty = True
        if card.spend is not None:  # and the week's, month's, lifetime's and its group's alike
            controls.give_back(card, o.day, o.group, amount, whole, b.today)

    # -- posting --------------------------------------------------------------------------------
    def _post(
        self,
        b: _Batch,
        r: Request,
        debit: int | CardState,
        credit: int | CardState,
        card: CardState,
        phase: str,
        code: Txn,
        *,
        amount: int | None = None,
        pending: TransferRow | None = None,
        hold_of: str | None = None,
        original_key: str | None = None,
        expires_at: dt.datetime | None = None,
    ) -> Decision:
        debit_id = debit.account_id if isinstance(debit, CardState) else debit
        credit_id = credit.account_id if isinstance(credit, CardState) else credit
        value = r.amount if amount is None else amount
        t = TransferRow(
            r.key,
            debit_id,
            credit_id,
            value,
            phase,
            str(code),
            card.card_id,
            card.product.currency,
            pending.key if pending else None,
            hold_of,
            original_key,
            expires_at,
        )
        if phase == "single":
            self._move(b, card, debit_id, 1, value)
            self._move(b, card, credit_id, 3, value)
        elif phase == "pending":
            self._move(b, card, debit_id, 0, value)
            self._move(b, card, credit_id, 2, value)
        else:
            assert pending is not None
            self._move(b, card, debit_id, 0, -pending.amount)
            self._move(b, card, credit_id, 2, -pending.amount)
            if phase == "post_pending":
                self._move(b, card, debit_id, 1, value)
                self._move(b, card, credit_id, 3, value)
        b.transfers.append(t)
        return Decision(Rc.APPROVED, _auth_id(), posted=True)

    def _leg(
        self,
        b: _Batch,
        key: str,
        debit: int | CardState,
        credit: int | CardState,
        card: CardState,
        amount: int,
        code: str,
        original_key: str,
    ) -> None:
        """A single-phase transfer that goes with a request's own (host.offline: an advice's shortfall,
        a load's repayment), under a key of its own naming the request's in original_key."""
        debit_id = debit.account_id if isinstance(debit, CardState) else debit
        credit_id = credit.account_id if isinstance(credit, CardState) else credit
        b.transfers.append(
            TransferRow(key, debit_id, credit_id, amount, "single", code, card.card_id, card.product.currency,
                        original_key=original_key)
        )
        self._move(b, card, debit_id, 1, amount)
        self._move(b, card, credit_id, 3, amount)

    def _move(self, b: _Batch, card: CardState, account: int, column: int, value: int) -> None:
        b.deltas.setdefault(account, [0, 0, 0, 0])[column] += value
        if account == card.account_id:
            if column == 0:
                card.debits_pending += value
            elif column == 1:
                card.debits_posted += value
            elif column == 2:
                card.credits_pending += value
            else:
                card.credits_posted += value

    def _record(
        self,
        b: _Batch,
        r: Request,
        d: Decision,
        *,
        original_key: str | None = None,
        reversal_of: str | None = None,
        txn: str | None = None,
        stan: str | None = None,
        transmitted: str | None = None,
        merchant: Merchant | None = None,
    ) -> None:
        if r.txn is Txn.EXPIRY:
            return
        if r.txn in (Txn.ADMIN_UNLOAD, Txn.FORFEIT) and not d.posted:
            return  # an operator's refused unload or forfeit leaves nothing: its reference stays free
        if r.txn is Txn.REPLACEMENT and d.code != Rc.APPROVED:
            return  # likewise a refused replacement (an empty card's is approved without a posting)
        b.auth_rows.append(
            (
                r.key,
                r.mti,
                txn or str(r.txn),
                r.proc_code or None,
                r.card_id,
                merchant.id if merchant is not None else None,
                r.acquirer_id,
                r.terminal_id,
                r.merchant_id,
                stan or r.stan,
                transmitted or r.transmitted,
                r.rrn,
                r.local_time,
                r.amount,
                r.currency or None,
                d.code,
                d.auth_id,
                d.balance_field,
                original_key,
                reversal_of,
                d.posted,
                d.reason or None,
                r.reference,  # a programme load's funding reference (host.h2h)
            )
        )

    async def _money_out(self, conn: Any, b: _Batch, r: Request, card: CardState) -> Decision:
        """`card unload` (card -> cash-out payable) and `card close --forfeit` (card -> breakage income,
        the card closed in this transaction), decided against the locked balances.

        Whatever the card's state: an expired, lost or frozen card's money is paid out or forfeited so
        that the card can be closed. An unload takes at most the available balance (held money stays
        until its hold is resolved): 51 above it. A forfeit takes the whole balance and nothing else:
        51 while holds are pending, 13 when the amount is not the balance (it changed since it was read).
        A refusal is not journaled (``_record``): the operator's reference stays free for the retry.
        """
        reason = rules.check_amount(card, r)
        if reason is not None:
            return _declined(reason)
        if r.txn is Txn.ADMIN_UNLOAD:
            if card.available < r.amount:
                return Decision(Rc.INSUFFICIENT_FUNDS)
            cash_out = await self._issuer_account(conn, b, "cash_out", card.product.currency)
            return self._post(b, r, card.account_id, cash_out, card, "single", Txn.ADMIN_UNLOAD)
        if card.debits_pending:
            return Decision(Rc.INSUFFICIENT_FUNDS)
        if r.amount != card.balance:
            return Decision(Rc.INVALID_AMOUNT)
        breakage = await self._issuer_account(conn, b, "breakage", card.product.currency)
        b.closing.append(card.card_id)
        b.card_events.append((card.card_id, card.state, "closed", "forfeit", r.actor or cli_actor(), ""))
        card.state = "closed"
        return self._post(b, r, card.account_id, breakage, card, "single", Txn.FORFEIT)

    def _replace(self, b: _Batch, r: Request, old: CardState) -> Decision:
        """`card replace` (host.replace): the old card's whole balance to the new card (one transfer,
        key ``replace:<old id>``, original_key ``card:<old id>``; none for an empty card), today's use
        carried over (rules.carry_usage), the old card blocked with replaced_by, the new card given the
        cardholder and its state: all written in this transaction (``_write``). Both cards are locked
        by the batch's read. Refused (not journaled, as a forfeit) when what host.replace checked has
        changed since: the old card's state, a hold now pending (51), another balance (13), or the
        new card no longer a fresh inventory card of the same product (14)."""
        rp = r.replacing
        new = b.cards.get(rp.new_card_id) if rp is not None else None
        if rp is None or new is None or new.card_id == old.card_id:
            return _declined("card_unknown")
        if old.state not in rp.states_from:
            return _declined(rules.STATE_REASONS.get(old.state, "card_closed"))
        if new.state != "inventory" or new.product.id != old.product.id or new.balance or new.debits_pending:
            return Decision(Rc.INVALID_CARD)
        if old.debits_pending:
            return Decision(Rc.INSUFFICIENT_FUNDS)
        if r.amount != old.balance:
            return Decision(Rc.INVALID_AMOUNT)
        actor = r.actor or cli_actor()
        b.replaced.append((old.card_id, new.card_id, old.state, rp.old_to, rp.new_to))
        b.card_events += [
            (old.card_id, old.state, rp.old_to, "replace", actor, f"{rp.reason}; by card {new.card_id}"),
            (new.card_id, new.state, rp.new_to, "replace", actor, f"{rp.reason}; of card {old.card_id}"),
        ]
        rules.carry_usage(old, new)
        old.state, new.state = rp.old_to, rp.new_to
        if not old.balance:
            return Decision(Rc.APPROVED, _auth_id())
        amount = old.balance
        d = self._post(
            b,
            r,
            old.account_id,
            new.account_id,
            old,
            "single",
            Txn.REPLACEMENT,
            amount=amount,
            original_key=f"card:{old.card_id}",
        )
        new.credits_posted += amount  # _post keeps the old card's side; a later request sees the new's
        return d

    async def _issuer_account(self, conn: Any, b: _Batch, kind: str, currency: str) -> int:
        """The issuer's cash-out payable or breakage income account of a currency (one each), created
        the first time (no_overdraft on the cash-out payable: never paid out beyond what was unloaded).
        Only a committed id is cached in the Ledger; one this batch created stays in ``b.accounts``."""
        if (acct := self._issuer_accounts.get((kind, currency))) is not None:
            return acct
        if (acct := b.accounts.get((kind, currency, 0))) is not None:
            return acct
        index = {"cash_out": "cash_out", "breakage": "breakage"}[kind]  # a literal for ON CONFLICT
        acct = await conn.fetchval(
            "SELECT id FROM accounts WHERE kind = $1 AND currency = $2", kind, currency
        )
        if acct is not None:  # committed (a statement's snapshot sees no other transaction's rows)
            self._issuer_accounts[(kind, currency)] = acct
            return int(acct)
        acct = await conn.fetchval(
            f"""INSERT INTO accounts (kind, currency, part, no_overdraft) VALUES ($1, $2, 0, $3)
                ON CONFLICT (currency) WHERE kind = '{index}' DO UPDATE SET part = EXCLUDED.part
                RETURNING id""",
            kind,
            currency,
            kind == "cash_out",
        )
        b.accounts[(kind, currency, 0)] = acct
        return int(acct)

    async def _funding_account(self, conn: Any, b: _Batch, currency: str, part: int) -> int:
        """The funding account of a currency and partition (admin loads are debited to it). Missing, the
        currency's funding accounts of every partition are created at once, in partition order: two
        batches creating them at the same time then wait for each other (a conflicting insert waits
        for the inserter's end) instead of deadlocking, as one at a time in each batch's order of
        first use did. Only a committed id is cached in the Ledger; those of this batch's own
        insert stay in ``b.accounts`` until it commits (post_batch)."""
        if (acct := self._funding.get((currency, part))) is not None:
            return acct
        if (acct := b.accounts.get(("funding", currency, part))) is not None:
            return acct
        acct = await conn.fetchval(
            "SELECT id FROM accounts WHERE kind = 'funding' AND currency = $1 AND part = $2", currency, part
        )
        if acct is not None:  # committed (a statement's snapshot sees no other transaction's rows)
            self._funding[(currency, part)] = acct
            return int(acct)
        await conn.execute(_FUNDING_SQL, currency)
        # a new statement: it sees the rows of the creators this insert waited for, and this one's own
        for row in await conn.fetch(
            "SELECT id, part FROM accounts WHERE kind = 'funding' AND currency = $1", currency
        ):
            b.accounts[("funding", currency, row["part"])] = row["id"]
        acct = b.accounts.get(("funding", currency, part))
        if acct is None:  # a partition beyond ledger_settings.partitions: not a card's (never here)
            raise RuntimeError(f"no funding account for currency {currency} partition {part}")
        return int(acct)

    # -- writing --------------------------------------------------------------------------------
    async def _write(self, conn: Any, b: _Batch) -> None:
        """Everything the batch decided, in one statement (one round trip): data-modifying CTEs.

        The journal rows and the transfers travel as one JSON array each (one parameter, encoded by the
        C json module) rather than an array per column: per-element array encoding was measured as the
        costliest part of the write on the host's side. PostgreSQL takes each as jsonb, parsed once:
        as json, every ``r->>k`` parsed the row's text again up to field k (~38 µs of PostgreSQL CPU
        per journal row of 23 fields against ~5 as jsonb; bench/README.md, "jsonb, not json").
        """
        if b.codes_used:  # rare: a statement of its own, in the batch's transaction
            await payment_codes.mark_used(conn, b.codes_used, b.now)
        counted = {c.account_id: c for c in b.cards.values() if c.counters_dirty}
        dirty = [c for c in b.cards.values() if c.card_dirty]
        if self.write_events and b.card_events:  # card.state_changed beside each change's card_events row
            if not b.stamp:
                b.stamp = events.stamp(b.now)
            for cid, old, new, action, actor, reason in b.card_events:
                if events.changes_state(old, new):
                    e = events.state_changed(
                        card_id=cid, pan_masked=b.masked.get(cid), from_state=old, to_state=new,
                        action=action, actor=actor, reason=reason, occurred_at=b.stamp,
                    )
                    b.events.append([e.type, e.card_id, e.merchant_id, e.payload])
        if not (b.auth_rows or b.transfers or b.deltas or counted or dirty or b.events):
            return
        ids = sorted(set(b.deltas) | set(counted))
        zero = [0, 0, 0, 0]
        transfers = [
            (
                t.key,
                t.debit,
                t.credit,
                t.amount,
                t.currency,
                t.phase,
                t.code,
                t.card_id,
                t.pending_key,
                t.hold_of,
                t.original_key,
                t.expires_at.isoformat() if t.expires_at else None,
            )
            for t in b.transfers
        ]
        # One JSON line per row, joined into the write's parameters (as json.dumps of the list would)
        # and, sorted by key, the canonical text of the batch's seal (host.chain).
        auth_lines = [json.dumps(row) for row in sorted(b.auth_rows, key=_first)]
        transfer_lines = [json.dumps(t) for t in transfers]
        seal = await self._seal(conn, b, auth_lines, transfer_lines)
        await conn.execute(
            _WRITE_SQL,
            "[" + ", ".join(auth_lines) + "]",
            "[" + ", ".join(transfer_lines) + "]",
            ids,
            *[[b.deltas.get(i, zero)[c] for i in ids] for c in range(4)],
            [i in counted for i in ids],
            [counted[i].day if i in counted else None for i in ids],
            [counted[i].day_amount if i in counted else 0 for i in ids],
            [counted[i].day_count if i in counted else 0 for i in ids],
            [c.card_id for c in dirty],
            [c.uses_left for c in dirty],
            [c.pin_tries for c in dirty],
            *_window_columns(ids, counted),
            json.dumps(controls.group_rows(counted.values())),
            json.dumps(b.events, separators=(",", ":")),
            *_seal_columns(seal),
        )
        if b.closing:  # a forfeit closes its card in the transaction that empties it (rare: own statement)
            await conn.execute(
                "UPDATE cards SET state = 'closed', updated_at = now() WHERE id = ANY($1::bigint[])",
                b.closing,
            )
        if b.replaced:  # rare too: the two cards of each replacement, in the transaction moving the money
            changed = await conn.fetchval(_REPLACE_SQL, *[[x[i] for x in b.replaced] for i in range(5)])
            if changed != len(b.replaced):  # a card changed under us (`card freeze` meanwhile): undo all
                raise RuntimeError("a replaced card changed state while being replaced")
        if b.card_events:
            await conn.execute(_CARD_EVENTS_SQL, *[[e[i] for e in b.card_events] for i in range(6)])
        chip_cards = [c for c in b.cards.values() if c.chip_dirty]
        if chip_cards or b.flags:  # chip counters and flags (host.chip): own statements, only when any
            await chip.write(conn, chip_cards, b.flags)
        if b.pin_changes:  # PIN changes (rare: own statement), in the transaction that answers them
            changed, values = list(b.pin_changes), list(b.pin_changes.values())
            await conn.execute(_PIN_CHANGE_SQL, changed, [v[0] for v in values], [v[1] for v in values])


    async def _seal(
        self, conn: Any, b: _Batch, auth_lines: list[str], transfer_lines: list[str]
    ) -> ledger_chain.Seal | None:
        """The batch's digest row on its chain (host.chain), or None (not chained, nothing journaled).
        An engine chain's head is the one the batch's read found under its writer group's lock
        (host.leases: whichever host committed it); the shared chain's is read here, under its lock."""
        if b.chain is None or not (auth_lines or transfer_lines):
            return None
        prev = b.head if b.head is not None else await ledger_chain.head_of(conn, b.chain)
        keyed = sorted(zip((t.key for t in b.transfers), transfer_lines, strict=True))
        return ledger_chain.seal(b.chain, prev, b.now, auth_lines, [x[1] for x in keyed])


# Every partition's funding account of currency $1, in partition order (see _funding_account).
_FUNDING_SQL = """
INSERT INTO accounts (kind, currency, part, no_overdraft)
SELECT 'funding', $1, p, false FROM generate_series(0, (SELECT partitions - 1 FROM ledger_settings)) AS p
ORDER BY p
ON CONFLICT (currency, part) WHERE kind = 'funding' DO NOTHING
"""

_PIN_CHANGE_SQL = """
UPDATE cards c SET pvv = d.pvv, pin_lmk = d.pin_lmk, updated_at = now()
FROM unnest($1::bigint[], $2::text[], $3::text[]) AS d(id, pvv, pin_lmk)
WHERE c.id = d.id
"""

_READ_SQL = """
SELECT
    (SELECT coalesce(json_agg(json_build_array(q.key, q.response_code, q.auth_id, q.balance_field, q.txn,
                q.card_id, q.amount, q.proc_code, EXISTS (SELECT 1 FROM auth_requests v
                    WHERE v.reversal_of = q.key AND v.response_code = '00'))), '[]')
     FROM auth_requests q WHERE q.key = ANY($1::text[])) AS answered,
    (SELECT coalesce(json_agg(l), '[]') FROM (
        SELECT c.id, c.account_id, c.state, c.expiry, c.part, c.uses_left, c.pin_tries, c.pan_masked,
               c.offline_receivable_id, p.offline_floor_limit,
               a.day, a.day_amount,
               a.day_count, a.debits_pending, a.debits_posted, a.credits_pending, a.credits_posted,
               p.id AS product_id, p.code, p.kind, p.currency, p.max_balance, p.per_txn_limit,
               p.daily_amount_limit, p.daily_count_limit, p.pin_required, p.allowed_mccs, p.allowed_groups,
               p.chip, p.chip_fallback, p.no_cvm_limit, p.no_cvm_cumulative_limit, c.no_cvm_amount,
               c.no_cvm_count, c.last_atc,
               a.week, a.week_amount, a.week_count, a.month, a.month_amount, a.month_count, a.life_amount,
               a.life_count, p.controls::text AS product_controls, c.controls::text AS card_controls,
               CASE WHEN p.controls ? 'groups' OR c.controls ? 'groups' THEN (
                   SELECT json_agg(json_build_array(u.group_code, u.span, u.period, u.amount, u.count))
                   FROM card_group_usage u WHERE u.account_id = a.id) END AS group_usage,
               """ + kyc.TIER_CAP_SQL + """ AS tier_max_balance
        FROM cards c JOIN accounts a ON a.id = c.account_id JOIN products p ON p.id = c.product_id
            LEFT JOIN cardholders h ON h.id = c.cardholder_id
        WHERE c.id = ANY($2::bigint[]) ORDER BY c.id FOR NO KEY UPDATE OF a
    ) l) AS cards,
    """ + leases.HEAD_SQL + """ AS head
"""

_WRITE_SQL = """
WITH batch AS (
    -- the batch's seal (host.chain, migration 0023): none when $25 is NULL
    INSERT INTO ledger_batches (chain, seq, at, decisions, transfers, row_crc, prev_hash, hash)
    SELECT $25::int, $26::bigint, $27::timestamptz, $28::int, $29::int, $30::bytea, $31::text, $32::text
    WHERE $25::int IS NOT NULL
    RETURNING id
), requests AS (
    INSERT INTO auth_requests (key, mti, txn, proc_code, card_id, merchant_ref, acquirer_id, terminal_id,
        merchant_id, stan, transmitted, rrn, local_time, amount, currency, response_code, auth_id,
        balance_field, original_key, reversal_of, posted, reason, reference, batch_id)
    SELECT r->>0, r->>1, r->>2, r->>3, (r->>4)::bigint, (r->>5)::bigint, r->>6, r->>7, r->>8, r->>9, r->>10,
        r->>11, r->>12, (r->>13)::bigint, r->>14, r->>15, r->>16, r->>17, r->>18, r->>19, (r->>20)::boolean,
        r->>21, r->>22, (SELECT id FROM batch)
    FROM jsonb_array_elements($1::jsonb) AS r
), postings AS (
    INSERT INTO transfers (key, debit_account_id, credit_account_id, amount, currency, phase, code, card_id,
        pending_key, hold_of, original_key, expires_at, batch_id)
    SELECT r->>0, (r->>1)::bigint, (r->>2)::bigint, (r->>3)::bigint, r->>4, r->>5, r->>6, (r->>7)::bigint,
        r->>8, r->>9, r->>10, (r->>11)::timestamptz, (SELECT id FROM batch)
    FROM jsonb_array_elements($2::jsonb) AS r
), sums AS (
    UPDATE accounts a SET debits_pending = a.debits_pending + d.dpe, debits_posted = a.debits_posted + d.dpo,
        credits_pending = a.credits_pending + d.cpe, credits_posted = a.credits_posted + d.cpo,
        day = CASE WHEN d.counted THEN d.day ELSE a.day END,
        day_amount = CASE WHEN d.counted THEN d.day_amount ELSE a.day_amount END,
        day_count = CASE WHEN d.counted THEN d.day_count ELSE a.day_count END,
        week = CASE WHEN d.counted THEN d.week ELSE a.week END,
        week_amount = CASE WHEN d.counted THEN d.week_amount ELSE a.week_amount END,
        week_count = CASE WHEN d.counted THEN d.week_count ELSE a.week_count END,
        month = CASE WHEN d.counted THEN d.month ELSE a.month END,
        month_amount = CASE WHEN d.counted THEN d.month_amount ELSE a.month_amount END,
        month_count = CASE WHEN d.counted THEN d.month_count ELSE a.month_count END,
        life_amount = CASE WHEN d.counted THEN d.life_amount ELSE a.life_amount END,
        life_count = CASE WHEN d.counted THEN d.life_count ELSE a.life_count END
    FROM unnest($3::bigint[], $4::bigint[], $5::bigint[], $6::bigint[], $7::bigint[], $8::boolean[],
                $9::date[], $10::bigint[], $11::int[],
                $15::date[], $16::bigint[], $17::int[], $18::date[], $19::bigint[], $20::int[], $21::bigint[],
                $22::bigint[])
        AS d(id, dpe, dpo, cpe, cpo, counted, day, day_amount, day_count,
             week, week_amount, week_count, month, month_amount, month_count, life_amount, life_count)
    WHERE a.id = d.id
), counters AS (
    UPDATE cards c SET uses_left = d.uses_left, pin_tries = d.pin_tries, updated_at = now()
    FROM unnest($12::bigint[], $13::int[], $14::int[]) AS d(id, uses_left, pin_tries)
    WHERE c.id = d.id
), group_usage AS (
    INSERT INTO card_group_usage (account_id, group_code, span, period, amount, count)
    SELECT (g->>0)::bigint, g->>1, g->>2, (g->>3)::date, (g->>4)::bigint, (g->>5)::int
    FROM jsonb_array_elements($23::jsonb) AS g
    ON CONFLICT (account_id, group_code, span)
        DO UPDATE SET period = EXCLUDED.period, amount = EXCLUDED.amount, count = EXCLUDED.count
), outbox AS (
    -- the batch's events (host.events, ops.outbox's table): in decision order, in this transaction.
    -- jsonb, parsed once: each payload is then taken as it is (json would parse every element again
    -- for each field and once more for the column; measured ~30 % dearer in PostgreSQL)
    INSERT INTO events (type, card_id, merchant_id, payload)
    SELECT e->>0, (e->>1)::bigint, e->>2, e->3
    FROM jsonb_array_elements($24::jsonb) WITH ORDINALITY AS x(e, n) ORDER BY x.n
)
SELECT 1
"""

# A replacement's card changes: the old card blocked and naming its replacement (only if still in the
# state it was decided in, and not replaced already), the new card given the cardholder, the form and
# its state. Returns how many old cards changed (the caller compares).
_REPLACE_SQL = """
WITH old AS (
    UPDATE cards o SET state = d.old_to, replaced_by = d.new_id, updated_at = now()
    FROM unnest($1::bigint[], $2::bigint[], $3::text[], $4::text[], $5::text[])
        AS d(old_id, new_id, old_from, old_to, new_to)
    WHERE o.id = d.old_id AND o.state = d.old_from AND o.replaced_by IS NULL
    RETURNING o.id, o.cardholder_id, o.form, o.controls, d.new_id, d.new_to
), new AS (
    UPDATE cards n SET state = old.new_to, cardholder_id = old.cardholder_id, form = old.form,
        controls = old.controls, updated_at = now()
    FROM old WHERE n.id = old.new_id
)
SELECT count(*) FROM old
"""

_CARD_EVENTS_SQL = """
INSERT INTO card_events (card_id, from_state, to_state, action, actor, reason)
SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[])
"""


@asynccontextmanager
async def _batch_transaction(conn: Any, group: int | None = None) -> AsyncIterator[None]:
    """``conn.transaction()`` with the batch's plan settings sent in the same round trip as BEGIN, and
    for an engine batch its writer group's lock (host.leases), in that round trip too."""
    await conn.execute(_BATCH_BEGIN if group is None else _begin_of(group))
    try:
        yield
    except BaseException:
        if not conn.is_closed():
            with suppress(Exception):  # the batch's own error is the one to report
                await conn.execute("ROLLBACK")
        raise
    await conn.execute("COMMIT")


@functools.cache
def _begin_of(group: int) -> str:
    return _BATCH_BEGIN + leases.begin_sql(group)


def _transfer_from_row(t: Any) -> TransferRow:
    return TransferRow(
        t["key"],
        t["debit_account_id"],
        t["credit_account_id"],
        t["amount"],
        t["phase"],
        t["code"],
        t["card_id"],
        t["currency"],
        t["pending_key"],
        t["hold_of"],
        t["original_key"],
        t["expires_at"],
    )


def _window_columns(ids: list[int], counted: dict[int, CardState]) -> list[list[Any]]:
    """The week / month / lifetime sums of the counted accounts, a column each (_WRITE_SQL $15-$22)."""
    spends = [counted[i].spend if i in counted else None for i in ids]
    return [
        [getattr(sp, name) if sp is not None else default for sp in spends]
        for name, default in (
            ("week", None),
            ("week_amount", 0),
            ("week_count", 0),
            ("month", None),
            ("month_amount", 0),
            ("month_count", 0),
            ("life_amount", 0),
            ("life_count", 0),
        )
    ]


def _first(row: tuple[Any, ...]) -> Any:
    return row[0]


def _seal_columns(seal: ledger_chain.Seal | None) -> list[Any]:
    """_WRITE_SQL's $25-$32: the batch's digest row, or NULLs (no row)."""
    if seal is None:
        return [None] * 8
    return [seal.chain, seal.seq, seal.at, seal.decisions, seal.transfers, seal.row_crc, seal.prev_hash,
            seal.hash]


def _declined(reason: str) -> Decision:
    """A decline for ``reason`` (host.rules.REASONS): its response code, and the reason kept with it."""
    return Decision(rules.code_of(reason), reason=reason)


def _merchant_reason(merchant: Merchant | None) -> str:
    if merchant is None:
        return "merchant_unknown"
    return "merchant_suspended" if merchant.state == "suspended" else "merchant_closed"


def _auth_id() -> str:
    return f"{random.randrange(1_000_000):06d}"  # not a secret: an approval reference for people
