"""One streaming pass over a clearing file that yields only the fields settlement stores, as plain tuples.

``ClearingReader.details()`` (specs.clearing) builds a ``Detail`` with two ``datetime`` objects per line,
reads line by line and hashes each line in two calls; settlement stores neither time and needs no
object per detail. ``DetailScan`` reads the file in 1 MiB blocks, decodes and splits each block once,
hashes whole blocks of detail lines at a time, and checks each line with one regular expression that
accepts only what ``specs.clearing.parse_detail`` accepts (time fields range-checked in the pattern,
calendar dates checked once per distinct date). Every line the pattern does not take, and every line of
a block that is not plain ASCII, goes through ``parse_detail`` itself, so a bad file is refused with the
very error the strict reader gives (file, line, field) and a line the pattern is merely too narrow for is
still read exactly. Header, file name and trailer are the reader's own (this is a ``ClearingReader``).

The tuple per detail (``ScanRow``): posting_id, txn_type, original_posting_id (None when empty),
acquirer_id, merchant_id, store_id, terminal_id, amount, sign, fee, fee_rate_version, rrn, stan,
auth_id; optional fields are "" when empty, exactly as in ``Detail``.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from datetime import date
from typing import Final

from specs.clearing import (
    MAX_AMOUNT,
    NEEDS_ORIGINAL,
    ClearingFormatError,
    ClearingReader,
    Detail,
    Trailer,
    _show,
    parse_detail,
    parse_trailer,
)

BLOCK = 1 << 20  # bytes per read; the tests make it tiny to cross block boundaries anywhere

ScanRow = tuple[int, str, int | None, str, str, str, str, int, str, int, str, str, str, str]

_I = r"[\x21-\x7b\x7d\x7e]{1,40}"
_N = r"(0|[1-9][0-9]{0,17})"
_HMS = r"(?:[01][0-9]|2[0-3])[0-5][0-9][0-5][0-9]"
# The accepted subset of the contract's detail line (specs.clearing._DETAIL_FAST, with the clock fields
# range-checked so that only the calendar date needs a real check). Groups: posting id, type, original,
# acquirer, merchant, store, terminal, amount, sign, fee, fee version, rrn, stan, auth id, local date,
# local time-of-day present, posted date.
_LINE: Final = re.compile(
    r"D\|([1-9][0-9]{0,17})\|(PURCHASE|COMPLETION|REFUND|VOID|REVERSAL|TOPUP)\|([1-9][0-9]{0,17})?\|"
    rf"({_I})?\|({_I})?\|({_I})?\|({_I})?\|[0-9]{{6}}\*{{3,9}}[0-9]{{4}}\|{_I}\|{_N}\|"
    rf"([DC])\|{_N}\|({_I})?\|([\x21-\x7b\x7d\x7e]{{12}})?\|([0-9]{{6}})?\|"
    rf"([\x21-\x7b\x7d\x7e]{{6}})?\|(?:([0-9]{{8}}){_HMS})?\|"
    r"([0-9]{4}-[0-9]{2}-[0-9]{2})T(?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9]Z",
    re.ASCII,
)
_SIGN_OF: Final = {"PURCHASE": "D", "COMPLETION": "D", "REFUND": "C", "VOID": "C", "TOPUP": "C"}


def _real_date(text: str) -> bool:
    """``YYYYMMDD`` or ``YYYY-MM-DD`` (digits already checked) names a real calendar date."""
    digits = text.replace("-", "")
    try:
        date(int(digits[:4]), int(digits[4:6]), int(digits[6:]))
    except ValueError:
        return False
    return True


def row_of(d: Detail) -> ScanRow:
    """A strict reader's detail as the scan's row (the fallback path, and what tests compare with)."""
    return (
        d.posting_id,
        d.txn_type,
        d.original_posting_id,
        d.acquirer_id,
        d.merchant_id,
        d.store_id,
        d.terminal_id,
        d.amount,
        d.sign,
        d.fee,
        d.fee_rate_version,
        d.rrn,
        d.stan,
        d.auth_id,
    )


class DetailScan(ClearingReader):
    """A ``ClearingReader`` whose ``rows()`` yields ``ScanRow`` tuples instead of ``Detail`` objects.

    The same contract as ``details()``: iterate once; after the last row the trailer has been checked
    against the count, totals and SHA-256 (``TrailerMismatch`` otherwise) and ``trailer`` is set; commit
    nothing before the iteration ends without an error. ``bytes_read`` advances a block at a time.
    """

    def __enter__(self) -> DetailScan:
        return self

    def rows(self) -> Iterator[ScanRow]:
        digest = hashlib.sha256()
        count = debit = credit = fee_total = last_id = 0
        dates: dict[str, bool] = {}  # a handful of distinct dates per file: each checked once
        match = _LINE.fullmatch
        sign_of = _SIGN_OF.get
        needs_original = NEEDS_ORIGINAL
        pending = b""  # an incomplete last line carried to the next block
        end: int | None = None  # index in the current block's lines of the first non-detail line
        f = self._f
        lines_b: list[bytes] = []
        while end is None:
            block = f.read(BLOCK)
            if not block:
                if pending:
                    self._line_no += 1
                    raise ClearingFormatError(
                        "last line does not end with a newline (file truncated?)",
                        source=self.name,
                        line=self._line_no,
                    )
                raise ClearingFormatError(
                    f"no trailer after {count} details (file truncated?)",
                    source=self.name,
                    line=self._line_no,
                )
            data = pending + block if pending else block
            cut = data.rfind(b"\n")
            if cut < 0:
                pending = data
                continue
            pending = data[cut + 1 :]
            whole = data[:cut]
            self.bytes_read += cut + 1
            try:
                lines: list[str] | None = whole.decode("ascii").split("\n")
            except UnicodeDecodeError:
                lines = None  # not plain ASCII: every line of this block through the strict parser
            lines_b = whole.split(b"\n")
            n_lines = len(lines_b)
            for k in range(n_lines):
                raw = lines_b[k]
                if raw[:2] != b"D|":
                    end = k
                    break
                line_no = self._line_no + k + 1
                m = match(lines[k]) if lines is not None else None
                row: ScanRow | None = None
                if m is not None:
                    (
                        pid_s,
                        txn_type,
                        orig_s,
                        acq,
                        merchant,
                        store,
                        term,
                        amount_s,
                        sign,
                        fee_s,
                        version,
                        rrn,
                        stan,
                        auth,
                        ldate,
                        posted,
                    ) = m.groups()
                    expected_sign = sign_of(txn_type)
                    if (
                        (expected_sign is None or sign == expected_sign)
                        and (orig_s is not None or txn_type not in needs_original)
                        and orig_s != pid_s
                        and (merchant is not None or txn_type == "TOPUP")
                        and (acq is not None or txn_type == "TOPUP")
                    ):
                        amount, fee = int(amount_s), int(fee_s)
                        ok = amount <= MAX_AMOUNT and fee <= MAX_AMOUNT
                        for day in (posted, ldate):
                            if ok and day is not None:
                                real = dates.get(day)
                                if real is None:
                                    real = dates[day] = _real_date(day)
                                ok = real
                        if ok:
                            row = (
                                int(pid_s),
                                txn_type,
                                None if orig_s is None else int(orig_s),
                                acq or "",
                                merchant or "",
                                store or "",
                                term or "",
                                amount,
                                sign,
                                fee,
                                version or "",
                                rrn or "",
                                stan or "",
                                auth or "",
                            )
                if row is None:
                    row = self._strict(raw, line_no)
                posting_id = row[0]
                if posting_id <= last_id:
                    raise ClearingFormatError(
                        f"posting ids must be unique and ascending: {posting_id} after {last_id}",
                        source=self.name,
                        line=line_no,
                        field="posting_id",
                    )
                last_id = posting_id
                if row[8] == "D":
                    debit += row[7]
                else:
                    credit += row[7]
                fee_total += row[9]
                yield row
            done = n_lines if end is None else end
            if done:
                # the details are the bytes from the first detail line to the last one's end, "\n"-joined
                if count:
                    digest.update(b"\n")
                digest.update(whole if end is None else b"\n".join(lines_b[:end]))
            count += done
            self._line_no += done
        self._finish(lines_b[end:], pending, Trailer(count, debit, credit, fee_total, digest.hexdigest()))

    def _strict(self, raw: bytes, line_no: int) -> ScanRow:
        """The reference parser for a line the pattern did not take: its row, or its located error."""
        saved, self._line_no = self._line_no, line_no
        try:
            try:
                d = parse_detail(self._text(raw))
            except ClearingFormatError as exc:
                if exc.line is not None:
                    raise
                raise self._located(exc) from None
        finally:
            self._line_no = saved
        return row_of(d)

    def _finish(self, rest: list[bytes], pending: bytes, actual: Trailer) -> None:
        """The first non-detail line must be the trailer, the last line of the file."""
        raw = rest[0]
        self._line_no += 1
        if raw[:2] != b"T|":
            raise ClearingFormatError(
                f"expected a D or T record, got {_show(raw[:8].decode('latin-1'))}",
                source=self.name,
                line=self._line_no,
                field="record",
            )
        try:
            trailer = parse_trailer(self._text(raw))
        except ClearingFormatError as exc:
            if exc.line is not None:
                raise
            raise self._located(exc) from None
        trailer_line = self._line_no
        after = b"\n".join(rest[1:]) + b"\n" if len(rest) > 1 else pending + self._f.read(BLOCK)
        if after:
            # as the reader: the next line is refused as data after the trailer if it ends with a
            # newline, else as a truncated last line
            self._line_no += 1
            if b"\n" not in after:
                raise ClearingFormatError(
                    "last line does not end with a newline (file truncated?)",
                    source=self.name,
                    line=self._line_no,
                )
            raise ClearingFormatError("data after the trailer", source=self.name, line=self._line_no)
        self._verify(trailer, actual, trailer_line)
        self.trailer = trailer
