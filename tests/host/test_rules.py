"""The pure rules: card state, expiry, PIN counter, limits, DE54, the request key, Luhn."""

from __future__ import annotations

import datetime as dt

from hypothesis import given
from hypothesis import strategies as st

from host import rules
from host.issue import luhn_ok, new_pan, pin_under_test_lmk
from host.model import CardState, Pin, Product, Request, Txn, normalise_mti, request_key

TODAY = dt.date(2026, 11, 25)


def card(**kw: object) -> CardState:
    product = Product(
        1,
        "P",
        str(kw.pop("kind", "reloadable")),
        "156",
        10_000,
        1_000,
        1_500,
        3,
        bool(kw.pop("pin_required", False)),
        None,
        None,
    )
    base: dict[str, object] = dict(
        card_id=1,
        account_id=2,
        product=product,
        state="active",
        expiry="2912",
        part=0,
        uses_left=None,
        pin_tries=0,
        day=TODAY,
        day_amount=0,
        day_count=0,
        debits_pending=0,
        debits_posted=0,
        credits_pending=0,
        credits_posted=5_000,
    )
    base.update(kw)
    return CardState(**base)  # type: ignore[arg-type]


def req(txn: Txn = Txn.PURCHASE, **kw: object) -> Request:
    return Request(key="k", mti="0200", txn=txn, **kw)  # type: ignore[arg-type]


def test_card_state_and_expiry() -> None:
    assert rules.check_card(card(), req(), TODAY) is None
    for state, code in (
        ("inventory", "05"),
        ("frozen", "05"),
        ("closed", "14"),
        ("lost", "41"),
        ("stolen", "43"),
        ("expired", "54"),
    ):
        assert rules.check_card(card(state=state), req(), TODAY) == code
    assert rules.check_card(card(expiry="2610"), req(), TODAY) == "54"
    assert rules.check_card(card(expiry="2611"), req(), TODAY) is None  # valid through its month
    assert rules.check_card(card(), req(expiry="2911"), TODAY) == "54"


def test_pin_counter() -> None:
    c = card(pin_required=True)
    assert rules.check_pin(c, req(), 3) == "55"  # required, none sent
    assert rules.check_pin(c, req(Txn.TOPUP), 3) is None  # only debits need it
    assert [rules.check_pin(c, req(pin=Pin.BAD), 3) for _ in range(4)] == ["55", "55", "75", "75"]
    assert rules.check_pin(c, req(pin=Pin.OK), 3) == "75"  # locked stays locked
    c = card(pin_tries=2)
    assert rules.check_pin(c, req(pin=Pin.OK), 3) is None and c.pin_tries == 0 and c.card_dirty
    assert rules.check_pin(card(), req(pin=Pin.ERROR), 3) == "96"


def test_limits_and_uses() -> None:
    c = card()
    assert rules.check_limits(c, 1_001, TODAY) == "61"
    assert rules.check_limits(c, 1_000, TODAY) is None
    rules.count_use(c, 1_000)
    assert rules.check_limits(c, 501, TODAY) == "61"
    rules.count_use(c, 500)
    assert rules.check_limits(c, 0, TODAY) is None
    rules.count_use(c, 0)
    assert rules.check_limits(c, 0, TODAY) == "65"
    assert rules.check_limits(c, 1_000, TODAY + dt.timedelta(days=1)) is None  # a new day
    u = card(uses_left=0)
    assert rules.check_limits(u, 1, TODAY) == "65"
    assert rules.check_topup(card(kind="fixed_amount"), 1) == "57"
    assert rules.check_topup(card(), 5_001) == "61" and rules.check_topup(card(), 5_000) is None


def test_balance_field() -> None:
    c = card(debits_pending=700)
    assert rules.balance_field(c) == "1001156C0000000050001002156C000000004300"


def test_state_machine() -> None:
    assert "active" in rules.TRANSITIONS["inventory"] and "active" in rules.TRANSITIONS["frozen"]
    assert not rules.TRANSITIONS["closed"] and rules.TRANSITIONS["lost"] == frozenset({"closed"})


def test_request_key_and_repeats() -> None:
    assert request_key("00048880000", "1125101010", "000777", "T3DES001 ", "0421") == request_key(
        "48880000", "1125101010", "000777", "T3DES001", "0420"
    )
    assert normalise_mti("0221") == "0220" and normalise_mti("0200") == "0200"


@given(st.sampled_from(["621234", "62123400", "9999999"]), st.integers(16, 19))
def test_new_pans_are_luhn_valid_in_their_bin(bin_prefix: str, length: int) -> None:
    pan = new_pan(bin_prefix, length)
    assert len(pan) == length and pan.startswith(bin_prefix) and luhn_ok(pan)


def test_pin_under_test_lmk_is_the_hsm_form() -> None:
    token = pin_under_test_lmk("123456")
    assert token.startswith("L") and len(token) == 33
