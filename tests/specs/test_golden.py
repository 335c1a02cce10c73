"""Golden byte vectors built by hand from the contracts, field by field.

Each vector is checked four ways: the fast codec encodes the dict to exactly these bytes, decodes the
bytes to exactly this dict, pyiso8583 (the oracle) encodes the same bytes from the same spec, and,
where the message has a MAC, the contract's MAC algorithm over ``mac_block`` gives DE64/DE128.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import iso8583
import pytest

from specs.codec import codec_for
from specs.dialects import from_pyiso8583, to_pyiso8583
from specs.framing import PosFrame, decode_pos, frame
from tests.specs import macref


def hx(*parts: str) -> bytes:
    """Hex parts (one per field, spaces allowed) -> bytes."""
    return bytes.fromhex("".join(parts).replace(" ", ""))


def asc(text: str) -> str:
    return text.encode("ascii").hex()


TMK = "0123456789ABCDEFFEDCBA9876543210"
MAK_3DES = bytes.fromhex("2023456789ABCD02")
MAK_SM4 = bytes.fromhex("33333333333333334444444444444444")
ZAK = bytes.fromhex("0123456789ABCDEFFEDCBA9876543210")

# --- the contract's worked examples (complete frames) ---------------------------------------------------

POS_3DES_FRAME = bytes.fromhex(
    "006C60000100006031000000000200702404C000C0981119621234567890123456700000000000000123450007773012"
    "0110001254303030303030313839383333303136303132303030313135362BD127874D206D2E26000000000000000011"
    "2200000100003639444236364435"
)
POS_SM4_FRAME = bytes.fromhex(
    "007460000100006031000000000200702404C000C0981119621234567890123456700000000000000123450007773012"
    "011000125430303030303031383938333330313630313230303031313536AB688B587E879B19A6275257400C226E2400"
    "00000000000000112200000100003744303237414330"
)
H2H_0200 = (
    b"0200F238048108C09000000000000000000119621234567890123456700000000000001234511251010100007771810"
    b"101125011000848880000533010000777T3DES00189833016012000115684615C0FB761528E4DD27837C727BFA1"
)

PURCHASE: dict[str, Any] = {
    "t": "0200", "2": "6212345678901234567", "3": "000000", "4": "000000012345", "11": "000777",
    "14": "3012", "22": "011", "25": "00", "26": "12", "41": "T0000001", "42": "898330160120001",
    "49": "156", "53": "2600000000000000", "60": "22000001000",
}


def test_pos_3des_worked_example_frame() -> None:
    assert int.from_bytes(POS_3DES_FRAME[:2]) == len(POS_3DES_FRAME) - 2 == 0x6C
    c = codec_for("pos", "3des")
    pf, msg = decode_pos(c, POS_3DES_FRAME[2:])
    assert pf.tpdu == hx("60 0001 0000") and pf.header == hx("60 31 00 000000")
    assert msg == {**PURCHASE, "52": hx("2BD127874D206D2E"), "64": b"69DB66D5"}
    assert frame(pf.tpdu + pf.header + c.encode(msg)) == POS_3DES_FRAME
    assert macref.pos_mac_3des(MAK_3DES, c.mac_block(pf.message)) == msg["64"]


def test_pos_sm4_worked_example_frame() -> None:
    assert int.from_bytes(POS_SM4_FRAME[:2]) == len(POS_SM4_FRAME) - 2 == 0x74
    c = codec_for("pos", "sm4")
    pf, msg = decode_pos(c, POS_SM4_FRAME[2:])
    assert msg == {**PURCHASE, "53": "2400000000000000",
                   "52": hx("AB688B587E879B19A6275257400C226E"), "64": b"7D027AC0"}
    assert frame(pf.tpdu + pf.header + c.encode(msg)) == POS_SM4_FRAME
    assert macref.pos_mac_sm4(MAK_SM4, c.mac_block(pf.message)) == msg["64"]


def test_h2h_worked_example() -> None:
    c = codec_for("h2h", "3des")
    msg = c.decode(H2H_0200)
    assert len(H2H_0200) == 0xBA
    assert msg == {
        "t": "0200", "2": "6212345678901234567", "3": "000000", "4": "000000012345", "7": "1125101010",
        "11": "000777", "12": "181010", "13": "1125", "22": "011", "25": "00", "32": "48880000",
        "37": "533010000777", "41": "T3DES001", "42": "898330160120001", "49": "156",
        "52": hx("84615C0FB761528E"), "128": hx("4DD27837C727BFA1"),
    }
    assert c.encode(msg) == H2H_0200
    assert macref.x919_mac(ZAK, c.mac_block(H2H_0200)) == msg["128"]


# --- hand-built vectors ---------------------------------------------------------------------------------

TID, MID = asc("T0000001"), asc("898330160120001")
DE62_3DES = ("524FDC3021F3BA088FADC73C286EA1D4E425ECCD289EC8E772237F20000000000000000092A3A5EE71496EA1E5D22"
             "ED167BFCD8CF0A8A0685E1DF541")
DE62_SM4 = ("EC8A8C8CF622941D24CF48811B7520051EA7D5712F63BB8DBFA2492174D5348D1308ABF20A1657D1DC4B670AAAA89"
            "ECAB5ADC3B31BA7FF1E01B184A8")
DE48_0500 = "000000012345" "001" "000000000000" "000" "0" + "0" * 31
DE48_0510 = "000000012345" "001" "000000000000" "000" "1" + "0" * 30 + "1"
DE48_0320 = "01" + "00" "000777" "06212345678901234567" "000000012345"

Vector = tuple[str, str, dict[str, Any], bytes, Callable[[bytes, bytes], bytes] | None, bytes]

VECTORS: list[Vector] = [
    ("pos", "3des", {"t": "0800", "11": "000001", "41": "T0000001", "42": "898330160120001",
                     "60": "00000001004", "63": "01 "},
     hx("0800", "0020000000C00012", "000001", TID, MID, "0011 000000010040", "0003", asc("01 ")),
     None, b""),
    ("pos", "3des", {"t": "0810", "11": "000001", "12": "101010", "13": "1125", "32": "48880000",
                     "37": "533010000001", "39": "00", "41": "T0000001", "42": "898330160120001",
                     "60": "00000002004", "62": bytes.fromhex(DE62_3DES)},
     hx("0810", "003800010AC00014", "000001", "101010", "1125", "08 48880000", asc("533010000001"),
        asc("00"), TID, MID, "0011 000000020040", "0060", DE62_3DES),
     None, b""),
    ("pos", "sm4", {"t": "0810", "11": "000001", "12": "101010", "13": "1125", "32": "48880000",
                    "37": "533010000001", "39": "00", "41": "T0000001", "42": "898330160120001",
                    "60": "00000002005", "62": bytes.fromhex(DE62_SM4)},
     hx("0810", "003800010AC00014", "000001", "101010", "1125", "08 48880000", asc("533010000001"),
        asc("00"), TID, MID, "0011 000000020050", "0060", DE62_SM4),
     None, b""),
    # 0210 approved purchase: odd-length DE32 would be right-padded; 8 digits here.
    ("pos", "3des", {"t": "0210", "2": "6212345678901234567", "3": "000000", "4": "000000012345",
                     "11": "000777", "12": "181010", "13": "1125", "25": "00", "32": "48880000",
                     "37": "533010000777", "38": "A12345", "39": "00", "41": "T0000001",
                     "42": "898330160120001", "49": "156", "60": "22000001000", "64": b"32EDA9F1"},
     hx("0210", "703800810EC08011", "19 62123456789012345670", "000000", "000000012345", "000777",
        "181010", "1125", "00", "08 48880000", asc("533010000777"), asc("A12345"), asc("00"), TID, MID,
        asc("156"), "0011 220000010000", asc("32EDA9F1")),
     macref.pos_mac_3des, MAK_3DES),
    # 0400 reversal of the keyed purchase: no 26/52/53, DE39 = 98 (no response).
    ("pos", "3des", {"t": "0400", "2": "6212345678901234567", "3": "000000", "4": "000000012345",
                     "11": "000777", "14": "3012", "22": "011", "25": "00", "39": "98",
                     "41": "T0000001", "42": "898330160120001", "49": "156", "60": "22000001000",
                     "64": b"08AE14B5"},
     hx("0400", "7024048002C08011", "19 62123456789012345670", "000000", "000000012345", "000777", "3012",
        "0110", "00", asc("98"), TID, MID, asc("156"), "0011 220000010000", asc("08AE14B5")),
     macref.pos_mac_3des, MAK_3DES),
    # swiped sm4 purchase: track 2 with '=' sent as D, odd length (37 nibbles) right-padded; DE23.
    ("pos", "sm4", {"t": "0200", "3": "000000", "4": "000000000100", "11": "000778", "22": "021",
                    "23": "001", "25": "00", "35": "6212345678901234567=30121011234567890",
                    "41": "T0000001", "42": "898330160120001", "49": "156", "60": "22000001000"},
     hx("0200", "3020068020C08010", "000000", "000000000100", "000778", "0210", "0001", "00",
        "37 6212345678901234567D301210112345678900", TID, MID, asc("156"), "0011 220000010000"),
     None, b""),
    ("pos", "3des", {"t": "0500", "11": "000780", "41": "T0000001", "42": "898330160120001",
                     "48": DE48_0500, "49": "156", "60": "00000001201", "63": "01 "},
     hx("0500", "0020000000C18012", "000780", TID, MID, "0062", DE48_0500, asc("156"),
        "0011 000000012010", "0003", asc("01 ")),
     None, b""),
    ("pos", "3des", {"t": "0510", "11": "000780", "12": "181010", "13": "1125", "15": "1125",
                     "32": "48880000", "37": "533010000780", "39": "00", "41": "T0000001",
                     "42": "898330160120001", "48": DE48_0510, "49": "156", "60": "00000001201"},
     hx("0510", "003A00010AC18010", "000780", "181010", "1125", "1125", "08 48880000", asc("533010000780"),
        asc("00"), TID, MID, "0062", DE48_0510, asc("156"), "0011 000000012010"),
     None, b""),
    ("pos", "3des", {"t": "0320", "11": "000781", "41": "T0000001", "42": "898330160120001",
                     "48": DE48_0320, "60": "00000001202"},
     hx("0320", "0020000000C10010", "000781", TID, MID, "0042", DE48_0320, "0011 000000012020"),
     None, b""),
    # H2H 0210: secondary bitmap only for DE128.
    ("h2h", "3des", {"t": "0210", "2": "6212345678901234567", "3": "000000", "4": "000000012345",
                     "7": "1125101010", "11": "000777", "12": "181010", "13": "1125", "25": "00",
                     "32": "48880000", "37": "533010000777", "38": "A12345", "39": "00",
                     "41": "T3DES001", "42": "898330160120001", "49": "156",
                     "128": hx("2A0B35F9A0A86FF9")},
     b"0210" b"F23800810EC08000" b"0000000000000001" b"19" b"6212345678901234567" b"000000" b"000000012345"
     b"1125101010" b"000777" b"181010" b"1125" b"00" b"08" b"48880000" b"533010000777" b"A12345" b"00"
     b"T3DES001" b"898330160120001" b"156" b"2A0B35F9A0A86FF9",
     macref.x919_mac, ZAK),
    # H2H 0400 reversal identifying the original through DE90.
    ("h2h", "3des", {"t": "0400", "2": "6212345678901234567", "3": "000000", "4": "000000012345",
                     "7": "1125101510", "11": "000778", "12": "181010", "13": "1125", "22": "011",
                     "25": "00", "32": "48880000", "37": "533010000777", "41": "T3DES001",
                     "42": "898330160120001", "49": "156",
                     "90": "0200" "000777" "1125101010" "00048880000" "00000000000",
                     "128": hx("1734222757106840")},
     b"0400" b"F238048108C08000" b"0000004000000001" b"19" b"6212345678901234567" b"000000" b"000000012345"
     b"1125101510" b"000778" b"181010" b"1125" b"011" b"00" b"08" b"48880000" b"533010000777" b"T3DES001"
     b"898330160120001" b"156" b"020000077711251010100004888000000000000000" b"1734222757106840",
     macref.x919_mac, ZAK),
    # H2H echo: secondary bitmap for DE70, no MAC; sm4 link.
    ("h2h", "sm4", {"t": "0800", "7": "1125101010", "11": "000001", "70": "301"},
     b"0800" b"8220000000000000" b"0400000000000000" b"1125101010" b"000001" b"301",
     None, b""),
    # H2H sm4 PIN block: 32 hex characters.
    ("h2h", "sm4", {"t": "0200", "3": "000000", "11": "000002", "52": bytes(range(16))},
     b"0200" b"2020000000001000" b"000000" b"000002" b"000102030405060708090A0B0C0D0E0F",
     None, b""),
]


@pytest.mark.parametrize(("dialect", "profile", "msg", "raw", "mac", "key"), VECTORS,
                         ids=[f"{v[0]}-{v[1]}-{v[2]['t']}-{i}" for i, v in enumerate(VECTORS)])
def test_vector(dialect: str, profile: str, msg: dict[str, Any], raw: bytes,
                mac: Callable[[bytes, bytes], bytes] | None, key: bytes) -> None:
    c = codec_for(dialect, profile)
    assert c.encode(msg) == raw
    assert c.decode(raw) == msg
    oracle_raw, _ = iso8583.encode(to_pyiso8583(msg, c.spec), c.spec)
    assert bytes(oracle_raw) == raw
    doc, _ = iso8583.decode(raw, c.spec)
    assert from_pyiso8583(doc, c.spec) == msg
    if mac is not None:
        mac_field = "64" if dialect == "pos" else "128"
        assert mac(key, c.mac_block(raw)) == msg[mac_field]
        assert c.with_mac(raw, msg[mac_field]) == raw


def test_with_mac_fills_placeholder() -> None:
    c = codec_for("pos", "3des")
    request = {**PURCHASE, "52": hx("2BD127874D206D2E"), "64": bytes(8)}
    raw = c.encode(request)
    raw = c.with_mac(raw, macref.pos_mac_3des(MAK_3DES, c.mac_block(raw)))
    assert raw == POS_3DES_FRAME[13:]


def test_pos_response_frame_swaps_tpdu_and_sets_requirement() -> None:
    pf = PosFrame.parse(POS_3DES_FRAME[2:])
    wire = pf.respond(b"\x02\x10", requirement=3)
    assert wire == hx("000D", "60 0000 0001", "60 31 03 000000", "0210")
