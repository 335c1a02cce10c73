"""Structured logging for every service: JSON lines in production, a readable console in development.

The redaction processor runs last before rendering, on every event from every module, so no caller has
to remember it: PANs are masked to first 6 + last 4, and PIN blocks, keys and track data are dropped.
"""

from __future__ import annotations

import contextlib
import logging
import re
import sys
from collections.abc import Mapping, MutableMapping
from typing import Any

import structlog

# Keys whose values are secret whatever they look like. Matched on the lower-cased key with
# separators removed, so "pin_block", "pinBlock" and "PIN-BLOCK" are all caught.
_SECRET_KEYS = re.compile(
    r"^(pin|pins|pinblock|pinblocks|clearpin|de52|de35|de36|de45|de55|track|track1|track2|track3|tracks|"
    r"key|keys|clearkey|component|components|lmk|lmks|tmk|tpk|zpk|zmk|pik|mak|tdk|zak|pvk|cvk|password|"
    r"secret|pvv|cvv|cvv2|cvc)$|(pinblock|clearkey|track[123]?data|keycomponent|password|secret)"
)
_PAN_KEYS = re.compile(r"^(pan|de2|cardnumber|primaryaccountnumber)$")
_DROPPED = "[redacted]"

# A PAN inside free text: 13-19 digits not touching other digits, optionally followed by a track
# separator and the rest of the track, which is dropped.
_PAN_IN_TEXT = re.compile(r"(?<!\d)(\d{6})(\d{3,9})(\d{4})(?:[=D]\d*)?(?!\d)")


def mask_pan(pan: str) -> str:
    """First 6 and last 4 digits, one '*' per hidden digit (the clearing-file form)."""
    if len(pan) < 11:
        return "*" * len(pan)
    return pan[:6] + "*" * (len(pan) - 10) + pan[-4:]


def redact_text(text: str) -> str:
    return _PAN_IN_TEXT.sub(lambda m: m.group(1) + "*" * len(m.group(2)) + m.group(3), text)


def _normalise(key: str) -> str:
    return re.sub(r"[^a-z0-9]", "", key.lower())


def _redact_value(key: str, value: Any) -> Any:
    norm = _normalise(key)
    if _SECRET_KEYS.search(norm):
        return _DROPPED
    if _PAN_KEYS.match(norm) and isinstance(value, str):
        return mask_pan(value)
    return _redact_any(value)


def _redact_any(value: Any) -> Any:
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return f"<{len(value)} bytes>"  # raw bytes may be a key or PIN block: never rendered
    if isinstance(value, Mapping):
        return {k: _redact_value(str(k), v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_redact_any(v) for v in value]
    if isinstance(value, BaseException):
        return redact_text(repr(value))
    return value


def redact(_logger: Any, _method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: mask PANs and drop secrets in every key and nested value."""
    for key in list(event):
        event[key] = _redact_value(key, event[key])
    return event


def configure(format: str = "console", level: str = "info", service: str | None = None) -> None:
    """Set up structlog (and stdlib logging, for libraries) once per process."""
    numeric = getattr(logging, level.upper())
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
    ]
    if service is not None:
        shared.insert(0, _bind_service(service))
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if format == "json"
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[*shared, redact, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=_StderrLogger.factory,
        cache_logger_on_first_use=True,
    )
    # Libraries' own stdlib loggers: warnings and above only, to stderr.
    logging.basicConfig(
        level=max(numeric, logging.WARNING), stream=sys.stderr, format="%(name)s: %(message)s"
    )


class _StderrLogger:
    """Writes each rendered line to whatever sys.stderr is *now* (test runners swap it), and never
    lets a failed log write (closed or broken stderr) take down the request that logged."""

    @staticmethod
    def factory(*_args: Any) -> _StderrLogger:
        return _StderrLogger()

    def msg(self, message: str) -> None:
        with contextlib.suppress(OSError, ValueError):
            print(message, file=sys.stderr, flush=True)

    debug = info = warning = warn = error = critical = exception = fatal = log = msg


def _bind_service(service: str) -> Any:
    def add_service(_l: Any, _m: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        event.setdefault("service", service)
        return event

    return add_service


def get_logger(name: str | None = None) -> Any:
    return structlog.get_logger(name)
