"""The contact-chip purchase's worked examples (specs/README.md, "Chip data (issue 19)" [project
convention]) built byte for byte on both key profiles: the terminal's POS frame (DE22 051, DE23, DE35,
DE55 with the ARQC) with the contract's worked-example keys (pos-dialect.md), the H2H request the switch
makes of it (DE55 as hex in DE48) on the H2H contract's example link, and the POS 0210 whose DE55 is the
issuer's tag 91 (ARPC || ARC) taken from the host answer's DE48. The ARQC and ARPC are cross-checked by
an independent implementation written here (pycryptodome DES3 for 3des, gmssl SM4 for sm4), never
calling hsm_sim.emv; PIN blocks and MACs likewise (tests/specs/macref.py)."""

from __future__ import annotations

import datetime as dt

import pytest
from Crypto.Cipher import DES, DES3
from gmssl.sm4 import SM4_ENCRYPT, CryptSM4

from hsm_sim.emv import Algorithm  # the type only: the cryptography here is the test's own
from pos import messages
from pos.chip import ChipCard, ChipRequest, build_request, check_issuer
from pos.crypto import KeyCipher, Scheme
from pos.messages import KINDS, Card
from specs import tlv
from specs.catalogue import pos_presence_problems
from specs.codec import codec_for
from specs.framing import pos_frame
from specs.pretty import chip_lines, render
from switch import mapping
from tests.specs.macref import pos_mac_3des, pos_mac_sm4, x919_mac

IMK_AC = "0123456789ABCDEFFEDCBA9876543210"  # 3des IMK-AC; the same 16 bytes as the SM4 IMK-AC
PAN, EXPIRY, PSN, ATC = "6212345678901234567", "3012", "01", b"\x00\x01"
UNPREDICTABLE = bytes.fromhex("12345678")
DAY = dt.date(2025, 11, 25)
NOW = dt.datetime(2025, 11, 25, 10, 10, 10, tzinfo=dt.UTC).timestamp()  # 18:10:10 in Shanghai
ZAK = ZPK = "0123456789ABCDEFFEDCBA9876543210"  # h2h-dialect.md worked example link keys
KEYS = {  # pos-dialect.md worked examples: (PIK, MAK, the contract's PIN block of PIN 123456)
    "3des": ("1023456789ABCDEF0123456789ABCDE0", "2023456789ABCD02", "2BD127874D206D2E"),
    "sm4": (
        "11111111111111112222222222222222",
        "33333333333333334444444444444444",
        "AB688B587E879B19A6275257400C226E",
    ),
}
H2H_PIN_BLOCK = "84615C0FB761528E"  # h2h-dialect.md worked example: PIN 123456 under the link ZPK

