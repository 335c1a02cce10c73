"""Offline sales at the terminal [project convention, specs/README.md "Offline sales"].

A terminal that cannot reach the switch (``--offline``, or the connection refused / timed out) approves
a purchase itself when the card's BIN has a floor limit at least the amount (the floor table of the
last sign-on: the 0810's DE48, longest BIN prefix), stores the sale in its state and sends it later as
an offline advice (0220, 60.1 36, MAC'd, DE61 naming the sale itself), before its next online
transaction, before a settlement, or on ``payswitch pos upload-offline``.

An advice is never reversed: one left unanswered is sent again, same DE11 (the sale's own STAN), so the
switch takes it for a retransmission and the host's natural key (merchant, terminal, batch, STAN) posts
it once whatever happened to the first. It leaves the store when answered ``00`` (then it enters the
journal, so the 0500 totals count it, as the switch's do); an answer meaning "not now" (``RETRY``: the
switch, its HSM or the issuer away, keys or batch to renew) keeps it and stops the upload; any other
answer is the issuer's refusal of a sale that has already happened: it is moved to
``offline_refused`` (shown by ``pos offline``), the merchant's to collect, and never counted.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from ops.digits import is_digits
from ops.logs import mask_pan
from ops.money import format_money
from pos import messages
from pos.client import NoAnswer, Session, TerminalError
from pos.messages import Card
from pos.state import JournalEntry, OfflineSale, TerminalState
from specs.catalogue import describe_response_code, floor_limit_for, parse_floor_table

# The receipt code of a sale the terminal declined itself: EMV's "unable to go online, declined
# offline" (a terminal-made code, never on the wire).
DECLINED_OFFLINE = "Z3"
APPROVED = "00"
# Answers that leave an advice for later: no decision was made about the sale (98 issuer timeout, 91
# issuer or link down, 96 the switch's HSM away, A0 the MAC / keys, 77 the batch: both ask for a
# sign-on first).
RETRY = frozenset({"98", "91", "96", "A0", "77"})
NO_ANSWER = "no answer"


class OfflineDeclined(Exception):
    """The terminal declines the sale offline; str() says why (no PAN)."""


def keep_floor_table(state: TerminalState, de48: object) -> str:
    """Keep the 0810's floor table (DE48) in the state; returns a note for the sign-on receipt.

    A sign-on without one (or with one that does not parse) leaves the terminal without offline sales:
    the last sign-on's table is the one in force."""
    text = "" if de48 is None else str(de48)
    try:
        table = parse_floor_table(text)
    except ValueError:
        state.floor_table = ""
        return "the floor table of the sign-on answer does not parse: no offline sales"
    state.floor_table = text if table else ""
    if not table:
        return "no floor limits: no offline sales"
    return "floor limits " + ", ".join(f"{e.bin} {format_money(e.floor_limit)}" for e in table)


def approval_code(stan: str) -> str:
    """The terminal's offline approval code (DE38, 6 an): ``Y1`` (EMV's "offline approved") and the
    last four digits of the sale's STAN, so two sales of a batch hardly ever share one."""
    return "Y1" + stan[-4:]


def decide(
    state: TerminalState, card: Card, amount: int, now: datetime, de55: bytes | None = None
) -> OfflineSale:
    """Approve ``amount`` (fen) offline and store the sale, or raise OfflineDeclined.

    ``now`` is the terminal's local time (the programme's zone, as the switch's DE12/DE13 are). The
    sale takes the next STAN of the batch. Nothing is stored when it is declined."""
    if card.by_code:
        raise OfflineDeclined("a payment code is checked by its issuer: no offline sale with one")
    if not 0 < amount <= 999_999_999_999:
        raise OfflineDeclined("the amount must be positive and at most 12 digits of minor units")
    try:
        table = parse_floor_table(state.floor_table)
    except ValueError:  # a state written by hand: no offline sale rather than a crash
        table = []
    if not table:
        raise OfflineDeclined("no floor limits from the last sign-on: no offline sales on this terminal")
    limit = floor_limit_for(table, card.pan)
    if limit is None or limit.floor_limit <= 0:
        raise OfflineDeclined("no offline sales for this card's BIN")
    if amount > limit.floor_limit:
        raise OfflineDeclined(f"above the floor limit of {format_money(limit.floor_limit)} for offline sales")
    expiry = card.expiry or card.track2.partition("=")[2][:4]
    if is_digits(expiry) and len(expiry) == 4 and expiry < now.strftime("%y%m"):
        raise OfflineDeclined("expired card")
    stan = state.next_stan()
    sale = OfflineSale(
        stan=stan,
        batch=state.batch,
        amount=amount,
        pan_masked=mask_pan(card.pan),
        pan_enc=state.seal_pan(f"{card.pan}={expiry}"),
        entry=card.entry_prefix,
        date=now.strftime("%m%d"),
        time=now.strftime("%H%M%S"),
        approval=approval_code(stan),
        de55=de55.hex().upper() if de55 else "",
    )
    state.offline.append(sale)
    return sale


