"""AML screening (issue 16 item 3): watch lists, fuzzy name matching, the review queue.

First version: the interface engineer A calls after every registration and name / birth-date change.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Hit:
    """One watch-list entry a cardholder's name matched."""

    entry_id: int
    list_name: str
    reference: str
    matched_name: str
    score: float


async def screen(conn: Any, cardholder_id: int, name: str, birth_date: datetime.date | None) -> list[Hit]:
    """Screen a cardholder against every watch list; on a hit the cardholder goes to ``review``."""
    del conn, cardholder_id, name, birth_date
    return []
