"""Payments, refunds, reversals and loads: each one ISO 8583 request to the switch (api/README.md,
"Payments, refunds, reversals, loads"; the conventions in specs/README.md, "API payments and loads").

Every money request is written ahead: its ``api_payments`` row (STAN from ``api_stan``, DE7 now, the
RRN, the H2H request sealed under the issuer's PII data key as ``host.pii.seal`` seals, linked to the
idempotency record ``request.state.idem_request_id``) is committed *before* it is sent, and the answer
is recorded after. So whatever stops the API in between, one of two things happens:

- the client retries with the same ``Idempotency-Key``: the envelope runs the request again with
  ``idem_resumed``; ``_send`` finds the row by its request id and sends the *same* request again (same
  MTI, DE7, DE11, DE41), and the switch answers with its first answer from its journal (94 when a
  reversal named it meanwhile: the payment is then ``reversed``);
- nobody retries: after ``api.reverse_after_s`` the ``sweeper`` sends a 0400 reversal naming it (DE90)
  through the switch, which carries it upstream (by SAF when the host is away), and marks it reversed.

Link down (nothing sent): the row is deleted and the route answers 503 ``switch-unavailable`` (a retry is
safe). No answer in time (the outcome is unknown): the API reverses at once, as a terminal does.
"""

from __future__ import annotations

import base64
import collections
import datetime as dt
import json
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo

import trio

from api.acquirer import LinkDown, LinkTimeout, SwitchLink
from api.auth import Caller
from api.problems import Problem
from api.state import ApiState
from host import pii, rules
from host.payment_codes import well_formed
from ops.digits import is_digits
from ops.localtime import iso_local
from ops.logs import get_logger
from ops.money import MoneyError, currency_alpha, currency_numeric
from specs.catalogue import RESPONSE_CODES, h2h_de90, rrn_prefix

log = get_logger(__name__)

CODE_ENTRY_MODE = "032"  # QR / payment code, no PIN (specs/README.md "Payment codes")
CNP_ENTRY_MODE = "812"  # e-commerce (card not present), no PIN entry capability
PURCHASE_DE3, REFUND_DE3, LOAD_DE3 = "000000", "200000", "210000"
LOAD_TERMINAL = "APILOAD1"  # DE41 of a programme load (no merchant, so no terminal of one)
SWEEP_SECONDS = 2.0
STAN_BLOCK = 100  # STANs drawn from api_stan per round trip
TERMINAL_SECONDS = 5.0  # a merchant's terminal, as looked up, is used this long (as api.auth's keys)
# Answers to a reversal that settle it (specs/README.md: 00 done, 25 nothing to undo; 12/94 never acceptable)
REVERSAL_SETTLED = frozenset({"00", "25", "12", "94"})


# -- the message ---------------------------------------------------------------------------------------
def rrn_of(stan: str, local: dt.datetime) -> str:
    """DE37, an12: year digit, day of year, hour (local) and the STAN, as the switch makes them."""
    return rrn_prefix(local.year, local.timetuple().tm_yday, local.hour) + stan


def _local_now(state: ApiState) -> tuple[dt.datetime, dt.datetime]:
    now = dt.datetime.now(dt.UTC)
    return now, now.astimezone(ZoneInfo(state.timezone))


def build_message(
    *,
    mti: str,
    de3: str,
    pan: str,
    amount: int,
    currency: str,
    de7: str,
    stan: str,
    local: dt.datetime,
    entry_mode: str,
    terminal_id: str,
    merchant_id: str,
    rrn: str,
    institution_id: str,
    expiry: str | None = None,
    original_rrn: str | None = None,
) -> dict[str, Any]:
    """The H2H request (without DE128: the link adds it)."""
    msg: dict[str, Any] = {
        "t": mti,
        "2": pan,
        "3": de3,
        "4": f"{amount:012d}",
        "7": de7,
        "11": stan,
        "12": f"{local:%H%M%S}",
        "13": f"{local:%m%d}",
        "22": entry_mode,
        "25": "00",
        "32": institution_id,
        "37": rrn,
        "41": terminal_id,
        "42": merchant_id or None,  # a programme load has no merchant
        "49": currency,
    }
    if expiry:
        msg["14"] = expiry
    if original_rrn:
        msg["102"] = original_rrn
    return msg


