"""Golden tests: the contract's public vectors and the POS / H2H worked examples, through HSM commands."""

from __future__ import annotations

import pytest

from hsm_sim import pin
from tests.hsm_sim.helpers import TMK, Hsm, ecb, gm_sm4

PAN = "6212345678901234567"
ACCOUNT = "567890123456"  # 12 rightmost digits of PAN without the check digit

# pos-dialect.md worked examples
POS_DE62_3DES = (
    "524FDC3021F3BA088FADC73C286EA1D4E425ECCD289EC8E772237F20000000000000000092A3A5EE71496EA1E5D2"
    "2ED167BFCD8CF0A8A0685E1DF541"
)
POS_DE62_SM4 = (
    "EC8A8C8CF622941D24CF48811B7520051EA7D5712F63BB8DBFA2492174D5348D1308ABF20A1657D1DC4B670AAAA8"
    "9ECAB5ADC3B31BA7FF1E01B184A8"
)
POS_MSG_3DES = bytes.fromhex(
    "006C60000100006031000000000200702404C000C09811196212345678901234567000000000000001234500077730"
    "120110001254303030303030313839383333303136303132303030313135362BD127874D206D2E2600000000000000"
    "00112200000100003639444236364435"
)
POS_MSG_SM4 = bytes.fromhex(
    "007460000100006031000000000200702404C000C098111962123456789012345670000000000000012345000777301"
    "2011000125430303030303031383938333330313630313230303031313536AB688B587E879B19A6275257400C226E24"
    "0000000000000000112200000100003744303237414330"
)
H2H_MSG = (
    b"0200F238048108C09000000000000000000119621234567890123456700000000000001234511251010100007771810"
    b"101125011000848880000533010000777T3DES00189833016012000115684615C0FB761528E4DD27837C727BFA1"
)


def test_account() -> None:
    assert PAN[:-1][-12:] == ACCOUNT


@pytest.fixture(scope="module")
def hsm() -> Hsm:
    return Hsm()


def _mac_block(frame: bytes) -> bytes:
    """MTI through the byte before DE64: skip LEN(2) + TPDU(5) + header(6), drop the 8 MAC bytes."""
    return frame[13:-8]


# -- contract "Test vectors" ------------------------------------------------------------------------
def test_sm4_vector_via_m0(hsm: Hsm) -> None:
    key = hsm.form_sm4("00A", TMK)
    out = hsm.ok(f"M0001100A{key}0020{TMK}")
    assert out == "0020681EDF34D206965E86B3E94F536E4246"


def test_3des_check_value(hsm: Hsm) -> None:
    out = hsm.ok(f"A42002U{TMK}{'0' * 32}")
    assert out[33:] == "08D7B4FB629D0885"
    assert out[33:39] == "08D7B4"


def test_x919_vector_via_m6(hsm: Hsm) -> None:
    zak = hsm.form("008", TMK)
    data = b"Now is the time for all "
    out = hsm.ok(b"M600131008" + zak.encode() + b"%04X" % len(data) + data)
    assert out == "A1C72E74EA3FA9B6"
    assert hsm.ok(b"M600031008" + zak.encode() + b"%04X" % len(data) + data) == "A1C72E74"


def test_iso_format0_vector() -> None:
    account = "5544332211009966"[:-1][-12:]
    assert pin.encode("1234", account).hex().upper() == "041277CDDEEFF669"
    assert pin.decode(bytes.fromhex("041277CDDEEFF669"), account) == "1234"


def test_iso_format0_vector_through_ca(hsm: Hsm) -> None:
    """CA's output, decrypted independently (pycryptodome), is the contract's clear block."""
    tpk = hsm.form("002", TMK)
    zpk_clear = "89ABCDEF0123456776543210FEDCBA98"
    zpk = hsm.form("001", zpk_clear)
    account = "5544332211009966"[:-1][-12:]
    block = ecb(TMK).encrypt(bytes.fromhex("041277CDDEEFF669")).hex().upper()
    out = hsm.ok(f"CA{tpk}{zpk}12{block}0101{account}")
    assert out[:2] == "04" and out[-2:] == "01"
    assert ecb(zpk_clear).decrypt(bytes.fromhex(out[2:18])).hex().upper() == "041277CDDEEFF669"


# -- POS 3des profile ---------------------------------------------------------------------------------
def test_pos_3des_de62_export_under_tmk(hsm: Hsm) -> None:
    tmk = hsm.form("002", TMK)
    pik = hsm.form("002", "1023456789ABCDEF0123456789ABCDE0")
    tdk = hsm.form("00A", "3123456789ABCDEF1023456789ABCDE3")
    pik_x = hsm.ok(f"A8002{tmk}{pik}X;1")
    tdk_x = hsm.ok(f"A800A{tmk}{tdk}X;1")
    mak = hsm.import_z("003", tmk, POS_DE62_3DES[40:56])
    mak_cv = hsm.ok(f"BU030{mak}")
    de62 = (
        pik_x[1:33] + pik_x[33:41] + POS_DE62_3DES[40:56] + "0" * 16 + mak_cv[:8] + tdk_x[1:33] + tdk_x[33:41]
    )
    assert de62 == POS_DE62_3DES
    # Exported as Z from under the LMK, the MAK gives the same 16H under the TMK
    assert hsm.ok(f"A8003{tmk}{mak}Z;1")[:16] == POS_DE62_3DES[40:56]


