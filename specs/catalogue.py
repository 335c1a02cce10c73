"""The transaction catalogue shared by switch and host: what a message is, and how to answer it.

- :class:`TxnType` and :data:`POS_TRANSACTIONS` / :data:`H2H_TRANSACTIONS`: the contract's
  transaction tables as data. :func:`classify_pos` / :func:`classify_h2h` map a request (or response)
  to its type; :data:`POS_TRANSACTIONS` ``[t]`` gives the MTI, DE3, DE25, 60.1, 60.3 to build one.
- :class:`ProcessingCode`, :class:`ResponseCode` (``StrEnum``: members *are* the wire strings, so
  ``msg["39"] = ResponseCode.APPROVED`` works) and :data:`RESPONSE_CODES` (meanings, per-dialect use,
  whether the terminal must sign on again).
- :func:`response_mti`, :func:`mac_required`, :func:`echoed_fields` / :func:`response_skeleton`
  (which request fields a response carries back), :func:`format_error_response` (the 30 answer),
  :data:`POS_PRESENCE` / :func:`pos_presence_problems` (the contract's field presence table).
- Sub-field helpers for the structured fields: :class:`De60`, :class:`De61`, :func:`balance_de54`,
  :class:`WorkingKeys` (DE62 layouts per profile), :class:`BatchTotals` / :func:`batch_totals_de48`
  / :func:`parse_batch_totals` (0500/0510 DE48), :class:`UploadRecord` / :func:`upload_de48` /
  :func:`parse_upload_de48` (0320 DE48), :func:`h2h_de90`.
- Offline sales [project convention]: :data:`OFFLINE_TYPE_CODE` (60.1 of the advice),
  :class:`FloorLimit` / :func:`floor_table_de48` / :func:`parse_floor_table` (0810 DE48),
  :func:`floor_limit_for` (longest BIN prefix), :func:`is_offline_advice`.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from specs.errors import DecodeError


class TxnType(StrEnum):
    SIGN_ON = "sign_on"
    SIGN_OFF = "sign_off"
    ECHO = "echo"
    KEY_CHANGE = "key_change"  # H2H only
    BALANCE_INQUIRY = "balance_inquiry"
    PURCHASE = "purchase"
    TOP_UP = "top_up"
    VOID = "void"
    REFUND = "refund"
    PRE_AUTH = "pre_auth"
    PRE_AUTH_VOID = "pre_auth_void"
    PRE_AUTH_COMPLETION = "pre_auth_completion"
    REVERSAL = "reversal"
    BATCH_SETTLEMENT = "batch_settlement"
    BATCH_UPLOAD = "batch_upload"
    PIN_CHANGE = "pin_change"  # [project convention] specs/README.md, "PIN change"
    OFFLINE_SALE = "offline_sale"  # [project convention] specs/README.md, "Offline sales": the advice


class ProcessingCode(StrEnum):
    """DE3 values used by both dialects (the first two digits are the ISO transaction type)."""

    GOODS = "000000"  # purchase, pre-auth completion
    PRE_AUTH = "030000"
    RETURN = "200000"  # void, refund, pre-auth void
    DEPOSIT = "210000"  # top-up (cash load)
    BALANCE_INQUIRY = "310000"
    # [project convention] ISO 8583:1987 keeps transaction codes 90-99 for private use; 96 is ours.
    PIN_CHANGE = "960000"


class ConditionCode(StrEnum):
    """DE25."""

    NORMAL = "00"
    PRE_AUTH = "06"


@dataclass(frozen=True, slots=True)
class PosTxn:
    """One row of the POS transaction table. None = the field is not used (network/batch messages)."""

    type: TxnType
    mti: str
    de3: str | None
    de25: str | None
    de60_1: str
    de60_3: tuple[str, ...] = ("000",)  # network management codes that select this row

    @property
    def key(self) -> tuple[str, str | None, str | None, str]:
        return (self.mti, self.de3, self.de25, self.de60_1)


PC, CC = ProcessingCode, ConditionCode

POS_TRANSACTIONS: dict[TxnType, PosTxn] = {row.type: row for row in (
    PosTxn(TxnType.SIGN_ON, "0800", None, None, "00", ("004", "005")),  # 004 3DES, 005 SM4
    PosTxn(TxnType.SIGN_OFF, "0820", None, None, "00", ("002",)),
    PosTxn(TxnType.ECHO, "0820", None, None, "00", ("301",)),
    PosTxn(TxnType.BALANCE_INQUIRY, "0200", PC.BALANCE_INQUIRY, CC.NORMAL, "01"),
    PosTxn(TxnType.PURCHASE, "0200", PC.GOODS, CC.NORMAL, "22"),
    PosTxn(TxnType.TOP_UP, "0200", PC.DEPOSIT, CC.NORMAL, "40"),
    PosTxn(TxnType.VOID, "0200", PC.RETURN, CC.NORMAL, "23"),
    PosTxn(TxnType.REFUND, "0220", PC.RETURN, CC.NORMAL, "25"),
    PosTxn(TxnType.PRE_AUTH, "0100", PC.PRE_AUTH, CC.PRE_AUTH, "10"),
    PosTxn(TxnType.PRE_AUTH_VOID, "0100", PC.RETURN, CC.PRE_AUTH, "11"),
    PosTxn(TxnType.PRE_AUTH_COMPLETION, "0200", PC.GOODS, CC.PRE_AUTH, "20"),
    PosTxn(TxnType.BATCH_SETTLEMENT, "0500", None, None, "00", ("201",)),
    PosTxn(TxnType.BATCH_UPLOAD, "0320", None, None, "00", ("201", "202")),  # 202 = end of upload
    PosTxn(TxnType.PIN_CHANGE, "0200", PC.PIN_CHANGE, CC.NORMAL, "96"),  # [project convention]
    PosTxn(TxnType.OFFLINE_SALE, "0220", PC.GOODS, CC.NORMAL, "36"),  # [project convention] advice
)}
"""TxnType -> how a terminal sends it. A reversal (0400) copies the original's DE3/DE25/DE60."""

