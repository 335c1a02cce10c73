"""What the terminal does for each key the cashier presses: the transactions of the POS dialect.

Each operation takes a ``Session`` (pos.client), builds the request (pos.messages), exchanges it,
updates the terminal state (keys, batch, journal) and returns a ``Receipt``: the data a receipt
prints, safe to show (masked PAN, no keys, no PIN).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any
from zoneinfo import ZoneInfo

from host.clearing import terminal_local_time
from ops.logs import mask_pan
from ops.money import format_money, money_json
from pos import messages, offline
from pos.chip import ChipCard, ChipError, ChipRequest, IssuerAuth, build_request, check_issuer, next_atc
from pos.client import Answer, NoAnswer, ReversalPending, Session, TerminalError
from pos.crypto import TerminalCryptoError, unwrap_working_keys
from pos.messages import KINDS, Card, Message
from pos.state import JournalEntry, TerminalState
from specs.catalogue import (
    MAX_UPLOAD_RECORDS,
    BatchTotals,
    De60,
    UploadRecord,
    describe_response_code,
    parse_batch_totals,
)
from specs.framing import REQUIREMENT_SIGN_ON

PIN_CHANGE_ATTEMPTS = 2  # a PIN change unanswered is sent once more, same STAN (not reversed)

RESPONSE_TEXT = {
    "00": "APPROVED",
    "03": "INVALID MERCHANT",
    "05": "DO NOT HONOUR",
    "12": "INVALID TRANSACTION",
    "13": "INVALID AMOUNT",
    "14": "INVALID CARD NUMBER",
    "22": "SUSPECTED MALFUNCTION",
    "25": "ORIGINAL NOT FOUND",
    "30": "FORMAT ERROR",
    "41": "LOST CARD",
    "43": "STOLEN CARD",
    "51": "INSUFFICIENT FUNDS",
    "54": "EXPIRED CARD",
    "55": "INCORRECT PIN",
    "57": "NOT PERMITTED TO CARD",
    "58": "NOT PERMITTED TO TERMINAL",
    "61": "EXCEEDS AMOUNT LIMIT",
    "64": "ORIGINAL AMOUNT INCORRECT",
    "65": "EXCEEDS FREQUENCY LIMIT",
    "75": "PIN TRIES EXCEEDED",
    "77": "BATCH NUMBER DIFFERS, SIGN ON",
    "91": "ISSUER UNAVAILABLE",
    "94": "DUPLICATE TRANSMISSION",
    "96": "SYSTEM MALFUNCTION",
    "97": "TERMINAL NOT REGISTERED",
    "98": "ISSUER TIMEOUT",
    "99": "PIN FORMAT ERROR",
    "A0": "MAC FAILED, SIGN ON AGAIN",
}

# How the card was read (DE22 positions 1-2), as the receipt prints it.
ENTRY_MODES = {"01": "keyed", "02": "swipe", "03": "payment code", "05": "chip", "07": "contactless"}


@dataclass
class Receipt:
    transaction: str
    terminal_id: str
    merchant_id: str
    code: str
    stan: str = ""
    batch: str = ""
    pan: str = ""  # masked
    amount: int | None = None
    rrn: str = ""
    auth_id: str = ""
    date: str = ""
    time: str = ""
    at: str = ""  # DE13 + DE12 as a local date-time with its offset, ISO 8601 (see in_zone)
    balance: int | None = None
    latency_ms: float | None = None
    notes: list[str] = field(default_factory=list)
    # Why it was declined, in words: the host's recorded reason when pos could read it (pos.why), else
    # the switch's own, else the meaning of the code (all the terminal has on the wire).
    reason: str = ""
    reason_code: str = ""  # its key: host.rules.REASONS or switch/reasons.py
    entry_mode: str = ""  # ENTRY_MODES' word, then ", PIN" when a PIN was entered
    # A chip read: whether the card authenticated the issuer by the answer's ARPC (pos.chip.check_issuer).
    issuer_auth: IssuerAuth | None = None
    offline: bool = False  # approved (or declined) by the terminal itself, without the switch (pos.offline)

    @property
    def approved(self) -> bool:
        return self.code == "00"

    @property
    def why(self) -> str:
        return self.reason or describe_response_code(self.code)

    @property
    def text(self) -> str:
        return RESPONSE_TEXT.get(self.code, "DECLINED")

    def as_dict(self) -> dict[str, Any]:
        data = {k: v for k, v in self.__dict__.items() if v not in ("", None, [])}
        data["approved"] = self.approved
        data["result"] = self.text
        if not self.offline:
            data.pop("offline", None)
        if not self.approved:
            data["reason"] = self.why
        for name in ("amount", "balance"):  # money in JSON: integer fen as *_minor, with the currency
            if name in data:
                data.update(money_json(name, data.pop(name)))
        return data

    def in_zone(self, timezone: str, now: datetime | None = None) -> Receipt:
        """Date the receipt in the programme's zone (``clearing.timezone``, in which the switch sets
        DE12/DE13): the full local date-time with its offset, the year taken nearest ``now``."""
        self.at = local_stamp(self.date, self.time, timezone, now)
        return self

    def render(self) -> str:
        lines = [f"--- {self.transaction} ---", f"TERMINAL {self.terminal_id}  MERCHANT {self.merchant_id}"]
        if self.pan:
            lines.append(f"CARD     {self.pan}")
        if self.entry_mode:
            lines.append(f"ENTRY    {self.entry_mode.upper()}")
        if self.batch or self.stan:
            lines.append(f"BATCH    {self.batch}  TRACE {self.stan}")
        if self.at:  # 2026-12-02 18:30:05 +08:00
            lines.append(f"TIME     {self.at[:10]} {self.at[11:19]} {self.at[19:]}")
        elif self.date or self.time:
            d, t = self.date, self.time
            lines.append(f"DATE     {d[:2]}/{d[2:]}  TIME {t[:2]}:{t[2:4]}:{t[4:]}")
        if self.rrn:
            lines.append(f"REF      {self.rrn}" + (f"  AUTH {self.auth_id}" if self.auth_id else ""))
        if self.amount is not None:
            lines.append(f"AMOUNT   {format_money(self.amount)}")
        if self.balance is not None:
            lines.append(f"BALANCE  {format_money(self.balance)}")
        lines.append(f"RESULT   {self.code} {self.text}")
        if self.issuer_auth is not None:
            lines.append(f"CHIP     {ISSUER_AUTH_TEXT[self.issuer_auth]}")
        lines.extend(f"NOTE     {n}" for n in self.notes)
        if not self.approved:
            lines.append(f"declined {self.code} {self.why}")
        return "\n".join(lines)


ISSUER_AUTH_TEXT = {
    "verified": "ISSUER AUTHENTICATED (ARPC OK)",
    "failed": "ISSUER NOT AUTHENTICATED (ARPC WRONG)",
    "absent": "NO ISSUER AUTHENTICATION (NO ARPC)",
}


def entry_mode_text(de22: str) -> str:
    """``chip, PIN`` for 051: the words of DE22's entry mode and whether a PIN was entered."""
    word = ENTRY_MODES.get(de22[:2], "")
    return f"{word}, PIN" if word and de22[2:3] == "1" else word


