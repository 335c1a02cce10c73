"""The switch's chip carriage (specs/README.md, "Chip data (issue 19)"): POS DE55 up as hex in H2H DE48,
the issuer's DE48 back as the POS answer's DE55, nothing else taken for chip data."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from specs import tlv
from specs.codec import codec_for
from switch import mapping

CHIP = tlv.encode({"9F26": bytes(range(8)), "9F27": b"\x80", "5F34": b"\x01"})


def _purchase(**extra: object) -> dict[str, object]:
    return {
        "t": "0200",
        "3": "000000",
        "4": "000000002500",
        "11": "000782",
        "22": "051",
        "23": "001",
        "25": "00",
        "35": "6212345678901234567=301222000000",
        "41": "T0000001",
        "42": "898330160120001",
        "49": "156",
        "60": "22000001000",
        **extra,
    }


def _up(req: dict[str, object], new_pin_block: bytes | None = None) -> dict[str, object]:
    return mapping.pos_to_h2h(
        req, stan=1, de7="1125101010", rrn_value="533010000001", acquirer_id="48880000", pin_block=None,
        new_pin_block=new_pin_block,
    )


def test_chip_request_carries_de55_as_upper_hex_in_de48() -> None:
    up = _up(_purchase(**{"55": CHIP}))
    assert up["48"] == CHIP.hex().upper() and "55" not in up and "23" not in up
    codec_for("h2h", "3des").encode({**up, "128": bytes(8)})


def test_no_chip_no_de48() -> None:
    assert "48" not in _up(_purchase())


def test_pin_change_carries_its_new_block_not_chip_data() -> None:
    req = _purchase(**{"3": "960000", "55": CHIP})
    up = _up(req, new_pin_block=bytes.fromhex("C781CE93B6AB4BA0"))
    assert up["48"] == "C781CE93B6AB4BA0"
    assert not mapping.carries_chip(req) and "48" not in _up(req)


def test_the_longest_de55_fits_h2h_de48() -> None:
    big = tlv.encode({"DF31": bytes(251)})
    assert len(big) == mapping.CHIP_MAX_BYTES == 255
    codec_for("pos", "3des").encode({**_purchase(**{"55": big}), "64": bytes(8)})
    up = _up(_purchase(**{"55": big}))
    assert len(str(up["48"])) == 510
    assert codec_for("h2h", "3des").decode(codec_for("h2h", "3des").encode(up))["48"] == big.hex().upper()


def test_chip_answer() -> None:
    answer = tlv.encode({"91": bytes(8) + b"00", "8A": b"00"})
    assert mapping.chip_answer(answer.hex().upper()) == answer
    assert mapping.chip_answer(answer.hex()) == answer  # lower-case hex is read too
    for bad in (None, "", "91", "ZZ", "910A00", answer.hex()[:-1], " ".join(answer.hex()), 7,
                tlv.encode({"DF31": bytes(300)}).hex()):
        assert mapping.chip_answer(bad) is None, bad


@given(st.text(max_size=80))
def test_chip_answer_never_raises(text: str) -> None:
    result = mapping.chip_answer(text)
    assert result is None or tlv.decode(result) is not None


def test_response_de55_is_replayable() -> None:
    reply = mapping.pos_response(_purchase(**{"55": CHIP}), code="00")
    reply["55"] = tlv.encode({"91": bytes(10)})
    assert mapping.replayable(reply)["55"] == reply["55"]
    assert "55" not in mapping.pos_response(_purchase(**{"55": CHIP}), code="00")  # not echoed
