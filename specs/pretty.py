"""Safe, readable views of a message: PAN masked, PIN blocks/tracks/keys/chip data as a length only.

``safe_fields(codec, msg)`` is what may go to a log line or a terminal; ``render(codec, msg)`` is the
field-by-field listing the ``payswitch iso`` commands print.
"""

from __future__ import annotations

from typing import Any

from ops.logs import mask_pan
from specs.catalogue import RESPONSE_CODES, UnknownTransaction, classify_h2h, classify_pos
from specs.codec import Codec
from specs.errors import field_label


def safe_value(codec: Codec, key: str, value: Any) -> str:
    """One field as text fit to show: masked PAN, hidden secrets, hex for other binary fields."""
    secret = codec.spec.get(key, {}).get("secret")
    if secret == "pan" and isinstance(value, str):
        return mask_pan(value)
    if secret:
        return f"<{len(value)} {'bytes' if isinstance(value, bytes | bytearray) else 'chars'} hidden>"
    if isinstance(value, bytes | bytearray):
        return value.hex().upper()
    return str(value)


def safe_fields(codec: Codec, msg: dict[str, Any]) -> dict[str, str]:
    """The whole message with every value made safe (keys as in the message)."""
    return {key: safe_value(codec, key, value) for key, value in msg.items()}


def transaction_name(codec: Codec, msg: dict[str, Any]) -> str | None:
    """The catalogue's transaction type, when the message matches a row."""
    try:
        if codec.dialect == "pos":
            return classify_pos(msg["t"], msg.get("3"), msg.get("25"), msg.get("60")).value
        return classify_h2h(msg["t"], msg.get("3"), msg.get("25"), msg.get("70")).value
    except (UnknownTransaction, ValueError, KeyError):
        return None


def render(codec: Codec, msg: dict[str, Any]) -> str:
    """Field-by-field listing: label, safe value, description (and the response code's meaning)."""
    lines = []
    txn = transaction_name(codec, msg)
    lines.append(f"{'MTI':<6} {msg.get('t', '?')}" + (f"  ({txn})" if txn else ""))
    order = sorted((k for k in msg if k.isdigit()), key=int)
    for key in order:
        shown = safe_value(codec, key, msg[key])
        desc = codec.spec.get(key, {}).get("desc", "")
        if key == "39" and isinstance(msg[key], str) and msg[key] in RESPONSE_CODES:
            desc = f"{desc}: {RESPONSE_CODES[msg[key]].meaning}"
        lines.append(f"{field_label(key):<6} {shown:<34} {desc}")
    return "\n".join(lines)
