"""The errors raised by specs: one type per failure a caller must tell apart.

- :class:`DecodeError`: bytes that are not a valid message of the dialect (answer 30 when
  :attr:`DecodeError.mti` and the matching fields could be read, else drop/close).
- :class:`EncodeError`: a message dict that cannot be put on the wire (a programming error).
- :class:`FrameError`: the byte stream itself is broken (bad length prefix, EOF mid-frame): close.
- :class:`FrameTimeout`: no complete frame within the read timeout.

Messages name the field and the reason, never a field's value, so they are safe to log.
"""

from __future__ import annotations

from typing import Any

# Fields a DecodeError may carry in ``partial``: enough to build a format-error (30) answer or match a
# response, and nothing secret (no PAN, track, PIN block, keys or chip data).
PARTIAL_FIELDS = frozenset(
    {"t", "3", "4", "7", "11", "12", "13", "22", "25", "32", "33", "37", "41", "42", "49", "60", "61", "70",
     "100"}
)


def field_label(field: str) -> str:
    """Human name of a field key: "2" -> "DE2", "t" -> "MTI"."""
    return _LABELS.get(field, f"DE{field}" if field.isdigit() else field)


_LABELS = {"t": "MTI", "p": "bitmap", "1": "secondary bitmap", "end": "message end"}


class DecodeError(ValueError):
    """Bytes that do not parse. ``str(exc)`` is e.g. ``"DE2: non-BCD nibble"``.

    ``field`` is the field key ("t" for the MTI, "p"/"1" for the bitmaps, "2".."128", "end" for bytes
    after the last field, or "TPDU" for the POS frame); ``reason`` says what is wrong; ``partial``
    holds the non-secret fields that could be read (see ``PARTIAL_FIELDS``), so a caller can answer
    30 with DE11/DE41/DE42.
    """

    def __init__(self, field: str, reason: str, partial: dict[str, Any] | None = None) -> None:
        super().__init__(f"{field_label(field)}: {reason}")
        self.field = field
        self.reason = reason
        self.partial: dict[str, Any] = {
            k: v for k, v in (partial or {}).items() if k in PARTIAL_FIELDS
        }

    @property
    def mti(self) -> str | None:
        """The MTI, when it was read and is one the dialect knows."""
        value = self.partial.get("t")
        return value if isinstance(value, str) else None

    @property
    def stan(self) -> str | None:
        value = self.partial.get("11")
        return value if isinstance(value, str) else None

    @property
    def terminal_id(self) -> str | None:
        value = self.partial.get("41")
        return value if isinstance(value, str) else None

    @property
    def merchant_id(self) -> str | None:
        value = self.partial.get("42")
        return value if isinstance(value, str) else None


class EncodeError(ValueError):
    """A message dict that cannot be encoded; ``str(exc)`` names the field and the reason."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field_label(field)}: {reason}")
        self.field = field
        self.reason = reason


class FrameError(Exception):
    """The stream is not carrying valid frames (length prefix 0 on POS or over the maximum, EOF
    inside a frame). The connection should be closed."""


class FrameTimeout(FrameError):
    """No complete frame arrived within the read timeout. ``partial`` is True when some bytes of an
    unfinished frame had arrived."""

    def __init__(self, message: str, partial: bool = False) -> None:
        super().__init__(message)
        self.partial = partial