# Financial rows by (DE3, DE25, 60.1): unique, so a 0400 tells which type it reverses.
_POS_FINANCIAL: dict[tuple[str | None, str | None, str | None], PosTxn] = {
    (r.de3, r.de25, r.de60_1): r for r in POS_TRANSACTIONS.values() if r.de3 is not None
}
_POS_NETWORK = {(r.mti, code): r for r in POS_TRANSACTIONS.values() if r.de3 is None for code in r.de60_3}

# H2H: (MTI, DE3, DE25) for financial messages, (MTI, DE70) for network management.
H2H_TRANSACTIONS: dict[tuple[str, str, str], TxnType] = {
    ("0100", PC.PRE_AUTH, CC.PRE_AUTH): TxnType.PRE_AUTH,
    ("0100", PC.RETURN, CC.PRE_AUTH): TxnType.PRE_AUTH_VOID,
    ("0200", PC.GOODS, CC.NORMAL): TxnType.PURCHASE,
    ("0200", PC.BALANCE_INQUIRY, CC.NORMAL): TxnType.BALANCE_INQUIRY,
    ("0200", PC.DEPOSIT, CC.NORMAL): TxnType.TOP_UP,
    ("0200", PC.RETURN, CC.NORMAL): TxnType.VOID,
    ("0200", PC.GOODS, CC.PRE_AUTH): TxnType.PRE_AUTH_COMPLETION,
    ("0220", PC.RETURN, CC.NORMAL): TxnType.REFUND,
    ("0220", PC.GOODS, CC.PRE_AUTH): TxnType.PRE_AUTH_COMPLETION,  # completion advice (SAF)
    ("0200", PC.PIN_CHANGE, CC.NORMAL): TxnType.PIN_CHANGE,  # [project convention]
    # [project convention] the offline sale's advice; the host also sees 60.1 36 inside H2H DE60
    ("0220", PC.GOODS, CC.NORMAL): TxnType.OFFLINE_SALE,
}
# PIN change [project convention, specs/README.md "PIN change"]: the old PIN block is DE52 in both
# dialects; the new one is POS DE62 (b, as DE52 is) and H2H DE48 (its hex, as H2H DE52 is).
PIN_CHANGE_NEW_BLOCK = {"pos": "62", "h2h": "48"}
H2H_NETWORK: dict[str, TxnType] = {
    "001": TxnType.SIGN_ON, "002": TxnType.SIGN_OFF, "101": TxnType.KEY_CHANGE, "301": TxnType.ECHO,
}
H2H_REVERSAL_MTIS = frozenset({"0400", "0410", "0420", "0421", "0430"})


class UnknownTransaction(ValueError):
    """The message is well-formed but matches no catalogue row (answer 12 invalid transaction)."""