EXPECTED: dict[str, dict[str, str]] = {  # the frames, LEN first (H2H: after its 2-byte length)
    "3des": {
        "pos": (
            "00EC60000100006031000000000200302006C020C09A1100000000000000250000078205100001001232621234"
            "5678901234567D30122200000054303030303030313839383333303136303132303030313135362BD127874D20"
            "6D2E260000000000000001209F02060000000025009F03060000000000009F1A020156950500000000005F2A02"
            "01569A032511259C01009F37041234567882027C009F360200019F100807010103A00000019F260889DCBE4079"
            "5C3D619F2701805F3401018408A0000003330101019F3303E0E1C89F34034203029F3501229F09020030001122"
            "00000100003338434438313741"
        ),
        "h2h": (
            "0200F238048128C190100000000000000001196212345678901234567000000000000002500112510101000078"
            "21810101125051000848880000326212345678901234567=301222000000533010000782T00000018983301601"
            "200012409F02060000000025009F03060000000000009F1A020156950500000000005F2A0201569A032511259C"
            "01009F37041234567882027C009F360200019F100807010103A00000019F260889DCBE40795C3D619F2701805F"
            "3401018408A0000003330101019F3303E0E1C89F34034203029F3501229F0902003015684615C0FB761528E011"
            "22000001000B24A407FDCF08DDC"
        ),
        "answer": (
            "007F60000100006031000000000210303A00810EC0821300000000000000250000078218101011251125000848"
            "880000353333303130303030373832313233343536303054303030303030313839383333303136303132303030"
            "313135360012910A138486F6A79096EC3030001122000001000000034355503937443346333741"
        ),
    },
    "sm4": {
        "pos": (
            "00F460000100006031000000000200302006C020C09A1100000000000000250000078205100001001232621234"
            "5678901234567D3012220000005430303030303031383938333330313630313230303031313536AB688B587E87"
            "9B19A6275257400C226E240000000000000001209F02060000000025009F03060000000000009F1A0201569505"
            "00000000005F2A0201569A032511259C01009F37041234567882027C009F360200019F100807010403A0000001"
            "9F2608ECAE59F4336250D59F2701805F3401018408A0000003330101019F3303E0E1C89F34034203029F350122"
            "9F0902003000112200000100004637323441354337"
        ),
        "h2h": (
            "0200F238048128C190100000000000000001196212345678901234567000000000000002500112510101000078"
            "21810101125051000848880000326212345678901234567=301222000000533010000782T00000018983301601"
            "200012409F02060000000025009F03060000000000009F1A020156950500000000005F2A0201569A032511259C"
            "01009F37041234567882027C009F360200019F100807010403A00000019F2608ECAE59F4336250D59F2701805F"
            "3401018408A0000003330101019F3303E0E1C89F34034203029F3501229F0902003015684615C0FB761528E011"
            "220000010005C5452EDF64DD181"
        ),
        "answer": (
            "007F60000100006031000000000210303A00810EC0821300000000000000250000078218101011251125000848"
            "880000353333303130303030373832313233343536303054303030303030313839383333303136303132303030"
            "313135360012910A180D6A9B703C55A93030001122000001000000034355503541394242323836"
        ),
    },
}


# --- the independent cryptography ---------------------------------------------------------------------


def _xor(a: bytes, b: bytes) -> bytes:
    return bytes(x ^ y for x, y in zip(a, b, strict=True))


def _sm4(key: bytes, block: bytes) -> bytes:
    cipher = CryptSM4()
    cipher.set_key(key, SM4_ENCRYPT)
    return bytes(cipher.crypt_ecb(block))[:16]  # gmssl pads a whole block more: the first is ours


def _tdes(key: bytes, block: bytes) -> bytes:
    out: bytes = DES3.new(key, DES3.MODE_ECB).encrypt(block)
    return out


def _pad2(data: bytes, size: int) -> bytes:
    data += b"\x80"
    return data + bytes(-len(data) % size)


def reference_arqc(alg: str, imk: bytes, pan: str, psn: str, atc: bytes, data: bytes) -> bytes:
    """EMV option A card key, common session key, ARQC (retail MAC / SM4 CBC-MAC, padding method 2)."""
    y = bytes.fromhex((pan + psn)[-16:])
    if alg == "3des":
        mk = _tdes(imk, y) + _tdes(imk, _xor(y, b"\xff" * 8))
        sk = _tdes(mk, atc + b"\xf0" + bytes(5)) + _tdes(mk, atc + b"\x0f" + bytes(5))
        k1, k2 = DES.new(sk[:8], DES.MODE_ECB), DES.new(sk[8:], DES.MODE_ECB)
        h = bytes(8)
        padded = _pad2(data, 8)
        for i in range(0, len(padded), 8):
            h = k1.encrypt(_xor(h, padded[i : i + 8]))
        out: bytes = k1.encrypt(k2.decrypt(h))
        return out
    mk = _sm4(imk, y + _xor(y, b"\xff" * 8))
    sk = _sm4(mk, atc + b"\xf0" + bytes(13))
    h = bytes(16)
    padded = _pad2(data, 16)
    for i in range(0, len(padded), 16):
        h = _sm4(sk, _xor(h, padded[i : i + 16]))
    return h[:8]


