"""The simulated chip card (pos.chip): DE55 as the convention says, its ARQC checked the issuer's way
(hsm_sim.emv from the IMK, as the HSM's KW does), the ARPC check, the ATC file, the request fields."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hsm_sim import emv
from pos import messages
from pos.chip import (
    ChipCard,
    ChipError,
    ChipRequest,
    build_request,
    check_issuer,
    next_atc,
)
from pos.messages import KINDS, Card
from pos.sealed import read_sealed, write_sealed
from pos.terminal import Receipt, entry_mode_text
from specs.tlv import ARQC_TAGS, Tlv, arqc_data, as_dict, decode, encode

IMK = {"3des": bytes.fromhex("0123456789ABCDEFFEDCBA9876543210"), "sm4": bytes(range(16))}
PAN = "6212345678901234567"
ALGS = st.sampled_from(["3des", "sm4"])


def card(alg: emv.Algorithm = "3des", psn: str = "01") -> ChipCard:
    return ChipCard.personalise(alg, IMK[alg], PAN, "3012", psn)


def issuer_arqc(alg: emv.Algorithm, de55: bytes, psn: str = "01") -> bytes:
    """What the issuer computes from its IMK (not from the card's key): option A, session key, ARQC."""
    values = as_dict(decode(de55))
    mk = emv.card_master_key(alg, IMK[alg], PAN, psn)
    sk = emv.session_key(alg, mk, values["9F36"])
    return emv.arqc(alg, sk, arqc_data(values))


def issuer_answer(alg: emv.Algorithm, req: ChipRequest, arc: bytes = b"00") -> bytes:
    mk = emv.card_master_key(alg, IMK[alg], PAN, "01")
    sk = emv.session_key(alg, mk, req.atc)
    return encode([Tlv("91", emv.arpc(alg, sk, req.arqc, arc) + arc), Tlv("8A", arc)])


def test_de55_layout_and_values() -> None:
    req = build_request(
        card(),
        atc=b"\x00\x2a",
        amount=1234,
        txn_type="00",
        when=date(2026, 12, 2),
        unpredictable=bytes.fromhex("A1B2C3D4"),
    )
    items = decode(req.de55)
    tags = [t.tag for t in items]
    assert tags == [*ARQC_TAGS, "9F26", "9F27", "5F34", "84", "9F33", "9F34", "9F35", "9F09"]
    v = as_dict(items)
    assert v["9F02"] == bytes.fromhex("000000001234") and v["9F03"] == bytes(6)
    assert v["9F1A"] == v["5F2A"] == bytes.fromhex("0156")
    assert v["9A"] == bytes.fromhex("261202") and v["9C"] == b"\x00"
    assert v["9F36"] == b"\x00\x2a" and v["9F37"] == bytes.fromhex("A1B2C3D4")
    assert v["9F27"] == b"\x80" and v["5F34"] == b"\x01" and v["9F26"] == req.arqc
    assert v["9F34"] == bytes.fromhex("420302")


@settings(max_examples=40, deadline=None)
@given(
    alg=ALGS,
    atc=st.integers(1, 0xFFFF),
    amount=st.integers(0, 999_999_999_999),
    txn=st.sampled_from(["00", "03", "31"]),
    un=st.binary(min_size=4, max_size=4),
    psn=st.sampled_from(["00", "01", "09"]),
)
def test_arqc_verifies_at_the_issuer_and_arpc_at_the_card(
    alg: emv.Algorithm, atc: int, amount: int, txn: str, un: bytes, psn: str
) -> None:
    c = card(alg, psn)
    req = build_request(
        c, atc=atc.to_bytes(2, "big"), amount=amount, txn_type=txn, when=date.today(), unpredictable=un
    )
    assert issuer_arqc(alg, req.de55, psn) == req.arqc
    mk = emv.card_master_key(alg, IMK[alg], PAN, psn)
    sk = emv.session_key(alg, mk, req.atc)
    for arc in (b"00", b"05", b"51"):
        answer = encode([Tlv("91", emv.arpc(alg, sk, req.arqc, arc) + arc)])
        assert check_issuer(c, req, answer) == ("verified", arc.decode())
    # A clone's cryptogram is under another key: the issuer's check fails.
    cloned = build_request(
        c.cloned(), atc=req.atc, amount=amount, txn_type=txn, when=date.today(), unpredictable=un
    )
    assert issuer_arqc(alg, cloned.de55, psn) != cloned.arqc
    assert cloned.de55 != req.de55 and c.cloned().track2 == c.track2


@given(alg=ALGS, flip=st.integers(0, 9 * 8 - 1))
@settings(max_examples=30, deadline=None)
def test_a_changed_arpc_or_arc_fails(alg: emv.Algorithm, flip: int) -> None:
    c = card(alg)
    req = build_request(c, atc=b"\x00\x07", amount=500, txn_type="00", when=date.today())
    data = bytearray(as_dict(decode(issuer_answer(alg, req)))["91"])
    data[flip // 8] ^= 1 << (flip % 8)
    result, _ = check_issuer(c, req, encode([Tlv("91", bytes(data))]))
    assert result == "failed"


def test_issuer_answer_absent_or_malformed() -> None:
    c = card()
    req = build_request(c, atc=b"\x00\x01", amount=1, txn_type="00", when=date.today())
    assert check_issuer(c, req, None) == ("absent", "")
    assert check_issuer(c, req, encode([Tlv("8A", b"00")])) == ("absent", "")
    assert check_issuer(c, req, b"\x91\x0a\x01") == ("failed", "")  # truncated TLV
    assert check_issuer(c, req, encode([Tlv("91", b"\x01" * 4)])) == ("failed", "")


def test_atc_goes_up_per_card_and_the_file_holds_no_pan(tmp_path: Path) -> None:
    path = tmp_path / "chip-atc.json"
    a, b = card(), ChipCard.personalise("sm4", IMK["sm4"], "6212340000000000011", "3012")
    assert [next_atc(a, path) for _ in range(3)] == [b"\x00\x01", b"\x00\x02", b"\x00\x03"]
    assert next_atc(b, path) == b"\x00\x01"
    assert next_atc(a.cloned(), path) == b"\x00\x04"  # a clone reads the same counter (same PAN, PSN)
    raw = path.read_bytes()
    assert PAN.encode() not in raw and PAN not in str(read_sealed(path))
    write_sealed(path, {a.ref: 0xFFFF})
    with pytest.raises(ChipError, match="exhausted"):
        next_atc(a, path)


def test_chip_card_from_a_demo_entry() -> None:
    c = card("sm4")
    entry = {"pan": PAN, "expiry": "3012", "chip": "sm4", "psn": "01", "mk_ac": c.mk_ac.hex()}
    assert ChipCard.from_entry(entry) == c
    assert ChipCard.from_entry({"pan": PAN, "expiry": "3012"}) is None
    assert PAN not in repr(c) and c.mk_ac.hex() not in repr(c)


def test_chip_request_fields_and_its_reversal() -> None:
    c = card()
    track = Card.swiped(c.track2)
    chip_card = Card(track.pan, track2=track.track2, mode="05", psn=c.psn)
    req = build_request(c, atc=b"\x00\x09", amount=1234, txn_type="00", when=date.today())
    msg = messages.financial_request(
        KINDS["purchase"],
        stan="000011",
        batch="000001",
        terminal_id="T0000001",
        merchant_id="898330160120001",
        scheme="3des",
        card=chip_card,
        amount=1234,
        pin_block_bytes=bytes(8),
        de55=req.de55,
    )
    assert msg["22"] == "051" and msg["23"] == "001" and msg["55"] == req.de55
    assert msg["35"] == f"{PAN}=3012220" + "00000" and "2" not in msg
    rev = messages.reversal_of(msg)
    assert "55" not in rev and "35" not in rev and rev["2"] == PAN
    nfc = Card(track.pan, track2=track.track2, mode="07", psn="01")
    assert (
        messages.financial_request(
            KINDS["purchase"],
            stan="000012",
            batch="000001",
            terminal_id="T0000001",
            merchant_id="898330160120001",
            scheme="3des",
            card=nfc,
            amount=100,
            de55=req.de55,
        )["22"]
        == "072"
    )


def test_receipt_prints_entry_mode_and_issuer_authentication() -> None:
    assert entry_mode_text("051") == "chip, PIN" and entry_mode_text("072") == "contactless"
    assert entry_mode_text("021") == "swipe, PIN" and entry_mode_text("") == ""
    r = Receipt(
        "PURCHASE",
        "T0000001",
        "898330160120001",
        "00",
        pan="621234*********4567",
        amount=1234,
        balance=48766,
        entry_mode="chip, PIN",
        issuer_auth="verified",
    )
    text = r.render()
    assert "ENTRY    CHIP, PIN" in text and "CHIP     ISSUER AUTHENTICATED" in text
    assert "AMOUNT   12.34 CNY" in text and "BALANCE  487.66 CNY" in text
    assert r.as_dict()["issuer_auth"] == "verified" and r.as_dict()["entry_mode"] == "chip, PIN"