def request_mti(mti: str) -> str:
    """The request MTI a message belongs to: 0210 -> 0200, 0230 -> 0220, 0221 -> 0220."""
    klass = int(mti[2])
    return mti[:2] + str(klass - klass % 2) + "0"


def response_mti(mti: str) -> str:
    """The response MTI of a request: class digit + 1, repeat digit cleared (0200 -> 0210, 0221 -> 0230)."""
    klass = int(mti[2])
    if klass % 2:
        raise ValueError(f"{mti} is already a response")
    return mti[:2] + str(klass + 1) + "0"


def is_response(mti: str) -> bool:
    return int(mti[2]) % 2 == 1


def answer_mti(mti: str) -> str:
    """The MTI an answer to a received message ``mti`` carries: the response MTI of the exchange the
    message belongs to (0200 -> 0210, 0221 -> 0230, and a response sent to us, 0410 -> 0410). Request
    + 10 of a response (0410 -> 0420, 0830 -> 0840) is an MTI the dialects lack: such an answer could
    not be encoded and the connection was dropped. Every MTI a dialect decodes has its exchange's
    response in that dialect, so the answer always encodes."""
    return response_mti(request_mti(mti))


def unhandled_code(mti: str) -> str:
    """DE39 for a well-formed message no transaction handles: 30 (format error) for a response sent
    as if it were a request, which is never valid input to a listener; 12 for an unknown request."""
    return RC.FORMAT_ERROR.value if is_response(mti) else RC.INVALID_TRANSACTION.value


def classify_pos(mti: str, de3: str | None, de25: str | None, de60: str | None) -> TxnType:
    """The transaction type of a POS request or response (its MTI, DE3, DE25 and whole DE60).

    0400/0410 give REVERSAL; :func:`reversed_pos_type` says what they reverse.
    Raises :class:`UnknownTransaction`.
    """
    base = request_mti(mti)
    if base == "0400":
        return TxnType.REVERSAL
    fields = De60.parse(de60) if de60 else None
    if de3 is None:
        row = _POS_NETWORK.get((base, fields.network_code if fields else ""))
        if row is not None and fields is not None and fields.type_code == row.de60_1:
            return row.type
    else:
        row = _POS_FINANCIAL.get((de3, de25, fields.type_code if fields else None))
        if row is not None and row.mti == base:
            return row.type
    raise UnknownTransaction(f"no POS transaction for MTI {mti}, DE3 {de3}, DE25 {de25}, DE60 {de60}")


def reversed_pos_type(de3: str | None, de25: str | None, de60: str | None) -> TxnType:
    """The type of the original transaction a POS 0400 reverses (from its copied DE3/DE25/60.1)."""
    row = _POS_FINANCIAL.get((de3, de25, De60.parse(de60).type_code if de60 else None))
    if row is None:
        raise UnknownTransaction(f"no reversible POS transaction for DE3 {de3}, DE25 {de25}")
    return row.type


def classify_h2h(mti: str, de3: str | None, de25: str | None, de70: str | None = None) -> TxnType:
    """The transaction type of an H2H message (0400/0420/0421 and responses give REVERSAL)."""
    if mti in H2H_REVERSAL_MTIS:
        return TxnType.REVERSAL
    base = request_mti(mti)
    network = base == "0800"
    t = H2H_NETWORK.get(de70 or "") if network else H2H_TRANSACTIONS.get((base, de3 or "", de25 or ""))
    if t is None:
        raise UnknownTransaction(f"no H2H transaction for MTI {mti}, DE3 {de3}, DE25 {de25}, DE70 {de70}")
    return t


def h2h_key(t: TxnType) -> tuple[str, str, str]:
    """(MTI, DE3, DE25) of an H2H financial request of type ``t`` (the request form, not the advice)."""
    for key, value in H2H_TRANSACTIONS.items():
        if value is t:
            return key
    raise KeyError(t)


# --- response codes -------------------------------------------------------------------------------------

