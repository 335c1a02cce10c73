"""specs.clearing: round trips, trailer verification and strict, one-line, PAN-safe errors."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from specs.clearing import (
    ClearingFormatError,
    ClearingReader,
    Detail,
    Header,
    TrailerMismatch,
    mask_pan,
    read_file,
    render,
    verify_file,
    write_file,
)
from tests.settlement.factories import detail, detail_lists, header, headers


@given(headers, detail_lists())
def test_round_trip_is_identical(tmp_path_factory: pytest.TempPathFactory, h: Header,
                                 ds: list[Detail]) -> None:
    folder = tmp_path_factory.mktemp("rt")
    path, trailer = write_file(folder, h, ds)
    h2, ds2, t2 = read_file(path)
    assert (h2, ds2, t2) == (h, ds, trailer)
    assert path.read_bytes() == render(h2, ds2)  # byte-identical re-write
    lines = path.read_bytes().split(b"\n")
    assert lines[-1] == b""  # the last line ends with a newline
    assert trailer.sha256 == hashlib.sha256(b"\n".join(lines[1:-2])).hexdigest()
    assert trailer.count == len(ds)
    assert trailer.total_debit == sum(d.amount for d in ds if d.sign == "D")
    assert trailer.total_credit == sum(d.amount for d in ds if d.sign == "C")
    assert trailer.total_fee == sum(d.fee for d in ds)
    assert [p.name for p in folder.iterdir()] == [h.file_name]  # no temporary left behind


def test_empty_file_sha_is_of_empty_string(tmp_path: Path) -> None:
    path, trailer = write_file(tmp_path, header(), [])
    assert trailer.sha256 == hashlib.sha256(b"").hexdigest()
    assert path.read_text().splitlines()[-1] == f"T|0|0|0|0|{trailer.sha256}"


def test_known_line_layout(tmp_path: Path) -> None:
    d = detail(7, "PURCHASE", 1234, fee=5, fee_rate_version="v1")
    path, _ = write_file(tmp_path, header(), [d])
    lines = path.read_text().splitlines()
    assert path.name == "CLR_48880000_20261124_01.txt"
    assert lines[0] == "H|1|48880000|20261124|01|2026-11-24T15:00:00Z|CNY"
    assert lines[1] == ("D|7|PURCHASE||ACQ1|M001|S01|T0000001|623456******1234|CAMPUS|1234|D|5|v1|"
                        "000000000007|000007|A1B2C3|20261124100007|2026-11-24T02:00:07Z")


def test_mask_pan() -> None:
    assert mask_pan("6234567890123456") == "623456******3456"
    with pytest.raises(ValueError):
        mask_pan("12345")


def test_writer_refuses_bad_records_and_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(ClearingFormatError, match="masked_pan"):
        write_file(tmp_path, header(), [detail(1, masked_pan="6234567890123456")])
    with pytest.raises(ValueError, match="ascend"):
        write_file(tmp_path, header(), [detail(2), detail(1)])
    assert list(tmp_path.iterdir()) == []


def _write(tmp_path: Path, n: int = 5) -> Path:
    path, _ = write_file(tmp_path, header(), [detail(i) for i in range(1, n + 1)])
    return path


def _edit(path: Path, line_no: int, new: str) -> None:
    lines = path.read_text().split("\n")
    lines[line_no - 1] = new
    path.write_text("\n".join(lines))


def _error(path: Path) -> ClearingFormatError:
    with pytest.raises(ClearingFormatError) as info:
        verify_file(path)
    assert "\n" not in str(info.value)
    return info.value


def test_tampered_amount_fails_sha(tmp_path: Path) -> None:
    path = _write(tmp_path)
    lines = path.read_text().split("\n")
    d3 = lines[3].split("|")
    d4 = lines[4].split("|")
    d3[10], d4[10] = "1001", "999"  # totals unchanged: only the digest notices
    lines[3], lines[4] = "|".join(d3), "|".join(d4)
    path.write_text("\n".join(lines))
    err = _error(path)
    assert isinstance(err, TrailerMismatch)
    assert err.field == "sha256" and err.line == 7
    assert str(err).startswith("CLR_48880000_20261124_01.txt line 7 field sha256:")


def test_missing_record_fails_count(tmp_path: Path) -> None:
    path = _write(tmp_path)
    lines = path.read_text().split("\n")
    del lines[2]
    path.write_text("\n".join(lines))
    err = _error(path)
    assert isinstance(err, TrailerMismatch) and err.field == "count"
    assert "trailer says 5 but the file has 4 details" in str(err)


def test_total_mismatch(tmp_path: Path) -> None:
    path = _write(tmp_path)
    t = path.read_text().split("\n")[6].split("|")
    t[2] = "5001"
    _edit(path, 7, "|".join(t))
    err = _error(path)
    assert isinstance(err, TrailerMismatch) and err.field == "total_debit"


@pytest.mark.parametrize(
    ("field_index", "value", "field"),
    [
        (1, "0", "posting_id"),
        (1, "01", "posting_id"),
        (2, "CASHBACK", "txn_type"),
        (10, "-5", "amount"),
        (10, "12.50", "amount"),
        (10, "١٢", "amount"),  # non-ASCII digits
        (11, "C", "sign"),
        (8, "6234567890123456", "masked_pan"),
        (14, "123", "rrn"),
        (15, "12345a", "stan"),
        (17, "20261332000000", "local_time"),
        (18, "2026-11-24 02:00:00", "posted_at"),
        (5, "", "merchant_id"),
        (5, "M 1", "merchant_id"),
    ],
)
def test_bad_detail_field_names_line_and_field(tmp_path: Path, field_index: int, value: str,
                                               field: str) -> None:
    path = _write(tmp_path)
    parts = path.read_text().split("\n")[2].split("|")
    parts[field_index] = value
    _edit(path, 3, "|".join(parts))
    err = _error(path)
    assert (err.line, err.field) == (3, field)
    assert "6234567890123456" not in str(err)


def test_reversal_needs_original(tmp_path: Path) -> None:
    path = _write(tmp_path)
    parts = path.read_text().split("\n")[2].split("|")
    parts[2], parts[11] = "REVERSAL", "C"
    _edit(path, 3, "|".join(parts))
    assert _error(path).field == "original_posting_id"


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda b: b[:-1], "does not end with a newline"),
        (lambda b: b.rsplit(b"\n", 2)[0] + b"\n", "no trailer"),
        (lambda b: b + b"D|99\n", "data after the trailer"),
        (lambda b: b.replace(b"\n", b"\r\n", 1), "carriage return"),
        (lambda b: b.replace(b"M001", b"M\xff01", 1), "UTF-8"),
        (lambda b: b"", "empty"),
        (lambda b: b.replace(b"H|1|", b"H|2|"), "file version"),
        (lambda b: b.replace(b"|CNY", b"|yuan"), "ISO 4217"),
        (lambda b: b.replace(b"D|2|", b"X|2|"), "expected a D or T record"),
        (lambda b: b.replace(b"D|3|", b"D|1|"), "ascending"),
        (lambda b: b.replace(b"|A1B2C3|", b"|A1B2C3|x|", 1), "20 fields, expected 19"),
    ],
)
def test_structural_errors(tmp_path: Path, mutate: object, expected: str) -> None:
    path = _write(tmp_path)
    path.write_bytes(mutate(path.read_bytes()))  # type: ignore[operator]
    assert expected in str(_error(path))


def test_name_must_match_header(tmp_path: Path) -> None:
    path = _write(tmp_path)
    other = path.rename(tmp_path / "CLR_48880000_20261125_01.txt")
    assert "disagrees with its header" in str(_error(other))
    odd = other.rename(tmp_path / "clearing.txt")
    assert "file name must be" in str(_error(odd))
    with ClearingReader(odd, check_name=False) as r:
        assert len(list(r.details())) == 5


def test_type_and_sign_rules() -> None:
    from specs.clearing import format_detail

    with pytest.raises(ClearingFormatError, match="sign"):
        format_detail(replace(detail(1, "REFUND"), sign="D"))
    assert format_detail(replace(detail(2, "REVERSAL", original_posting_id=1), sign="D"))
    assert format_detail(detail(3, "TOPUP", acquirer_id=""))


_nasty = st.lists(st.sampled_from([*"0123456789DC*|-:TZ aZ_é", "24", "00", "99", "PURCHASE", "VOID"]),
                  max_size=20).map("".join)


@settings(max_examples=400)
@given(detail_lists(max_size=1).filter(bool), st.integers(0, 18), _nasty)
def test_fast_parser_agrees_with_the_field_by_field_one(ds: list[Detail], index: int, value: str) -> None:
    from specs.clearing import format_detail, parse_detail, parse_detail_checked

    parts = format_detail(ds[0]).split("|")
    parts[index] = value
    line = "|".join(parts)
    try:
        expected: Detail | str = parse_detail_checked(line)
    except ClearingFormatError as exc:
        expected = str(exc)
    try:
        got: Detail | str = parse_detail(line)
    except ClearingFormatError as exc:
        got = str(exc)
    assert got == expected


def test_business_window() -> None:
    from datetime import UTC, date, datetime, timedelta

    from specs.clearing import business_date_of, business_window

    start, end = business_window(date(2026, 11, 24), "23:00", "Asia/Shanghai")
    assert (start, end) == (datetime(2026, 11, 23, 15, tzinfo=UTC), datetime(2026, 11, 24, 15, tzinfo=UTC))
    start, end = business_window(date(2026, 11, 24), "02:00", "Asia/Shanghai")
    assert (start, end) == (datetime(2026, 11, 23, 18, tzinfo=UTC), datetime(2026, 11, 24, 18, tzinfo=UTC))
    start, end = business_window(date(2026, 11, 24), "00:00", "UTC")
    assert (start, end) == (datetime(2026, 11, 24, tzinfo=UTC), datetime(2026, 11, 25, tzinfo=UTC))
    for cutover in ("23:00", "02:00", "00:00", "12:00", "11:59"):
        for tz in ("Asia/Shanghai", "Europe/Berlin", "UTC"):
            d = date(2026, 3, 29)  # a DST change in Berlin
            s, e = business_window(d, cutover, tz)
            assert business_date_of(s, cutover, tz) == d
            assert business_date_of(e - timedelta(seconds=1), cutover, tz) == d
            assert business_date_of(e, cutover, tz) == d + timedelta(days=1)
