"""The reports operators ask for: the day's transactions by merchant and store, the outstanding balance
(float) per product with its movement over a date range, dormant cards and cards nearing expiry.

Plain functions over an asyncpg connection (the console's pages and CSV downloads call them). Amounts
are integer minor units with their currency (ISO 4217 numeric); times are aware ``datetime`` (UTC):
callers format both (ops.money, ops.localtime). A business date is the clearing file's
(``specs.clearing.business_window``: ``clearing.cutover`` in ``clearing.timezone``). The card lists are
keyset pages (``host.directory.Page``, cursor = the last card id). No clear PAN is read: cards are
shown by their masked PAN (first 6 + last 4).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from host.catalog import CatalogError
from host.directory import DEFAULT_LIMIT, MAX_LIMIT, Page
from ops.digits import row_number
from specs.clearing import business_window

# auth_requests.txn values counted in each column of the daily report
_SALES = ("purchase", "completion")
_REFUNDS = ("refund",)
_UNDOS = ("void", "reversal", "preauth_void")
# not counted: what no merchant made (administrative loads and unloads, the sweeper...) and what moves
# no money (balance enquiries, PIN changes)
_NOT_AT_MERCHANTS = ("balance", "pin_change", "admin_load", "admin_unload", "forfeit", "replacement",
                     "expiry")
MAX_DAYS = 3650


@dataclass(frozen=True)
class Window:
    """The UTC [start, end) of business dates ``first`` .. ``last``."""

    first: dt.date
    last: dt.date
    start: dt.datetime
    end: dt.datetime


def window(first: dt.date, last: dt.date, cutover: str, timezone: str) -> Window:
    if last < first:
        raise CatalogError(f"the range {first} .. {last} ends before it starts")
    if (last - first).days > MAX_DAYS:
        raise CatalogError(f"the range {first} .. {last} is longer than {MAX_DAYS} days")
    start, _ = business_window(first, cutover, timezone)
    _, end = business_window(last, cutover, timezone)
    return Window(first, last, start, end)


def _limit(limit: int) -> None:
    if not 1 <= limit <= MAX_LIMIT:
        raise CatalogError(f"limit {limit}: 1 to {MAX_LIMIT}")


def _after(after: str | None) -> int:
    if after is None or after == "":
        return 0
    if row_number(after) is None:
        raise CatalogError(f"cursor {after!r}: give the one the previous page gave (a number)")
    return int(after)


# -- daily transactions by merchant and store ------------------------------------------------------------
_DAILY = """
SELECT coalesce(m.merchant_id, a.merchant_id) AS merchant_id, coalesce(m.name, '') AS merchant_name,
       coalesce(s.code, '') AS store, coalesce(s.name, '') AS store_name,
       coalesce(a.currency, m.currency, '156') AS currency,
       count(*) FILTER (WHERE a.response_code = '00' AND a.txn = ANY($3::text[])) AS sales,
       coalesce(sum(a.amount) FILTER (WHERE a.response_code = '00' AND a.txn = ANY($3::text[])), 0)::bigint
           AS sales_amount,
       count(*) FILTER (WHERE a.response_code = '00' AND a.txn = ANY($4::text[])) AS refunds,
       coalesce(sum(a.amount) FILTER (WHERE a.response_code = '00' AND a.txn = ANY($4::text[])), 0)::bigint
           AS refunds_amount,
       count(*) FILTER (WHERE a.response_code = '00' AND a.txn = ANY($5::text[])) AS undone,
       count(*) FILTER (WHERE a.response_code <> '00') AS declines,
       count(*) AS requests,
       min(a.received_at) AS first_at, max(a.received_at) AS last_at
FROM auth_requests a
LEFT JOIN merchants m ON m.id = a.merchant_ref
LEFT JOIN terminals t ON t.merchant_id = a.merchant_ref AND t.terminal_id = a.terminal_id
LEFT JOIN stores s ON s.id = t.store_id
WHERE a.received_at >= $1 AND a.received_at < $2 AND NOT a.txn = ANY($7::text[])
  AND (a.merchant_ref IS NOT NULL OR a.merchant_id <> '')
  AND ($6::text IS NULL OR coalesce(m.merchant_id, a.merchant_id) = $6)
