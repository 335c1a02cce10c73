"""Why a request was declined, for the simulator's receipt: the terminal gets only the response code on
the wire (neither contract carries a reason), so pos, a simulator that may read the system's
database, asks it when it is configured and reachable: the switch journal row of the request (by
terminal, merchant, batch and STAN: switch.journal_view), then the host's decision under the upstream
key that row names (host.catalog.decided). A real terminal has only the code's meaning, and so does pos
when the database is away.
"""

from __future__ import annotations

import asyncio
from typing import Any

from host import catalog, rules
from host.model import request_key
from ops.config import Config
from ops.db import connect, database_url
from ops.digits import is_digits
from ops.money import format_money
from switch.journal_view import terminal_answer
from switch.reasons import describe_switch_reason

LOOKUP_SECONDS = 3.0


def explain(config: Config, terminal_id: str, merchant_id: str, batch: str, stan: str) -> tuple[str, str]:
    """(reason key, reason in words) of the terminal's request, or ("", "") when nothing is recorded or
    the database cannot be asked."""
    if not (is_digits(batch) and stan):
        return "", ""
    try:
        url = database_url(config)
        return asyncio.run(asyncio.wait_for(_explain(url, terminal_id, merchant_id, int(batch), stan),
                                            LOOKUP_SECONDS))
    except Exception:  # the database away, not migrated, slow: the code's meaning is all there is
        return "", ""


async def _explain(url: str, terminal_id: str, merchant_id: str, batch: int, stan: str) -> tuple[str, str]:
    conn = await connect(url)
    try:
        row = await terminal_answer(conn, terminal_id, merchant_id, batch, stan)
        if row is None:
            return "", ""
        if row["reason"]:  # the switch answered it itself
            return str(row["reason"]), describe_switch_reason(row["reason"])
        if not (row["link_de7"] and row["link_stan"] and row["link_mti"]):
            return "", ""
        key = request_key(
            str(row["link_de32"] or ""), row["link_de7"], row["link_stan"], terminal_id, row["link_mti"]
        )
        host = await catalog.decided(conn, key)
        return _host_reason(host)
    finally:
        await conn.close()


def _host_reason(host: dict[str, Any] | None) -> tuple[str, str]:
    if host is None or not host["reason"]:
        return "", ""
    reason = str(host["reason"])
    text = rules.describe(reason)
    if reason == "insufficient_funds" and host["available"] is not None:
        text += f" (balance {format_money(host['available'], host['currency'])})"
    return reason, text
