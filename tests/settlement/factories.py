"""Builders and hypothesis strategies for clearing records, shared by the settlement tests."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from typing import Any

from hypothesis import strategies as st

from specs.clearing import CREDIT_TYPES, DEBIT_TYPES, TXN_TYPES, Detail, Header

BASE_TIME = datetime(2026, 11, 24, 2, 0, 0, tzinfo=UTC)


def header(business_date: date = date(2026, 11, 24), issuer: str = "48880000", seq: int = 1) -> Header:
    return Header(issuer_id=issuer, business_date=business_date, sequence=seq,
                  created_at=datetime(business_date.year, business_date.month, business_date.day, 15,
                                      tzinfo=UTC), currency="CNY")


def detail(posting_id: int, txn_type: str = "PURCHASE", amount: int = 1000, **kw: Any) -> Detail:
    sign = "D" if txn_type in DEBIT_TYPES else "C"
    base = Detail(
        posting_id=posting_id, txn_type=txn_type, original_posting_id=None, acquirer_id="ACQ1",
        merchant_id="" if txn_type == "TOPUP" else "M001", store_id="" if txn_type == "TOPUP" else "S01",
        terminal_id="T0000001", masked_pan="623456******1234", card_product="CAMPUS", amount=amount,
        sign=sign, fee=0, fee_rate_version="", rrn=f"{posting_id:012d}", stan=f"{posting_id % 1000000:06d}",
        auth_id="A1B2C3",
        local_time=(BASE_TIME + timedelta(hours=8, seconds=posting_id)).replace(tzinfo=None),
        posted_at=BASE_TIME + timedelta(seconds=posting_id),
    )
    return replace(base, **kw)


_id_chars = st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters="|")
ids = st.text(_id_chars, min_size=1, max_size=40)
opt_ids = st.one_of(st.just(""), ids)
amounts = st.integers(0, 10**12)
utc_times = st.datetimes(datetime(2000, 1, 1), datetime(2099, 12, 31)).map(
    lambda d: d.replace(microsecond=0, tzinfo=UTC))
local_times = st.one_of(st.none(), st.datetimes(datetime(2000, 1, 1), datetime(2099, 12, 31)).map(
    lambda d: d.replace(microsecond=0)))
masked_pans = st.integers(13, 19).flatmap(
    lambda n: st.tuples(st.text("0123456789", min_size=6, max_size=6),
                        st.text("0123456789", min_size=4, max_size=4)).map(
        lambda t: t[0] + "*" * (n - 10) + t[1]))


@st.composite
def details(draw: st.DrawFn, posting_id: int) -> Detail:
    txn_type = draw(st.sampled_from(TXN_TYPES))
    if txn_type in DEBIT_TYPES:
        sign = "D"
    elif txn_type in CREDIT_TYPES:
        sign = "C"
    else:
        sign = draw(st.sampled_from("DC"))
    needs_original = txn_type in ("VOID", "REVERSAL")
    original = draw(st.integers(1, 10**12).filter(lambda n: n != posting_id)) if needs_original else draw(
        st.one_of(st.none(), st.integers(1, 10**12).filter(lambda n: n != posting_id)))
    return Detail(
        posting_id=posting_id, txn_type=txn_type, original_posting_id=original,
        acquirer_id=draw(opt_ids) if txn_type == "TOPUP" else draw(ids),
        merchant_id=draw(opt_ids) if txn_type == "TOPUP" else draw(ids),
        store_id=draw(opt_ids), terminal_id=draw(opt_ids), masked_pan=draw(masked_pans),
        card_product=draw(ids), amount=draw(amounts), sign=sign, fee=draw(st.integers(0, 10**6)),
        fee_rate_version=draw(opt_ids),
        rrn=draw(st.one_of(st.just(""), st.text(_id_chars, min_size=12, max_size=12))),
        stan=draw(st.one_of(st.just(""), st.text("0123456789", min_size=6, max_size=6))),
        auth_id=draw(st.one_of(st.just(""), st.text(_id_chars, min_size=6, max_size=6))),
        local_time=draw(local_times), posted_at=draw(utc_times),
    )


@st.composite
def detail_lists(draw: st.DrawFn, max_size: int = 20) -> list[Detail]:
    gaps = draw(st.lists(st.integers(1, 1000), max_size=max_size))
    out, pid = [], 0
    for g in gaps:
        pid += g
        out.append(draw(details(pid)))
    return out


headers = st.builds(
    Header,
    issuer_id=st.from_regex(r"[0-9A-Za-z]{1,40}", fullmatch=True),
    business_date=st.dates(date(2000, 1, 1), date(2099, 12, 31)),
    sequence=st.integers(1, 99),
    created_at=utc_times,
    currency=st.sampled_from(["CNY", "156", "USD"]),
)
