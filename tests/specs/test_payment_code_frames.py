"""The payment-code purchase's worked examples (specs/README.md, "Payment codes" [project convention])
built byte for byte: the terminal's POS frame (entry mode 032, the code in DE2, no DE14 / PIN) with the
contract's worked-example keys (pos-dialect.md, 3des profile), and the H2H request the switch makes of
it on the H2H contract's example link (its DE128 cross-checked with pycryptodome)."""

from __future__ import annotations

import datetime as dt

from host import h2h
from host.issue import luhn_ok
from pos import messages
from pos.crypto import KeyCipher
from pos.messages import KINDS, Card
from specs.catalogue import PAYMENT_CODE_LENGTH, pos_presence_problems
from specs.codec import codec_for
from specs.framing import pos_frame
from switch import mapping
from tests.specs.macref import x919_mac

MAK = "2023456789ABCD02"  # pos-dialect.md worked example, 3des profile
ZAK = "0123456789ABCDEFFEDCBA9876543210"  # h2h-dialect.md worked example link key
CODE = "621234000000123456"  # BIN 621234 + 11 random digits + Luhn

POS_FRAME = (
    "0058" "6000010000" "603100000000" "0200" "7020048000C08011" "18" "621234000000123456" "000000"
    "000000002500" "000779" "0320" "00" "5430303030303031" "383938333330313630313230303031" "313536"
    "0011" "220000010000" "3942463939313846"
)
H2H_FRAME = (  # after the 2-byte length 00B7
    "0200" "F238048108C08010" "0000000000000001" "18" "621234000000123456" "000000" "000000002500"
    "1125101010" "000779" "181010" "1125" "032" "00" "08" "48880000" "533010000779" "T0000001"
    "898330160120001" "156" "011" "22000001000" "E9F558E9A93C6A89"
)


def _pos_request() -> tuple[dict[str, object], bytes]:
    msg = messages.financial_request(
        KINDS["purchase"],
        stan="000779",
        batch="000001",
        terminal_id="T0000001",
        merchant_id="898330160120001",
        scheme="3des",
        card=Card.payment_code(CODE),
        amount=2_500,
    )
    body = codec_for("pos", "3des").encode(msg)
    body = body[:-8] + KeyCipher("3des", bytes.fromhex(MAK)).pos_mac(body[:-8])
    return msg, pos_frame(body)


def test_pos_code_purchase_frame_byte_for_byte() -> None:
    msg, frame = _pos_request()
    assert frame.hex().upper() == POS_FRAME
    assert len(CODE) == PAYMENT_CODE_LENGTH and luhn_ok(CODE)
    assert msg["22"] == "032" and "14" not in msg and "52" not in msg and "35" not in msg
    assert pos_presence_problems(msg) == []
    decoded = codec_for("pos", "3des").decode(frame[13:])
    assert decoded["2"] == CODE and decoded["22"] == "032"


def test_h2h_code_purchase_byte_for_byte() -> None:
    """What the switch sends upstream: DE2 (the code) and DE22 carried as for a keyed card; routed by
    the code's prefix (the BIN); the host reads DE2 as a code because of DE22."""
    msg, _ = _pos_request()
    mapping.set_local_zone("Asia/Shanghai")
    try:
        now = dt.datetime(2025, 11, 25, 10, 10, 10, tzinfo=dt.UTC).timestamp()
        up = mapping.pos_to_h2h(
            msg,
            stan=779,
            de7=mapping.transmission_time(now),
            rrn_value="533010000779",
            acquirer_id="48880000",
            pin_block=None,
            now=now,
        )
    finally:
        mapping.set_local_zone(None)
    codec = codec_for("h2h", "3des")
    raw = codec.encode({**up, "128": bytes(8)})
    raw = codec.with_mac(raw, x919_mac(bytes.fromhex(ZAK), codec.mac_block(raw)))
    assert raw.decode() == H2H_FRAME and len(raw) == 0xB7
    parsed = h2h.parse(codec.decode(raw))
    assert parsed.by_code and parsed.pan == CODE and parsed.request is not None
    assert parsed.request.expiry is None
