"""A receipt's time is the terminal's local date-time with its offset (issue 15 item 5).

The switch sets DE12/DE13 of every answer on the programme's wall clock (``clearing.timezone``), not the
process's zone; the terminal prints them with the year and the zone's offset.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

import pytest

from pos.terminal import Receipt, local_stamp
from switch import mapping


@pytest.fixture
def programme_zone() -> Iterator[None]:
    mapping.set_local_zone("Asia/Shanghai")
    yield
    mapping.set_local_zone(None)


def test_the_switch_sets_de12_de13_in_the_programme_zone(programme_zone: None) -> None:
    at = dt.datetime(2026, 12, 2, 10, 30, 5, tzinfo=dt.UTC).timestamp()  # 18:30:05 in Shanghai
    assert mapping.local_time(at) == ("183005", "1202")
    late = dt.datetime(2026, 12, 31, 16, 0, 1, tzinfo=dt.UTC).timestamp()  # already 1 January there
    assert mapping.local_time(late) == ("000001", "0101")
    assert mapping.rrn(7, late)[:4] == "7001"  # the RRN's year digit and day of year: local too
    assert mapping.transmission_time(late) == "1231160001"  # DE7 stays UTC


def test_the_receipt_prints_the_local_date_time_with_its_offset() -> None:
    now = dt.datetime(2026, 12, 2, 10, 30, 7, tzinfo=dt.UTC)
    r = Receipt("SALE", "T0000001", "898330160120001", "00", date="1202", time="183005")
    r.in_zone("Asia/Shanghai", now)
    assert r.at == "2026-12-02T18:30:05+08:00"
    assert r.as_dict()["at"] == "2026-12-02T18:30:05+08:00"
    assert "TIME     2026-12-02 18:30:05 +08:00" in r.render().splitlines()


def test_the_year_is_the_one_nearest_the_terminal_clock() -> None:
    new_year = dt.datetime(2026, 12, 31, 16, 0, 3, tzinfo=dt.UTC)  # 2027-01-01 00:00:03 in Shanghai
    assert local_stamp("1231", "235959", "Asia/Shanghai", new_year) == "2026-12-31T23:59:59+08:00"
    assert local_stamp("0101", "000001", "Asia/Shanghai", new_year) == "2027-01-01T00:00:01+08:00"
    summer = dt.datetime(2026, 7, 1, 12, tzinfo=dt.UTC)
    assert local_stamp("0701", "140000", "Europe/Berlin", summer) == "2026-07-01T14:00:00+02:00"
    assert local_stamp("", "", "Asia/Shanghai", summer) == ""  # no answer: no time printed
    assert local_stamp("1399", "250000", "Asia/Shanghai", summer) == ""
    unanswered = Receipt("SALE", "T0000001", "898330160120001", "98").in_zone("Asia/Shanghai", summer)
    assert not [line for line in unanswered.render().splitlines() if line.startswith(("TIME ", "DATE "))]
