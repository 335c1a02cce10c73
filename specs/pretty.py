"""Safe, readable views of a message: PAN masked, PIN blocks/tracks/keys as a length only.

``safe_fields(codec, msg)`` is what may go to a log line or a terminal (chip data as a length);
``render(codec, msg)`` is the field-by-field listing the ``payswitch iso`` commands print, with chip
data (POS DE55; H2H DE48 of a chip request or answer) decoded tag by tag below its field by
``specs.tlv.describe``, which masks the PAN (5A) and shows track equivalents (57) as a length only.
"""

from __future__ import annotations

from typing import Any

from ops.logs import mask_pan
from specs.catalogue import RESPONSE_CODES, UnknownTransaction, classify_h2h, classify_pos
from specs.codec import Codec
from specs.errors import field_label
from specs.tlv import TlvError, describe
from specs.tlv import decode as tlv_decode


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


def chip_data(codec: Codec, msg: dict[str, Any]) -> dict[str, bytes]:
    """The chip data ``msg`` carries, by field: POS DE55; H2H DE48 when it is the hex of BER-TLV in a
    message that is neither a key exchange (08xx: DE48 a key) nor a PIN change (DE3 96: the new PIN
    block) [project convention, specs/README.md "Chip data"]. Anything else stays hidden."""
    if codec.dialect == "pos":
        value = msg.get("55")
        return {"55": bytes(value)} if isinstance(value, bytes | bytearray) else {}
    value = msg.get("48")
    if not isinstance(value, str) or str(msg.get("t", "")).startswith("08"):
        return {}
    if str(msg.get("3", "")).startswith("96"):
        return {}
    try:
        data = bytes.fromhex(value)
        tlv_decode(data)
    except (ValueError, TlvError):
        return {}
    return {"48": data} if data and len(value) == 2 * len(data) else {}


def chip_lines(codec: Codec, msg: dict[str, Any]) -> dict[str, list[str]]:
    """``chip_data`` described tag by tag (``specs.tlv.describe``), by field: safe to show."""
    return {key: describe(data) for key, data in chip_data(codec, msg).items()}


def render(codec: Codec, msg: dict[str, Any]) -> str:
    """Field-by-field listing: label, safe value, description (and the response code's meaning)."""
    lines = []
    txn = transaction_name(codec, msg)
    lines.append(f"{'MTI':<6} {msg.get('t', '?')}" + (f"  ({txn})" if txn else ""))
    order = sorted((k for k in msg if k.isdigit()), key=int)
    chip = chip_lines(codec, msg)
    for key in order:
        shown = safe_value(codec, key, msg[key])
        desc = codec.spec.get(key, {}).get("desc", "")
        if key == "39" and isinstance(msg[key], str) and msg[key] in RESPONSE_CODES:
            desc = f"{desc}: {RESPONSE_CODES[msg[key]].meaning}"
        if key in chip:
            desc = "Chip data (BER-TLV)" if codec.dialect == "pos" else "Chip data (hex of BER-TLV)"
        lines.append(f"{field_label(key):<6} {shown:<34} {desc}")
        lines.extend(f"{'':<6}   {line}" for line in chip.get(key, ()))
    return "\n".join(lines)