class ResponseCode(StrEnum):
    APPROVED = "00"
    INVALID_MERCHANT = "03"
    DO_NOT_HONOUR = "05"
    INVALID_TRANSACTION = "12"
    INVALID_AMOUNT = "13"
    INVALID_CARD_NUMBER = "14"
    SUSPECTED_MALFUNCTION = "22"
    ORIGINAL_NOT_FOUND = "25"
    FORMAT_ERROR = "30"
    LOST_CARD = "41"
    STOLEN_CARD = "43"
    INSUFFICIENT_FUNDS = "51"
    EXPIRED_CARD = "54"
    INCORRECT_PIN = "55"
    NOT_PERMITTED_CARDHOLDER = "57"
    NOT_PERMITTED_TERMINAL = "58"
    EXCEEDS_AMOUNT_LIMIT = "61"
    ORIGINAL_AMOUNT_INCORRECT = "64"
    EXCEEDS_FREQUENCY_LIMIT = "65"
    PIN_TRIES_EXCEEDED = "75"
    BATCH_NUMBER_DIFFERS = "77"
    ISSUER_UNAVAILABLE = "91"
    DUPLICATE_TRANSMISSION = "94"
    SYSTEM_MALFUNCTION = "96"
    TERMINAL_NOT_REGISTERED = "97"
    ISSUER_TIMEOUT = "98"
    PIN_FORMAT_ERROR = "99"
    MAC_FAILURE = "A0"


@dataclass(frozen=True, slots=True)
class ResponseCodeInfo:
    code: ResponseCode
    meaning: str
    h2h: bool = True  # used on H2H links too (all are used on POS)
    sign_on_again: bool = False  # POS: processing-requirement nibble 3

    @property
    def approved(self) -> bool:
        return self.code is ResponseCode.APPROVED

    @property
    def requirement(self) -> int:
        """The POS response header's processing-requirement nibble."""
        return 3 if self.sign_on_again else 0


RC = ResponseCode
RESPONSE_CODES: dict[str, ResponseCodeInfo] = {i.code.value: i for i in (
    ResponseCodeInfo(RC.APPROVED, "approved"),
    ResponseCodeInfo(RC.INVALID_MERCHANT, "invalid merchant"),
    ResponseCodeInfo(RC.DO_NOT_HONOUR, "do not honour"),
    ResponseCodeInfo(RC.INVALID_TRANSACTION, "invalid transaction"),
    ResponseCodeInfo(RC.INVALID_AMOUNT, "invalid amount"),
    ResponseCodeInfo(RC.INVALID_CARD_NUMBER, "invalid card number"),
    ResponseCodeInfo(RC.SUSPECTED_MALFUNCTION, "suspected malfunction"),
    ResponseCodeInfo(RC.ORIGINAL_NOT_FOUND, "original not found"),
    ResponseCodeInfo(RC.FORMAT_ERROR, "format error"),
    ResponseCodeInfo(RC.LOST_CARD, "lost card"),
    ResponseCodeInfo(RC.STOLEN_CARD, "stolen card"),
    ResponseCodeInfo(RC.INSUFFICIENT_FUNDS, "insufficient funds"),
    ResponseCodeInfo(RC.EXPIRED_CARD, "expired card"),
    ResponseCodeInfo(RC.INCORRECT_PIN, "incorrect PIN"),
    ResponseCodeInfo(RC.NOT_PERMITTED_CARDHOLDER, "transaction not permitted to cardholder"),
    ResponseCodeInfo(RC.NOT_PERMITTED_TERMINAL, "transaction not permitted to terminal"),
    ResponseCodeInfo(RC.EXCEEDS_AMOUNT_LIMIT, "exceeds amount limit"),
    ResponseCodeInfo(RC.ORIGINAL_AMOUNT_INCORRECT, "original amount incorrect"),
    ResponseCodeInfo(RC.EXCEEDS_FREQUENCY_LIMIT, "exceeds frequency limit"),
    ResponseCodeInfo(RC.PIN_TRIES_EXCEEDED, "PIN tries exceeded"),
    ResponseCodeInfo(RC.BATCH_NUMBER_DIFFERS, "batch number differs from the one given at sign-on",
                     sign_on_again=True),
    ResponseCodeInfo(RC.ISSUER_UNAVAILABLE, "issuer unavailable"),
    ResponseCodeInfo(RC.DUPLICATE_TRANSMISSION, "duplicate transmission"),
    ResponseCodeInfo(RC.SYSTEM_MALFUNCTION, "system malfunction"),
    ResponseCodeInfo(RC.TERMINAL_NOT_REGISTERED, "terminal not registered", h2h=False),
    ResponseCodeInfo(RC.ISSUER_TIMEOUT, "issuer timeout"),
    ResponseCodeInfo(RC.PIN_FORMAT_ERROR, "PIN format error", h2h=False),
    ResponseCodeInfo(RC.MAC_FAILURE, "MAC verification failed (sign on again)", h2h=False,
                     sign_on_again=True),
)}