def reversal_message(original: dict[str, Any], *, de7: str, stan: str, institution_id: str) -> dict[str, Any]:
    """0400 naming ``original`` (its MTI, STAN, DE7 and DE32) in DE90; same card, amount and terminal."""
    msg = {k: v for k, v in original.items() if k in ("2", "3", "4", "12", "13", "22", "25", "37", "41", "42",
                                                      "49")}
    msg.update({"t": "0400", "7": de7, "11": stan, "32": institution_id,
                "90": h2h_de90(str(original["t"]), str(original["11"]), str(original["7"]), institution_id)})
    return msg


# -- the resource --------------------------------------------------------------------------------------
def _public(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(8)}"


def resource(row: Any, timezone: str) -> dict[str, Any]:
    """The JSON of a payment, refund or load from its ``api_payments`` row."""
    state = row["state"]
    status = {"sent": "failed"}.get(state, state)
    code = row["response_code"]
    out: dict[str, Any] = {
        "id": row["id"],
        "type": row["kind"],
        "status": status,
        "amount": {"amount": int(row["amount"]), "currency": row["currency"]},
        "card": ({"id": f"card_{row['card_id']}", "number": row["card_masked"]}
                 if row["card_id"] is not None else None),
        "merchant_id": row["merchant_id"],
        "terminal_id": row["terminal_id"],
        "rrn": row["rrn"],
        "auth_code": row["auth_code"],
        "response_code": code,
        "decline": None,
        "balance": None,
        "original_id": row["original_id"],
        "reference": row["reference"],
        "metadata": _json(row["metadata"]),
        "created_at": iso_local(row["created_at"], timezone),
    }
    if state == "declined" or (state == "failed" and code):
        out["decline"] = {"code": code, "reason": reason_words(row["reason"], code)}
    return out


def _json(value: Any) -> Any:
    if isinstance(value, str):
        return json.loads(value)
    return value if value is not None else {}


def reason_words(reason: str | None, code: str | None) -> str:
    """The host's reason in words (host.rules), else the response code's meaning."""
    if reason:
        return rules.describe(reason)
    known = RESPONSE_CODES.get(code or "")
    return str(getattr(known, "meaning", "")) or f"response code {code}"


def balance_of(de54: str | None, currency: str) -> dict[str, Any] | None:
    """The available balance (type 02) of DE54 as Money, else the ledger balance (01)."""
    if not de54:
        return None
    found: dict[str, int] = {}
    for i in range(0, len(de54) - 19, 20):
        part = de54[i:i + 20]
        sign = -1 if part[7] == "D" else 1
        if is_digits(part[8:20]):
            found[part[2:4]] = sign * int(part[8:20])
    amount = found.get("02", found.get("01"))
    return None if amount is None else {"amount": amount, "currency": currency}


# -- the database --------------------------------------------------------------------------------------
_INSERT = """INSERT INTO api_payments (id, client_id, request_id, kind, mti, de7, stan, terminal_id,
                 merchant_id, rrn, amount, currency, card_id, card_masked, original_id, reference,
                 request_sealed, metadata)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17,
                     $18::jsonb)"""


async def _stans(conn: Any, n: int) -> list[int]:
    return [int(r[0]) for r in await conn.fetch("SELECT nextval('api_stan') FROM generate_series(1, $1)", n)]


async def next_stan(state: ApiState) -> str:
    """DE11 for the next request, from a block of ``STAN_BLOCK`` drawn from ``api_stan`` at once: a STAN
    is unique among API processes (the sequence) without a round trip per payment. A block's unused
    numbers die with the process; the sequence cycles at 999999 anyway."""
    block: collections.deque[int] = state.extras.setdefault("stans", collections.deque())
    if not block:
        block.extend(await state.pool.run(_stans, STAN_BLOCK))
    return f"{block.popleft():06d}"


