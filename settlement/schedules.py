"""Rate cards and merchant cycles as stored in PostgreSQL (settlement_fee_schedules, _merchants)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from typing import Any

from settlement.cycles import Cycle
from settlement.errors import SettlementError
from settlement.fees import DEFAULT_MERCHANT, AppliedFee, FeeSchedule, applicable_fee

_COLUMNS = ("merchant_id, version, effective_from, rate_bp, fixed_fee, min_fee, max_fee, refund_rule, "
            "issuer_share_bp, acquirer_share_bp, platform_share_bp")


def _schedule(row: Any) -> FeeSchedule:
    return FeeSchedule(**dict(row))


async def add_fee_schedule(conn: Any, s: FeeSchedule) -> None:
    """Add a rate-card version. Versions are never changed in place: a new one takes effect later.

    Refused for a merchant the host does not know (``*``, the default card, needs none)."""
    if s.merchant_id != DEFAULT_MERCHANT and await host_fee_bps(conn, s.merchant_id) is None:
        raise SettlementError(f"merchant {s.merchant_id} does not exist in the host (`payswitch merchant "
                              "list` shows them; add it first, or use '*' for the default rate card)")
    clash = await conn.fetchrow(
        "SELECT version, effective_from FROM settlement_fee_schedules "
        "WHERE merchant_id = $1 AND (version = $2 OR effective_from = $3)",
        s.merchant_id, s.version, s.effective_from,
    )
    if clash is not None:
        raise SettlementError(
            f"merchant {s.merchant_id} already has fee schedule {clash['version']} effective "
            f"{clash['effective_from']}; add a new version with another date"
        )
    await conn.execute(
        f"INSERT INTO settlement_fee_schedules ({_COLUMNS}) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11)",
        s.merchant_id, s.version, s.effective_from, s.rate_bp, s.fixed_fee, s.min_fee, s.max_fee,
        s.refund_rule, s.issuer_share_bp, s.acquirer_share_bp, s.platform_share_bp,
    )


async def list_fee_schedules(conn: Any, merchant_id: str | None = None) -> list[FeeSchedule]:
    rows = await conn.fetch(
        f"SELECT {_COLUMNS} FROM settlement_fee_schedules WHERE $1::text IS NULL OR merchant_id = $1 "
        "ORDER BY merchant_id, effective_from",
        merchant_id,
    )
    return [_schedule(r) for r in rows]


async def schedules_in_force(conn: Any, business_date: date) -> dict[str, FeeSchedule]:
    """merchant id -> the schedule in force on ``business_date`` (``*`` for the default)."""
    rows = await conn.fetch(
        f"SELECT DISTINCT ON (merchant_id) {_COLUMNS} FROM settlement_fee_schedules "
        "WHERE effective_from <= $1 ORDER BY merchant_id, effective_from DESC",
        business_date,
    )
    return {r["merchant_id"]: _schedule(r) for r in rows}


async def set_merchant(conn: Any, merchant_id: str, cycle: Cycle, payout_account: str | None = None,
                       name: str | None = None) -> None:
    await conn.execute(
        "INSERT INTO settlement_merchants (merchant_id, cycle, cycle_day, payout_account, name) "
        "VALUES ($1, $2, $3, coalesce($4, ''), coalesce($5, '')) "
        "ON CONFLICT (merchant_id) DO UPDATE SET cycle = $2, cycle_day = $3, "
        "payout_account = coalesce($4, settlement_merchants.payout_account), "
        "name = coalesce($5, settlement_merchants.name), updated_at = now()",
        merchant_id, cycle.kind, cycle.day, payout_account, name,
    )


async def merchant_settings(conn: Any) -> dict[str, tuple[Cycle, str, str]]:
    """merchant id -> (cycle, payout account, name)."""
    rows = await conn.fetch(
        "SELECT merchant_id, cycle, cycle_day, payout_account, name FROM settlement_merchants"
    )
    return {
        r["merchant_id"]: (Cycle(r["cycle"], r["cycle_day"]), r["payout_account"], r["name"]) for r in rows
    }


async def host_fee_bps(conn: Any, merchant_id: str) -> int | None:
    """The merchant's flat fee-bps in the host (``merchants.fee_rate_bps``), None if the host has no such
    merchant (the shared-table contract: settlement/README.md)."""
    found: int | None = await conn.fetchval(
        "SELECT fee_rate_bps FROM merchants WHERE merchant_id = $1", merchant_id)
    return found


@dataclass(frozen=True)
class FeeInForce:
    merchant_id: str
    on: date
    applied: AppliedFee
    flat_bps: int | None  # the host's fee-bps; None: no such merchant in the host
    upcoming: FeeSchedule | None  # the next rate card that takes over after ``on``, if any
    reason: str  # one line: which applies and why


async def fee_in_force(conn: Any, merchant_id: str, on: date) -> FeeInForce:
    """Which fee applies to ``merchant_id`` on business date ``on`` and why (``fees.applicable_fee``)."""
    in_force = await schedules_in_force(conn, on)
    applied = applicable_fee(merchant_id, in_force)
    flat = await host_fee_bps(conn, merchant_id)
    own_later = [s for s in await list_fee_schedules(conn, merchant_id) if s.effective_from > on]
    default_later = [s for s in await list_fee_schedules(conn, DEFAULT_MERCHANT) if s.effective_from > on]
    # the next card that will price this merchant: its own, or the default's while it has none of its own
    upcoming = (own_later[0] if own_later
                else default_later[0] if default_later and applied.source != "merchant" else None)
    reason = applied.explain(merchant_id, on, flat, upcoming)
    return FeeInForce(merchant_id, on, applied, flat, upcoming, reason)