def advice(state: TerminalState, sale: OfflineSale) -> messages.Message:
    """The 0220 of a stored sale, in the terminal's current batch."""
    pan, expiry = state.open_card(sale.pan_enc)
    return messages.offline_advice(
        stan=sale.stan,
        batch=state.batch,
        sale_batch=sale.batch,
        terminal_id=state.terminal_id,
        merchant_id=state.merchant_id,
        pan=pan,
        expiry=expiry,
        entry=sale.entry,
        amount=sale.amount,
        date=sale.date,
        time=sale.time,
        approval=sale.approval,
        de55=bytes.fromhex(sale.de55) if sale.de55 else None,
    )


@dataclass
class UploadResult:
    """What an upload of stored advices did."""

    posted: list[OfflineSale] = field(default_factory=list)  # answered 00: in the journal now
    refused: list[OfflineSale] = field(default_factory=list)  # the issuer's final no
    kept: int = 0  # still stored, for later
    stopped: str = ""  # why the upload stopped early ("" when every advice was answered)

    def notes(self) -> list[str]:
        out = []
        if self.posted:
            total = format_money(sum(s.amount for s in self.posted))
            out.append(f"{len(self.posted)} offline sale(s) advised and accepted ({total})")
        for s in self.refused:
            out.append(
                f"offline sale {s.stan} ({format_money(s.amount)}) refused by the issuer ({s.last_code})"
            )
        if self.kept:
            out.append(f"{self.kept} offline sale(s) kept for later ({self.stopped})")
        return out


async def upload(session: Session) -> UploadResult:
    """Send every stored advice in order until one is left for later; update the state."""
    state = session.state
    result = UploadResult()
    while state.offline:
        sale = state.offline[0]
        msg = advice(state, sale)
        sale.attempts += 1
        if session.checkpoint is not None:
            session.checkpoint()  # the attempt count reaches disk before the advice leaves
        try:
            answer = await session.exchange(msg)
        except NoAnswer:
            sale.last_code = NO_ANSWER
            result.stopped = "no answer from the switch"
            break
        except TerminalError as exc:  # the connection went: the rest waits for the next time
            sale.last_code = NO_ANSWER
            result.stopped = str(exc)
            break
        code = answer.code
        sale.last_code = code
        if code == APPROVED and answer.mac_ok is False:
            # Not trusted, but the advice may have posted: sent again after a sign-on, the same STAN
            # gets the first answer (the switch's journal) or the host's natural key posts nothing.
            state.require_sign_on()
            result.stopped = "the answer's MAC is wrong: sign on again"
            break
        if code in RETRY:
            result.stopped = f"{code} {describe_response_code(code)}"
            break
        state.offline.pop(0)
        if code == APPROVED:
            _journal(state, sale, answer.msg)
            result.posted.append(sale)
        else:
            state.offline_refused.append(sale)
            result.refused.append(sale)
    result.kept = len(state.offline)
    return result


def _journal(state: TerminalState, sale: OfflineSale, answer: messages.Message) -> None:
    """An accepted advice enters the current batch's journal (kind "offline": a debit of the totals and
    a record of the 0320 upload, as at the switch)."""
    state.journal.append(
        JournalEntry(
            kind="offline",
            stan=sale.stan,
            batch=state.batch,
            amount=sale.amount,
            pan_masked=sale.pan_masked,
            pan_enc=sale.pan_enc,
            rrn=str(answer.get("37", "")).strip(),
            auth_id=sale.approval,
            date=sale.date,
            time=sale.time,
        )
    )
