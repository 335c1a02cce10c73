"""POS dialect requests a terminal builds, in pyiso8583 dict form (``"t"`` MTI, ``"2"``... fields).

Binary fields (DE52, DE62, DE64) are ``bytes``, as in ``specs.codec``. The
table ``KINDS`` is what the terminal offers of the contract's transaction list: each kind's MTI, DE3,
DE25 and 60.1 come from ``specs.catalogue.POS_TRANSACTIONS``; the terminal adds its screen label and
whether the kind enters the batch. Builders here are pure: they take the card, the amount and the
STAN and return the dict; the client (pos.client) adds the MAC and sends it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ops.digits import is_digits
from pos.crypto import KeyCipher, Scheme, pin_block
from specs.catalogue import (
    PAYMENT_CODE_LENGTH,
    POS_TRANSACTIONS,
    QR_ENTRY_MODE,
    BatchTotals,
    De60,
    De61,
    TxnType,
    UploadRecord,
    batch_totals_de48,
    upload_de48,
)

Message = dict[str, Any]
CURRENCY = "156"
MAC_PLACEHOLDER = bytes(8)  # replaced by the MAC once the message is encoded


@dataclass(frozen=True)
class Kind:
    name: str
    mti: str
    proc: str
    cond: str
    type_code: str
    financial: bool  # carries an amount and a MAC, enters the batch journal when approved
    label: str


def _kind(name: str, txn: TxnType, financial: bool, label: str) -> Kind:
    row = POS_TRANSACTIONS[txn]
    return Kind(name, row.mti, str(row.de3), str(row.de25), row.de60_1, financial, label)


KINDS: dict[str, Kind] = {
    k.name: k
    for k in (
        _kind("balance", TxnType.BALANCE_INQUIRY, False, "BALANCE INQUIRY"),
        _kind("purchase", TxnType.PURCHASE, True, "PURCHASE"),
        _kind("topup", TxnType.TOP_UP, True, "TOP-UP"),
        _kind("void", TxnType.VOID, True, "VOID"),
        _kind("refund", TxnType.REFUND, True, "REFUND"),
        _kind("preauth", TxnType.PRE_AUTH, True, "PRE-AUTHORIZATION"),
        _kind("preauth_void", TxnType.PRE_AUTH_VOID, True, "PRE-AUTH VOID"),
        _kind("completion", TxnType.PRE_AUTH_COMPLETION, True, "PRE-AUTH COMPLETION"),
        _kind("pin_change", TxnType.PIN_CHANGE, False, "PIN CHANGE"),
        # An offline sale's advice (pos.offline): financial, but built by offline_advice, never reversed
        _kind("offline", TxnType.OFFLINE_SALE, True, "OFFLINE SALE ADVICE"),
    )
}

# Fields a reversal must not carry (contract: "no DE35/36/52/53/26"); nor the chip data: the ARQC was
# for the original, and a reversal must never be refused as a replayed ATC.
REVERSAL_DROPS = ("26", "35", "36", "52", "53", "55", "64")


class CardError(ValueError):
    """Card data given to the terminal is unusable; str() says why (never the PAN)."""


@dataclass(frozen=True)
class Card:
    """How the card was presented: keyed (PAN + expiry), swiped (track 2) or a scanned payment code."""

    pan: str
    expiry: str = ""  # YYMM, keyed entry
    track2: str = ""  # PAN=YYMM..., swipe
    by_code: bool = False  # ``pan`` is a payment code the customer's app showed (entry mode 03x, no DE14)
    mode: str = ""  # DE22 positions 1-2 when read by its chip: 05 contact, 07 contactless (pos.chip)
    psn: str = ""  # PAN sequence number of a chip read, sent as DE23

    @staticmethod
    def payment_code(code: str) -> Card:
        """A payment code scanned from the customer's QR code (specs/README.md "Payment codes")."""
        if not (is_digits(code) and len(code) == PAYMENT_CODE_LENGTH):
            raise CardError(f"a payment code is {PAYMENT_CODE_LENGTH} digits")
        return Card(code, by_code=True)

    @staticmethod
    def keyed(pan: str, expiry: str) -> Card:
        if not (is_digits(pan) and 12 <= len(pan) <= 19):
            raise CardError("a card number is 12 to 19 digits")
        if not (is_digits(expiry) and len(expiry) == 4 and 1 <= int(expiry[2:]) <= 12):
            raise CardError("an expiry date is YYMM, e.g. 3012")
        return Card(pan, expiry=expiry)

    @staticmethod
    def swiped(track2: str) -> Card:
        t = track2.upper().replace("D", "=")
        pan, sep, rest = t.partition("=")
        if not sep or not (is_digits(pan) and 12 <= len(pan) <= 19) or not is_digits(rest) or len(t) > 37:
            raise CardError("track 2 is PAN=YYMM followed by digits, at most 37 characters")
        return Card(pan, track2=t)

    @property
    def entry_prefix(self) -> str:
        if self.mode:
            return self.mode
        return QR_ENTRY_MODE if self.by_code else "02" if self.track2 else "01"