async def _by_request(conn: Any, request_id: int) -> Any:
    return await conn.fetchrow(
        "SELECT * FROM api_payments WHERE request_id = $1 AND kind <> 'reversal' ORDER BY created_at DESC"
        " LIMIT 1", request_id)


async def _row(conn: Any, payment_id: str) -> Any:
    return await conn.fetchrow("SELECT * FROM api_payments WHERE id = $1", payment_id)


async def _card_and_reason(conn: Any, pan_hash: str, by_code: bool, rrn: str, institution_id: str, mti: str,
                           declined: bool) -> Any:
    """The card (id, masked PAN) of a PAN's or a payment code's keyed hash and, for a decline, the host's
    precise reason (auth_requests.reason, by card and RRN): one query."""
    cards = ("SELECT c.id, c.pan_masked FROM payment_codes pc JOIN cards c ON c.id = pc.card_id"
             " WHERE pc.code_hash = $1" if by_code
             else "SELECT id, pan_masked FROM cards WHERE pan_hash = $1")
    return await conn.fetchrow(
        f"""SELECT k.id, k.pan_masked,
                   CASE WHEN $5 THEN (
                       SELECT a.reason FROM auth_requests a WHERE a.card_id = k.id AND a.rrn = $2
                       AND a.acquirer_id = $3 AND a.mti = $4 ORDER BY a.received_at DESC LIMIT 1)
                   END AS reason
            FROM ({cards}) k""",
        pan_hash, rrn, institution_id, mti, declined)


_RECORD = """UPDATE api_payments SET state = $2, response_code = $3, auth_code = $4, reason = $5,
                 card_id = coalesce(card_id, $6), card_masked = coalesce(card_masked, $7), answered_at = now()
             WHERE id = $1 RETURNING *"""
# The same, and the idempotency record (api.envelope's api_requests) finished with the client's answer:
# one statement, so one round trip and one commit for both.
_RECORD_AND_KEEP = f"""WITH p AS ({_RECORD}),
    kept AS (UPDATE api_requests SET state = 'done', status = $9, response = $10::jsonb, finished_at = now()
             WHERE id = $8)
SELECT * FROM p"""


# -- sending -------------------------------------------------------------------------------------------
@dataclass
class Outcome:
    row: dict[str, Any]
    balance: dict[str, Any] | None = None
    kept: bool = False  # the Keep's answer was committed with the switch's


@dataclass
class Keep:
    """The route's answer to its client, committed in the statement that records the switch's answer: the
    idempotency record ``request_id`` (api.envelope) is finished with ``status`` and ``render(outcome)``."""

    request_id: int
    status: int
    render: Callable[[Outcome], str]


def _link(state: ApiState) -> SwitchLink:
    link = state.link
    if link is None or not link.up:
        raise Problem("switch-unavailable", "the API's link to the switch is not signed on; try again")
    return link


async def _seal(state: ApiState, msg: dict[str, Any]) -> str:
    return await state.crypto.encrypt_pan(json.dumps(msg, sort_keys=True), state.crypto.keys.pii_data)


async def _unseal(state: ApiState, sealed: str) -> dict[str, Any]:
    msg: dict[str, Any] = json.loads(await pii.reveal(state.crypto, sealed))
    return msg


@dataclass
class Ask:
    """What a money request is, before its STAN and clock are drawn."""

    kind: str  # purchase | refund | load
    prefix: str  # pay | load
    mti: str
    de3: str
    pan: str
    entry_mode: str
    amount: int
    currency: str  # alphabetic
    merchant_id: str
    terminal_id: str
    by_code: bool = False
    expiry: str | None = None
    original_id: str | None = None
    original_rrn: str | None = None
    reference: str | None = None
    metadata: dict[str, Any] | None = None
    card_id: int | None = None
    card_masked: str | None = None