def local_stamp(mmdd: str, hhmmss: str, timezone: str, now: datetime | None = None) -> str:
    """DE13 MMDD + DE12 hhmmss in ``timezone`` as ISO 8601 with the offset (``2026-12-02T18:30:05+08:00``),
    the year the one that puts it nearest ``now`` (the clearing file's rule,
    ``host.clearing.terminal_local_time``); "" when the fields are missing or not a time."""
    zone = ZoneInfo(timezone)
    local = terminal_local_time(mmdd + hhmmss, now or datetime.now(UTC), zone)
    return "" if local is None else local.replace(tzinfo=zone).isoformat(timespec="seconds")


def parse_balance(de54: str) -> int | None:
    """The available balance of DE54: ``10`` ``02`` ``156`` ``C``/``D`` + 12 digits (several may follow)."""
    for i in range(0, len(de54) - 19, 20):
        item = de54[i : i + 20]
        if item[2:4] == "02" and item[8:].isdigit():
            value = int(item[8:])
            return -value if item[7] == "D" else value
    return None


def _batch_of(msg: Message) -> str:
    """60.2 of a message; "" when DE60 is missing or not well formed."""
    try:
        return De60.parse(str(msg.get("60", ""))).batch
    except ValueError:
        return ""


def _receipt(session: Session, title: str, request: Message, answer: Answer | None, code: str) -> Receipt:
    state = session.state
    r = Receipt(title, state.terminal_id, state.merchant_id, code, stan=str(request.get("11", "")))
    r.batch = _batch_of(request)
    pan = str(request.get("2") or str(request.get("35", "")).split("=")[0])
    r.pan = mask_pan(pan) if pan else ""
    r.entry_mode = entry_mode_text(str(request.get("22", "")))
    if "4" in request:
        r.amount = int(request["4"])
    if answer is not None:
        m = answer.msg
        r.rrn = str(m.get("37", "")).strip()
        r.auth_id = str(m.get("38", "")).strip()
        r.date, r.time = str(m.get("13", "")), str(m.get("12", ""))
        r.latency_ms = round(answer.latency * 1000, 2)
        if "54" in m:
            r.balance = parse_balance(str(m["54"]))
        if answer.mac_ok is False:
            r.notes.append("the answer's MAC is wrong: transaction reversed (A0)")
        if answer.head.requirement == REQUIREMENT_SIGN_ON:
            r.notes.append("the switch asks this terminal to sign on again")
    return r


