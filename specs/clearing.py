"""The clearing file (contract: ../shared/contract/clearing-file.md): record layout, writer and reader.

One file per issuer and business date: an ``H`` header line, ``D`` detail lines sorted by posting id, a
``T`` trailer with the detail count, debit/credit/fee totals and the SHA-256 of the detail lines joined
with ``\\n``. The host writes it (``ClearingWriter``: temporary name, then rename) and the settlement job
reads it (``ClearingReader``: streaming, strict, verifies the trailer as it goes).

Parsing is strict: every field is checked against the contract and the first problem is raised as a
``ClearingFormatError`` naming the file, line and field in one line. Values are echoed only after PAN
redaction, and a bad masked-PAN field is never echoed at all.

Where the contract is silent, the choices made here:
- the issuer id is 1-40 letters or digits (it is part of the file name);
- other identifiers (acquirer, merchant, store, terminal, card product, fee rate version) are 1-40
  printable ASCII characters without spaces or ``|``; optional ones may be empty (see ``Detail``);
- RRN is 12, STAN 6 digits and the authorization id 6 printable characters when present;
- the sign must agree with the type: PURCHASE/COMPLETION are ``D``; REFUND/VOID/TOPUP are ``C``;
  a REVERSAL takes the opposite sign of what it reverses, so either;
- a VOID or REVERSAL must carry the original posting id; other types may;
- the currency is three upper-case letters or three digits (ISO 4217);
- the sequence is 01-99; amounts and fees are at most 10**15 minor units;
- the terminal's local date-time may be empty (an administrative load has no terminal);
- a business date's window: see ``business_window`` (cut-over at 12:00 or later closes the same day;
  a date closed early ends at its close instant and the next date starts there).
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from types import TracebackType
from typing import IO, Final
from zoneinfo import ZoneInfo

from ops import logs
from ops.digits import is_digits
from ops.logs import redact_text

FILE_VERSION: Final = "1"
TXN_TYPES: Final = ("PURCHASE", "COMPLETION", "REFUND", "VOID", "REVERSAL", "TOPUP")
DEBIT_TYPES: Final = frozenset({"PURCHASE", "COMPLETION"})
CREDIT_TYPES: Final = frozenset({"REFUND", "VOID", "TOPUP"})
NEEDS_ORIGINAL: Final = frozenset({"VOID", "REVERSAL"})

HEADER_FIELDS: Final = (
    "record", "version", "issuer_id", "business_date", "sequence", "created_at", "currency",
)
DETAIL_FIELDS: Final = (
    "record", "posting_id", "txn_type", "original_posting_id", "acquirer_id", "merchant_id", "store_id",
    "terminal_id", "masked_pan", "card_product", "amount", "sign", "fee", "fee_rate_version", "rrn",
    "stan", "auth_id", "local_time", "posted_at",
)
TRAILER_FIELDS: Final = ("record", "count", "total_debit", "total_credit", "total_fee", "sha256")

FILE_NAME = re.compile(r"^CLR_([0-9A-Za-z]{1,40})_(\d{8})_(\d{2})\.txt$", re.ASCII)
MAX_AMOUNT: Final = 10**15  # minor units; far above any prepaid balance, keeps sums in int64

_ISSUER = re.compile(r"[0-9A-Za-z]{1,40}", re.ASCII)
_ID_ANY = re.compile(r"[\x21-\x7b\x7d\x7e]{1,40}", re.ASCII)
_DIGITS = re.compile(r"0|[1-9]\d{0,17}", re.ASCII)
_POSITIVE = re.compile(r"[1-9]\d{0,17}", re.ASCII)
_MASKED_PAN = re.compile(r"\d{6}\*{3,9}\d{4}", re.ASCII)
_RRN = re.compile(r"[\x21-\x7b\x7d\x7e]{12}", re.ASCII)
_STAN = re.compile(r"\d{6}", re.ASCII)
_AUTH_ID = re.compile(r"[\x21-\x7b\x7d\x7e]{6}", re.ASCII)
_CURRENCY = re.compile(r"[A-Z]{3}|\d{3}", re.ASCII)
_UTC_TIME = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z", re.ASCII)
_LOCAL_TIME = re.compile(r"\d{14}", re.ASCII)
_DATE8 = re.compile(r"\d{8}", re.ASCII)
_SEQ = re.compile(r"0[1-9]|[1-9]\d", re.ASCII)
_SHA = re.compile(r"[0-9a-f]{64}", re.ASCII)


class ClearingFormatError(ValueError):
    """A clearing file that does not follow the contract; str() is one line naming where and why."""

    def __init__(self, message: str, *, source: str = "", line: int | None = None,
                 field: str | None = None) -> None:
        self.source = source
        self.line = line
        self.field = field
        self.reason = message
        where = [p for p in (source, f"line {line}" if line is not None else "",
                             f"field {field}" if field else "") if p]
        super().__init__(f"{' '.join(where)}: {message}" if where else message)


class TrailerMismatch(ClearingFormatError):
    """The trailer disagrees with the details (count, a total or the SHA-256): the file was altered."""


@dataclass(frozen=True, slots=True)
class Header:
    issuer_id: str
    business_date: date
    sequence: int
    created_at: datetime  # UTC, whole seconds
    currency: str
    version: str = FILE_VERSION

    @property
    def file_name(self) -> str:
        return file_name(self.issuer_id, self.business_date, self.sequence)


@dataclass(slots=True)  # not frozen: a frozen 18-field __init__ costs more than the rest of a parse
class Detail:
    posting_id: int
    txn_type: str
    original_posting_id: int | None
    acquirer_id: str
    merchant_id: str  # empty only for TOPUP (an issuer-side load has no merchant)
    store_id: str  # may be empty
    terminal_id: str  # may be empty (admin top-up)
    masked_pan: str
    card_product: str
    amount: int
    sign: str  # "D" money from the cardholder, "C" money to the cardholder
    fee: int
    fee_rate_version: str  # may be empty
    rrn: str  # may be empty
    stan: str  # may be empty
    auth_id: str  # may be empty
    local_time: datetime | None  # the terminal's local date-time, naive; None when there is none
    posted_at: datetime  # UTC, whole seconds


@dataclass(frozen=True, slots=True)
class Trailer:
    count: int
    total_debit: int
    total_credit: int
    total_fee: int
    sha256: str


def file_name(issuer_id: str, business_date: date, sequence: int) -> str:
    return f"CLR_{issuer_id}_{business_date:%Y%m%d}_{sequence:02d}.txt"


def mask_pan(pan: str) -> str:
    """First 6 and last 4 digits, one '*' per hidden digit."""
    if not (13 <= len(pan) <= 19 and is_digits(pan)):
        raise ValueError("a PAN is 13 to 19 digits")
    return logs.mask_pan(pan)


def _cutover_time(cutover: str) -> time:
    hh, mm = cutover.split(":")
    return time(int(hh), int(mm))


EarlyCloses = Mapping[date, datetime]
"""Business dates closed before their cut-over (``payswitch clearing close-day``) -> the close instant."""


def _base_window(business_date: date, cutover: str, timezone: str) -> tuple[datetime, datetime]:
    zone = ZoneInfo(timezone)
    at = _cutover_time(cutover)
    close_day = business_date if at.hour >= 12 else business_date + timedelta(days=1)
    end = datetime.combine(close_day, at, tzinfo=zone)
    start = datetime.combine(close_day - timedelta(days=1), at, tzinfo=zone)
    return start.astimezone(UTC), end.astimezone(UTC)


def business_window(business_date: date, cutover: str, timezone: str,
                    closes: EarlyCloses | None = None) -> tuple[datetime, datetime]:
    """UTC [start, end) of the postings that belong to ``business_date``.

    The cut-over ``HH:MM`` (local, in ``timezone``) closes a business date. A cut-over in the afternoon
    or evening (12:00 or later) closes it on the same calendar day, so with 23:00 the business date D
    runs from 23:00 on D-1 to 23:00 on D; an early-morning cut-over (before 12:00) closes it the next
    morning, so with 02:00 it runs from 02:00 on D to 02:00 on D+1, and 00:00 gives the calendar day.

    ``closes``: dates closed early. A date D closed at instant C ends at C, and D+1 starts there (it
    runs from C to its own cut-over, or to its own early close): the file of D is final at C and what
    is posted after C belongs to D+1. The one place the boundary moves; ``business_date_of`` follows.
    """
    start, end = _base_window(business_date, cutover, timezone)
    if closes:
        end = closes.get(business_date, end).astimezone(UTC)
        start = closes.get(business_date - timedelta(days=1), start).astimezone(UTC)
    return start, end


def business_date_of(instant: datetime, cutover: str, timezone: str,
                     closes: EarlyCloses | None = None) -> date:
    """The business date a posting at ``instant`` (aware) belongs to; the inverse of business_window."""
    local = instant.astimezone(ZoneInfo(timezone))
    at = _cutover_time(cutover)
    day = local.date()
    if at.hour >= 12:
        day = day + timedelta(days=1) if local.time() >= at else day
    else:
        day = day - timedelta(days=1) if local.time() < at else day
    # An early close only ever moves a boundary earlier: past the close instant of the date the
    # cut-over gives, the posting belongs to the next date (and so on, if that one closed early too).
    while closes and day in closes and instant >= closes[day]:
        day += timedelta(days=1)
    return day


# ---------------------------------------------------------------------------------------------------
# Formatting


def _utc(dt: datetime) -> str:
    if dt.tzinfo is None or dt.utcoffset() is None:
        raise ValueError("times in a clearing file must be timezone-aware (UTC)")
    u = dt.astimezone(UTC)
    return f"{u.year:04d}-{u.month:02d}-{u.day:02d}T{u.hour:02d}:{u.minute:02d}:{u.second:02d}Z"


def _local(dt: datetime | None) -> str:
    if dt is None:
        return ""
    return f"{dt.year:04d}{dt.month:02d}{dt.day:02d}{dt.hour:02d}{dt.minute:02d}{dt.second:02d}"


def format_header(h: Header) -> str:
    line = "|".join(("H", h.version, h.issuer_id, f"{h.business_date:%Y%m%d}", f"{h.sequence:02d}",
                     _utc(h.created_at), h.currency))
    parse_header(line)  # the writer never emits what the reader would refuse
    return line


def format_detail(d: Detail) -> str:
    """The detail line (no newline). Checked by the parser so a bad record is refused when written."""
    line = "|".join((
        "D", str(d.posting_id), d.txn_type,
        "" if d.original_posting_id is None else str(d.original_posting_id),
        d.acquirer_id, d.merchant_id, d.store_id, d.terminal_id, d.masked_pan, d.card_product,
        str(d.amount), d.sign, str(d.fee), d.fee_rate_version, d.rrn, d.stan, d.auth_id,
        _local(d.local_time), _utc(d.posted_at),
    ))
    parse_detail(line)
    return line


def format_trailer(t: Trailer) -> str:
    return "|".join(("T", str(t.count), str(t.total_debit), str(t.total_credit), str(t.total_fee), t.sha256))


# ---------------------------------------------------------------------------------------------------
# Parsing (one line at a time; line numbers and the source name are added by the reader)


def _show(value: str) -> str:
    shown = value if len(value) <= 24 else value[:24] + "..."
    return repr(redact_text(shown))


def _bad(field: str, value: str, expected: str) -> ClearingFormatError:
    return ClearingFormatError(f"expected {expected}, got {_show(value)}", field=field)


def _split(line: str, fields: tuple[str, ...]) -> list[str]:
    parts = line.split("|")
    if len(parts) != len(fields):
        raise ClearingFormatError(
            f"{parts[0]!r} record has {len(parts)} fields, expected {len(fields)} ({', '.join(fields)})"
        )
    return parts


def _id(field: str, value: str, optional: bool = False) -> str:
    if optional and value == "":
        return value
    if _ID_ANY.fullmatch(value) is None:
        raise _bad(field, value, "1-40 printable characters without spaces or '|'"
                   + (" (or empty)" if optional else ""))
    return value


def _int(field: str, value: str, pattern: re.Pattern[str] = _DIGITS, what: str = "a non-negative integer",
         limit: int = MAX_AMOUNT) -> int:
    if pattern.fullmatch(value) is None:
        raise _bad(field, value, what + " without leading zeros")
    n = int(value)
    if n > limit:
        raise _bad(field, value, f"at most {limit}")
    return n


def _date8(field: str, value: str) -> date:
    if _DATE8.fullmatch(value) is None:
        raise _bad(field, value, "a date YYYYMMDD")
    try:
        return date(int(value[:4]), int(value[4:6]), int(value[6:]))
    except ValueError:
        raise _bad(field, value, "a real calendar date YYYYMMDD") from None


def _utc_time(field: str, value: str) -> datetime:
    if _UTC_TIME.fullmatch(value) is None:
        raise _bad(field, value, "a UTC time YYYY-MM-DDThh:mm:ssZ")
    try:
        return datetime(int(value[:4]), int(value[5:7]), int(value[8:10]), int(value[11:13]),
                        int(value[14:16]), int(value[17:19]), tzinfo=UTC)
    except ValueError:
        raise _bad(field, value, "a real UTC time YYYY-MM-DDThh:mm:ssZ") from None


def _local_time(field: str, value: str) -> datetime | None:
    if value == "":
        return None
    if _LOCAL_TIME.fullmatch(value) is None:
        raise _bad(field, value, "a local date-time YYYYMMDDhhmmss (or empty)")
    try:
        return datetime(int(value[:4]), int(value[4:6]), int(value[6:8]), int(value[8:10]),
                        int(value[10:12]), int(value[12:14]))
    except ValueError:
        raise _bad(field, value, "a real local date-time YYYYMMDDhhmmss") from None


def parse_header(line: str) -> Header:
    p = _split(line, HEADER_FIELDS)
    if p[0] != "H":
        raise _bad("record", p[0], "'H' (the first line is the header)")
    if p[1] != FILE_VERSION:
        raise _bad("version", p[1], f"file version {FILE_VERSION}")
    issuer = p[2]
    if _ISSUER.fullmatch(issuer) is None:
        raise _bad("issuer_id", issuer, "1-40 letters or digits (it is part of the file name)")
    if _SEQ.fullmatch(p[4]) is None:
        raise _bad("sequence", p[4], "two digits 01-99")
    if _CURRENCY.fullmatch(p[6]) is None:
        raise _bad("currency", p[6], "an ISO 4217 code (three capitals or three digits)")
    return Header(issuer_id=issuer, business_date=_date8("business_date", p[3]), sequence=int(p[4]),
                  created_at=_utc_time("created_at", p[5]), currency=p[6], version=p[1])


_I = r"[\x21-\x7b\x7d\x7e]{1,40}"
_DETAIL_FAST = re.compile(
    r"D\|([1-9][0-9]{0,17})\|(PURCHASE|COMPLETION|REFUND|VOID|REVERSAL|TOPUP)\|([1-9][0-9]{0,17})?\|"
    rf"({_I})?\|({_I})?\|({_I})?\|({_I})?\|([0-9]{{6}}\*{{3,9}}[0-9]{{4}})\|({_I})\|(0|[1-9][0-9]{{0,17}})\|"
    rf"([DC])\|(0|[1-9][0-9]{{0,17}})\|({_I})?\|([\x21-\x7b\x7d\x7e]{{12}})?\|([0-9]{{6}})?\|"
    r"([\x21-\x7b\x7d\x7e]{6})?\|([0-9]{8})?([0-9]{6})?\|"
    r"([0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z)",
    re.ASCII,
)
_SIGN_OF = {"PURCHASE": "D", "COMPLETION": "D", "REFUND": "C", "VOID": "C", "TOPUP": "C"}


def parse_detail(line: str) -> Detail:
    """Parse and check a detail line. One regular expression validates the usual well-formed line; any
    line it does not accept, or that breaks a cross-field rule, goes through ``parse_detail_checked``,
    which defines the format field by field and names the field at fault."""
    m = _DETAIL_FAST.fullmatch(line)
    if m is not None:
        (pid, txn_type, orig, acq, merchant, store, term, pan, product, amount, sign, fee, version, rrn,
         stan, auth, ldate, ltime, posted) = m.groups()
        expected_sign = _SIGN_OF.get(txn_type)
        if ((expected_sign is None or sign == expected_sign)
                and (orig is not None or txn_type not in NEEDS_ORIGINAL) and orig != pid
                and (merchant is not None or txn_type == "TOPUP")
                and (acq is not None or txn_type == "TOPUP")
                and (ldate is None) == (ltime is None)):
            n_amount, n_fee = int(amount), int(fee)
            if n_amount <= MAX_AMOUNT and n_fee <= MAX_AMOUNT:
                try:
                    local = None if ldate is None else datetime.fromisoformat(f"{ldate}T{ltime}")
                    posted_at = datetime.fromisoformat(posted)  # "Z": tzinfo is datetime.UTC
                except ValueError:
                    pass  # not a real date: the checked parser says which field
                else:
                    return Detail(int(pid), txn_type, None if orig is None else int(orig), acq or "",
                                  merchant or "", store or "", term or "", pan, product, n_amount, sign,
                                  n_fee, version or "", rrn or "", stan or "", auth or "", local, posted_at)
    return parse_detail_checked(line)


def parse_detail_checked(line: str) -> Detail:
    """The field-by-field definition of a detail line (slow path; the reference for ``parse_detail``)."""
    p = line.split("|")
    if len(p) != 19:
        p = _split(line, DETAIL_FIELDS)  # raises with the field list
    if p[0] != "D":
        raise _bad("record", p[0], "'D' (details come between the header and the trailer)")
    posting_id = _int("posting_id", p[1], _POSITIVE, "a positive integer")
    txn_type = p[2]
    if txn_type not in TXN_TYPES:
        raise _bad("txn_type", txn_type, "one of " + " ".join(TXN_TYPES))
    original: int | None = None
    if p[3]:
        original = _int("original_posting_id", p[3], _POSITIVE, "a positive integer or empty")
        if original == posting_id:
            raise _bad("original_posting_id", p[3], "a posting other than this one")
    elif txn_type in NEEDS_ORIGINAL:
        raise ClearingFormatError(f"a {txn_type} must name the posting it cancels",
                                  field="original_posting_id")
    sign = p[11]
    if sign not in ("D", "C"):
        raise _bad("sign", sign, "D (debit to the cardholder) or C (credit)")
    if (txn_type in DEBIT_TYPES and sign != "D") or (txn_type in CREDIT_TYPES and sign != "C"):
        raise _bad("sign", sign, f"{'D' if txn_type in DEBIT_TYPES else 'C'} for a {txn_type}")
    merchant = p[5]
    if merchant == "" and txn_type != "TOPUP":
        raise ClearingFormatError(f"a {txn_type} needs a merchant id", field="merchant_id")
    if _MASKED_PAN.fullmatch(p[8]) is None:
        # never echo this field: it may be a full PAN
        raise ClearingFormatError("expected first 6 digits, one '*' per hidden digit, last 4 "
                                  "(value not shown)", field="masked_pan")
    if p[14] and _RRN.fullmatch(p[14]) is None:
        raise _bad("rrn", p[14], "12 characters (or empty)")
    if p[15] and _STAN.fullmatch(p[15]) is None:
        raise _bad("stan", p[15], "6 digits (or empty)")
    if p[16] and _AUTH_ID.fullmatch(p[16]) is None:
        raise _bad("auth_id", p[16], "6 characters (or empty)")
    return Detail(
        posting_id=posting_id,
        txn_type=txn_type,
        original_posting_id=original,
        acquirer_id=_id("acquirer_id", p[4], optional=txn_type == "TOPUP"),
        merchant_id=_id("merchant_id", merchant, optional=True),
        store_id=_id("store_id", p[6], optional=True),
        terminal_id=_id("terminal_id", p[7], optional=True),
        masked_pan=p[8],
        card_product=_id("card_product", p[9]),
        amount=_int("amount", p[10]),
        sign=sign,
        fee=_int("fee", p[12]),
        fee_rate_version=_id("fee_rate_version", p[13], optional=True),
        rrn=p[14],
        stan=p[15],
        auth_id=p[16],
        local_time=_local_time("local_time", p[17]),
        posted_at=_utc_time("posted_at", p[18]),
    )


def parse_trailer(line: str) -> Trailer:
    p = _split(line, TRAILER_FIELDS)
    if p[0] != "T":
        raise _bad("record", p[0], "'T'")
    if _SHA.fullmatch(p[5]) is None:
        raise _bad("sha256", p[5], "64 lower-case hex digits")
    big = 10**18
    return Trailer(count=_int("count", p[1], limit=big), total_debit=_int("total_debit", p[2], limit=big),
                   total_credit=_int("total_credit", p[3], limit=big),
                   total_fee=_int("total_fee", p[4], limit=big), sha256=p[5])


# ---------------------------------------------------------------------------------------------------
# Streaming writer


class _Totals:
    """Running count, totals and digest of the detail lines, shared by writer and reader."""

    __slots__ = ("count", "credit", "debit", "digest", "fee", "last_id")

    def __init__(self) -> None:
        self.count = 0
        self.debit = 0
        self.credit = 0
        self.fee = 0
        self.last_id = 0
        self.digest = hashlib.sha256()

    def add(self, line: bytes, d: Detail) -> None:
        if self.count:
            self.digest.update(b"\n")
        self.digest.update(line)
        self.count += 1
        if d.sign == "D":
            self.debit += d.amount
        else:
            self.credit += d.amount
        self.fee += d.fee
        self.last_id = d.posting_id

    def trailer(self) -> Trailer:
        return Trailer(self.count, self.debit, self.credit, self.fee, self.digest.hexdigest())


class ClearingWriter:
    """Write a clearing file to a temporary name in the target folder; rename it into place on close.

    Details must come in ascending posting-id order. If the block raises, the temporary file is removed
    and nothing appears under the final name.
    """

    def __init__(self, directory: str | Path, header: Header) -> None:
        self.directory = Path(directory)
        self.header = header
        self.path = self.directory / header.file_name
        self._totals = _Totals()
        self._tmp: IO[bytes] | None = None
        self._tmp_name = ""
        self.trailer: Trailer | None = None

    def __enter__(self) -> ClearingWriter:
        self.directory.mkdir(parents=True, exist_ok=True)
        fd, self._tmp_name = tempfile.mkstemp(prefix=f".{self.header.file_name}.", suffix=".tmp",
                                              dir=self.directory)
        self._tmp = os.fdopen(fd, "wb", buffering=1 << 20)
        self._tmp.write(format_header(self.header).encode() + b"\n")
        return self

    def write(self, d: Detail) -> None:
        assert self._tmp is not None, "use ClearingWriter as a context manager"
        if d.posting_id <= self._totals.last_id:
            raise ValueError(f"posting ids must ascend: {d.posting_id} after {self._totals.last_id}")
        line = format_detail(d).encode()
        self._totals.add(line, d)
        self._tmp.write(line + b"\n")

    def write_all(self, details: Iterable[Detail]) -> None:
        for d in details:
            self.write(d)

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        assert self._tmp is not None
        try:
            if exc_type is None:
                self.trailer = self._totals.trailer()
                self._tmp.write(format_trailer(self.trailer).encode() + b"\n")
                self._tmp.flush()
                os.fsync(self._tmp.fileno())
            self._tmp.close()
            if exc_type is None:
                os.chmod(self._tmp_name, 0o644)
                os.replace(self._tmp_name, self.path)
        finally:
            if os.path.exists(self._tmp_name):
                os.unlink(self._tmp_name)


def write_file(directory: str | Path, header: Header, details: Iterable[Detail]) -> tuple[Path, Trailer]:
    with ClearingWriter(directory, header) as w:
        w.write_all(details)
    assert w.trailer is not None
    return w.path, w.trailer


def render(header: Header, details: Iterable[Detail]) -> bytes:
    """The whole file as bytes (tests and small files; the writer streams)."""
    totals = _Totals()
    out = [format_header(header).encode()]
    for d in details:
        if d.posting_id <= totals.last_id:
            raise ValueError(f"posting ids must ascend: {d.posting_id} after {totals.last_id}")
        line = format_detail(d).encode()
        totals.add(line, d)
        out.append(line)
    out.append(format_trailer(totals.trailer()).encode())
    return b"\n".join(out) + b"\n"


# ---------------------------------------------------------------------------------------------------
# Streaming reader


class ClearingReader:
    """Read and verify a clearing file in one pass without holding its details.

    ``header`` is parsed on open. Iterate ``details()`` once: each detail is checked as it is read, and
    after the last one the trailer is parsed and compared with the running count, totals and SHA-256,
    raising ``TrailerMismatch`` if they differ. A consumer should only commit what it did with the
    details after the iteration finished without an error. ``trailer`` is set then.

    With ``check_name`` the file name must follow the contract and agree with the header.
    """

    def __init__(self, path: str | Path, *, check_name: bool = True) -> None:
        self.path = Path(path)
        self.name = self.path.name
        self._f: IO[bytes] = open(self.path, "rb")  # noqa: SIM115 - closed by close()/__exit__
        self.bytes_read = 0
        self.trailer: Trailer | None = None
        self._line_no = 0
        try:
            first = self._next_line()
            if first is None:
                raise ClearingFormatError("file is empty", source=self.name)
            try:
                self.header = parse_header(self._text(first))
            except ClearingFormatError as exc:
                if exc.line is not None:
                    raise
                raise self._located(exc) from None
            if check_name:
                self._check_name()
        except BaseException:
            self._f.close()
            raise

    def _check_name(self) -> None:
        m = FILE_NAME.match(self.name)
        if m is None:
            raise ClearingFormatError("file name must be CLR_<issuer id>_<YYYYMMDD>_<NN>.txt",
                                      source=self.name)
        if m.group(0) != self.header.file_name:
            raise ClearingFormatError(f"file name disagrees with its header (header says "
                                      f"{self.header.file_name})", source=self.name, line=1)

    def __enter__(self) -> ClearingReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._f.close()

    def _next_line(self) -> bytes | None:
        raw = self._f.readline()
        if not raw:
            return None
        self._line_no += 1
        self.bytes_read += len(raw)
        if not raw.endswith(b"\n"):
            raise ClearingFormatError("last line does not end with a newline (file truncated?)",
                                      source=self.name, line=self._line_no)
        return raw[:-1]

    def _text(self, raw: bytes) -> str:
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise ClearingFormatError("not valid UTF-8", source=self.name, line=self._line_no) from None
        if "\r" in text:
            raise ClearingFormatError("carriage return in line (lines end with \\n only)",
                                      source=self.name, line=self._line_no)
        return text

    def _located(self, exc: ClearingFormatError) -> ClearingFormatError:
        return type(exc)(exc.reason, source=self.name, line=self._line_no, field=exc.field)

    def details(self) -> Iterator[Detail]:
        totals = _Totals()
        while True:
            raw = self._next_line()
            if raw is None:
                raise ClearingFormatError(f"no trailer after {totals.count} details (file truncated?)",
                                          source=self.name, line=self._line_no)
            if raw[:2] == b"D|":
                try:
                    d = parse_detail(self._text(raw))
                except ClearingFormatError as exc:
                    if exc.line is not None:
                        raise
                    raise self._located(exc) from None
                if d.posting_id <= totals.last_id:
                    raise ClearingFormatError(
                        f"posting ids must be unique and ascending: {d.posting_id} after {totals.last_id}",
                        source=self.name, line=self._line_no, field="posting_id")
                totals.add(raw, d)
                yield d
                continue
            if raw[:2] != b"T|":
                raise ClearingFormatError(f"expected a D or T record, got {_show(raw[:8].decode('latin-1'))}",
                                          source=self.name, line=self._line_no, field="record")
            try:
                trailer = parse_trailer(self._text(raw))
            except ClearingFormatError as exc:
                if exc.line is not None:
                    raise
                raise self._located(exc) from None
            trailer_line = self._line_no
            if self._next_line() is not None:
                raise ClearingFormatError("data after the trailer", source=self.name, line=self._line_no)
            self._verify(trailer, totals.trailer(), trailer_line)
            self.trailer = trailer
            return

    def _verify(self, stated: Trailer, actual: Trailer, line: int) -> None:
        checks = (
            ("count", stated.count, actual.count, "details"),
            ("total_debit", stated.total_debit, actual.total_debit, "in debit details"),
            ("total_credit", stated.total_credit, actual.total_credit, "in credit details"),
            ("total_fee", stated.total_fee, actual.total_fee, "in fees"),
        )
        for field, said, got, what in checks:
            if said != got:
                raise TrailerMismatch(f"trailer says {said} but the file has {got} {what}",
                                      source=self.name, line=line, field=field)
        if stated.sha256 != actual.sha256:
            raise TrailerMismatch("SHA-256 of the detail lines does not match the trailer (file altered)",
                                  source=self.name, line=line, field="sha256")


def read_file(path: str | Path, *, check_name: bool = True) -> tuple[Header, list[Detail], Trailer]:
    """Read and verify a whole file into memory (tests and small files; settlement streams)."""
    with ClearingReader(path, check_name=check_name) as r:
        details = list(r.details())
        assert r.trailer is not None
        return r.header, details, r.trailer


def verify_file(path: str | Path, *, check_name: bool = True) -> tuple[Header, Trailer]:
    """Stream the file once, checking every record and the trailer; hold nothing."""
    with ClearingReader(path, check_name=check_name) as r:
        for _ in r.details():
            pass
        assert r.trailer is not None
        return r.header, r.trailer
