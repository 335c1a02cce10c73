"""Structured logging for every service: JSON lines in production, a readable console in development.

The redaction processor runs last before rendering, on every event from every module, so no caller has
to remember it: PANs are masked to first 6 + last 4, and PIN blocks, keys and track data are dropped.

Under attack one bad frame per packet must not become one line per packet (176k hostile frames wrote
69k warnings, 13.8 MB): :class:`RateLimit` lets ``burst`` events per (event, source) through per
``interval`` seconds, where the source is the event's ``peer`` (a client address), else its
``listener``; the rest are counted in ``payswitch_log_suppressed_total{event}`` and the first event let
through after a suppression carries ``suppressed=N``. Libraries' stdlib logging (asyncpg, asyncio's
loop exception handler) goes through the same processors, so a traceback is one event (a field of the
JSON line), never loose lines.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import sys
import threading
import time
from collections.abc import Callable, Mapping, MutableMapping
from typing import Any

import structlog
from prometheus_client import Counter

LOG_SUPPRESSED = Counter(
    "payswitch_log_suppressed_total", "log events not written by the per-source rate limit", ["event"]
)

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


class RateLimit:
    """structlog processor: at most ``burst`` events per (event, source) per ``interval`` seconds.

    Fixed windows per key, so the cost is one dict lookup per event. The summary rides on the first
    event of the key let through after a suppression (``suppressed=N``): no timer thread is needed, and
    a flood that stops leaves its count in the metric. Keys are forgotten when ``max_keys`` is reached
    (a spoofed-source flood must not grow memory); their pending counts stay in the metric."""

    def __init__(
        self, burst: int = 20, interval: float = 10.0, max_keys: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.burst, self.interval, self.max_keys, self.clock = burst, interval, max_keys, clock
        self._windows: dict[tuple[str, str], list[float | int]] = {}  # key -> [start, let through, dropped]
        self._lock = threading.Lock()  # pgpool's loop thread logs too

    def __call__(
        self, _logger: Any, _method: str, event: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        name = str(event.get("event", ""))
        key = (name, str(event.get("peer") or event.get("listener") or ""))
        now = self.clock()
        with self._lock:
            window = self._windows.get(key)
            if window is None or now - window[0] >= self.interval:
                if window is None and len(self._windows) >= self.max_keys:
                    self._windows.clear()
                dropped = int(window[2]) if window is not None else 0
                self._windows[key] = [now, 1, 0]
                if dropped:
                    event["suppressed"] = dropped
                return event
            if window[1] < self.burst:
                window[1] += 1
                return event
            window[2] += 1
        LOG_SUPPRESSED.labels(name).inc()
        raise structlog.DropEvent


def configure(
    format: str = "console", level: str = "info", service: str | None = None,
    rate_limit: RateLimit | None = None,
) -> None:
    """Set up structlog, and stdlib logging (for libraries) through the same processors, once per process."""
    numeric = getattr(logging, level.upper())
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        rate_limit or RateLimit(),
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
    # Libraries' own stdlib loggers: warnings and above, rendered by the same chain (an exc_info
    # traceback becomes the "exception" field of one event, not lines of its own), to stderr.
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[structlog.stdlib.add_logger_name, *shared],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, redact, renderer],
    )
    handler = _StderrHandler()
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _StderrHandler)]:
        root.removeHandler(old)  # configured again (tests): one handler, the newest chain
    root.addHandler(handler)
    root.setLevel(max(numeric, logging.WARNING))


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A stdlib handler writing to whatever sys.stderr is now (test runners swap it); a failed write
    is dropped, as _StderrLogger does."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = self.format(record)
        except structlog.DropEvent:
            return  # rate-limited
        _StderrLogger().msg(message)


def asyncio_exception_handler(_loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """For ``loop.set_exception_handler``: an exception nobody awaited (a connection lost during an
    outage) as one structured event instead of asyncio's multi-line default."""
    exc = context.get("exception")
    get_logger("asyncio").error(
        "asyncio_exception",
        message=str(context.get("message", "")),
        exc_info=(type(exc), exc, exc.__traceback__) if isinstance(exc, BaseException) else None,
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


def bind_peer(source: str) -> None:
    """Name the connection's source address in every event of this task and of the tasks it starts
    (trio copies the context at spawn): RateLimit then limits a flood per source, so one flooding
    address cannot hide another's events. Called once per connection by each listener."""
    structlog.contextvars.bind_contextvars(peer=source)


def get_logger(name: str | None = None) -> Any:
    return structlog.get_logger(name)