def describe_response_code(code: str) -> str:
    info = RESPONSE_CODES.get(code)
    return info.meaning if info else "unknown response code"


# --- MAC and field presence -----------------------------------------------------------------------------

POS_MAC_MTIS = frozenset({"0100", "0110", "0200", "0210", "0220", "0230", "0400", "0410"})


def mac_required(mti: str, response_code: str | None = None) -> bool:
    """Whether a POS message carries DE64: 0100/0200/0220/0400 and their responses, except responses
    answering A0 or 30."""
    if mti not in POS_MAC_MTIS:
        return False
    return not (is_response(mti) and response_code in (RC.MAC_FAILURE, RC.FORMAT_ERROR))


# Request fields a POS response carries back when the request had them (contract "Field presence").
_POS_ECHO_FINANCIAL = ("2", "3", "4", "11", "25", "41", "42", "49", "55", "60", "61")
_POS_ECHO_REVERSAL = ("2", "3", "4", "11", "25", "41", "42", "49", "60", "61")
_POS_ECHO_NETWORK = ("11", "41", "42", "60")
# H2H: the matching keys and the transaction data.
_H2H_ECHO = ("2", "3", "4", "7", "11", "12", "13", "22", "25", "32", "33", "37", "41", "42", "49", "60",
             "70", "90", "95", "100", "102")


def echoed_fields(dialect: str, mti: str) -> tuple[str, ...]:
    """The fields a response to request ``mti`` copies from the request when present.

    POS 0810/0830/0510/0330 echo 60 whole; the sender then sets 60.2 (sign-on batch) or keeps it.
    Response-only fields (12, 13, 32, 37, 38, 39, 54, 62, 64 ...) are the responder's to set.
    """
    if dialect == "h2h":
        return _H2H_ECHO
    base = request_mti(mti)
    if base == "0400":
        return _POS_ECHO_REVERSAL
    if base in ("0100", "0200", "0220"):
        return _POS_ECHO_FINANCIAL
    return _POS_ECHO_NETWORK + (("48",) if base in ("0500", "0320") else ())


def response_skeleton(dialect: str, request: dict[str, Any], response_code: str) -> dict[str, Any]:
    """The response MTI, the echoed request fields and DE39: the start of every answer."""
    resp: dict[str, Any] = {"t": response_mti(request["t"])}
    for key in echoed_fields(dialect, request["t"]):
        if key in request:
            resp[key] = request[key]
    resp["39"] = str(response_code)
    return resp


def format_error_response(dialect: str, error: DecodeError) -> dict[str, Any] | None:
    """The DE39 = 30 answer to an unparseable message, or None when it cannot be answered.

    POS needs the MTI, DE11 and DE41 (answer: DE11, DE41, DE42 if read, DE39, no DE64); H2H needs the
    MTI and DE11 (answer: the matching keys that were read, DE39). Responses are never answered.
    """
    mti = error.mti
    if mti is None or is_response(mti) or "11" not in error.partial:
        return None
    if dialect == "pos":
        if "41" not in error.partial:
            return None
        keep: tuple[str, ...] = ("11", "41", "42")
    else:
        keep = ("7", "11", "32", "41")
    resp: dict[str, Any] = {"t": response_mti(mti)}
    resp.update((k, error.partial[k]) for k in keep if k in error.partial)
    resp["39"] = RC.FORMAT_ERROR.value
    return resp


# --- payment codes (project convention, specs/README.md "Payment codes") --------------------------------

# POS (and H2H) DE22 entry mode 03x, QR: DE2 is a one-time payment code of PAYMENT_CODE_LENGTH digits
# (the card's BIN, random digits, a Luhn check digit) made by the issuer for a card, not a card number.
QR_ENTRY_MODE = "03"
PAYMENT_CODE_LENGTH = 18


# --- offline sales (project convention, specs/README.md "Offline sales") --------------------------------

