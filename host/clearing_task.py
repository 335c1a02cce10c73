"""The host's automatic clearing emit: after each cut-over, the file of every closed business date that
has none yet (``host.clearing.emit_closed``), without an operator.

``host serve`` starts ``run`` when ``clearing.auto_emit`` is on. It emits at start (catching up after
downtime, up to ``clearing.lookback_days`` back), then sleeps until ``GRACE_SECONDS`` after the next
cut-over, and never longer than ``RECHECK_SECONDS`` (a changed clock or a failed attempt is retried).
A business date counts as closed only ``GRACE_SECONDS`` after its cut-over, whenever the task wakes:
a batch that started before the cut-over (its postings carry its start time) has committed by then.
A date closed early (``clearing close-day``) is written at the next wake-up at the latest (the close
itself waits for the transactions begun before it); an operator usually runs ``clearing emit`` at once.
No file is written for a date before the programme's first business date.
A refused or failed emit is logged and tried again on the next wake-up; it never stops the host.
The clock and the sleep are parameters so tests drive time instead of waiting.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

import trio
from prometheus_client import Counter, Gauge

from host.clearing import ClearingEmitError, EmitResult, emit_closed
from ops.config import Config
from ops.logs import get_logger
from ops.pgpool import PgPool
from specs.clearing import business_date_of, business_window

log = get_logger(__name__)

GRACE_SECONDS: Final = 60.0
RECHECK_SECONDS: Final = 3600.0

# For the alert "clearing file missing after cut-over" (deploy/prometheus/alerts.yml): a pass leaves
# every closed date with its file, so a last success older than a cut-over plus a recheck is a date
# whose file may be missing; failures count the passes that left one unwritten.
EMIT_SUCCESS = Gauge(
    "payswitch_host_clearing_emit_success_timestamp_seconds",
    "Unix time of the last automatic clearing pass that left every closed business date with its file.",
)
EMIT_FAILURES = Counter(
    "payswitch_host_clearing_emit_failures_total",
    "Automatic clearing passes that left a closed business date without its file, by reason.",
    ["reason"],
)


def utc_now() -> datetime:
    return datetime.now(UTC)


def settled_clock(now: datetime) -> datetime:
    """The time the emit decides by: a date is closed only a grace after its cut-over."""
    return now - timedelta(seconds=GRACE_SECONDS)


def seconds_to_next_emit(now: datetime, cutover: str, timezone: str) -> float:
    """From ``now`` to ``GRACE_SECONDS`` after the next cut-over not yet a grace behind us."""
    at = settled_clock(now)
    _, end = business_window(business_date_of(at, cutover, timezone), cutover, timezone)
    return max((end - at).total_seconds(), 0.0)


async def _emit_closed(conn: Any, now: datetime, config: Config) -> list[EmitResult]:
    c = config.clearing
    return await emit_closed(conn, now, issuer_id=config.host.institution_id, directory=Path(c.directory),
                             cutover=c.cutover, timezone=c.timezone, lookback_days=c.lookback_days)


async def emit_due(pool: PgPool, config: Config, now: datetime) -> list[EmitResult]:
    """One pass: write the missing files of the closed business dates; log what was written."""
    results = await pool.run(_emit_closed, now, config)
    for r in results:
        log.info("clearing file written", path=str(r.path), business_date=str(r.business_date),
                 details=r.trailer.count, left_out=len(r.left_out))
    return results


async def run(pool: PgPool, config: Config, *, clock: Callable[[], datetime] = utc_now,
              sleep: Callable[[float], Awaitable[Any]] = trio.sleep) -> None:
    """Emit, then sleep until after the next cut-over; for ever."""
    c = config.clearing
    while True:
        try:
            await emit_due(pool, config, settled_clock(clock()))
            EMIT_SUCCESS.set_to_current_time()
        except ClearingEmitError as exc:
            EMIT_FAILURES.labels(reason="refused").inc()
            log.error("clearing file not written", reason=str(exc))
        except Exception as exc:  # the database may come back; try again on the next wake-up
            EMIT_FAILURES.labels(reason="failed").inc()
            log.error("clearing emit failed", error=repr(exc))
        await sleep(min(seconds_to_next_emit(clock(), c.cutover, c.timezone), RECHECK_SECONDS))
