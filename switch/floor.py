"""The floor table a terminal gets at sign-on (POS DE48 of the 0810; specs/README.md, "Offline sales").

Per BIN range of the host (``bin_ranges`` JOIN ``products``, read through ``Store.floor_limits``): the
product's offline floor limit and no-CVM limit. The table is read at most once per ``ttl`` seconds (a
sign-on is rare, a product's limits change rarer still: a change reaches the terminals at their next
sign-on anyway), and a read that fails keeps the table already known.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

import trio

from ops.logs import get_logger
from specs.catalogue import MAX_FLOOR_ENTRIES, FloorLimit, floor_limit_for, floor_table_de48

log = get_logger(__name__)

DEFAULT_TTL = 30.0


def floor_entries(rows: Sequence[tuple[str, int, int]]) -> list[FloorLimit]:
    """The table's entries from (BIN, floor, no-CVM) rows: ordered by BIN; a BIN range whose limits
    are both 0 is left out (a terminal without an entry for a card never approves it offline and asks
    a PIN), unless a shorter BIN of the table would then give its cards that one's limits (the
    terminal takes the longest prefix); at most ``MAX_FLOOR_ENTRIES``, the first by BIN (logged)."""
    ordered = sorted((FloorLimit(b, floor, no_cvm) for b, floor, no_cvm in rows), key=lambda e: e.bin)
    kept: list[FloorLimit] = []
    for entry in ordered:
        if entry.floor_limit == 0 and entry.no_cvm_limit == 0:
            shorter = floor_limit_for(kept, entry.bin)
            if shorter is None or (shorter.floor_limit == 0 and shorter.no_cvm_limit == 0):
                continue
        kept.append(entry)
    if len(kept) > MAX_FLOOR_ENTRIES:
        log.warning(
            "floor table too long for DE48: the first BIN ranges sent",
            ranges=len(kept),
            sent=MAX_FLOOR_ENTRIES,
            left_out=[e.bin for e in kept[MAX_FLOOR_ENTRIES:]],
        )
        kept = kept[:MAX_FLOOR_ENTRIES]
    return kept


class FloorTable:
    """The 0810's DE48, cached for ``ttl`` seconds."""

    def __init__(self, read: Callable[[], Awaitable[list[tuple[str, int, int]]]], ttl: float = DEFAULT_TTL):
        self._read = read
        self.ttl = ttl
        self._de48: str | None = None
        self._at = 0.0

    async def de48(self) -> str | None:
        """The floor table as DE48 digits; None while it could never be read (the 0810 goes without)."""
        now = trio.current_time()
        if self._de48 is not None and now - self._at < self.ttl:
            return self._de48
        try:
            rows = await self._read()
            self._de48 = floor_table_de48(floor_entries(rows))
            self._at = now
        except Exception as exc:  # the database may be away: the table known stays, read again next time
            log.error("floor table read failed", error=repr(exc))
        return self._de48