# -- network management ------------------------------------------------------------------------------
async def signon(session: Session) -> Receipt:
    state = session.state
    code = "004" if state.scheme == "3des" else "005"
    req = messages.network("0800", code, state.next_stan(), state.batch, state.terminal_id, state.merchant_id)
    answer = await session.exchange(req)
    r = _receipt(session, "SIGN-ON", req, answer, answer.code)
    if answer.approved:
        de62 = answer.msg.get("62")
        if not isinstance(de62, bytes | bytearray):
            raise TerminalError("the sign-on answer carries no working keys (DE62)")
        try:
            keys = unwrap_working_keys(state.scheme, bytes.fromhex(state.tmk), bytes(de62))
        except TerminalCryptoError as exc:
            raise TerminalError(str(exc)) from None
        batch = _batch_of(answer.msg)
        if not batch:
            raise TerminalError("the sign-on answer carries no batch number (60.2)")
        state.set_working_keys(keys, batch)
        session.refresh_keys()
        r.batch = batch
        r.notes.append(offline.keep_floor_table(state, answer.msg.get("48")))
        r.notes.append(
            "working keys loaded, check values "
            + " ".join(f"{k.upper()} {v}" for k, v in keys.check_values().items())
        )
    return r


async def echo(session: Session) -> Receipt:
    state = session.state
    req = messages.network(
        "0820", "301", state.next_stan(), state.batch, state.terminal_id, state.merchant_id
    )
    answer = await session.exchange(req)
    return _receipt(session, "ECHO TEST", req, answer, answer.code)


async def signoff(session: Session) -> Receipt:
    state = session.state
    req = messages.network(
        "0820", "002", state.next_stan(), state.batch, state.terminal_id, state.merchant_id
    )
    answer = await session.exchange(req)
    if answer.approved:
        state.require_sign_on()
    return _receipt(session, "SIGN-OFF", req, answer, answer.code)