async def send(state: ApiState, caller: Caller, ask: Ask, request_id: int | None, resumed: bool,
               keep: Keep | None = None) -> Outcome:
    """Write ahead, send, record the answer (or, resumed, send the written-ahead request again)."""
    link = _link(state)
    row: Any = None
    if resumed and request_id is not None:
        row = await state.pool.run(_by_request, request_id)
        if row is not None and row["state"] != "sent":
            return Outcome(dict(row))  # answered before the API stopped: only the stored answer was lost
    if row is not None:
        msg = await _unseal(state, row["request_sealed"])
    else:
        try:
            numeric = currency_numeric(ask.currency)
        except MoneyError:
            raise Problem("validation-error", f"unknown currency {ask.currency}") from None
        now, local = _local_now(state)
        de7 = now.strftime("%m%d%H%M%S")

        # the STAN first, the seal through the HSM (trio), then the row (pool.run runs on the database's loop)
        stan = await next_stan(state)
        rrn = rrn_of(stan, local)
        msg = build_message(mti=ask.mti, de3=ask.de3, pan=ask.pan, amount=ask.amount, currency=numeric,
                            de7=de7, stan=stan, local=local, entry_mode=ask.entry_mode,
                            terminal_id=ask.terminal_id, merchant_id=ask.merchant_id, rrn=rrn,
                            institution_id=state.config.api.institution_id, expiry=ask.expiry,
                            original_rrn=ask.original_rrn)
        sealed = await _seal(state, msg)
        row = await state.pool.run(
            lambda conn: conn.fetchrow(
                _INSERT + " RETURNING *", _public(ask.prefix), caller.client_id, request_id, ask.kind,
                ask.mti, de7, stan, ask.terminal_id, ask.merchant_id, rrn, ask.amount, ask.currency,
                ask.card_id, ask.card_masked, ask.original_id, ask.reference, sealed,
                json.dumps(ask.metadata or {})))
    return await _exchange(state, link, dict(row), msg, by_code=ask.by_code, keep=keep)


async def _exchange(state: ApiState, link: SwitchLink, row: dict[str, Any], msg: dict[str, Any], *,
                    by_code: bool, keep: Keep | None) -> Outcome:
    try:
        answer = await link.request(msg)
    except LinkDown:
        await state.pool.run(lambda conn: conn.execute(
            "DELETE FROM api_payments WHERE id = $1 AND state = 'sent'", row["id"]))
        raise Problem("switch-unavailable", "the link to the switch is down; nothing was sent") from None
    except LinkTimeout:
        log.warning("api payment: no answer in time; reversing", payment=row["id"])
        await reverse_sent(state, row, msg)  # not settled: the row stays `sent` for the sweeper
        return Outcome(dict(await state.pool.run(_row, row["id"])))
    code = str(answer.get("39", ""))
    # 94: the same request again after a reversal named it: it stays reversed
    status = "reversed" if code == "94" else "approved" if code == "00" else "declined"
    pan_hash = await state.crypto.pan_hash(str(msg["2"]), cache=not by_code)
    institution_id = state.config.api.institution_id

    balance = balance_of(answer.get("54"), row["currency"])

    auth_code = str(answer.get("38", "")).strip() or None

    async def record(conn: Any) -> Outcome:
        card = await _card_and_reason(conn, pan_hash, by_code, row["rrn"], institution_id, row["mti"],
                                      code != "00")
        card_id, masked = (card["id"], card["pan_masked"]) if card is not None else (None, None)
        reason = card["reason"] if card is not None else None
        args = (row["id"], status, answer.get("39"), auth_code, reason, card_id, masked)
        if keep is None:
            return Outcome(dict(await conn.fetchrow(_RECORD, *args)), balance)
        # the answer as the row will be (the UPDATE's coalesce), rendered before the one statement
        after = {**row, "state": status, "response_code": answer.get("39"), "auth_code": auth_code,
                 "reason": reason, "card_id": row["card_id"] if row["card_id"] is not None else card_id,
                 "card_masked": row["card_masked"] if row["card_masked"] is not None else masked}
        response = keep.render(Outcome(after, balance))
        done = await conn.fetchrow(_RECORD_AND_KEEP, *args, keep.request_id, keep.status, response)
        return Outcome(dict(done), balance, kept=True)

    return await state.pool.run(record)


