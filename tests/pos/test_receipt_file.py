"""Receipts rendered to files (pos.receipt_image): PNG and PDF by extension, anything else refused in
one line before a terminal is even looked for; every field the issue lists on the text receipt."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from pos.receipt_image import MIN_WIDTH, ReceiptFileError, file_format, render_image, write_receipt
from pos.terminal import Receipt

PAN_MASKED = "621234*********4567"


def _receipt() -> Receipt:
    r = Receipt(
        "PURCHASE",
        "T0000001",
        "898330160120001",
        "00",
        stan="000042",
        batch="000003",
        pan=PAN_MASKED,
        amount=123456,
        rrn="123456789012",
        auth_id="A1B2C3",
        date="1202",
        time="183005",
        balance=48766,
        entry_mode="chip, PIN",
        issuer_auth="verified",
    )
    return r.in_zone("Asia/Shanghai")


def test_the_text_receipt_has_every_field() -> None:
    text = _receipt().render()
    for part in (
        "MERCHANT 898330160120001",
        "TERMINAL T0000001",
        PAN_MASKED,
        "ENTRY    CHIP, PIN",
        "AMOUNT   1,234.56 CNY",
        "BALANCE  487.66 CNY",
        "AUTH A1B2C3",
        "REF      123456789012",
        " 18:30:05 +08:00",
    ):
        assert part in text, (part, text)


@pytest.mark.parametrize(("name", "fmt"), [("r.png", "PNG"), ("R.PDF", "PDF")])
def test_png_and_pdf(tmp_path: Path, name: str, fmt: str) -> None:
    path = tmp_path / name
    write_receipt(_receipt().render(), path)
    assert file_format(path) == fmt
    if fmt == "PNG":
        with Image.open(path) as image:
            assert image.format == "PNG" and image.size[0] >= MIN_WIDTH
    else:
        assert path.read_bytes().startswith(b"%PDF")


def test_the_image_holds_ink_per_line() -> None:
    page = render_image(["AMOUNT   12.34 CNY", "", "RESULT   00 APPROVED"])
    assert page.getextrema() == (0, 255)  # black on white
    assert render_image([]).size[0] == MIN_WIDTH


@pytest.mark.parametrize("name", ["r.jpg", "receipt", "r.png.txt"])
def test_other_extensions_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(ReceiptFileError, match=r"FILE\.png or FILE\.pdf"):
        write_receipt("x", tmp_path / name)
    assert not (tmp_path / name).exists()


def test_unwritable_place_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(ReceiptFileError, match="cannot write the receipt"):
        write_receipt("x", tmp_path / "missing-dir" / "r.png")


def test_cli_refuses_an_unknown_extension_before_anything(tmp_path: Path) -> None:
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "ops",
            "pos",
            "purchase",
            "1.00",
            "--card",
            "6212345678901234567",
            "--expiry",
            "3012",
            "--pin",
            "123456",
            "--receipt",
            "r.gif",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert r.returncode == 1, r
    assert r.stderr.strip().splitlines() == ["Error: a receipt file is FILE.png or FILE.pdf, not 'r.gif'"]
    assert not (tmp_path / "var").exists()