GROUP BY 1, 2, 3, 4, 5
ORDER BY 1, 3, 5
"""


async def daily_transactions(
    conn: Any, business_date: dt.date, cutover: str, timezone: str, *, merchant: str | None = None
) -> tuple[Window, list[dict[str, Any]]]:
    """One row per merchant, store and currency of the requests the host decided on ``business_date``:
    approved sales (purchases and completions) and refunds (count, amount), approved voids and
    reversals, declines, and all requests. ``net_amount`` = sales - refunds."""
    w = window(business_date, business_date, cutover, timezone)
    rows = await conn.fetch(_DAILY, w.start, w.end, list(_SALES), list(_REFUNDS), list(_UNDOS), merchant,
                            list(_NOT_AT_MERCHANTS))
    out = []
    for r in rows:
        d = dict(r)
        d["currency"] = str(d["currency"]).strip()
        d["net_amount"] = int(d["sales_amount"]) - int(d["refunds_amount"])
        out.append(d)
    return w, out


# -- float per product ---------------------------------------------------------------------------------
_FLOAT = """
WITH moved AS (
    SELECT c.product_id,
           coalesce(sum(t.amount) FILTER (WHERE t.credit_account_id = c.account_id
                    AND t.created_at >= $1 AND t.created_at < $2), 0)::bigint AS credits,
           coalesce(sum(t.amount) FILTER (WHERE t.debit_account_id = c.account_id
                    AND t.created_at >= $1 AND t.created_at < $2), 0)::bigint AS debits,
           coalesce(sum(CASE WHEN t.credit_account_id = c.account_id THEN t.amount ELSE -t.amount END)
                    FILTER (WHERE t.created_at >= $2), 0)::bigint AS after_end
    FROM transfers t JOIN cards c ON c.id = t.card_id
    WHERE t.phase IN ('single', 'post_pending') AND t.created_at >= $1
    GROUP BY c.product_id
), held AS (
    SELECT c.product_id, count(*) AS cards,
           count(*) FILTER (WHERE c.state = 'active') AS active_cards,
           coalesce(sum(a.credits_posted - a.debits_posted), 0)::bigint AS balance_now,
           coalesce(sum(a.debits_pending), 0)::bigint AS held_now
    FROM cards c JOIN accounts a ON a.id = c.account_id
    GROUP BY c.product_id
)
SELECT p.id AS product_id, p.code, p.name, p.currency,
       coalesce(h.cards, 0) AS cards, coalesce(h.active_cards, 0) AS active_cards,
       coalesce(h.balance_now, 0)::bigint AS balance_now, coalesce(h.held_now, 0)::bigint AS held_now,
       coalesce(m.credits, 0)::bigint AS credits, coalesce(m.debits, 0)::bigint AS debits,
       coalesce(m.after_end, 0)::bigint AS after_end
FROM products p LEFT JOIN held h ON h.product_id = p.id LEFT JOIN moved m ON m.product_id = p.id
WHERE ($3::text IS NULL OR p.code = $3)
ORDER BY p.code
"""


async def float_by_product(
    conn: Any, first: dt.date, last: dt.date, cutover: str, timezone: str, *, product: str | None = None
) -> tuple[Window, list[dict[str, Any]]]:
    """Per product: the outstanding (posted) balance of its cards at the start and end of business dates
    ``first`` .. ``last`` and now, with the movement between (``credits``: loads, top-ups, refunds into
    cards; ``debits``: purchases, unloads, forfeits out of them); ``opening + credits - debits =
    closing``. ``held_now``: pre-authorization holds open now (not part of the posted balance)."""
    w = window(first, last, cutover, timezone)
    rows = await conn.fetch(_FLOAT, w.start, w.end, product)
    out = []
    for r in rows:
        d = dict(r)
        d["currency"] = str(d["currency"]).strip()
        d["closing"] = int(d["balance_now"]) - int(d["after_end"])
        d["opening"] = d["closing"] - int(d["credits"]) + int(d["debits"])
        d["net"] = int(d["credits"]) - int(d["debits"])
        del d["after_end"]
        out.append(d)
    return w, out


# -- dormant cards ---------------------------------------------------------------------------------------
_DORMANT = """
SELECT c.id, c.pan_masked, c.label, c.state, c.expiry, c.issued_at, p.code AS product, p.currency,
       (a.credits_posted - a.debits_posted)::bigint AS balance, u.last_used
