"""Charts drawn on the server as inline SVG: no JavaScript library, readable with JavaScript off.

``stacked_bars`` (one column per slot, one colour per series: requests per minute by response code),
``hbars`` (labelled horizontal bars: top merchants, float per product) and ``sparkline`` (a line over a
list of numbers). Every label is escaped; the result is ``Markup`` to put in a template as it is.
"""

from __future__ import annotations

from collections.abc import Sequence

from markupsafe import Markup, escape

# response code 00 green, the rest from a fixed palette (the same code keeps its colour across refreshes)
APPROVED = "#2e7d32"
PALETTE = ("#c62828", "#ef6c00", "#6a1b9a", "#1565c0", "#00838f", "#ad1457", "#4e342e", "#546e7a")


def colour(code: str) -> str:
    if code == "00":
        return APPROVED
    return PALETTE[sum(map(ord, code)) % len(PALETTE)]


def _num(x: float) -> str:
    return f"{x:.1f}".rstrip("0").rstrip(".")


def stacked_bars(
    slots: Sequence[str], series: dict[str, Sequence[int]], *, width: int = 600, height: int = 160,
    title: str = "",
) -> Markup:
    """A column per slot, its series stacked (in ``series`` order); ``slots`` label the columns (the
    first, middle and last are written under the axis); a legend names each series."""
    n = max(len(slots), 1)
    totals = [sum(s[i] for s in series.values() if i < len(s)) for i in range(len(slots))]
    top = max(totals, default=0) or 1
    pad_left, pad_bottom, legend = 34, 18, 16
    plot_w, plot_h = width - pad_left - 4, height - pad_bottom - legend - 4
    step = plot_w / n
    bar_w = max(step - 1, 1)
    parts = [f'<svg class="chart" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" '
             f'width="{width}" height="{height}" role="img" aria-label="{escape(title)}">']
    if title:
        parts.append(f"<title>{escape(title)}</title>")
    base = legend + plot_h
    parts.append(f'<line x1="{pad_left}" y1="{base}" x2="{width - 4}" y2="{base}" stroke="#999"/>')
    parts.append(f'<text x="{pad_left - 4}" y="{legend + 10}" text-anchor="end" font-size="10">{top}</text>')
    parts.append(f'<text x="{pad_left - 4}" y="{base}" text-anchor="end" font-size="10">0</text>')
    for i in range(len(slots)):
        y = float(base)
        for code, values in series.items():
            v = values[i] if i < len(values) else 0
            if not v:
                continue
            h = v / top * plot_h
            y -= h
            parts.append(f'<rect x="{_num(pad_left + i * step)}" y="{_num(y)}" width="{_num(bar_w)}" '
                         f'height="{_num(h)}" fill="{colour(code)}"><title>{escape(slots[i])} '
                         f'{escape(code)}: {v}</title></rect>')
    for i in sorted({0, len(slots) // 2, len(slots) - 1}):
        if 0 <= i < len(slots):
            anchor = "start" if i == 0 else "end" if i == len(slots) - 1 else "middle"
            x = pad_left + i * step + (0 if anchor == "start" else step if anchor == "end" else step / 2)
            parts.append(f'<text x="{_num(x)}" y="{height - 4}" text-anchor="{anchor}" font-size="10">'
                         f"{escape(slots[i])}</text>")
    x = float(pad_left)
    for code in series:
        parts.append(f'<rect x="{_num(x)}" y="2" width="10" height="10" fill="{colour(code)}"/>')
        parts.append(f'<text x="{_num(x + 13)}" y="11" font-size="10">{escape(code)}</text>')
        x += 20 + 7 * len(code)
    parts.append("</svg>")
    return Markup("".join(parts))


def hbars(labels: Sequence[str], values: Sequence[int], shown: Sequence[str] | None = None, *,
          width: int = 600, bar_height: int = 18, title: str = "") -> Markup:
    """A labelled horizontal bar per value (``shown``: the text written after each bar, default the
    value)."""
    texts = list(shown) if shown is not None else [str(v) for v in values]
    top = max((abs(v) for v in values), default=0) or 1
    label_w, text_w = 180, 130
    plot_w = width - label_w - text_w
    height = max(len(values), 1) * (bar_height + 4) + 4
    parts = [f'<svg class="chart" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" '
             f'width="{width}" height="{height}" role="img" aria-label="{escape(title)}">']
    if title:
        parts.append(f"<title>{escape(title)}</title>")
    for i, (label, v) in enumerate(zip(labels, values, strict=False)):
        y = 4 + i * (bar_height + 4)
        w = abs(v) / top * plot_w
        text = label if len(label) <= 28 else label[:27] + "…"
        parts.append(f'<text x="{label_w - 6}" y="{y + bar_height - 5}" text-anchor="end" font-size="11">'
                     f"{escape(text)}</text>")
        parts.append(f'<rect x="{label_w}" y="{y}" width="{_num(max(w, 1))}" height="{bar_height}" '
                     f'fill="#1565c0"/>')
        parts.append(f'<text x="{_num(label_w + w + 6)}" y="{y + bar_height - 5}" font-size="11">'
                     f"{escape(texts[i] if i < len(texts) else '')}</text>")
    parts.append("</svg>")
    return Markup("".join(parts))


def sparkline(values: Sequence[float], *, width: int = 160, height: int = 32, title: str = "",
              stroke: str = "#1565c0") -> Markup:
    """A line through ``values`` (left to right), scaled to the largest."""
    parts = [f'<svg class="spark" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" '
             f'width="{width}" height="{height}" role="img" aria-label="{escape(title)}">']
    if title:
        parts.append(f"<title>{escape(title)}</title>")
    if values:
        top = max(values) or 1
        low = min(min(values), 0)
        span = (top - low) or 1
        step = (width - 2) / max(len(values) - 1, 1)
        points = " ".join(f"{_num(1 + i * step)},{_num(height - 1 - (v - low) / span * (height - 2))}"
                          for i, v in enumerate(values))
        parts.append(f'<polyline fill="none" stroke="{stroke}" stroke-width="1.5" points="{points}"/>')
    parts.append("</svg>")
    return Markup("".join(parts))