async def reverse_sent(state: ApiState, row: dict[str, Any], msg: dict[str, Any]) -> bool:
    """Send a 0400 naming ``msg`` (the request of ``row``); mark the row reversed once settled."""
    link = state.link
    if link is None or not link.up:
        return False
    now = dt.datetime.now(dt.UTC)
    stan = await next_stan(state)
    rev = reversal_message(msg, de7=now.strftime("%m%d%H%M%S"), stan=stan,
                           institution_id=state.config.api.institution_id)
    try:
        answer = await link.request(rev)
    except (LinkDown, LinkTimeout):
        return False
    if str(answer.get("39")) not in REVERSAL_SETTLED:
        return False
    await state.pool.run(lambda conn: conn.execute(
        "UPDATE api_payments SET state = 'reversed', answered_at = coalesce(answered_at, now())"
        " WHERE id = $1 AND state IN ('sent', 'approved', 'failed')", row["id"]))
    return True


# -- the operations ------------------------------------------------------------------------------------
async def _terminal(state: ApiState, merchant_id: str, terminal_id: str | None) -> str:
    """The merchant's terminal to act as: the one named (it must be the merchant's), else its first active
    terminal (lowest DE41). Looked up once per ``TERMINAL_SECONDS``: the switch and the host check the
    terminal's and the merchant's state with every request anyway."""

    async def work(conn: Any) -> Any:
        merchant = await conn.fetchrow("SELECT id, state FROM merchants WHERE merchant_id = $1", merchant_id)
        if merchant is None:
            return None, None
        t = await conn.fetchval(
            """SELECT terminal_id FROM terminals
               WHERE merchant_id = $1 AND ($2::text IS NULL OR terminal_id = $2)
               ORDER BY (state = 'active') DESC, terminal_id LIMIT 1""",
            merchant["id"], terminal_id)
        return merchant, t

    cache: dict[tuple[str, str | None], tuple[float, Any, Any]] = state.extras.setdefault("terminals", {})
    now = time.monotonic()
    hit = cache.get((merchant_id, terminal_id))
    if hit is None or hit[0] < now:
        merchant, terminal = await state.pool.run(work)
        if len(cache) > 10_000:  # merchant ids the clients make up must not grow it
            cache.clear()
        cache[(merchant_id, terminal_id)] = hit = (now + TERMINAL_SECONDS, merchant, terminal)
    _, merchant, terminal = hit
    if merchant is None:
        raise Problem("not-found", f"no merchant {merchant_id}")
    if terminal is None:
        if terminal_id is not None:
            raise Problem("validation-error", f"merchant {merchant_id} has no terminal {terminal_id}",
                          errors=[{"field": "terminal_id", "message": "not a terminal of this merchant"}])
        raise Problem("conflict", f"merchant {merchant_id} has no terminal to pay at")
    return str(terminal)


async def purchase(
    state: ApiState,
    caller: Caller,
    *,
    amount: int,
    currency: str,
    merchant_id: str,
    terminal_id: str | None,
    payment_code: str | None,
    card_number: str | None,
    expiry: str | None,
    reference: str | None,
    metadata: dict[str, Any] | None,
    request_id: int | None,
    resumed: bool,
    keep: Keep | None = None,
) -> Outcome:
    if (payment_code is None) == (card_number is None):
        raise Problem("validation-error", "give either payment_code or card",
                      errors=[{"field": "payment_code", "message": "exactly one of payment_code and card"}])
    if payment_code is not None and not well_formed(payment_code):
        raise Problem("validation-error", "payment_code is not a payment code",
                      errors=[{"field": "payment_code", "message": "18 digits with a valid check digit"}])
    tid = await _terminal(state, merchant_id, terminal_id)
    ask = Ask(kind="purchase", prefix="pay", mti="0200", de3=PURCHASE_DE3,
              pan=payment_code or card_number or "", by_code=payment_code is not None,
              entry_mode=CODE_ENTRY_MODE if payment_code else CNP_ENTRY_MODE, expiry=expiry,
              amount=amount, currency=currency, merchant_id=merchant_id, terminal_id=tid,
              reference=reference, metadata=metadata)
    return await send(state, caller, ask, request_id, resumed, keep)


