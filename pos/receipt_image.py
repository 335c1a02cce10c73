"""A receipt rendered to a file (``--receipt FILE.png|pdf``), as a terminal's printer would print it.

The lines are those of ``Receipt.render()`` (masked PAN, money in yuan with its currency, the local
time with its offset), drawn black on white in a monospace font: DejaVu Sans Mono or Liberation Mono
when the system has one, else Pillow's built-in font; nothing is fetched. The paper is at least 384
dots wide (a 58 mm thermal printer's line). PNG, or PDF through Pillow's own PDF writer (the page is
the image; no text layer, so a PDF viewer's search finds nothing, as on paper).
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

FORMATS = {".png": "PNG", ".pdf": "PDF"}
FONT_SIZE = 18
MARGIN = 24
MIN_WIDTH = 384  # dots of a 58 mm thermal printer
LINE_SPACING = 1.35
DPI = 203  # a thermal printer's resolution: the PDF page is the paper's size
FONT_FILES = (
    "/usr/share/fonts/truetype/dejavu/DejaVuSansMono.ttf",
    "/usr/share/fonts/TTF/DejaVuSansMono.ttf",
    "/usr/share/fonts/dejavu/DejaVuSansMono.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationMono-Regular.ttf",
    "/usr/share/fonts/liberation-mono/LiberationMono-Regular.ttf",
    "/System/Library/Fonts/Menlo.ttc",
    "DejaVuSansMono.ttf",  # Pillow looks in the system's font folders too
)

Font = ImageFont.FreeTypeFont | ImageFont.ImageFont


class ReceiptFileError(ValueError):
    """The receipt file cannot be written; str() says why in one line."""


def file_format(path: Path) -> str:
    """``PNG`` or ``PDF`` by the file's extension; ReceiptFileError for any other."""
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise ReceiptFileError(f"a receipt file is FILE.png or FILE.pdf, not {path.name!r}")
    return fmt


@cache
def _font(size: int = FONT_SIZE) -> Font:
    for candidate in FONT_FILES:
        try:
            return ImageFont.truetype(candidate, size)
        except OSError:
            continue
    return ImageFont.load_default(size)


def render_image(lines: list[str]) -> Image.Image:
    """The receipt as a white page with the lines in black, one per printer line."""
    font = _font()
    probe = ImageDraw.Draw(Image.new("L", (1, 1)))
    widths = [probe.textlength(line, font=font) for line in lines] or [0.0]
    step = round(FONT_SIZE * LINE_SPACING)
    width = max(MIN_WIDTH, int(max(widths)) + 2 * MARGIN)
    height = 2 * MARGIN + step * max(1, len(lines))
    page = Image.new("L", (width, height), 255)
    draw = ImageDraw.Draw(page)
    for i, line in enumerate(lines):
        draw.text((MARGIN, MARGIN + i * step), line, fill=0, font=font)
    return page


def write_receipt(text: str, path: Path) -> None:
    """Render the receipt ``text`` (``Receipt.render()``) into ``path`` (.png or .pdf)."""
    fmt = file_format(path)
    page = render_image(text.splitlines())
    try:
        if fmt == "PDF":
            page.convert("RGB").save(path, format="PDF", resolution=float(DPI), title="payswitch receipt")
        else:
            page.save(path, format="PNG", dpi=(DPI, DPI))
    except OSError as exc:
        raise ReceiptFileError(f"cannot write the receipt to {path}: {exc.strerror or exc}") from None
