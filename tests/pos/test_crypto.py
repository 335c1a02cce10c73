"""The contract's worked examples (pos-dialect.md) reproduced by the terminal-side crypto and codec."""

from __future__ import annotations

import pytest

from pos import messages
from pos.crypto import (
    KeyCipher,
    TerminalCryptoError,
    clear_pin_block,
    pin_block,
    unwrap_working_keys,
)
from specs.codec import codec_for

TMK = bytes.fromhex("0123456789ABCDEFFEDCBA9876543210")
PAN = "6212345678901234567"
EXAMPLES = {
    "3des": {
        "pik": "1023456789ABCDEF0123456789ABCDE0",
        "mak": "2023456789ABCD02",
        "tdk": "3123456789ABCDEF1023456789ABCDE3",
        "de62": "524FDC3021F3BA088FADC73C286EA1D4E425ECCD289EC8E772237F20000000000000000092A3A5EE71496EA1E5"
        "D22ED167BFCD8CF0A8A0685E1DF541",
        "pin_block": "2BD127874D206D2E",
        "mac": b"69DB66D5",
        "frame": "006C60000100006031000000000200702404C000C0981119621234567890123456700000000000000123450007"
        "7730120110001254303030303030313839383333303136303132303030313135362BD127874D206D2E2600000000"
        "00000000112200000100003639444236364435",
    },
    "sm4": {
        "pik": "11111111111111112222222222222222",
        "mak": "33333333333333334444444444444444",
        "tdk": "55555555555555556666666666666666",
        "de62": "EC8A8C8CF622941D24CF48811B7520051EA7D5712F63BB8DBFA2492174D5348D1308ABF20A1657D1DC4B67"
        "0AAAA89ECAB5ADC3B31BA7FF1E01B184A8",
        "pin_block": "AB688B587E879B19A6275257400C226E",
        "mac": b"7D027AC0",
        "frame": "007460000100006031000000000200702404C000C0981119621234567890123456700000000000000123450007"
        "773012011000125430303030303031383938333330313630313230303031313536AB688B587E879B19A62752574"
        "00C226E240000000000000000112200000100003744303237414330",
    },
}


@pytest.mark.parametrize("scheme", ["3des", "sm4"])
def test_sign_on_keys_decrypt_with_check_values(scheme: str) -> None:
    ex = EXAMPLES[scheme]
    de62 = bytes.fromhex(ex["de62"])
    keys = unwrap_working_keys(scheme, TMK, de62)  # type: ignore[arg-type]
    assert keys.pik.hex().upper() == ex["pik"]
    assert keys.mak.hex().upper() == ex["mak"]
    assert keys.tdk.hex().upper() == ex["tdk"]
    cvs = keys.check_values()
    # the check values sit at the same offsets in both layouts: 16..20, 36..40, 56..60
    assert [cvs["pik"], cvs["mak"], cvs["tdk"]] == [
        de62[16:20].hex().upper(),
        de62[36:40].hex().upper(),
        de62[56:60].hex().upper(),
    ]
    assert "pik=<" in repr(keys) and ex["pik"] not in repr(keys)


@pytest.mark.parametrize("scheme", ["3des", "sm4"])
def test_wrong_tmk_or_damaged_de62_is_refused(scheme: str) -> None:
    de62 = bytearray(bytes.fromhex(EXAMPLES[scheme]["de62"]))
    with pytest.raises(TerminalCryptoError, match="check value"):
        unwrap_working_keys(scheme, bytes(16), bytes(de62))  # type: ignore[arg-type]
    with pytest.raises(TerminalCryptoError, match="60"):
        unwrap_working_keys(scheme, TMK, bytes(de62[:59]))  # type: ignore[arg-type]


@pytest.mark.parametrize("scheme", ["3des", "sm4"])
def test_pin_block(scheme: str) -> None:
    pik = KeyCipher(scheme, bytes.fromhex(EXAMPLES[scheme]["pik"]))  # type: ignore[arg-type]
    assert pin_block(pik, "123456", PAN).hex().upper() == EXAMPLES[scheme]["pin_block"]


def test_clear_pin_block_format_0() -> None:
    # PIN field xor 0000 + the 12 rightmost PAN digits without the check digit
    assert (
        clear_pin_block("123456", PAN).hex().upper() == "0612622E6FEDCBA9"
    )  # 06123456FFFFFFFF xor 0000567890123456
    with pytest.raises(TerminalCryptoError):
        clear_pin_block("12a4", PAN)
    with pytest.raises(TerminalCryptoError):
        clear_pin_block("123", PAN)


@pytest.mark.parametrize("scheme", ["3des", "sm4"])
def test_keyed_purchase_frame_and_mac(scheme: str) -> None:
    """The worked purchase, built by the terminal's message builder, is byte-for-byte the contract's."""
    ex = EXAMPLES[scheme]
    pik = KeyCipher(scheme, bytes.fromhex(ex["pik"]))  # type: ignore[arg-type]
    mak = KeyCipher(scheme, bytes.fromhex(ex["mak"]))  # type: ignore[arg-type]
    msg = messages.financial_request(
        messages.KINDS["purchase"],
        stan="000777",
        batch="000001",
        terminal_id="T0000001",
        merchant_id="898330160120001",
        scheme=scheme,  # type: ignore[arg-type]
        card=messages.Card.keyed(PAN, "3012"),
        amount=12345,
        pin="123456",
        pik=pik,
    )
    body = codec_for("pos", scheme).encode(msg)
    mac = mak.pos_mac(body[:-8])
    assert mac == ex["mac"]
    frame = bytes.fromhex(ex["frame"])
    assert frame[2:13] == bytes.fromhex("6000010000") + bytes.fromhex("603100000000")
    assert body[:-8] + mac == frame[13:]


def test_key_lengths_checked_and_repr_hides_key() -> None:
    with pytest.raises(TerminalCryptoError):
        KeyCipher("sm4", bytes(8))
    with pytest.raises(TerminalCryptoError):
        KeyCipher("3des", bytes(15))
    assert "<key>" in repr(KeyCipher("3des", TMK))
