"""H2H messages to engine requests and decisions back to H2H responses (pure; no I/O).

How the host reads a request (h2h-dialect.md, and switch.mapping for what the switch puts where):

- type from MTI + DE3 + DE25 (specs.catalogue.classify_h2h); an unknown combination is answered 12;
- duplicate key: DE32 + DE7 + DE11 + DE41 + MTI (0221/0421 count as 0220/0420);
- card: DE2, else the PAN in track 2 (DE35); expiry DE14, else from the track; with entry mode 03x
  (DE22, QR) DE2 is a payment code instead (host.payment_codes: resolved to its card by host.service);
- voids and refunds name the original by its RRN in DE102 (the switch copies the POS DE37 there);
  completions and pre-auth voids by DE102 when present, else the card's latest pre-auth still on hold
  (from the same terminal when there is one);
- offline advices (0220 000000 00 with 60.1 ``36`` in DE60) are keyed by their natural key, not DE7/DE11
  (host.offline: DE42, DE41 and the sale's POS batch and STAN from the POS DE61 after the "/" in DE60);
- reversals (0400/0420/0421) name the original by DE90 (MTI, STAN, DE7, acquirer) and the reversal's
  own DE41; DE95 (first 12 digits) is the actual amount of a partial reversal;
- from the programme's own HTTP API (DE32 = ``api.institution_id``, which only the switch's MAC'd ``api``
  link may send): a top-up (DE3 21) is a programme-funded load (Txn.ADMIN_LOAD, from the funding account,
  as ``card load``) whose DE102 is its funding reference, and a purchase keyed with entry mode 81x is
  card-not-present (no PIN asked: the API's client authenticated it). specs/README.md, "API payments".
- chip (host.chip): DE22 is kept with the request; with entry mode 05x/07x, DE48 is the terminal's DE55
  as upper-case hex (specs/README.md "Chip data on H2H"), decoded as BER-TLV; bad hex or TLV: 30.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from host import chip, offline
from host.model import Decision, Pin, Request, Txn, normalise_mti, request_key
from host.payment_codes import is_code_entry
from specs.catalogue import TxnType, UnknownTransaction, classify_h2h, response_mti

TXN = {
    TxnType.BALANCE_INQUIRY: Txn.BALANCE,
    TxnType.PURCHASE: Txn.PURCHASE,
    TxnType.TOP_UP: Txn.TOPUP,
    TxnType.VOID: Txn.VOID,
    TxnType.REFUND: Txn.REFUND,
    TxnType.PRE_AUTH: Txn.PREAUTH,
    TxnType.PRE_AUTH_VOID: Txn.PREAUTH_VOID,
    TxnType.PRE_AUTH_COMPLETION: Txn.COMPLETION,
    TxnType.REVERSAL: Txn.REVERSAL,
    TxnType.PIN_CHANGE: Txn.PIN_CHANGE,
    TxnType.OFFLINE_SALE: Txn.OFFLINE,
}
NETWORK = {TxnType.SIGN_ON, TxnType.SIGN_OFF, TxnType.ECHO, TxnType.KEY_CHANGE}
# Whose DE48 is not chip data: a PIN change's new PIN block; reversals and offline advices carry no
# cryptogram to check (an advice's TC is the terminal's record of an approval already given).
NO_CHIP_DATA = frozenset({Txn.PIN_CHANGE, Txn.REVERSAL, Txn.OFFLINE})

# Echoed from request to response: the matching keys (7, 11, 32, 41) and what names the transaction.
# Not the PAN, tracks or terminal-side data: the peer keeps its request and needs none of them back.
ECHO = ("3", "4", "7", "11", "32", "33", "37", "41", "42", "49", "90", "95", "100", "102")


class BadRequest(Exception):
    """A message that decoded but cannot be acted on; ``code`` is the answer (30 or 12)."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code = code


@dataclass
class Parsed:
    request: Request | None  # None for network management (08xx)
    network: TxnType | None
    pan: str | None
    pin_block: bytes | None
    link_id: str  # whose ZPK protects DE52: DE33 when present, else DE32
    by_code: bool = False  # DE22 03x: ``pan`` is a payment code (host.payment_codes), not a card number
    new_pin_block: bytes | None = None  # a PIN change's new PIN block (DE48 hex), under the same ZPK as DE52


def pan_and_expiry(msg: dict[str, Any]) -> tuple[str | None, str | None]:
    pan = msg.get("2") or None
    expiry = msg.get("14") or None
    track = msg.get("35")
    if isinstance(track, str) and "=" in track:
        t_pan, rest = track.split("=", 1)
        pan = pan or t_pan or None
        if expiry is None and len(rest) >= 4 and rest[:4].isdigit():
            expiry = rest[:4]
    return pan, expiry


def link_id_of(msg: dict[str, Any]) -> str:
    """The link whose keys protect the message: DE33 (forwarding institution) when present, else DE32."""
    return str(msg.get("33") or msg.get("32") or "").lstrip("0") or "0"