def base(kind: Kind, stan: str, batch: str, terminal_id: str, merchant_id: str) -> Message:
    return {
        "t": kind.mti,
        "3": kind.proc,
        "11": stan,
        "25": kind.cond,
        "41": terminal_id.ljust(8),
        "42": merchant_id.ljust(15),
        "49": CURRENCY,
        "60": str(De60(kind.type_code, batch)),
    }


def financial_request(
    kind: Kind,
    *,
    stan: str,
    batch: str,
    terminal_id: str,
    merchant_id: str,
    scheme: Scheme,
    card: Card,
    amount: int | None,
    pin: str | None = None,
    pik: KeyCipher | None = None,
    pin_block_bytes: bytes | None = None,
    original: dict[str, str] | None = None,
    de55: bytes | None = None,
) -> Message:
    """A 0100/0200/0220 request. ``original`` holds ``rrn``, ``auth_id``, ``batch``, ``stan``, ``date``;
    ``de55`` the chip data of a chip read (pos.chip)."""
    msg = base(kind, stan, batch, terminal_id, merchant_id)
    if amount is not None:
        if not 0 < amount <= 999_999_999_999:
            raise CardError("the amount must be positive and at most 12 digits of minor units")
        msg["4"] = f"{amount:012d}"
    if card.track2:
        msg["35"] = card.track2
    else:
        msg["2"] = card.pan
        if not card.by_code:  # a payment code has no expiry date
            msg["14"] = card.expiry
    has_pin = pin is not None or pin_block_bytes is not None
    msg["22"] = card.entry_prefix + ("1" if has_pin else "2")
    if card.psn:
        msg["23"] = card.psn.zfill(3)
    if de55 is not None:
        msg["55"] = de55
    if has_pin:
        if pin_block_bytes is None:
            assert pin is not None and pik is not None
            pin_block_bytes = pin_block(pik, pin, card.pan)
        msg["26"] = "12"
        msg["52"] = pin_block_bytes
        msg["53"] = "2" + ("6" if scheme == "3des" else "4") + "0" + "0" * 13
    if original is not None:
        if kind.name in ("void", "refund"):
            msg["37"] = original["rrn"].ljust(12)
        if kind.name == "void":
            msg["38"] = original["auth_id"].ljust(6)
        with_date = kind.name in ("refund", "completion")
        msg["61"] = str(De61(original["batch"], original["stan"], original["date"] if with_date else ""))
    msg["64"] = MAC_PLACEHOLDER
    return msg