async def get(state: ApiState, caller: Caller, payment_id: str, *, kinds: tuple[str, ...]) -> dict[str, Any]:
    row = await state.pool.run(_row, payment_id)
    if row is None or row["client_id"] != caller.client_id or row["kind"] not in kinds:
        raise Problem("not-found", "no payment with that id")
    return dict(row)


async def refund(state: ApiState, caller: Caller, payment_id: str, *, amount: int | None,
                 currency: str | None, reference: str | None, metadata: dict[str, Any] | None,
                 request_id: int | None, resumed: bool, keep: Keep | None = None) -> Outcome:
    original = await get(state, caller, payment_id, kinds=("purchase",))
    if caller.merchant_id is not None and caller.merchant_id != original["merchant_id"]:
        raise Problem("merchant-mismatch", f"this key is bound to merchant {caller.merchant_id}")
    retried = resumed and request_id is not None and await state.pool.run(_by_request, request_id) is not None
    if not retried:  # a resumed attempt sends its written-ahead refund again, as it was checked then
        if original["state"] != "approved":
            raise Problem("conflict", f"payment {payment_id} is {original['state']}: only an approved one is"
                                      " refunded")
        if currency is not None and currency != original["currency"]:
            raise Problem("validation-error", "a refund is in the payment's currency",
                          errors=[{"field": "amount.currency", "message": "not the payment's currency"}])
        refunded = await state.pool.run(lambda conn: conn.fetchval(
            "SELECT coalesce(sum(amount), 0) FROM api_payments WHERE original_id = $1 AND kind = 'refund'"
            " AND state IN ('approved', 'sent')", payment_id))
        left = int(original["amount"]) - int(refunded)
        amount = left if amount is None else amount
        if amount <= 0 or amount > left:
            raise Problem("conflict", f"the refund is more than is left to refund ({left} minor units)",
                          left={"amount": left, "currency": original["currency"]})
    msg = await _unseal(state, original["request_sealed"])
    ask = Ask(kind="refund", prefix="pay", mti="0220", de3=REFUND_DE3, pan=str(msg["2"]),
              by_code=msg.get("22") == CODE_ENTRY_MODE, entry_mode=str(msg["22"]), expiry=msg.get("14"),
              amount=amount or 0, currency=original["currency"], merchant_id=original["merchant_id"],
              terminal_id=original["terminal_id"], original_id=payment_id, original_rrn=original["rrn"],
              reference=reference, metadata=metadata, card_id=original["card_id"],
              card_masked=original["card_masked"])
    return await send(state, caller, ask, request_id, resumed, keep)


async def reversal(state: ApiState, caller: Caller, payment_id: str, *, request_id: int | None,
                   resumed: bool) -> dict[str, Any]:
    """Reverse a payment or refund (0400 naming it): the payment's resource, ``reversed`` once settled."""
    original = await get(state, caller, payment_id, kinds=("purchase", "refund"))
    if caller.merchant_id is not None and caller.merchant_id != original["merchant_id"]:
        raise Problem("merchant-mismatch", f"this key is bound to merchant {caller.merchant_id}")
    if original["state"] == "reversed":
        return original
    if original["state"] in ("declined",):
        raise Problem("conflict", f"payment {payment_id} was declined: nothing to reverse")
    _link(state)
    msg = await _unseal(state, original["request_sealed"])
    if not await reverse_sent(state, original, msg):
        raise Problem("switch-unavailable", "the reversal was not settled by the switch; try again")
    return dict(await state.pool.run(_row, payment_id))