# -- financial ---------------------------------------------------------------------------------------
async def financial(
    session: Session,
    kind_name: str,
    card: Card,
    amount: int | None,
    pin: str | None,
    original: JournalEntry | None = None,
    chip: ChipCard | None = None,
) -> Receipt:
    """``chip``: the card was read by its chip (``card.mode`` 05/07): DE55 carries its ARQC over a
    fresh ATC, and the answer's ARPC is checked (``Receipt.issuer_auth``)."""
    state = session.state
    kind = KINDS[kind_name]
    state.working_keys()  # raises StateError when not signed on
    # Stored offline sales go first, as a terminal sends its advices when the line is back.
    uploaded = await offline.upload(session) if state.offline else None
    chip_req: ChipRequest | None = None
    if chip is not None:
        try:
            chip_req = build_request(
                chip,
                atc=next_atc(chip),
                amount=amount or 0,
                txn_type=kind.proc[:2],
                when=date.today(),
                online_pin=pin is not None,
            )
        except ChipError as exc:
            raise TerminalError(str(exc)) from None
    orig = None
    if original is not None:
        orig = {
            "rrn": original.rrn,
            "auth_id": original.auth_id,
            "batch": original.batch,
            "stan": original.stan,
            "date": original.date,
        }
    req = messages.financial_request(
        kind,
        stan=state.next_stan(),
        batch=state.batch,
        terminal_id=state.terminal_id,
        merchant_id=state.merchant_id,
        scheme=state.scheme,
        card=card,
        amount=amount,
        pin=pin,
        pik=session.pik if pin is not None else None,
        original=orig,
        de55=chip_req.de55 if chip_req is not None else None,
    )
    try:
        answer = await session.transact(req)
    except NoAnswer:
        r = _receipt(session, kind.label, req, None, "98")
        if state.pending_reversal is None:
            r.notes.append("no answer: the transaction was reversed")
        else:
            r.notes.append("no answer: reversal pending, sent before the next transaction")
        return r
    r = _receipt(session, kind.label, req, answer, answer.code)
    if uploaded is not None:
        r.notes.extend(uploaded.notes())
    if chip is not None and chip_req is not None:
        de55 = answer.msg.get("55")
        answered = bytes(de55) if isinstance(de55, bytes | bytearray) else None
        r.issuer_auth, arc = check_issuer(chip, chip_req, answered)
        if r.issuer_auth == "failed":
            r.notes.append("the card could not authenticate the issuer: the answer's ARPC is wrong")
        elif arc and arc != answer.code:
            r.notes.append(f"the ARPC's response code {arc} differs from the answer's {answer.code}")
    if answer.approved and answer.mac_ok is not False and kind.financial:
        _journal(session, kind_name, card, req, answer, original)
    return r


async def pin_change(session: Session, card: Card, old_pin: str, new_pin: str) -> Receipt:
    """Change the card's PIN (0200, 96): the old and the new PIN block under the PIK. Not reversed when
    unanswered: a PIN change moves no money, so the terminal sends the same request again (same STAN),
    which the switch answers with the first answer (specs/README.md, "PIN change")."""
    state = session.state
    state.working_keys()  # raises StateError when not signed on
    await session.flush_reversal()
    if state.pending_reversal is not None:
        stan = state.pending_reversal.get("11", "")
        raise ReversalPending(
            f"the reversal of trace {stan} is still unanswered: nothing else is sent until it is (try again)"
        )
    req = messages.pin_change_request(
        stan=state.next_stan(),
        batch=state.batch,
        terminal_id=state.terminal_id,
        merchant_id=state.merchant_id,
        scheme=state.scheme,
        card=card,
        old_pin=old_pin,
        new_pin=new_pin,
        pik=session.pik,
    )
    kind = KINDS["pin_change"]
    answer: Answer | None = None
    attempts = 0
    while answer is None and attempts < PIN_CHANGE_ATTEMPTS:
        attempts += 1
        try:
            answer = await session.exchange(req)
        except NoAnswer:
            continue
    if answer is None:
        r = _receipt(session, kind.label, req, None, "98")
        r.notes.append("no answer: the PIN may or may not have changed (a purchase with either PIN tells)")
        return r
    r = _receipt(session, kind.label, req, answer, answer.code)
    if attempts > 1:
        r.notes.append("answered when sent again (same trace number)")
    if answer.approved and answer.mac_ok is False:
        r.notes.append("the answer's MAC is wrong: the PIN may have changed all the same")
    return r