def reference_arpc(alg: str, imk: bytes, pan: str, psn: str, atc: bytes, arqc: bytes, arc: bytes) -> bytes:
    """ARPC method 1 under the same session key."""
    y = bytes.fromhex((pan + psn)[-16:])
    x = _xor(arqc, arc + bytes(6))
    if alg == "3des":
        mk = _tdes(imk, y) + _tdes(imk, _xor(y, b"\xff" * 8))
        sk = _tdes(mk, atc + b"\xf0" + bytes(5)) + _tdes(mk, atc + b"\x0f" + bytes(5))
        return _tdes(sk, x)
    mk = _sm4(imk, y + _xor(y, b"\xff" * 8))
    sk = _sm4(mk, atc + b"\xf0" + bytes(13))
    return _sm4(sk, x + bytes(8))[:8]


# --- the frames -------------------------------------------------------------------------------------


def _card(alg: str) -> ChipCard:
    algorithm: Algorithm = "3des" if alg == "3des" else "sm4"
    return ChipCard.personalise(algorithm, bytes.fromhex(IMK_AC), PAN, EXPIRY, PSN)


def _pos_request(profile: str) -> tuple[dict[str, object], bytes]:
    pik, mak, _ = KEYS[profile]
    scheme: Scheme = "3des" if profile == "3des" else "sm4"
    card = _card(profile)
    chip = build_request(card, atc=ATC, amount=2_500, txn_type="00", when=DAY, unpredictable=UNPREDICTABLE)
    msg = messages.financial_request(
        KINDS["purchase"],
        stan="000782",
        batch="000001",
        terminal_id="T0000001",
        merchant_id="898330160120001",
        scheme=scheme,
        card=Card(PAN, track2=card.track2, mode="05", psn=PSN),
        amount=2_500,
        pin="123456",
        pik=KeyCipher(scheme, bytes.fromhex(pik)),
        de55=chip.de55,
    )
    body = codec_for("pos", profile).encode(msg)
    body = body[:-8] + KeyCipher(scheme, bytes.fromhex(mak)).pos_mac(body[:-8])
    return msg, pos_frame(body)


def _h2h_request(msg: dict[str, object]) -> bytes:
    mapping.set_local_zone("Asia/Shanghai")
    try:
        up = mapping.pos_to_h2h(
            msg,
            stan=782,
            de7=mapping.transmission_time(NOW),
            rrn_value="533010000782",
            acquirer_id="48880000",
            pin_block=bytes.fromhex(H2H_PIN_BLOCK),
            now=NOW,
        )
    finally:
        mapping.set_local_zone(None)
    codec = codec_for("h2h", "3des")
    raw = codec.encode({**up, "128": bytes(8)})
    return codec.with_mac(raw, x919_mac(bytes.fromhex(ZAK), codec.mac_block(raw)))


def _issuer_de48(profile: str, arqc: bytes) -> str:
    arpc = reference_arpc(profile, bytes.fromhex(IMK_AC), PAN, PSN, ATC, arqc, b"00")
    return mapping.chip_de48(tlv.encode({"91": arpc + b"00"}))


def _pos_answer(profile: str, msg: dict[str, object], host_de48: str) -> bytes:
    mapping.set_local_zone("Asia/Shanghai")
    try:
        reply = mapping.pos_response(
            msg,
            code="00",
            rrn_value="533010000782",
            auth_id="123456",
            acquirer_id="48880000",
            settlement_date="1125",
            now=NOW,
        )
    finally:
        mapping.set_local_zone(None)
    chip = mapping.chip_answer(host_de48)
    assert chip is not None
    reply["55"] = chip
    _, mak, _ = KEYS[profile]
    scheme: Scheme = "3des" if profile == "3des" else "sm4"
    body = codec_for("pos", profile).encode({**reply, "64": bytes(8)})
    body = body[:-8] + KeyCipher(scheme, bytes.fromhex(mak)).pos_mac(body[:-8])
    return pos_frame(body)


def _arqc_of(msg: dict[str, object]) -> tuple[bytes, bytes]:
    de55 = msg["55"]
    assert isinstance(de55, bytes)
    values = tlv.as_dict(tlv.decode(de55))
    return values["9F26"], tlv.arqc_data(values)


