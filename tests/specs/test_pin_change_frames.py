"""The PIN change's worked examples (specs/README.md, "PIN change" [project convention]) built byte for
byte: the terminal's POS frame with the contract's worked-example keys (pos-dialect.md, 3des profile),
and the H2H request the switch makes of it with the H2H contract's example link keys. PIN blocks and
MACs are cross-checked with pycryptodome, independently of the code that builds the frames."""

from __future__ import annotations

import datetime as dt

from Crypto.Cipher import DES3

from pos import messages
from pos.crypto import KeyCipher
from pos.messages import Card
from specs.catalogue import PIN_CHANGE_NEW_BLOCK, POS_TRANSACTIONS, TxnType, classify_h2h, classify_pos
from specs.codec import codec_for
from specs.framing import pos_frame
from switch import mapping
from tests.specs.macref import x919_mac

PIK = "1023456789ABCDEF0123456789ABCDE0"  # pos-dialect.md worked example, 3des profile
MAK = "2023456789ABCD02"
ZPK = ZAK = "0123456789ABCDEFFEDCBA9876543210"  # h2h-dialect.md worked example link keys
PAN, ACCOUNT = "6212345678901234567", "567890123456"
OLD, NEW = "123456", "654321"

POS_FRAME = (
    "0070" "6000010000" "603100000000" "0200" "602404C000C09815" "19" "6212345678901234567" "0" "960000"
    "000778" "3012" "0110" "00" "12" "5430303030303031" "383938333330313630313230303031" "313536"
    "2BD127874D206D2E" "2600000000000000" "0011" "960000010000" "0008" "EE0DC4C6D5134F4B"
    "4432453838353636"
)
H2H_FRAME = (  # after the 2-byte length 00D3
    "0200" "E23C048108C19010" "0000000000000001" "19" "6212345678901234567" "960000" "1125101010" "000778"
    "181010" "1125" "3012" "011" "00" "08" "48880000" "533010000778" "T0000001" "898330160120001"
    "016" "C781CE93B6AB4BA0" "156" "84615C0FB761528E" "011" "96000001000" "7029036135611175"
)


def _clear_block(pin: str) -> bytes:
    field = int(f"0{len(pin):X}{pin}".ljust(16, "F"), 16)
    return (field ^ int("0000" + ACCOUNT, 16)).to_bytes(8, "big")


def _tdes(key: str, data: bytes) -> bytes:
    out: bytes = DES3.new(bytes.fromhex(key), DES3.MODE_ECB).encrypt(data)
    return out


def _pos_request() -> tuple[dict[str, object], bytes]:
    pik = KeyCipher("3des", bytes.fromhex(PIK))
    msg = messages.pin_change_request(
        stan="000778",
        batch="000001",
        terminal_id="T0000001",
        merchant_id="898330160120001",
        scheme="3des",
        card=Card.keyed(PAN, "3012"),
        old_pin=OLD,
        new_pin=NEW,
        pik=pik,
    )
    codec = codec_for("pos", "3des")
    body = codec.encode(msg)
    body = body[:-8] + KeyCipher("3des", bytes.fromhex(MAK)).pos_mac(body[:-8])
    return msg, pos_frame(body)


def test_pos_pin_change_frame_byte_for_byte() -> None:
    msg, frame = _pos_request()
    assert frame.hex().upper() == POS_FRAME
    # the two blocks: format 0 under the PIK, computed independently
    assert msg["52"] == _tdes(PIK, _clear_block(OLD))  # the contract's example block 2BD1...
    assert msg[PIN_CHANGE_NEW_BLOCK["pos"]] == _tdes(PIK, _clear_block(NEW))
    decoded = codec_for("pos", "3des").decode(frame[13:])
    assert "4" not in decoded and decoded["3"] == "960000" and decoded["60"] == "96000001000"
    assert classify_pos("0200", decoded["3"], decoded["25"], decoded["60"]) is TxnType.PIN_CHANGE
    row = POS_TRANSACTIONS[TxnType.PIN_CHANGE]
    assert (row.mti, row.de3, row.de25, row.de60_1) == ("0200", "960000", "00", "96")


def test_h2h_pin_change_request_byte_for_byte() -> None:
    """What the switch sends upstream: both blocks translated to the link's ZPK (CA), the new one in
    DE48 as hex; MAC'd (DE128) as every H2H financial request on a MAC'd link."""
    msg, _ = _pos_request()
    old_zpk = _tdes(ZPK, _clear_block(OLD))
    new_zpk = _tdes(ZPK, _clear_block(NEW))
    mapping.set_local_zone("Asia/Shanghai")
    try:
        now = dt.datetime(2025, 11, 25, 10, 10, 10, tzinfo=dt.UTC).timestamp()
        up = mapping.pos_to_h2h(
            msg,
            stan=778,
            de7=mapping.transmission_time(now),
            rrn_value="533010000778",
            acquirer_id="48880000",
            pin_block=old_zpk,
            new_pin_block=new_zpk,
            now=now,
        )
    finally:
        mapping.set_local_zone(None)
    codec = codec_for("h2h", "3des")
    raw = codec.encode({**up, "128": bytes(8)})
    raw = codec.with_mac(raw, x919_mac(bytes.fromhex(ZAK), codec.mac_block(raw)))
    assert raw.decode() == H2H_FRAME
    assert up["52"] == bytes.fromhex("84615C0FB761528E")  # the H2H contract's example block
    assert up[PIN_CHANGE_NEW_BLOCK["h2h"]] == new_zpk.hex().upper()
    assert classify_h2h("0200", up["3"], up["25"]) is TxnType.PIN_CHANGE
    assert "62" not in up and "4" not in up
