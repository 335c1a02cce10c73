"""`payswitch iso` and the generated field tables."""

from __future__ import annotations

import json

from click.testing import CliRunner

from ops.cli import cli
from specs import docs
from tests.specs.test_golden import H2H_0200, POS_3DES_FRAME, POS_SM4_FRAME


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.output


def test_fields_md_is_generated_from_the_spec_data() -> None:
    assert docs.FIELDS_MD.read_text(encoding="utf-8") == docs.render(), "run: python -m specs.docs"
    assert docs.main(["--check"]) == 0


def test_decode_framed_pos_masks_pan_and_hides_pin() -> None:
    code, out = run("iso", "decode", "--framed", POS_3DES_FRAME.hex())
    assert code == 0, out
    assert "621234*********4567" in out and "6212345678901234567" not in out
    assert "<8 bytes hidden>" in out and "2BD127874D206D2E" not in out
    assert "(purchase)" in out and "TPDU" in out


def test_decode_json_and_sm4_profile() -> None:
    code, out = run("--json", "iso", "decode", "--profile", "sm4", POS_SM4_FRAME[13:].hex())
    assert code == 0, out
    data = json.loads(out)
    assert data["fields"]["52"] == "<16 bytes hidden>" and data["transaction"] == "purchase"
    assert data["fields"]["2"] == "621234*********4567"


def test_decode_h2h_hides_track() -> None:
    code, out = run("iso", "decode", "--dialect", "h2h", H2H_0200.hex())
    assert code == 0, out
    assert "4DD27837C727BFA1" in out  # the MAC is not secret
    assert "84615C0FB761528E" not in out


def test_decode_errors_are_one_line() -> None:
    code, out = run("iso", "decode", "02xx")
    assert code == 1 and "hexadecimal" in out
    code, out = run("iso", "decode", "0200ABCD")
    assert code == 1 and "cannot decode: bitmap: truncated" in out
    code, out = run("iso", "decode", "--framed", "0000")
    assert code == 1 and "bad frame" in out
    code, out = run("iso", "decode", "--framed", "000B6100010000603100000000")
    assert code == 1 and "TPDU" in out


def test_encode_framed_pos_equals_worked_example() -> None:
    msg = {"t": "0200", "2": "6212345678901234567", "3": "000000", "4": 12345, "11": "000777",
           "14": "3012", "22": "011", "25": "00", "26": "12", "41": "T0000001", "42": "898330160120001",
           "49": "156", "52": "2BD127874D206D2E", "53": "2600000000000000", "60": "22000001000",
           "64": "3639444236364435"}
    code, out = run("iso", "encode", "--framed", json.dumps(msg))
    assert code == 0, out
    assert out.splitlines()[0] == POS_3DES_FRAME.hex().upper()
    assert "6212345678901234567" not in out.split("\n", 1)[1]


def test_encode_errors_are_one_line() -> None:
    code, out = run("iso", "encode", '{"t": "0200", "3": "12"}')
    assert code == 1 and "DE3: length 2, expected 6" in out
    code, out = run("iso", "encode", "[1]")
    assert code == 1 and "object" in out
    code, out = run("iso", "encode", "{nope")
    assert code == 1 and "not valid" in out
    code, out = run("iso", "encode", '{"t": "0200", "52": "zz"}')
    assert code == 1 and "hex" in out
    code, out = run("--json", "iso", "encode", "--dialect", "h2h", '{"t": "0800", "70": "301"}')
    assert code == 0 and json.loads(out)["hex"] == (b"0800" b"8000000000000000" b"0400000000000000"
                                                   b"301").hex().upper()