# 60.1 of an offline advice (POS 0220, DE3 000000, DE25 00): CUP uses 36 for its offline e-cash uploads;
# the contract has no code meaning "offline", so the advice has its own and is never taken for a refund.
OFFLINE_TYPE_CODE = "36"
OFFLINE_DE25 = ConditionCode.NORMAL.value
# The floor table (POS DE48 of the 0810, n..322 LLL): count n2, then per BIN range 37 digits:
# BIN length n2 | BIN n11 (zero-padded on the right) | floor limit n12 | no-CVM limit n12 (both fen).
FLOOR_BIN_DIGITS = 11
FLOOR_ENTRY_DIGITS = 2 + FLOOR_BIN_DIGITS + 12 + 12
MAX_FLOOR_ENTRIES = 8  # 2 + 8 * 37 = 298 digits; a ninth (335) would not fit in 322


@dataclass(frozen=True, slots=True)
class FloorLimit:
    """One BIN range of the floor table: the offline floor limit and the no-CVM limit, in fen."""

    bin: str  # 1 to 11 digits (the host's bin_ranges.bin is 6 to 11)
    floor_limit: int
    no_cvm_limit: int

    def __str__(self) -> str:
        if not (self.bin.isdigit() and 1 <= len(self.bin) <= FLOOR_BIN_DIGITS):
            raise ValueError(f"a floor table BIN is 1 to {FLOOR_BIN_DIGITS} digits")
        for amount in (self.floor_limit, self.no_cvm_limit):
            if not 0 <= amount < 10**12:
                raise ValueError("a floor table limit is 0 to 12 digits of fen")
        bin_field = f"{len(self.bin):02d}{self.bin:0<{FLOOR_BIN_DIGITS}}"
        return f"{bin_field}{self.floor_limit:012d}{self.no_cvm_limit:012d}"


def floor_table_de48(entries: list[FloorLimit]) -> str:
    """The 0810's DE48: the floor table, entries in the order given (the switch sorts them by BIN)."""
    if len(entries) > MAX_FLOOR_ENTRIES:
        raise ValueError(f"at most {MAX_FLOOR_ENTRIES} floor table entries fit in DE48")
    return f"{len(entries):02d}" + "".join(str(e) for e in entries)


def parse_floor_table(de48: str) -> list[FloorLimit]:
    """The floor table of an 0810's DE48; raises ValueError when it is not one (an empty DE48 is none)."""
    if de48 == "":
        return []
    if not de48.isdigit() or len(de48) < 2:
        raise ValueError("the floor table is digits: a count n2 then 37 digits per BIN range")
    count = int(de48[:2])
    if count > MAX_FLOOR_ENTRIES or len(de48) != 2 + FLOOR_ENTRY_DIGITS * count:
        raise ValueError("the floor table is a count n2 (at most 8) then 37 digits per BIN range")
    entries = []
    for i in range(count):
        e = de48[2 + FLOOR_ENTRY_DIGITS * i : 2 + FLOOR_ENTRY_DIGITS * (i + 1)]
        length = int(e[:2])
        if not 1 <= length <= FLOOR_BIN_DIGITS or e[2 + length : 2 + FLOOR_BIN_DIGITS].strip("0"):
            raise ValueError("a floor table BIN length is 1 to 11 and the padding after the BIN zeros")
        entries.append(FloorLimit(e[2 : 2 + length], int(e[13:25]), int(e[25:37])))
    return entries


def floor_limit_for(table: list[FloorLimit], pan: str) -> FloorLimit | None:
    """The entry of the longest BIN that prefixes ``pan`` (None: no entry, so no offline approval)."""
    best: FloorLimit | None = None
    for entry in table:
        if pan.startswith(entry.bin) and (best is None or len(entry.bin) > len(best.bin)):
            best = entry
    return best


def is_offline_advice(mti: str, de3: str | None, de60: str | None) -> bool:
    """Whether a POS (or H2H, whose DE60 starts with the POS DE60) 0220 is an offline sale's advice."""
    goods = de3 == ProcessingCode.GOODS
    return request_mti(mti) == "0220" and goods and str(de60 or "")[:2] == OFFLINE_TYPE_CODE


# --- structured POS sub-fields --------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class De60:
    """POS DE60: 60.1 type code n2, 60.2 batch n6, 60.3 network management code n3 [, 60.4 n1, 60.5 n1]."""

    type_code: str
    batch: str
    network_code: str = "000"
    extra: str = ""  # 60.4 + 60.5, both or neither

    @classmethod
    def parse(cls, value: str) -> De60:
        if len(value) not in (11, 13) or not value.isdigit():
            raise ValueError("DE60 is 11 or 13 digits")
        return cls(value[0:2], value[2:8], value[8:11], value[11:])

    def __str__(self) -> str:
        return self.type_code + self.batch + self.network_code + self.extra


