"""The transaction catalogue against the contracts' tables."""

from __future__ import annotations

import pytest

from specs.catalogue import (
    H2H_TRANSACTIONS,
    POS_TRANSACTIONS,
    RESPONSE_CODES,
    BatchTotals,
    De60,
    De61,
    ResponseCode,
    TxnType,
    UnknownTransaction,
    UploadRecord,
    WorkingKeys,
    balance_de54,
    batch_totals_de48,
    classify_h2h,
    classify_pos,
    describe_response_code,
    echoed_fields,
    format_error_response,
    h2h_de90,
    h2h_key,
    mac_required,
    parse_batch_totals,
    parse_upload_de48,
    request_mti,
    response_mti,
    response_skeleton,
    reversed_pos_type,
    upload_de48,
)
from specs.codec import codec_for
from specs.errors import DecodeError

POS_TABLE = [  # contract "Transactions": type, MTI, DE3, DE25, 60.1, 60.3
    (TxnType.SIGN_ON, "0800", None, None, "00", "004"),
    (TxnType.SIGN_ON, "0800", None, None, "00", "005"),
    (TxnType.SIGN_OFF, "0820", None, None, "00", "002"),
    (TxnType.ECHO, "0820", None, None, "00", "301"),
    (TxnType.BALANCE_INQUIRY, "0200", "310000", "00", "01", "000"),
    (TxnType.PURCHASE, "0200", "000000", "00", "22", "000"),
    (TxnType.TOP_UP, "0200", "210000", "00", "40", "000"),
    (TxnType.VOID, "0200", "200000", "00", "23", "000"),
    (TxnType.REFUND, "0220", "200000", "00", "25", "000"),
    (TxnType.PRE_AUTH, "0100", "030000", "06", "10", "000"),
    (TxnType.PRE_AUTH_VOID, "0100", "200000", "06", "11", "000"),
    (TxnType.PRE_AUTH_COMPLETION, "0200", "000000", "06", "20", "000"),
    (TxnType.BATCH_SETTLEMENT, "0500", None, None, "00", "201"),
    (TxnType.BATCH_UPLOAD, "0320", None, None, "00", "201"),
    (TxnType.BATCH_UPLOAD, "0320", None, None, "00", "202"),
]


@pytest.mark.parametrize(("t", "mti", "de3", "de25", "t60", "nmc"), POS_TABLE)
def test_pos_classification_both_ways(t: TxnType, mti: str, de3: str | None, de25: str | None,
                                      t60: str, nmc: str) -> None:
    de60 = t60 + "000001" + nmc
    assert classify_pos(mti, de3, de25, de60) is t
    assert classify_pos(response_mti(mti), de3, de25, de60) is t
    row = POS_TRANSACTIONS[t]
    assert (row.mti, row.de3, row.de25, row.de60_1) == (mti, de3, de25, t60)
    assert nmc in row.de60_3
    if de3 is not None:
        assert classify_pos("0400", de3, de25, de60) is TxnType.REVERSAL
        assert reversed_pos_type(de3, de25, de60) is t


def test_pos_unknown_combinations() -> None:
    with pytest.raises(UnknownTransaction):
        classify_pos("0200", "000000", "00", "23000001000")  # purchase code with void type
    with pytest.raises(UnknownTransaction):
        classify_pos("0220", "000000", "00", "22000001000")  # purchase code under 0220
    with pytest.raises(UnknownTransaction):
        classify_pos("0800", None, None, "00000001999")
    with pytest.raises(UnknownTransaction):
        reversed_pos_type("999999", "00", "22000001000")


def test_h2h_classification() -> None:
    for (mti, de3, de25), t in H2H_TRANSACTIONS.items():
        assert classify_h2h(mti, de3, de25) is t
        assert classify_h2h(response_mti(mti), de3, de25) is t
    assert classify_h2h("0221", "000000", "06") is TxnType.PRE_AUTH_COMPLETION
    assert classify_h2h("0421", "000000", "00") is TxnType.REVERSAL
    assert classify_h2h("0810", None, None, "101") is TxnType.KEY_CHANGE
    assert h2h_key(TxnType.PURCHASE) == ("0200", "000000", "00")
    with pytest.raises(UnknownTransaction):
        classify_h2h("0800", None, None, "999")


def test_mtis() -> None:
    assert [response_mti(m) for m in ("0100", "0200", "0220", "0221", "0400", "0421", "0500", "0800")] == [
        "0110", "0210", "0230", "0230", "0410", "0430", "0510", "0810"]
    assert request_mti("0230") == "0220"
    with pytest.raises(ValueError):
        response_mti("0210")


