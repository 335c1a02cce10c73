"""settlement.scan.DetailScan against the strict reader (specs.clearing.ClearingReader): the same rows for
every file it accepts, the same refusal (type and one-line message naming file, line and field) for every
file it refuses, whatever the block size."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import settlement.scan as scan
from settlement.scan import DetailScan, ScanRow, row_of
from specs.clearing import ClearingFormatError, ClearingReader, Detail, Header, Trailer, write_file
from tests.settlement.factories import detail, detail_lists, header


def _reference(path: Path) -> tuple[list[ScanRow], Trailer | None, str | None]:
    try:
        with ClearingReader(path) as r:
            rows = [row_of(d) for d in r.details()]
            return rows, r.trailer, None
    except ClearingFormatError as exc:
        return [], None, f"{type(exc).__name__}: {exc}"


def _scanned(path: Path) -> tuple[list[ScanRow], Trailer | None, str | None]:
    try:
        with DetailScan(path) as r:
            rows = list(r.rows())
            return rows, r.trailer, None
    except ClearingFormatError as exc:
        return [], None, f"{type(exc).__name__}: {exc}"


def _mixed() -> list[Detail]:
    """Every type and every optional field empty somewhere; dates across a month end."""
    t = datetime(2026, 11, 30, 23, 59, 58, tzinfo=UTC)
    return [
        detail(1, "PURCHASE", 10000, fee=38, fee_rate_version="V1"),
        detail(2, "COMPLETION", 0, store_id="", rrn="", stan="", auth_id=""),
        detail(3, "REFUND", 2000, original_posting_id=1, posted_at=t),
        detail(4, "VOID", 5000, original_posting_id=2, local_time=None, terminal_id=""),
        detail(5, "TOPUP", 50000, acquirer_id="", terminal_id="", fee=0),
        detail(6, "TOPUP", 300, merchant_id="M\\9", store_id="S`~{}"),
        detail(7, "REVERSAL", 1234, original_posting_id=4, sign="D", posted_at=t.replace(second=59)),
        detail(8, "REVERSAL", 10**15, original_posting_id=1, sign="C", fee=10**15),
        detail(
            10**9,
            "PURCHASE",
            1,
            masked_pan="623456*********1234",
            rrn="ABCDEFGHIJKL",
            stan="000001",
            local_time=None,
            posted_at=t,
        ),
    ]


@pytest.mark.parametrize("block", [1 << 20, 7, 64, 300])
def test_same_rows_and_trailer_as_the_strict_reader(
    tmp_path: Path, block: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(scan, "BLOCK", block)
    path, trailer = write_file(tmp_path, header(), _mixed())
    rows, got_trailer, error = _scanned(path)
    assert error is None
    assert (rows, got_trailer) == _reference(path)[:2]
    assert got_trailer == trailer


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ds=detail_lists(30), block=st.sampled_from([1 << 20, 50, 333]))
def test_generated_files_agree(
    tmp_path_factory: pytest.TempPathFactory, ds: list[Detail], block: int
) -> None:
    path, _ = write_file(tmp_path_factory.mktemp("scan"), header(), ds)
    old = scan.BLOCK
    scan.BLOCK = block
    try:
        assert _scanned(path) == _reference(path)
    finally:
        scan.BLOCK = old


def _lines(tmp_path: Path) -> tuple[Path, list[bytes]]:
    path, _ = write_file(tmp_path, header(), _mixed())
    return path, path.read_bytes().split(b"\n")


def _set(index: int, field: int, value: bytes) -> Callable[[list[bytes]], list[bytes]]:
    def go(lines: list[bytes]) -> list[bytes]:
        parts = lines[index].split(b"|")
        parts[field] = value
        lines[index] = b"|".join(parts)
        return lines

    return go


MUTATIONS: dict[str, Callable[[list[bytes]], list[bytes]]] = {
    "amount changed (SHA)": _set(1, 10, b"10001"),
    "bad calendar date": _set(2, 18, b"2026-11-31T10:00:00Z"),
    "bad local date": _set(2, 17, b"20260230101010"),
    "hour 24": _set(2, 18, b"2026-11-24T24:00:00Z"),
    "second 60 local": _set(3, 17, b"20261124101060"),
    "local date without time": _set(3, 17, b"20261124"),
    "leading zero amount": _set(1, 10, b"0100"),
    "amount too big": _set(1, 10, b"1000000000000001"),
    "sign against type": _set(1, 11, b"C"),
    "void without original": _set(4, 3, b""),
    "original is itself": _set(2, 3, b"2"),
    "purchase without merchant": _set(1, 5, b""),
    "purchase without acquirer": _set(1, 4, b""),
    "full PAN": _set(1, 8, b"6234561234561234"),
    "space in id": _set(1, 7, b"T 1"),
    "unknown type": _set(1, 2, b"SALE"),
    "too few fields": lambda ls: [*ls[:1], ls[1].rsplit(b"|", 1)[0], *ls[2:]],
    "carriage return": lambda ls: [*ls[:1], ls[1] + b"\r", *ls[2:]],
    "not UTF-8": _set(1, 9, b"CAMP\xffUS"),
    "UTF-8 but not ASCII": _set(1, 9, "CAMPÜS".encode()),
    "ids descending": lambda ls: [ls[0], ls[2], ls[1], *ls[3:]],
    "id repeated": lambda ls: [ls[0], ls[1], ls[1], *ls[2:]],
    "detail dropped (count)": lambda ls: [ls[0], *ls[2:]],
    "no trailer": lambda ls: [*ls[:-2], b""],
    "no trailer, no newline": lambda ls: [*ls[:-2]],
    "trailer without newline": lambda ls: ls[:-1],
    "empty line before trailer": lambda ls: [*ls[:-2], b"", *ls[-2:]],
    "H in the middle": lambda ls: [ls[0], ls[0], *ls[1:]],
    "data after the trailer": lambda ls: [*ls[:-1], b"D|99", b""],
    "unterminated data after the trailer": lambda ls: [*ls[:-1], b"junk"],
    "bad trailer": lambda ls: [*ls[:-2], ls[-2] + b"|x", b""],
    "trailer total wrong": lambda ls: [*ls[:-2], ls[-2].replace(b"T|9|", b"T|9|1"), b""],
}


@pytest.mark.parametrize("block", [1 << 20, 40])
@pytest.mark.parametrize("name", sorted(MUTATIONS))
def test_same_refusal_as_the_strict_reader(
    tmp_path: Path, name: str, block: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(scan, "BLOCK", block)
    path, lines = _lines(tmp_path)
    path.write_bytes(b"\n".join(MUTATIONS[name](lines)))
    expected = _reference(path)
    assert expected[2] is not None, f"{name}: the mutation should make a bad file"
    assert _scanned(path) == expected


def test_header_refusals_are_the_readers(tmp_path: Path) -> None:
    good = header()
    path, _ = write_file(tmp_path, good, [detail(1)])
    path.rename(tmp_path / "CLR_48880000_20261124_02.txt")
    with pytest.raises(ClearingFormatError, match="disagrees with its header"):
        DetailScan(tmp_path / "CLR_48880000_20261124_02.txt")
    other: Header = replace(good, sequence=3)
    (tmp_path / other.file_name).write_bytes(b"")
    with pytest.raises(ClearingFormatError, match="file is empty"):
        DetailScan(tmp_path / other.file_name)