async def load(state: ApiState, caller: Caller, *, card_id: int, amount: int, currency: str,
               funding_reference: str, metadata: dict[str, Any] | None, request_id: int | None,
               resumed: bool, keep: Keep | None = None) -> Outcome:
    """A top-up funded by the programme: 0200 DE3 210000 from DE32 = api.institution_id, which the host
    posts from the programme's funding account as ``card load`` does; the funding reference travels in
    DE102 and is kept in the host's record (``card history``) and the row's ``reference``."""
    card = await state.pool.run(lambda conn: conn.fetchrow(
        "SELECT id, pan_enc, pan_masked, expiry FROM cards WHERE id = $1", card_id))
    if card is None:
        raise Problem("not-found", "no card with that id")
    pan = await state.crypto.decrypt_pan(card["pan_enc"])
    ask = Ask(kind="load", prefix="load", mti="0200", de3=LOAD_DE3, pan=pan, entry_mode=CNP_ENTRY_MODE,
              amount=amount, currency=currency, merchant_id="", terminal_id=LOAD_TERMINAL,
              reference=funding_reference, metadata=metadata, card_id=card["id"],
              card_masked=card["pan_masked"], original_rrn=funding_reference)
    return await send(state, caller, ask, request_id, resumed, keep)


# -- lists ---------------------------------------------------------------------------------------------
def _cursor(row: Any) -> str:
    text = f"{row['created_at'].isoformat()}|{row['id']}"
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def _after(cursor: str | None) -> tuple[dt.datetime, str] | None:
    if not cursor:
        return None
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        at, _, pid = text.partition("|")
        return dt.datetime.fromisoformat(at), pid
    except (ValueError, UnicodeDecodeError):
        raise Problem("validation-error", "cursor is not one this API gave",
                      errors=[{"field": "cursor", "message": "invalid cursor"}]) from None


async def list_own(state: ApiState, caller: Caller, *, kinds: tuple[str, ...], cursor: str | None,
                   limit: int) -> tuple[list[dict[str, Any]], str | None]:
    after = _after(cursor)
    rows = await state.pool.run(lambda conn: conn.fetch(
        """SELECT * FROM api_payments WHERE client_id = $1 AND kind = ANY($2::text[])
           AND ($3::timestamptz IS NULL OR (created_at, id) < ($3, $4))
           ORDER BY created_at DESC, id DESC LIMIT $5""",
        caller.client_id, list(kinds), after[0] if after else None, after[1] if after else "", limit + 1))
    more = len(rows) > limit
    rows = rows[:limit]
    return [dict(r) for r in rows], (_cursor(rows[-1]) if more and rows else None)


# -- the sweeper ---------------------------------------------------------------------------------------
async def sweep_once(state: ApiState) -> int:
    """Reverse every request still ``sent`` after ``api.reverse_after_s``: its answer was never recorded
    (the API stopped mid-way) and no retry of its key has answered it since."""
    link = state.link
    if link is None or not link.up:
        return 0
    rows = await state.pool.run(lambda conn: conn.fetch(
        """SELECT * FROM api_payments WHERE state = 'sent' AND kind <> 'reversal'
           AND created_at < now() - make_interval(secs => $1) ORDER BY created_at LIMIT 100""",
        state.config.api.reverse_after_s))
    done = 0
    for row in rows:
        msg = await _unseal(state, row["request_sealed"])
        if await reverse_sent(state, dict(row), msg):
            log.info("api payment reversed by the sweeper", payment=row["id"])
            done += 1
    return done


async def sweeper(state: ApiState) -> None:
    """Background task of ``api serve``."""
    while True:
        try:
            await sweep_once(state)
        except Exception as exc:  # the database or the HSM away: next round
            log.warning("api payment sweeper failed", error=type(exc).__name__)
        await trio.sleep(SWEEP_SECONDS)


def currency_of(numeric: str) -> str:
    return currency_alpha(numeric)