def pin_change_request(
    *,
    stan: str,
    batch: str,
    terminal_id: str,
    merchant_id: str,
    scheme: Scheme,
    card: Card,
    old_pin: str,
    new_pin: str,
    pik: KeyCipher,
) -> Message:
    """A PIN change [project convention, specs/README.md "PIN change"]: a 0200 without amount, the old
    PIN block in DE52 and the new one, formed the same way under the same PIK, in DE62."""
    msg = financial_request(
        KINDS["pin_change"],
        stan=stan,
        batch=batch,
        terminal_id=terminal_id,
        merchant_id=merchant_id,
        scheme=scheme,
        card=card,
        amount=None,
        pin=old_pin,
        pik=pik,
    )
    msg["62"] = pin_block(pik, new_pin, card.pan)
    return msg


def reversal_of(request: Message, reason: str = "98") -> Message:
    """The 0400 for an unanswered request: a copy including DE11, DE39 = reason, no PIN/track data.

    DE2/DE14 are kept when the original was keyed; a swiped original's PAN goes in DE2 (the track
    may not be repeated), taken from track 2.
    """
    rev = {k: v for k, v in request.items() if k not in REVERSAL_DROPS}
    if "35" in request and "2" not in rev:
        rev["2"] = str(request["35"]).split("=")[0].split("D")[0]
    rev["t"] = "0400"
    rev["39"] = reason
    rev["64"] = MAC_PLACEHOLDER
    return rev


def network(mti: str, code: str, stan: str, batch: str, terminal_id: str, merchant_id: str) -> Message:
    """0800 sign-on / 0820 sign-off or echo: 60.1 = 00, 60.3 = ``code``. 63 = operator 01."""
    return {
        "t": mti,
        "11": stan,
        "41": terminal_id.ljust(8),
        "42": merchant_id.ljust(15),
        "60": str(De60("00", batch, code)),
        "63": "01 ",
    }


def settlement(stan: str, batch: str, terminal_id: str, merchant_id: str, totals: BatchTotals) -> Message:
    """0500 with the batch's domestic totals in DE48 (no foreign cards: their totals are zero)."""
    msg = network("0500", "201", stan, batch, terminal_id, merchant_id)
    msg["48"] = batch_totals_de48(totals)
    msg["49"] = CURRENCY
    del msg["63"]
    return msg


def batch_upload(
    stan: str, batch: str, terminal_id: str, merchant_id: str, records: list[UploadRecord], last: bool
) -> Message:
    """0320 with up to ``specs.catalogue.MAX_UPLOAD_RECORDS`` records; 60.3 = 202 on the last message
    of the upload.

    An empty batch sends one 0320 without DE48 (nothing to upload, but the upload still ends).
    """
    msg = network("0320", "202" if last else "201", stan, batch, terminal_id, merchant_id)
    if records:
        msg["48"] = upload_de48(records)
    del msg["63"]
    return msg


def offline_advice(
    *,
    stan: str,
    batch: str,
    sale_batch: str,
    terminal_id: str,
    merchant_id: str,
    pan: str,
    expiry: str,
    entry: str,
    amount: int,
    date: str,
    time: str,
    approval: str,
    de55: bytes | None = None,
) -> Message:
    """An offline sale's advice [project convention, specs/README.md "Offline sales"]: 0220, DE3
    000000, DE25 00, 60.1 36 in the current ``batch``; DE61 names the sale itself (its batch, its STAN,
    its MMDD); DE12/DE13 the sale's local time, DE38 the terminal's approval code. Keyed form (DE2 and
    DE14: no track data is kept for later), DE22 the sale's entry mode without PIN (none can be sent
    later); DE11 is the sale's own STAN, so a repeat is a retransmission at the switch."""
    msg = base(KINDS["offline"], stan, batch, terminal_id, merchant_id)
    if not 0 < amount <= 999_999_999_999:
        raise CardError("the amount must be positive and at most 12 digits of minor units")
    msg["2"] = pan
    if expiry:
        msg["14"] = expiry
    msg["4"] = f"{amount:012d}"
    msg["12"] = time
    msg["13"] = date
    msg["22"] = entry + "2"
    msg["38"] = approval.ljust(6)
    if de55 is not None:
        msg["55"] = de55
    msg["61"] = str(De61(sale_batch, stan, date))
    msg["64"] = MAC_PLACEHOLDER
    return msg