def test_pos_3des_a0_mode1_exports_what_the_tmk_decrypts(hsm: Hsm) -> None:
    tmk = hsm.form("002", TMK)
    out = hsm.ok(f"A01002U;1{tmk}X")
    under_lmk, under_tmk, cv = out[:33], out[33:66], out[66:]
    clear = ecb(TMK).decrypt(bytes.fromhex(under_tmk[1:]))
    assert ecb(clear.hex()).encrypt(bytes(8)).hex().upper() == cv
    assert hsm.ok(f"BU021{under_lmk}") == cv
    out = hsm.ok(f"A01003Z;1{tmk}Z")
    under_lmk, under_tmk, cv = out[:16], out[16:32], out[32:]
    clear = ecb(TMK).decrypt(bytes.fromhex(under_tmk))
    assert ecb(clear.hex()).encrypt(bytes(8)).hex().upper() == cv


def test_pos_3des_mac_mu(hsm: Hsm) -> None:
    tmk = hsm.form("002", TMK)
    mak = hsm.import_z("003", tmk, POS_DE62_3DES[40:56])
    block = _mac_block(POS_MSG_3DES)
    assert hsm.ok(b"MU1003" + mak.encode() + b"%04X" % len(block) + block) == "69DB66D5"
    assert POS_MSG_3DES[-8:] == b"69DB66D5"


def test_pos_3des_pin_block_to_h2h_zpk(hsm: Hsm) -> None:
    """The POS PIN block under the PIK, translated (CA) to the H2H ZPK, is the H2H example's block."""
    tpk = hsm.form("002", "1023456789ABCDEF0123456789ABCDE0")
    zpk = hsm.form("001", TMK)
    out = hsm.ok(f"CA{tpk}{zpk}122BD127874D206D2E0101{ACCOUNT}")
    assert out == "0684615C0FB761528E01"


# -- POS sm4 profile ----------------------------------------------------------------------------------
def test_pos_sm4_de62_export_under_tmk(hsm: Hsm) -> None:
    tmk = hsm.form_sm4("002", TMK)
    parts = []
    for key_type, clear in (
        ("002", "11111111111111112222222222222222"),
        ("003", "33333333333333334444444444444444"),
        ("00A", "55555555555555556666666666666666"),
    ):
        key = hsm.form_sm4(key_type, clear)
        out = hsm.ok(f"ST{key_type}{tmk}{key};1")
        parts.append(out[:32] + out[32:40])
    assert "".join(parts) == POS_DE62_SM4


def test_pos_sm4_wi_mode1_exports_what_the_tmk_decrypts(hsm: Hsm) -> None:
    tmk = hsm.form_sm4("002", TMK)
    out = hsm.ok(f"WI1003;1{tmk}")
    under_lmk, under_tmk, cv = out[:33], out[33:65], out[65:]
    clear = gm_sm4(bytes.fromhex(TMK), bytes.fromhex(under_tmk), decrypt=True)
    assert hsm.ok(f"BU031{under_lmk}") == cv
    assert crypto_cv_sm4(clear) == cv
    imported = hsm.ok(f"SV003{tmk}{under_tmk};1")
    assert imported[:33] == under_lmk and imported[33:] == cv


def crypto_cv_sm4(clear: bytes) -> str:
    return gm_sm4(clear, bytes(16))[:8].hex().upper()


def test_pos_sm4_mac_mu(hsm: Hsm) -> None:
    tmk = hsm.form_sm4("002", TMK)
    mak = hsm.ok(f"SV003{tmk}{POS_DE62_SM4[40:72]};1")[:33]
    block = _mac_block(POS_MSG_SM4)
    assert hsm.ok(b"MU2003" + mak.encode() + b"%04X" % len(block) + block) == "7D027AC0"
    assert POS_MSG_SM4[-8:] == b"7D027AC0"


def test_pos_sm4_pin_block_to_h2h_zpk(hsm: Hsm) -> None:
    """W8: SM4 PIK block of the POS example → 3DES ZPK → the H2H example's block."""
    pik = hsm.form_sm4("002", "11111111111111112222222222222222")
    zpk = hsm.form("001", TMK)
    out = hsm.ok(f"W82002{pik}1{zpk}AB688B587E879B19A6275257400C226E{ACCOUNT}")
    assert out == "0684615C0FB761528E"
    # and back to an SM4 ZPK equal to the PIK's clear value: the POS example's block again
    sm4_zpk = hsm.form_sm4("001", "11111111111111112222222222222222")
    assert hsm.ok(f"W81001{zpk}2{sm4_zpk}84615C0FB761528E{ACCOUNT}") == "06AB688B587E879B19A6275257400C226E"


# -- H2H ---------------------------------------------------------------------------------------------
def test_h2h_x919_mac(hsm: Hsm) -> None:
    zak = hsm.form("008", TMK)
    data = H2H_MSG[:-16]
    assert hsm.ok(b"M600131008" + zak.encode() + b"%04X" % len(data) + data) == "4DD27837C727BFA1"
    assert hsm(b"M800131008" + zak.encode() + b"%04X" % len(data) + data + b"4DD27837C727BFA1").error == "00"
    assert hsm(b"M800131008" + zak.encode() + b"%04X" % len(data) + data + b"4DD27837C727BFA0").error == "01"


def test_h2h_pin_block(hsm: Hsm) -> None:
    zpk_clear = TMK
    assert ecb(zpk_clear).encrypt(pin.encode("123456", ACCOUNT)).hex().upper() == "84615C0FB761528E"
    zpk = hsm.form("001", zpk_clear)
    other = hsm.form("001", "1023456789ABCDEF0123456789ABCDE0")
    out = hsm.ok(f"CC{zpk}{other}1284615C0FB761528E0101{ACCOUNT}")
    back = hsm.ok(f"CC{other}{zpk}12{out[2:18]}0101{ACCOUNT}")
    assert back == "0684615C0FB761528E01"