# --- tests --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("profile", ["3des", "sm4"])
def test_pos_chip_purchase_frame(profile: str) -> None:
    msg, frame = _pos_request(profile)
    assert frame.hex().upper() == EXPECTED[profile]["pos"]
    assert msg["22"] == "051" and msg["23"] == "001" and "2" not in msg and pos_presence_problems(msg) == []
    assert msg["52"] == bytes.fromhex(KEYS[profile][2])  # the contract's PIN block
    de55 = msg["55"]
    assert isinstance(de55, bytes)
    tags = [t.tag for t in tlv.decode(de55)]
    assert tags == [*tlv.ARQC_TAGS, "9F26", "9F27", "5F34", "84", "9F33", "9F34", "9F35", "9F09"]
    values = tlv.as_dict(tlv.decode(de55))
    assert values["9F27"] == b"\x80" and values["5F34"] == b"\x01" and values["9F36"] == ATC
    arqc, data = _arqc_of(msg)
    assert arqc == reference_arqc(profile, bytes.fromhex(IMK_AC), PAN, PSN, ATC, data)
    body = frame[13:]
    mac = (pos_mac_3des if profile == "3des" else pos_mac_sm4)(bytes.fromhex(KEYS[profile][1]), body[:-8])
    assert body[-8:] == mac
    assert codec_for("pos", profile).decode(body)["55"] == de55


@pytest.mark.parametrize("profile", ["3des", "sm4"])
def test_h2h_chip_request(profile: str) -> None:
    """The switch sends DE55 as upper-case hex in H2H DE48 (H2H has no DE55, nor DE23)."""
    msg, _ = _pos_request(profile)
    raw = _h2h_request(msg)
    assert raw.decode() == EXPECTED[profile]["h2h"]
    up = codec_for("h2h", "3des").decode(raw)
    de55 = msg["55"]
    assert isinstance(de55, bytes) and up["48"] == de55.hex().upper()
    assert up["22"] == "051" and up["35"] == _card(profile).track2 and "23" not in up


@pytest.mark.parametrize("profile", ["3des", "sm4"])
def test_pos_chip_answer_frame(profile: str) -> None:
    msg, _ = _pos_request(profile)
    arqc, _ = _arqc_of(msg)
    host_de48 = _issuer_de48(profile, arqc)
    frame = _pos_answer(profile, msg, host_de48)
    assert frame.hex().upper() == EXPECTED[profile]["answer"]
    body = frame[13:]
    mac = (pos_mac_3des if profile == "3des" else pos_mac_sm4)(bytes.fromhex(KEYS[profile][1]), body[:-8])
    assert body[-8:] == mac
    answer = codec_for("pos", profile).decode(body)
    tag91 = tlv.as_dict(tlv.decode(answer["55"]))["91"]
    assert tag91[8:] == b"00"
    # the card's own check (pos.chip) accepts it: the ARPC is the issuer's
    de55 = msg["55"]
    assert isinstance(de55, bytes)
    assert check_issuer(_card(profile), ChipRequest(de55, ATC, arqc), answer["55"]) == ("verified", "00")


def test_iso_decode_shows_chip_data_tag_by_tag_never_the_track() -> None:
    msg, frame = _pos_request("3des")
    codec = codec_for("pos", "3des")
    decoded = codec.decode(frame[13:])
    text = render(codec, decoded)
    assert "9F26 Application cryptogram (ARQC / TC / AAC): " in text
    assert "9F02 Amount, authorised: 000000002500" in text
    assert PAN not in text
    raw = _h2h_request(msg)
    h2h = codec_for("h2h", "3des")
    up = h2h.decode(raw)
    assert "48" in chip_lines(h2h, up) and "9F26" in render(h2h, up)
    assert PAN not in render(h2h, up)


def test_readme_shows_these_frames() -> None:
    from pathlib import Path

    readme = (Path(__file__).parents[2] / "specs" / "README.md").read_text()
    for frames in EXPECTED.values():
        for frame in frames.values():
            assert frame in readme


def test_pos_trace_shows_chip_data_tag_by_tag_never_the_track() -> None:
    from pos.trace import render as trace

    msg, _ = _pos_request("sm4")
    text = trace(">>", msg, "sm4")
    assert "9F26 Application cryptogram (ARQC / TC / AAC): ECAE59F4336250D5" in text
    assert PAN not in text and "[track data" in text