def test_response_codes_match_contract_list() -> None:
    assert set(RESPONSE_CODES) == {c.value for c in ResponseCode} == {
        "00", "03", "05", "12", "13", "14", "22", "25", "30", "41", "43", "51", "54", "55", "57", "58",
        "61", "64", "65", "75", "91", "94", "96", "97", "77", "98", "99", "A0"}
    assert {c for c, i in RESPONSE_CODES.items() if i.sign_on_again} == {"77", "A0"}
    assert {c for c, i in RESPONSE_CODES.items() if not i.h2h} == {"A0", "97", "99"}
    assert RESPONSE_CODES["A0"].requirement == 3 and RESPONSE_CODES["00"].approved
    assert describe_response_code("51") == "insufficient funds"
    assert describe_response_code("ZZ") == "unknown response code"
    assert ResponseCode.APPROVED == "00"


def test_mac_required() -> None:
    assert mac_required("0200") and mac_required("0410", "00")
    assert not mac_required("0210", "A0") and not mac_required("0210", "30")
    assert not mac_required("0800") and not mac_required("0500") and not mac_required("0320")


def test_response_skeleton_and_echo() -> None:
    req = {"t": "0200", "2": "6212345678901234567", "3": "000000", "4": "000000012345", "11": "000777",
           "22": "011", "25": "00", "26": "12", "41": "T0000001", "42": "898330160120001", "49": "156",
           "52": b"x" * 8, "60": "22000001000", "64": b"y" * 8}
    resp = response_skeleton("pos", req, ResponseCode.APPROVED)
    assert resp == {"t": "0210", "2": req["2"], "3": "000000", "4": "000000012345", "11": "000777",
                    "25": "00", "41": "T0000001", "42": "898330160120001", "49": "156",
                    "60": "22000001000", "39": "00"}
    assert "48" in echoed_fields("pos", "0500") and "7" in echoed_fields("h2h", "0200")


def test_format_error_response() -> None:
    c = codec_for("pos", "3des")
    raw = bytearray(c.encode({"t": "0200", "3": "000000", "11": "000123", "41": "T0000001",
                              "42": "898330160120001", "49": "156"}))
    raw[12] = 0xAB  # a non-BCD nibble inside DE3
    with pytest.raises(DecodeError) as info:
        c.decode(bytes(raw))
    assert str(info.value) == "DE3: non-BCD nibble"
    assert format_error_response("pos", info.value) == {
        "t": "0210", "11": "000123", "41": "T0000001", "42": "898330160120001", "39": "30"}
    assert format_error_response("pos", DecodeError("t", "unknown MTI")) is None
    assert format_error_response("pos", DecodeError("2", "x", {"t": "0200", "11": "000001"})) is None
    assert format_error_response("h2h", DecodeError("2", "x", {"t": "0200", "11": "000001"})) == {
        "t": "0210", "11": "000001", "39": "30"}
    assert format_error_response("h2h", DecodeError("2", "x", {"t": "0210", "11": "000001"})) is None


def test_subfields() -> None:
    d = De60.parse("22000001000")
    assert (d.type_code, d.batch, d.network_code, d.extra) == ("22", "000001", "000", "")
    assert str(De60("00", "000002", "004")) == "00000002004"
    assert str(De60.parse("2200000100001")) == "2200000100001"
    with pytest.raises(ValueError):
        De60.parse("2200")
    assert De61.parse("0000010007771125") == De61("000001", "000777", "1125")
    with pytest.raises(ValueError):
        De61.parse("123")
    assert balance_de54(98766) == "1002156C000000098766"
    assert balance_de54(-5) == "1002156D000000000005"
    assert h2h_de90("0200", "000777", "1125101010", "48880000") == (
        "0200" "000777" "1125101010" "00048880000" "00000000000")


def test_de62_layouts_against_the_contract_keys() -> None:
    """Decrypt the contract's DE62 with the TMK: the layout puts each key and check value in place."""
    from Crypto.Cipher import DES, DES3
    from gmssl.sm4 import SM4_DECRYPT, SM4_ENCRYPT, CryptSM4

    from tests.specs.test_golden import DE62_3DES, DE62_SM4, TMK

    tmk = bytes.fromhex(TMK)
    keys = WorkingKeys.parse("3des", bytes.fromhex(DE62_3DES))
    assert keys.build("3des").hex().upper() == DE62_3DES
    tdes = DES3.new(tmk, DES3.MODE_ECB)
    pik, mak, tdk = tdes.decrypt(keys.pik), tdes.decrypt(keys.mak), tdes.decrypt(keys.tdk)
    assert pik.hex().upper() == "1023456789ABCDEF0123456789ABCDE0"
    assert mak.hex().upper() == "2023456789ABCD02"
    assert tdk.hex().upper() == "3123456789ABCDEF1023456789ABCDE3"
    assert DES3.new(pik, DES3.MODE_ECB).encrypt(bytes(8))[:4] == keys.pik_cv
    assert DES.new(mak, DES.MODE_ECB).encrypt(bytes(8))[:4] == keys.mak_cv
    assert DES3.new(tdk, DES3.MODE_ECB).encrypt(bytes(8))[:4] == keys.tdk_cv

    keys = WorkingKeys.parse("sm4", bytes.fromhex(DE62_SM4))
    assert keys.build("sm4").hex().upper() == DE62_SM4
    dec, enc = CryptSM4(padding_mode=-1), CryptSM4(padding_mode=-1)  # -1: no padding at all
    dec.set_key(tmk, SM4_DECRYPT)
    clear = {name: bytes(dec.crypt_ecb(getattr(keys, name))) for name in ("pik", "mak", "tdk")}
    assert clear["pik"].hex().upper() == "11111111111111112222222222222222"
    assert clear["mak"].hex().upper() == "33333333333333334444444444444444"
    assert clear["tdk"].hex().upper() == "55555555555555556666666666666666"
    for name, key in clear.items():
        enc.set_key(key, SM4_ENCRYPT)
        assert bytes(enc.crypt_ecb(bytes(16)))[:4] == getattr(keys, f"{name}_cv")

    with pytest.raises(ValueError, match="filler"):
        WorkingKeys.parse("3des", bytes(28) + b"\x01" + bytes(31))
    with pytest.raises(ValueError, match="expected 60"):
        WorkingKeys.parse("sm4", bytes(59))
    with pytest.raises(ValueError):
        WorkingKeys(*(bytes(1),) * 6).build("sm4")


