"""Offline sales (specs/README.md, "Offline sales" [project convention]): the floor table of the 0810's
DE48 and the offline advice, built byte for byte; hypothesis round trips for the floor table codec."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hsm_sim.crypto import des, sm4
from hsm_sim.mac import cup_ecb_mac
from specs.catalogue import (
    MAX_FLOOR_ENTRIES,
    OFFLINE_TYPE_CODE,
    POS_TRANSACTIONS,
    De61,
    FloorLimit,
    TxnType,
    classify_h2h,
    classify_pos,
    floor_limit_for,
    floor_table_de48,
    is_offline_advice,
    parse_floor_table,
)
from specs.codec import codec_for
from specs.framing import pos_frame
from switch import mapping
from tests.specs import macref
from tests.specs.macref import x919_mac

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


# --- worked examples (specs/README.md, "Offline sales"), byte for byte ----------------------------------

DE62_3DES = (  # pos-dialect.md worked example, 3des profile
    "524FDC3021F3BA088FADC73C286EA1D4E425ECCD289EC8E772237F20000000000000000092A3A5EE71496EA1E5D22ED1"
    "67BFCD8CF0A8A0685E1DF541"
)
MAKS = {"3des": "2023456789ABCD02", "sm4": "33333333333333334444444444444444"}  # pos-dialect.md
ZAK = "0123456789ABCDEFFEDCBA9876543210"  # h2h-dialect.md worked example link
TABLE = [FloorLimit("621234", 50_000, 30_000), FloorLimit("621244", 20_000, 30_000)]

SIGN_ON_FRAME = (  # 3des profile: the contract's 0810 with the floor table in DE48
    "00B5" "6000010000" "603100000000" "0810" "003800010AC10014" "000001" "101010" "1125" "08" "48880000"
    "353333303130303030303031" "3030" "5430303030303031" "383938333330313630313230303031"
    "0076" "02" "06" "62123400000" "000000050000" "000000030000"
    "06" "62124400000" "000000020000" "000000030000"
    "0011" "000000020040" "0060" + DE62_3DES
)
ADVICE_BODY = (  # the advice up to its MAC: the same bytes on both profiles
    "0220" "703C048004C08019" "19" "62123456789012345670" "000000" "000000012345" "000790" "093015" "1124"
    "3012" "0120" "00" "593130373930" "5430303030303031" "383938333330313630313230303031" "313536"
    "0011" "360000010000" "0016" "0000010007901124"
)
ADVICE_MACS = {"3des": "43D1AFAA", "sm4": "FC098FE5"}
H2H_FRAME = (  # after the 2-byte length 00D3
    "0220" "F23C04810CC08010" "0000000000000001" "19" "6212345678901234567" "000000" "000000012345"
    "1125101010" "000790" "093015" "1124" "3012" "012" "00" "08" "48880000" "533010000790" "Y10790"
    "T0000001" "898330160120001" "156" "028" "36000001000/0000010007901124" "77FE386F0DB966A6"
)


def _advice() -> dict[str, Any]:
    """The offline sale: 123.45 keyed at 09:30:15 on 24 November, STAN 000790 of batch 000001 at
    T0000001 / 898330160120001, approved offline with code Y10790; its advice goes in batch 000001."""
    return {
        "t": "0220", "2": "6212345678901234567", "3": "000000", "4": "000000012345", "11": "000790",
        "12": "093015", "13": "1124", "14": "3012", "22": "012", "25": "00", "38": "Y10790",
        "41": "T0000001", "42": "898330160120001", "49": "156", "60": "36000001000",
        "61": "0000010007901124",
    }  # fmt: skip


DE62_SM4 = (  # pos-dialect.md worked example, sm4 profile (the same 60 bytes' length)
    "EC8A8C8CF622941D24CF48811B7520051EA7D5712F63BB8DBFA2492174D5348D1308ABF20A1657D1DC4B670AAAA89ECA"
    "B5ADC3B31BA7FF1E01B184A8"
)
# The sm4 profile's 0810 differs only in its keys (DE62) and 60.3 (005: SM4 sign-on).
SIGN_ON_FRAMES = {
    "3des": SIGN_ON_FRAME,
    "sm4": SIGN_ON_FRAME.replace("0011000000020040", "0011000000020050").replace(DE62_3DES, DE62_SM4),
}


@pytest.mark.parametrize("profile", ["3des", "sm4"])
def test_sign_on_floor_table_frame_byte_for_byte(profile: str) -> None:
    codec = codec_for("pos", profile)
    de62, network = (DE62_3DES, "004") if profile == "3des" else (DE62_SM4, "005")
    msg = {"t": "0810", "11": "000001", "12": "101010", "13": "1125", "32": "48880000",
           "37": "533010000001", "39": "00", "41": "T0000001", "42": "898330160120001",
           "48": floor_table_de48(TABLE), "60": f"00000002{network}", "62": bytes.fromhex(de62)}  # fmt: skip
    frame = pos_frame(codec.encode(msg))
    assert frame.hex().upper() == SIGN_ON_FRAMES[profile]
    decoded = codec.decode(frame[13:])
    assert parse_floor_table(decoded["48"]) == TABLE
    assert floor_limit_for(TABLE, "6212345678901234567") == TABLE[0]


@pytest.mark.parametrize("profile", ["3des", "sm4"])
def test_offline_advice_frame_byte_for_byte(profile: str) -> None:
    codec = codec_for("pos", profile)
    raw = codec.encode({**_advice(), "64": bytes(8)})
    mak = bytes.fromhex(MAKS[profile])
    # the terminal's MAC (hsm_sim's crypto, as the pos simulator computes it) is the contract's
    # algorithm computed independently (pycryptodome / gmssl)
    mac = cup_ecb_mac(sm4(mak) if profile == "sm4" else des(mak), codec.mac_block(raw))
    reference = macref.pos_mac_sm4 if profile == "sm4" else macref.pos_mac_3des
    assert mac == reference(mak, codec.mac_block(raw)) == ADVICE_MACS[profile].encode()
    frame = pos_frame(codec.with_mac(raw, mac))
    assert frame.hex().upper() == "0070" "6000010000" "603100000000" + ADVICE_BODY + mac.hex().upper()
    decoded = codec.decode(frame[13:])
    assert classify_pos(decoded["t"], decoded["3"], decoded["25"], decoded["60"]) is TxnType.OFFLINE_SALE
    assert mapping.txn_type(decoded) == "offline" and mapping.is_debit("offline")
    assert str(De61.parse(decoded["61"])) == "000001" "000790" "1124"  # the sale names itself


def test_h2h_offline_advice_byte_for_byte() -> None:
    """What the switch sends upstream: H2H 0220 with the sale's DE12/DE13 (not the switch's clock), the
    terminal's approval code in DE38 and DE60 = POS DE60 + "/" + POS DE61; DE128 with pycryptodome."""
    mapping.set_local_zone("Asia/Shanghai")
    try:
        now = dt.datetime(2025, 11, 25, 10, 10, 10, tzinfo=dt.UTC).timestamp()
        up = mapping.pos_to_h2h(
            _advice(),
            stan=790,
            de7=mapping.transmission_time(now),
            now=now,
            rrn_value="533010000790",
            acquirer_id="48880000",
            pin_block=None,
        )
    finally:
        mapping.set_local_zone(None)
    codec = codec_for("h2h", "3des")
    raw = codec.encode({**up, "128": bytes(8)})
    raw = codec.with_mac(raw, x919_mac(bytes.fromhex(ZAK), codec.mac_block(raw)))
    assert raw.decode() == H2H_FRAME and len(raw) == 0xD3
    assert (up["12"], up["13"], up["38"]) == ("093015", "1124", "Y10790")
    assert up["60"] == "36000001000/0000010007901124"
    assert classify_h2h(up["t"], up["3"], up["25"]) is TxnType.OFFLINE_SALE
    assert is_offline_advice(up["t"], up["3"], up["60"])


def test_the_readme_shows_these_frames() -> None:
    """specs/README.md, "Offline sales", prints exactly the frames built above."""
    readme = (Path(__file__).parents[2] / "specs" / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## Offline sales (issue 19)") :]
    advice = "0070" "6000010000" "603100000000" + ADVICE_BODY
    for frame in (
        SIGN_ON_FRAME,
        advice + ADVICE_MACS["3des"].encode().hex().upper(),
        advice + ADVICE_MACS["sm4"].encode().hex().upper(),
        H2H_FRAME,
    ):
        assert f"`{frame}`" in section