def _journal(
    session: Session, kind_name: str, card: Card, req: Message, answer: Answer, original: JournalEntry | None
) -> None:
    state = session.state
    m = answer.msg
    entry = JournalEntry(
        kind=kind_name,
        stan=str(req["11"]),
        batch=state.batch,
        amount=int(req.get("4", 0)),
        pan_masked=mask_pan(card.pan),
        pan_enc=state.seal_pan(f"{card.pan}={card_expiry(card)}"),
        rrn=str(m.get("37", "")).strip(),
        auth_id=str(m.get("38", "")).strip(),
        date=str(m.get("13", "")),
        time=str(m.get("12", "")),
        orig_stan=original.stan if original else "",
        by_code=card.by_code,
    )
    state.journal.append(entry)
    state.last_approved = state.storable(messages.reversal_of(req))
    if original is not None:
        if kind_name in ("void", "preauth_void"):
            original.voided = True
        elif kind_name == "refund":
            original.refunded += entry.amount


def card_expiry(card: Card) -> str:
    return card.expiry or card.track2.partition("=")[2][:4]


def journal_card(session: Session, entry: JournalEntry) -> Card:
    """The card of a journal entry, as keyed entry (what a void/refund/completion is sent with)."""
    pan, expiry = session.state.open_card(entry.pan_enc)
    if entry.by_code:  # the (used) payment code: the issuer finds the card by it
        return Card(pan, by_code=True)
    return Card(pan, expiry=expiry or "4912")


async def reverse_last(session: Session) -> Receipt:
    """Operator-initiated reversal of the last approved financial transaction of the batch (0400 98)."""
    state = session.state
    if state.pending_reversal is not None:
        req: Message = state.restore(state.pending_reversal)
        answer = await session.flush_reversal()
        return _receipt(session, "REVERSAL (PENDING)", req, answer, answer.code if answer else "98")
    last = state.last_approved
    entry = state.find(str(last.get("11", ""))) if last else None
    if last is None or entry is None or entry.reversed or entry.batch != state.batch:
        raise TerminalError("nothing to reverse: no approved transaction left in this batch")
    req = state.restore(last)
    answer = await session.reverse(req, "98")
    if answer is None:
        r = _receipt(session, "REVERSAL", req, None, "98")
        r.notes.append("no answer: reversal pending, sent before the next transaction")
        return r
    state.last_approved = None
    r = _receipt(session, "REVERSAL", req, answer, answer.code)
    r.notes.append(f"reverses the {entry.kind} with trace {entry.stan}")
    return r


# -- settlement --------------------------------------------------------------------------------------
def batch_totals(journal: list[JournalEntry]) -> BatchTotals:
    """Debit and credit amounts and counts of the live entries of a batch.

    Debits: purchases and completions; credits: refunds. Voids are left out, and so is what they
    voided; reversed entries are left out.
    """
    da = dc = ca = cc = 0
    for e in journal:
        if e.reversed or e.voided:
            continue
        if e.kind in ("purchase", "completion", "offline"):  # offline: an accepted advice (pos.offline)
            da += e.amount
            dc += 1
        elif e.kind == "refund":
            ca += e.amount
            cc += 1
    return BatchTotals(da, dc, ca, cc)


async def settle(session: Session) -> Receipt:
    state = session.state
    # A pending reversal goes first: it may take a transaction out of the totals.
    await session.flush_reversal()
    if state.pending_reversal is not None:
        raise ReversalPending(
            f"the reversal of trace {state.pending_reversal.get('11', '')} is still unanswered: "
            "settle again once it is"
        )
    # Stored offline sales too: the switch counts an accepted advice in the batch, so must the terminal.
    if state.offline and (await offline.upload(session)).kept:
        raise TerminalError(
            f"{len(state.offline)} offline sale(s) not yet accepted by the switch "
            f"({state.offline[0].last_code}): settle again once they are"
        )
    totals = batch_totals(state.journal)
    req = messages.settlement(state.next_stan(), state.batch, state.terminal_id, state.merchant_id, totals)
    answer = await session.exchange(req)
    r = _receipt(session, "SETTLEMENT", req, answer, answer.code)
    r.batch = state.batch
    r.notes.append(
        f"debits {totals.debit_count} ({format_money(totals.debit_amount)}), "
        f"credits {totals.credit_count} ({format_money(totals.credit_amount)})"
    )
    if not answer.approved:
        return r
    next_batch = _batch_of(answer.msg)
    if _settlement_result(answer.msg) == "2":
        r.notes.append("totals not balanced with the switch: batch uploaded (0320)")
        uploaded, after_upload = await upload(session)
        r.notes.append(f"{uploaded} records uploaded")
        next_batch = after_upload or next_batch
    else:
        r.notes.append("totals balanced")
    closed = state.batch
    if next_batch and next_batch != closed:
        state.close_batch(next_batch)
        r.notes.append(f"batch {closed} closed, next batch {next_batch}")
    else:
        state.close_batch(closed)
        state.require_sign_on()
        r.notes.append(f"batch {closed} closed; sign on to get the next batch number")
    return r