@dataclass(frozen=True, slots=True)
class De61:
    """POS DE61: original batch n6 + original STAN n6 [+ original date MMDD]."""

    batch: str
    stan: str
    date: str = ""

    @classmethod
    def parse(cls, value: str) -> De61:
        if len(value) not in (12, 16) or not value.isdigit():
            raise ValueError("DE61 is 12 or 16 digits")
        return cls(value[0:6], value[6:12], value[12:])

    def __str__(self) -> str:
        return self.batch + self.stan + self.date


def balance_de54(available_fen: int, currency: str = "156") -> str:
    """POS DE54: ``10`` account + ``02`` available + currency + C/D + 12-digit amount in fen."""
    sign = "C" if available_fen >= 0 else "D"
    return f"1002{currency}{sign}{abs(available_fen):012d}"


def rrn_prefix(year: int, day_of_year: int, hour: int) -> str:
    """DE37's first six digits (specs/README.md "Clocks"): the local year's last digit, the day of the
    year and the hour; the RRN is this followed by the 6-digit STAN, e.g. 10h on 2025-11-25 (day 329)
    with STAN 000778 gives ``532910000778``."""
    return f"{year % 10}{day_of_year:03d}{hour:02d}"


def h2h_de90(mti: str, stan: str, de7: str, acquirer: str, forwarding: str = "") -> str:
    """H2H DE90: original MTI n4, STAN n6, DE7 n10, acquirer id n11, forwarding id n11 (zero-padded)."""
    return f"{mti:0>4}{stan:0>6}{de7:0>10}{acquirer:0>11}{forwarding:0>11}"


# --- sign-on working keys (POS DE62 of the 0810) --------------------------------------------------------

# (part, size); None = filler that must be 8 zero bytes (3DES: the single-length MAK's second half).
DE62_LAYOUTS: dict[str, tuple[tuple[str | None, int], ...]] = {
    "3des": (("pik", 16), ("pik_cv", 4), ("mak", 8), (None, 8), ("mak_cv", 4), ("tdk", 16), ("tdk_cv", 4)),
    "sm4": (("pik", 16), ("pik_cv", 4), ("mak", 16), ("mak_cv", 4), ("tdk", 16), ("tdk_cv", 4)),
}


@dataclass(frozen=True, slots=True)
class WorkingKeys:
    """The working keys of a sign-on answer, each encrypted under the TMK, with their check values."""

    pik: bytes
    pik_cv: bytes
    mak: bytes
    mak_cv: bytes
    tdk: bytes
    tdk_cv: bytes

    @classmethod
    def parse(cls, profile: str, de62: bytes) -> WorkingKeys:
        layout = DE62_LAYOUTS[profile]
        if len(de62) != sum(size for _, size in layout):
            raise ValueError(f"DE62 is {len(de62)} bytes, expected {sum(size for _, size in layout)}")
        parts: dict[str, bytes] = {}
        pos = 0
        for name, size in layout:
            chunk = de62[pos:pos + size]
            pos += size
            if name is None:
                if chunk != bytes(size):
                    raise ValueError("DE62 filler after the MAK is not zero")
            else:
                parts[name] = bytes(chunk)
        return cls(**parts)

    def build(self, profile: str) -> bytes:
        out = bytearray()
        for name, size in DE62_LAYOUTS[profile]:
            value = bytes(size) if name is None else getattr(self, name)
            if len(value) != size:
                raise ValueError(f"{name} is {len(value)} bytes, expected {size} for {profile}")
            out += value
        return bytes(out)


# --- batch settlement and upload (POS DE48) -------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class BatchTotals:
    """One half of the 0500/0510 DE48 (domestic or foreign cards): 31 digits."""

    debit_amount: int = 0
    debit_count: int = 0
    credit_amount: int = 0
    credit_count: int = 0
    result: str = "0"  # 0510: 1 balanced, 2 not balanced

    def __str__(self) -> str:
        return (f"{self.debit_amount:012d}{self.debit_count:03d}{self.credit_amount:012d}"
                f"{self.credit_count:03d}{self.result}")

    @classmethod
    def parse(cls, value: str) -> BatchTotals:
        if len(value) != 31 or not value.isdigit():
            raise ValueError("batch totals are 31 digits")
        return cls(int(value[0:12]), int(value[12:15]), int(value[15:27]), int(value[27:30]), value[30])


