"""switch/upload.py without I/O: the judging of uploaded records, the 0330 DE48, the upload advice."""

from __future__ import annotations

import contextlib

from hypothesis import given
from hypothesis import strategies as st

from host.offline import advice_key as host_advice_key
from ops.logs import mask_pan
from specs.catalogue import UploadRecord, is_offline_advice
from switch.sessions import Entry
from switch.upload import (
    Counts,
    Result,
    advice_key,
    answer_de48,
    judge,
    parse_answer_de48,
    reversal_de90,
    terminal_lacks,
    upload_advice,
)

PAN = "6212345678901234567"
RECORD = UploadRecord("000012", PAN, 900)


def _entry(code: str, **kw: object) -> Entry:
    e = Entry(mti="0200", stan="000012", kind="purchase", amount=900, pan_masked=mask_pan(PAN))
    e.link, e.link_mti, e.link_stan = "issuer", "0200", "000077"
    e.link_de7, e.link_de32 = "1203101010", "48880000"
    for k, v in kw.items():
        setattr(e, k, v)
    e.finish(code, None)
    return e


def _judge(entry: Entry | None, **kw: object) -> tuple[Result, str, bool]:
    args: dict[str, object] = {
        "repeated": False,
        "posted_before": False,
        "floor_limit": None,
        "reversal_done": False,
    }
    args.update(kw)
    v = judge(RECORD, entry, **args)  # type: ignore[arg-type]
    return v.result, v.detail, v.advice


def test_matched_and_differences() -> None:
    assert _judge(_entry("00")) == (Result.MATCHED, "journal_approved", False)
    assert _judge(_entry("00", amount=901)) == (Result.NOT_POSTED, "amount_differs", False)
    other = _entry("00", pan_masked="621234*********9999")
    assert _judge(other) == (Result.NOT_POSTED, "card_differs", False)
    assert _judge(_entry("00", reversed=True)) == (Result.NOT_POSTED, "journal_reversed", False)
    assert _judge(_entry("51")) == (Result.NOT_POSTED, "journal_declined", False)
    assert _judge(_entry("00", kind="balance")) == (Result.NOT_POSTED, "not_a_sale", False)


def test_lost_approval_posts_only_once_its_reversal_is_done() -> None:
    assert _judge(_entry("98"), reversal_done=True) == (Result.POSTED, "lost_approval", True)
    assert _judge(_entry("98")) == (Result.NOT_POSTED, "reversal_pending", False)
    # a terminal 0400 reversed it: the terminal itself withdrew it
    assert _judge(_entry("98", reversed=True), reversal_done=True)[0] is Result.NOT_POSTED
    # a refund that timed out is no sale to post
    refund = _entry("98", kind="refund")
    assert _judge(refund, reversal_done=True) == (Result.NOT_POSTED, "journal_declined", False)


def test_unknown_records_post_only_within_the_floor_limit() -> None:
    assert _judge(None, floor_limit=900) == (Result.POSTED, "within_floor_limit", True)
    assert _judge(None, floor_limit=899) == (Result.NOT_POSTED, "unknown_to_switch", False)
    assert _judge(None, floor_limit=0) == (Result.NOT_POSTED, "unknown_to_switch", False)
    assert _judge(None) == (Result.NOT_POSTED, "unknown_to_switch", False)  # a BIN the host lacks


def test_duplicates_come_first() -> None:
    assert _judge(_entry("98"), repeated=True, reversal_done=True) == (Result.DUPLICATE, "repeated", False)
    assert _judge(None, posted_before=True, floor_limit=10**6) == (Result.DUPLICATE, "already_posted", False)


def test_terminal_lacks_the_counted_approvals_it_did_not_upload() -> None:
    a = _entry("00")
    b = _entry("00", stan="000013")
    c = _entry("00", stan="000014", voided=True)
    d = _entry("51", stan="000015")
    e = _entry("00", stan="000016", kind="balance")
    assert terminal_lacks([a, b, c, d, e], {"000012"}) == [b]


def test_answer_de48_worked() -> None:
    counts = Counts(records=3, matched=1, posted=1, duplicate=1, terminal_lacks=1)
    text = answer_de48([Result.MATCHED, Result.POSTED, Result.DUPLICATE], counts)
    # records 3, matched 1, posted 1, duplicate 1, not posted 0, terminal lacks 1
    assert text == "03012" + "0003" + "0001" + "0001" + "0001" + "0000" + "0001"
    assert parse_answer_de48(text) == (["0", "1", "2"], counts)
    assert answer_de48([Result.NOT_POSTED]) == "013"
    assert len(answer_de48([Result.MATCHED] * 8, counts)) <= 322


@given(
    st.lists(
        st.sampled_from([Result.MATCHED, Result.POSTED, Result.DUPLICATE, Result.NOT_POSTED]), max_size=8
    ),
    st.one_of(st.none(), st.tuples(*[st.integers(0, 9999)] * 6).map(lambda t: Counts(*t))),
)
def test_answer_de48_round_trip(results: list[Result], counts: Counts | None) -> None:
    digits, parsed = parse_answer_de48(answer_de48(results, counts))
    assert digits == [r.digit for r in results] and parsed == counts


@given(st.text(max_size=40))
def test_parse_answer_de48_refuses_garbage_cleanly(text: str) -> None:
    with contextlib.suppress(ValueError):
        parse_answer_de48(text)


def test_counts_of() -> None:
    results = [Result.MATCHED, Result.POSTED, Result.DUPLICATE, Result.TERMINAL_LACKS, Result.NOT_POSTED]
    assert Counts.of(results) == Counts(4, 1, 1, 1, 1, 1)


def test_the_advice_is_an_offline_advice_the_host_keys_as_its_own() -> None:
    msg = upload_advice(
        RECORD,
        terminal_id="T3DES001",
        merchant_id="898330160120001",
        batch=7,
        stan=77,
        de7="1203101010",
        local=("181010", "1203"),
        rrn_value="633718000077",
        acquirer_id="48880000",
    )
    assert msg["60"] == "36000007000/0000070000121203"
    assert is_offline_advice(msg["t"], msg["3"], msg["60"]) and msg["38"] == "UPLOAD"
    assert advice_key("898330160120001", "T3DES001", 7, "000012") == host_advice_key(
        "898330160120001", "T3DES001", "000007", "000012"
    )


def test_reversal_de90_is_the_safs() -> None:
    assert reversal_de90(_entry("98")) == "0200000077120310101000048880000" + "0" * 11
    assert reversal_de90(Entry(mti="0200", stan="1", kind="purchase", amount=1)) is None
