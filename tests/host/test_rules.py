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


def rc(reason: str | None) -> str | None:
    """The response code a rule's reason is answered with."""
    return None if reason is None else rules.code_of(reason)


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
        assert rc(rules.check_card(card(state=state), req(), TODAY)) == code
    assert rules.check_card(card(expiry="2610"), req(), TODAY) == "card_expired"
    assert rc("card_expired") == "54"
    assert rules.check_card(card(expiry="2611"), req(), TODAY) is None  # valid through its month


def test_a_wrong_expiry_on_a_valid_card_is_not_54_expired() -> None:
    """Issue 15 item 7: the card has not expired; the date presented is not its own: 14, not 54."""
    reason = rules.check_card(card(), req(expiry="2911"), TODAY)
    assert reason == "expiry_mismatch" and rc(reason) == "14"
    assert rules.describe(reason) == "expiry date does not match the card's"


def test_pin_counter() -> None:
    c = card(pin_required=True)
    assert rules.check_pin(c, req(Txn.TOPUP), 3) is None  # only debits need it
    tries = [rules.check_pin(c, req(pin=Pin.BAD), 3) for _ in range(4)]
    assert tries == ["pin_wrong", "pin_wrong", "pin_tries_exceeded", "pin_tries_exceeded"]
    assert [rc(t) for t in tries] == ["55", "55", "75", "75"]
    assert rules.check_pin(c, req(pin=Pin.OK), 3) == "pin_tries_exceeded"  # locked stays locked
    c = card(pin_tries=2)
    assert rules.check_pin(c, req(pin=Pin.OK), 3) is None and c.pin_tries == 0 and c.card_dirty
    assert rc(rules.check_pin(card(), req(pin=Pin.ERROR), 3)) == "96"


def test_a_missing_pin_is_not_a_wrong_pin() -> None:
    """Issue 15 item 7: 55 by the contract (no "PIN required" code), but the reason says "missing", and
    the try counter is left alone."""
    c = card(pin_required=True)
    reason = rules.check_pin(c, req(), 3)
    assert reason == "pin_missing" and rc(reason) == "55" and c.pin_tries == 0
    assert rules.describe(reason) == "PIN required, none entered" != rules.describe("pin_wrong")


def test_limits_and_uses() -> None:
    c = card()
    assert rules.check_limits(c, 1_001, TODAY) == "per_txn_limit"
    assert rules.check_limits(c, 1_000, TODAY) is None
    rules.count_use(c, 1_000)
    assert rules.check_limits(c, 501, TODAY) == "daily_amount_limit"
    rules.count_use(c, 500)
    assert rules.check_limits(c, 0, TODAY) is None
    rules.count_use(c, 0)
    assert rules.check_limits(c, 0, TODAY) == "daily_count_limit"
    assert rules.check_limits(c, 1_000, TODAY + dt.timedelta(days=1)) is None  # a new day
    u = card(uses_left=0)
    assert rules.check_limits(u, 1, TODAY) == "no_uses_left"
    assert rules.check_topup(card(kind="fixed_amount"), 1) == "topup_fixed_amount"
    assert rules.check_topup(card(), 5_001) == "max_balance" and rules.check_topup(card(), 5_000) is None
    assert [rc(r) for r in ("per_txn_limit", "daily_amount_limit", "daily_count_limit", "no_uses_left")] == [
        "61", "61", "65", "65"
    ]
    assert rc("topup_fixed_amount") == "57" and rc("max_balance") == "61"


def test_every_reason_has_a_contract_code_and_words() -> None:
    from specs.catalogue import RESPONSE_CODES

    for key, reason in rules.REASONS.items():
        assert RESPONSE_CODES[reason.code].h2h, key  # a code the host may answer on H2H
        assert (reason.text and reason.text[0].islower()) or reason.text.startswith("PIN"), key


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