def parse_batch_totals(de48: str) -> tuple[BatchTotals, BatchTotals]:
    """0500/0510 DE48 -> (domestic, foreign); 31 digits alone mean no foreign totals."""
    if len(de48) not in (31, 62):
        raise ValueError("DE48 batch totals are 31 or 62 digits")
    domestic = BatchTotals.parse(de48[:31])
    return domestic, BatchTotals.parse(de48[31:]) if len(de48) == 62 else BatchTotals()


def batch_totals_de48(domestic: BatchTotals, foreign: BatchTotals | None = None) -> str:
    """The 62-digit DE48 (foreign totals zero when not given, with the domestic result digit)."""
    return str(domestic) + str(foreign or BatchTotals(result=domestic.result))


@dataclass(frozen=True, slots=True)
class UploadRecord:
    """One 0320 batch upload record: ``00`` | STAN n6 | PAN n20 (left zero-padded) | amount n12."""

    stan: str
    pan: str
    amount: int


MAX_UPLOAD_RECORDS = 8


def parse_upload_de48(de48: str) -> list[UploadRecord]:
    if not de48.isdigit() or len(de48) < 2 or len(de48) != 2 + 40 * int(de48[:2]):
        raise ValueError("DE48 upload is a count n2 then 40 digits per record")
    records = []
    for i in range(int(de48[:2])):
        r = de48[2 + 40 * i: 42 + 40 * i]
        records.append(UploadRecord(r[2:8], r[8:28].lstrip("0"), int(r[28:40])))
    return records


def upload_de48(records: list[UploadRecord]) -> str:
    if len(records) > MAX_UPLOAD_RECORDS:
        raise ValueError(f"at most {MAX_UPLOAD_RECORDS} records per 0320")
    return f"{len(records):02d}" + "".join(f"00{r.stan:0>6}{r.pan:0>20}{r.amount:012d}" for r in records)


# --- POS field presence (contract "Field presence") -----------------------------------------------------

# DE -> presence in (0200/0220/0100 request, their response, 0400 request, 0410 response):
# "M" mandatory, "C" conditional, "-" absent. Fields not listed are not constrained.
_PRESENCE_ROWS: tuple[tuple[tuple[str, ...], str], ...] = (
    (("2",), "CCCC"),
    (("3", "11", "25", "41", "42", "49", "60"), "MMMM"),
    (("4",), "MCMM"),  # request: except balance inquiry; response: when in the request
    (("12", "13", "32", "37"), "-M-M"),
    (("14",), "C-C-"),
    (("22",), "M-M-"),
    (("26", "52", "53"), "C---"),
    (("35", "36"), "C---"),
    (("38",), "-C-C"),
    (("39",), "-MMM"),
    (("54",), "-C--"),
    (("55",), "CCC-"),
    (("61",), "CCCC"),
    (("64",), "MMMM"),  # responses: except those answering A0 or 30
)
POS_PRESENCE: dict[str, str] = {de: marks for des, marks in _PRESENCE_ROWS for de in des}
_NO_AMOUNT = frozenset({ProcessingCode.BALANCE_INQUIRY, ProcessingCode.PIN_CHANGE})  # requests without DE4
_PRESENCE_COLUMN = {"0100": 0, "0200": 0, "0220": 0, "0110": 1, "0210": 1, "0230": 1, "0400": 2, "0410": 3}


def pos_presence_problems(msg: dict[str, Any], request: dict[str, Any] | None = None) -> list[str]:
    """Mandatory fields missing and absent-only fields present in a POS financial message or reversal
    (empty list = fine; other MTIs are not constrained). ``request`` lets a response's "M when in the
    request" DE4 rule be checked."""
    column = _PRESENCE_COLUMN.get(msg.get("t", ""))
    if column is None:
        return []
    problems = []
    code = msg.get("39")
    for de, marks in POS_PRESENCE.items():
        mark = marks[column]
        present = msg.get(de) is not None
        if mark == "M" and not present:
            if de == "4" and column == 0 and msg.get("3") in _NO_AMOUNT:
                continue
            if de == "64" and column in (1, 3) and code in (RC.MAC_FAILURE, RC.FORMAT_ERROR):
                continue
            problems.append(f"DE{de} missing")
        elif mark == "-" and present:
            problems.append(f"DE{de} not allowed in {msg['t']}")
    if column == 1 and request is not None and "4" in request and msg.get("4") is None:
        problems.append("DE4 missing (the request had it)")
    return problems
