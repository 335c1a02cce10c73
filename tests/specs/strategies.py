"""hypothesis strategies derived from the spec data: valid values for any field, whole messages."""

from __future__ import annotations

import string
from typing import Any

from hypothesis import strategies as st

from specs.codec import Codec
from specs.dialects import KNOWN_MTIS, FieldSpec

ALPHABETS = {
    "n": string.digits,
    "z": string.digits + "=",
    "an": string.ascii_letters + string.digits + " ",
    "ans": "".join(chr(c) for c in range(0x20, 0x7F)),
}


def field_values(fs: FieldSpec) -> st.SearchStrategy[Any]:
    """Valid values of one field (exact length for fixed fields)."""
    kind = fs["kind"]
    fixed = fs["len_type"] == 0
    size = fs["max_len"]
    if kind == "b":
        return st.binary(min_size=size if fixed else 0, max_size=size)
    if kind == "hex":
        return st.binary(min_size=size // 2, max_size=size // 2)
    return st.text(ALPHABETS[kind], min_size=size if fixed else 0, max_size=size)


def messages(codec: Codec, *, min_fields: int = 0) -> st.SearchStrategy[dict[str, Any]]:
    """Whole messages: a known MTI and a random subset of the dialect's fields."""

    @st.composite
    def build(draw: st.DrawFn) -> dict[str, Any]:
        msg: dict[str, Any] = {"t": draw(st.sampled_from(sorted(KNOWN_MTIS[codec.dialect])))}
        keys = draw(st.lists(st.sampled_from(codec.fields), unique=True, min_size=min_fields))
        for key in keys:
            msg[key] = draw(field_values(codec.spec[key]))
        return msg

    return build()