def _settlement_result(answer: Message) -> str:
    """The result digit of the domestic totals in the 0510's DE48 (2: not balanced); "" when none."""
    try:
        return parse_batch_totals(str(answer.get("48", "")))[0].result
    except ValueError:
        return ""


async def upload(session: Session) -> tuple[int, str]:
    """Send the batch in 0320s of up to 8 records; (records sent, 60.2 of the last answer)."""
    state = session.state
    records = [
        UploadRecord(e.stan, state.open_pan(e.pan_enc), e.amount)
        for e in state.journal
        if not (e.reversed or e.voided) and e.kind in ("purchase", "completion", "refund", "offline")
    ]
    # An empty batch still ends its upload: one 0320 with no records and 60.3 = 202.
    n = MAX_UPLOAD_RECORDS
    chunks = [records[i : i + n] for i in range(0, len(records), n)] or [[]]
    sent = 0
    next_batch = ""
    for i, chunk in enumerate(chunks):
        req = messages.batch_upload(
            state.next_stan(),
            state.batch,
            state.terminal_id,
            state.merchant_id,
            chunk,
            last=i == len(chunks) - 1,
        )
        answer = await session.exchange(req)
        if not answer.approved:
            raise TerminalError(f"batch upload refused by the switch ({answer.code})")
        sent += len(chunk)
        next_batch = _batch_of(answer.msg)
    return sent, next_batch


# -- offline sales (pos.offline) ---------------------------------------------------------------------
def offline_purchase(
    state: TerminalState, card: Card, amount: int, now: datetime, de55: bytes | None = None
) -> Receipt:
    """A purchase the terminal decides itself, the switch out of reach: approved under the floor limit
    of the card's BIN and stored for its advice, or declined (code ``Z3``, why in ``reason``)."""
    r = Receipt("PURCHASE (OFFLINE)", state.terminal_id, state.merchant_id, offline.APPROVED, offline=True)
    r.batch = state.batch
    r.pan, r.amount = mask_pan(card.pan), amount
    r.entry_mode = entry_mode_text(card.entry_prefix + "2")
    try:
        sale = offline.decide(state, card, amount, now, de55)
    except offline.OfflineDeclined as exc:
        r.code, r.reason, r.reason_code = offline.DECLINED_OFFLINE, str(exc), "declined_offline"
        r.date, r.time = now.strftime("%m%d"), now.strftime("%H%M%S")
        return r
    r.stan, r.auth_id, r.date, r.time = sale.stan, sale.approval, sale.date, sale.time
    r.notes.append("OFFLINE: approved by the terminal under the floor limit, advised when the switch is back")
    return r


async def upload_offline(session: Session) -> Receipt:
    """Send the stored offline advices now (``payswitch pos upload-offline``): code 00 when none is left,
    else the answer that stopped the upload."""
    state = session.state
    state.working_keys()  # raises StateError when not signed on
    pending = len(state.offline)
    result = await offline.upload(session)
    code = offline.APPROVED if not result.kept else (state.offline[0].last_code or "98")
    if code == offline.NO_ANSWER:
        code = "98"
    r = Receipt("OFFLINE UPLOAD", state.terminal_id, state.merchant_id, code, batch=state.batch)
    r.notes.append(f"{pending} offline sale(s) stored before the upload")
    r.notes.extend(result.notes())
    if result.kept:
        r.reason = f"{result.kept} offline sale(s) kept for later: {result.stopped}"
    return r