def test_batch_de48_helpers() -> None:
    domestic = BatchTotals(12345, 1, 500, 1, "1")
    de48 = batch_totals_de48(domestic)
    assert de48 == "000000012345001000000000500001" "1" + "0" * 30 + "1"
    assert parse_batch_totals(de48) == (domestic, BatchTotals(result="1"))
    assert parse_batch_totals(de48[:31])[1] == BatchTotals()
    with pytest.raises(ValueError):
        parse_batch_totals("1" * 30)
    records = [UploadRecord("000777", "6212345678901234567", 12345), UploadRecord("000778", "621234", 1)]
    up = upload_de48(records)
    assert up == "02" "00000777" "06212345678901234567" "000000012345" "00000778" + "0" * 14 + "621234" + (
        "000000000001")
    assert parse_upload_de48(up) == records
    codec_for("pos", "3des").encode({"t": "0320", "48": upload_de48(records * 4)})  # 8 records fit n..322
    with pytest.raises(ValueError):
        upload_de48(records * 5)
    with pytest.raises(ValueError):
        parse_upload_de48("01" + "0" * 39)


def test_pos_presence_rules() -> None:
    from specs.catalogue import POS_PRESENCE, pos_presence_problems
    from tests.specs.test_golden import PURCHASE

    request = {**PURCHASE, "52": bytes(8), "64": bytes(8)}
    assert pos_presence_problems(request) == []
    assert pos_presence_problems({k: v for k, v in request.items() if k != "22"}) == ["DE22 missing"]
    assert pos_presence_problems({**request, "39": "00"}) == ["DE39 not allowed in 0200"]
    balance = {**request, "3": "310000", "60": "01000001000"}
    del balance["4"]
    assert pos_presence_problems(balance) == []
    response = response_skeleton("pos", request, ResponseCode.APPROVED) | {
        "12": "101010", "13": "1125", "32": "4888", "37": "533010000777", "64": bytes(8)}
    assert pos_presence_problems(response, request) == []
    no_mac = {k: v for k, v in response.items() if k != "64"}
    assert pos_presence_problems(no_mac) == ["DE64 missing"]
    assert pos_presence_problems({**no_mac, "39": "A0"}) == []
    assert pos_presence_problems({k: v for k, v in response.items() if k != "4"}, request) == [
        "DE4 missing (the request had it)"]
    reversal = {k: v for k, v in request.items() if k not in ("26", "52", "53")} | {"t": "0400", "39": "98"}
    assert pos_presence_problems(reversal) == []
    assert pos_presence_problems({**reversal, "52": bytes(8)}) == ["DE52 not allowed in 0400"]
    assert pos_presence_problems({"t": "0800"}) == []
    assert set(POS_PRESENCE) == {"2", "3", "4", "11", "12", "13", "14", "22", "25", "26", "32", "35", "36",
                                 "37", "38", "39", "41", "42", "49", "52", "53", "54", "55", "60", "61",
                                 "64"}


def test_every_decodable_mti_has_an_answer_the_dialect_encodes() -> None:
    from specs.catalogue import answer_mti, unhandled_code
    from specs.dialects import KNOWN_MTIS

    for dialect, mtis in KNOWN_MTIS.items():
        for mti in mtis:
            assert answer_mti(mti) in mtis, (dialect, mti)
    assert [answer_mti(m) for m in ("0200", "0221", "0410", "0830", "0210")] == [
        "0210", "0230", "0410", "0830", "0210"]
    assert unhandled_code("0410") == "30" and unhandled_code("0600") == "12"
