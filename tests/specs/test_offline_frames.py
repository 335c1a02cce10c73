"""Offline sales (specs/README.md, "Offline sales" [project convention]): the floor table of the 0810's
DE48 and the offline advice, built byte for byte; hypothesis round trips for the floor table codec."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from specs.catalogue import (
    MAX_FLOOR_ENTRIES,
    OFFLINE_TYPE_CODE,
    POS_TRANSACTIONS,
    FloorLimit,
    TxnType,
    classify_h2h,
    classify_pos,
    floor_limit_for,
    floor_table_de48,
    is_offline_advice,
    parse_floor_table,
)

_entries = st.builds(
    FloorLimit,
    st.text("0123456789", min_size=1, max_size=11),
    st.integers(0, 10**12 - 1),
    st.integers(0, 10**12 - 1),
)


@given(st.lists(_entries, max_size=MAX_FLOOR_ENTRIES))
def test_floor_table_round_trip(entries: list[FloorLimit]) -> None:
    de48 = floor_table_de48(entries)
    assert de48.isdigit() and len(de48) == 2 + 37 * len(entries) <= 322  # POS DE48 is n..322
    assert parse_floor_table(de48) == entries


def test_floor_table_digits() -> None:
    table = [FloorLimit("621234", 50_000, 30_000), FloorLimit("62123456", 0, 10_000)]
    assert floor_table_de48(table) == (
        "02" "06" "62123400000" "000000050000" "000000030000" "08" "62123456000" "000000000000" "000000010000"
    )
    assert parse_floor_table("") == []


@pytest.mark.parametrize(
    "bad",
    [
        "0",  # no count
        "01" + "06" + "62123400000" + "000000050000",  # short entry
        "09" + ("06" "62123400000" "000000050000" "000000030000") * 9,  # more than 8
        "01" + "12" + "62123400000" + "0" * 24,  # BIN length beyond 11
        "01" + "00" + "62123400000" + "0" * 24,  # BIN length 0
        "01" + "06" + "62123400001" + "0" * 24,  # padding after the BIN not zeros
        "01" + "06" + "6212340000A" + "0" * 24,  # not digits
    ],
)
def test_floor_table_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_floor_table(bad)


def test_floor_table_limits() -> None:
    with pytest.raises(ValueError):
        floor_table_de48([FloorLimit("6", 0, 0)] * (MAX_FLOOR_ENTRIES + 1))
    for bad in (FloorLimit("", 0, 0), FloorLimit("621234567890", 0, 0), FloorLimit("62", -1, 0)):
        with pytest.raises(ValueError):
            str(bad)


def test_longest_prefix() -> None:
    table = [FloorLimit("62", 100, 0), FloorLimit("621234", 200, 0), FloorLimit("6212345", 0, 0)]
    assert floor_limit_for(table, "6212349999999999") == table[1]
    assert floor_limit_for(table, "6212345999999999") == table[2]  # the longer BIN wins, even with 0
    assert floor_limit_for(table, "6299999999999999") == table[0]
    assert floor_limit_for(table, "4000000000000000") is None


def test_offline_advice_classified() -> None:
    row = POS_TRANSACTIONS[TxnType.OFFLINE_SALE]
    assert (row.mti, row.de3, row.de25, row.de60_1) == ("0220", "000000", "00", OFFLINE_TYPE_CODE)
    assert classify_pos("0220", "000000", "00", "36000001000") is TxnType.OFFLINE_SALE
    assert classify_pos("0230", "000000", "00", "36000001000") is TxnType.OFFLINE_SALE
    assert classify_h2h("0220", "000000", "00") is TxnType.OFFLINE_SALE
    assert is_offline_advice("0220", "000000", "36000001000")
    assert is_offline_advice("0221", "000000", "36000001000/000001000123" "1125")  # H2H DE60 form
    assert not is_offline_advice("0220", "200000", "25000001000")  # a refund
    assert not is_offline_advice("0200", "000000", "36000001000")