FROM cards c JOIN products p ON p.id = c.product_id JOIN accounts a ON a.id = c.account_id
LEFT JOIN LATERAL (SELECT max(t.created_at) AS last_used FROM transfers t WHERE t.card_id = c.id) u ON true
WHERE c.state = ANY($1::text[]) AND c.id > $2 AND ($4::text IS NULL OR p.code = $4)
  AND coalesce(u.last_used, c.issued_at) < $3
ORDER BY c.id LIMIT $5
"""


async def dormant_cards(
    conn: Any, days: int, *, now: dt.datetime | None = None, product: str | None = None,
    states: tuple[str, ...] = ("active",), after: str | None = None, limit: int = DEFAULT_LIMIT,
) -> Page:
    """Cards (by default active ones) with no money movement (no transfer) for ``days`` days: neither
    used nor loaded since (a card never used counts from its issue). ``last_used`` is None for those."""
    if not 1 <= days <= MAX_DAYS:
        raise CatalogError(f"days {days}: 1 to {MAX_DAYS}")
    _limit(limit)
    since = (now or dt.datetime.now(dt.UTC)) - dt.timedelta(days=days)
    found = await conn.fetch(_DORMANT, list(states), _after(after), since, product, limit + 1)
    rows = [dict(r) for r in found]
    for r in rows:
        r["currency"] = str(r["currency"]).strip()
    nxt = str(rows[limit - 1]["id"]) if len(rows) > limit else None
    return Page(rows[:limit], nxt)


# -- cards nearing expiry --------------------------------------------------------------------------------
_EXPIRING = """
SELECT * FROM (
    SELECT c.id, c.pan_masked, c.label, c.state, c.expiry, p.code AS product, p.currency,
           (a.credits_posted - a.debits_posted)::bigint AS balance,
           (make_date(2000 + substr(c.expiry, 1, 2)::int, substr(c.expiry, 3, 2)::int, 1)
                + interval '1 month' - interval '1 day')::date AS expires_on
    FROM cards c JOIN products p ON p.id = c.product_id JOIN accounts a ON a.id = c.account_id
    WHERE c.state = ANY($1::text[]) AND c.id > $2 AND ($5::text IS NULL OR p.code = $5)
      AND substr(c.expiry, 3, 2) BETWEEN '01' AND '12'
) x
WHERE x.expires_on >= $3 AND x.expires_on <= $4
ORDER BY x.id LIMIT $6
"""


async def expiring_cards(
    conn: Any, days: int, today: dt.date, *, product: str | None = None,
    states: tuple[str, ...] = ("active", "inventory", "frozen"), after: str | None = None,
    limit: int = DEFAULT_LIMIT,
) -> Page:
    """Cards whose expiry (the last day of the YYMM month) falls from ``today`` to ``days`` days after,
    with their balance (what expiry will leave on them)."""
    if not 0 <= days <= MAX_DAYS:
        raise CatalogError(f"days {days}: 0 to {MAX_DAYS}")
    _limit(limit)
    rows = [
        dict(r)
        for r in await conn.fetch(
            _EXPIRING, list(states), _after(after), today, today + dt.timedelta(days=days), product, limit + 1
        )
    ]
    for r in rows:
        r["currency"] = str(r["currency"]).strip()
    nxt = str(rows[limit - 1]["id"]) if len(rows) > limit else None
    return Page(rows[:limit], nxt)

