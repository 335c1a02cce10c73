"""``--trace``: every message the terminal sends or receives, field by field, safe to show.

Field names come from the dialect spec (``specs.dialects``, key ``desc``); its ``secret`` key says how
to show a field: the PAN masked (``ops.logs.mask_pan``), PIN block, track data, keys and chip data as
their length only. The MAC is shown (it is not secret). Chip data (DE55) is then decoded tag by tag
(``specs.tlv.describe``: its PAN masked, track equivalents and names as a length only).
"""

from __future__ import annotations

import functools
from typing import Any

from ops.logs import mask_pan
from pos.messages import Message
from specs.dialects import spec_for
from specs.tlv import describe


@functools.cache
def _spec(profile: str) -> dict[str, dict[str, Any]]:
    return spec_for("pos", profile)


def show_value(key: str, value: Any, profile: str = "3des") -> str:
    fs = _spec(profile).get(key, {})
    secret = fs.get("secret")
    if secret == "pan":
        return mask_pan(str(value))
    if secret in ("pin", "track", "key", "chip"):
        size = len(value) if isinstance(value, bytes | bytearray | str) else 0
        unit = "bytes" if isinstance(value, bytes | bytearray) else "characters"
        return f"[{secret} data, {size} {unit}, not shown]"
    if isinstance(value, bytes | bytearray):
        return bytes(value).hex().upper()
    return repr(str(value))


def render(direction: str, msg: Message, profile: str = "3des") -> str:
    """A multi-line dump: ``>> 0200`` then one line per field in wire order."""
    spec = _spec(profile)
    lines = [f"{direction} MTI {msg.get('t')}"]
    keys = sorted((k for k in msg if k.isdigit() and msg[k] is not None), key=int)
    for key in keys:
        desc = spec.get(key, {}).get("desc", "")
        lines.append(f"   DE{key:<3} {desc[:44]:<44} {show_value(key, msg[key], profile)}")
        if key == "55" and isinstance(msg[key], bytes | bytearray):
            lines.extend(f"         {line}" for line in describe(bytes(msg[key])))
    return "\n".join(lines)