def parse(msg: dict[str, Any], programme_id: str | None = None) -> Parsed:
    mti = msg["t"]
    try:
        kind = classify_h2h(mti, msg.get("3"), msg.get("25"), msg.get("70"))
    except UnknownTransaction as exc:
        raise BadRequest("12", str(exc)) from None
    for f in ("7", "11", "32"):
        if f not in msg:
            raise BadRequest("30", f"DE{f} missing")
    acquirer, de7, stan = msg["32"], msg["7"], msg["11"]
    link_id = link_id_of(msg)
    if kind in NETWORK:
        return Parsed(None, kind, None, None, link_id)
    terminal = str(msg.get("41", "")).strip()
    pan, expiry = pan_and_expiry(msg)
    by_code = is_code_entry(msg.get("22"))
    if by_code:  # DE2 is the payment code: no track, no expiry (a code has neither)
        pan, expiry = msg.get("2") or None, None
    pin_block = msg.get("52")
    if isinstance(pin_block, str):
        pin_block = bytes.fromhex(pin_block)
    txn = TXN[kind]
    programme = programme_id is not None and str(acquirer).lstrip("0") == programme_id.lstrip("0")
    if programme and txn is Txn.TOPUP:
        txn = Txn.ADMIN_LOAD
    if txn not in (Txn.BALANCE, Txn.REVERSAL, Txn.PIN_CHANGE) and "4" not in msg:
        raise BadRequest("30", "DE4 missing")
    new_pin_block = new_pin_block_of(msg) if txn is Txn.PIN_CHANGE else None
    if by_code and pan is None and txn is not Txn.REVERSAL:
        raise BadRequest("30", "DE2 missing: entry mode 03 carries the payment code there")
    req = Request(
        key=request_key(acquirer, de7, stan, terminal, mti),
        mti=normalise_mti(mti),
        txn=txn,
        acquirer_id=acquirer,
        stan=stan,
        transmitted=de7,
        terminal_id=terminal,
        merchant_id=str(msg.get("42", "")).strip(),
        proc_code=msg.get("3", ""),
        rrn=str(msg.get("37", "")).strip(),
        local_time=str(msg.get("13", "")) + str(msg.get("12", "")),
        amount=int(msg.get("4", "0")),
        currency=msg.get("49", ""),
        expiry=expiry,
        pin=Pin.NONE,
        original_rrn=(str(msg["102"]).strip() or None) if "102" in msg else None,
    )
    if txn is Txn.OFFLINE and (refusal := offline.parse_advice(msg, req)) is not None:
        raise BadRequest(*refusal)  # its natural key and the terminal's approval code, else 30 / 12
    req.entry_mode = str(msg.get("22", ""))
    if txn not in NO_CHIP_DATA:  # 05x/07x: DE48 is the terminal's DE55 as hex (host.chip)
        try:
            req.chip = chip.parse(msg.get("48"), req.entry_mode)
        except chip.ChipDataError as exc:
            raise BadRequest("30", str(exc)) from None
    if programme:
        req.card_not_present = str(msg.get("22", "")).startswith("81")
        if txn is Txn.ADMIN_LOAD:
            req.reference, req.original_rrn = req.original_rrn, None
    if txn is Txn.REVERSAL:
        de90 = msg.get("90")
        if de90 is None or len(de90) < 31:
            raise BadRequest("30", "DE90 missing")
        req.original_mti = normalise_mti(de90[0:4])
        req.original_key = request_key(de90[20:31], de90[10:20], de90[4:10], terminal, de90[0:4])
        if offline.reverses_advice(req.original_mti, msg.get("3"), msg.get("25")):
            req.original_key = None  # an advice is never reversed: answered 00, nothing undone (host.offline)
        de95 = msg.get("95")
        if isinstance(de95, str) and de95[:12].isdigit():
            req.actual_amount = int(de95[:12])
    return Parsed(req, None, pan, pin_block, link_id, by_code, new_pin_block)


def new_pin_block_of(msg: dict[str, Any]) -> bytes:
    """A PIN change's new PIN block: DE48, 16 hex characters (3des link) or 32 (sm4), as DE52 is
    [project convention, specs/README.md "PIN change"]; anything else is a format error."""
    value = msg.get("48")
    text = value if isinstance(value, str) else ""
    try:
        block = bytes.fromhex(text)
    except ValueError:
        block = b""
    if len(text) not in (16, 32) or len(block) * 2 != len(text):
        raise BadRequest("30", "DE48 is not a PIN block (a PIN change carries the new one there)")
    return block


def settlement_date(business_date: dt.date) -> str:
    """DE15, MMDD: the business date the request is cleared on (host.business_day), not the UTC day."""
    return f"{business_date.month:02d}{business_date.day:02d}"


def response(msg: dict[str, Any], d: Decision, business_date: dt.date) -> dict[str, Any]:
    """The answer to a request: echoed fields, DE15, DE38 when approved, DE39, DE54 when given."""
    out: dict[str, Any] = {"t": response_mti(msg["t"])}
    for f in ECHO:
        if f in msg:
            out[f] = msg[f]
    out["15"] = settlement_date(business_date)
    if d.code == "00" and d.auth_id:
        out["38"] = d.auth_id
    out["39"] = d.code
    if d.balance_field:
        out["54"] = d.balance_field
    return out


def network_response(msg: dict[str, Any], code: str) -> dict[str, Any]:
    out: dict[str, Any] = {"t": response_mti(msg["t"])}
    for f in ("7", "11", "32", "33", "70", "100"):
        if f in msg:
            out[f] = msg[f]
    out["39"] = code
    return out


def error_response(msg: dict[str, Any], code: str) -> dict[str, Any]:
    out: dict[str, Any] = {"t": response_mti(msg["t"])}
    for f in ("3", "4", "7", "11", "32", "33", "37", "41", "42", "49", "70", "90"):
        if f in msg:
            out[f] = msg[f]
    out["39"] = code
    return out
