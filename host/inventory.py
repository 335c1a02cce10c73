"""Card inventory (issue 16 item 9): stock by product, issue batch and state, and activating a whole
issue batch or a PAN range in one command. The audit of every state change is host.card_events.

A PAN range is found without a clear PAN in the database: PANs are stored only under the HSM's data
key and as a keyed hash, so the candidates are the cards whose masked PAN fits (the range's first 6
digits, a last 4 that a PAN of the range can have), each decrypted by the HSM (M2) and compared. A range
is at most ``MAX_RANGE`` account numbers (PAN without its check digit: one card each at most), so that
is also the most HSM decryptions one command costs.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

import trio

from host import issue
from host.catalog import CatalogError
from host.keys import IssuerCrypto
from ops.digits import is_digits

MAX_RANGE = 10_000  # cards (account numbers) in one --range
CONFIRM_ABOVE = 100  # activating more cards than this needs --yes
_CONCURRENCY = 8


async def report(conn: Any, product: str | None = None, batch: str | None = None) -> list[dict[str, Any]]:
    """Card counts by product, issue batch and state (the filters that are given must match)."""
    if product is not None and not await conn.fetchval("SELECT 1 FROM products WHERE code = $1", product):
        raise CatalogError(f"no product {product} (`payswitch product list` shows them)")
    rows = await conn.fetch(
        """SELECT p.code AS product, c.issue_batch AS batch, c.state, count(*) AS cards
           FROM cards c JOIN products p ON p.id = c.product_id
           WHERE ($1::text IS NULL OR p.code = $1) AND ($2::text IS NULL OR c.issue_batch = $2)
           GROUP BY p.code, c.issue_batch, c.state ORDER BY p.code, c.issue_batch, c.state""",
        product,
        batch,
    )
    return [{**dict(r), "cards": int(r["cards"])} for r in rows]


def totals(rows: list[dict[str, Any]]) -> dict[str, int]:
    """Cards by state over the report's rows, and ``all``."""
    out: dict[str, int] = {}
    for r in rows:
        out[r["state"]] = out.get(r["state"], 0) + r["cards"]
    out["all"] = sum(r["cards"] for r in rows)
    return out


def parse_range(text: str) -> tuple[str, str]:
    """``FIRST_PAN-LAST_PAN``: two PANs of one length and BIN (first 6 digits), first not after last,
    at most MAX_RANGE account numbers; raises CatalogError naming the problem."""
    first, sep, last = text.replace(" ", "").partition("-")
    if not sep or not (is_digits(first) and is_digits(last)) or not 13 <= len(first) <= 19:
        raise CatalogError("--range: FIRST_PAN-LAST_PAN, two card numbers of 13 to 19 digits")
    if len(first) != len(last) or first[:6] != last[:6]:
        raise CatalogError("--range: both card numbers must have the same length and first 6 digits")
    if first > last:
        raise CatalogError("--range: the first card number is after the last")
    if int(last[:-1]) - int(first[:-1]) + 1 > MAX_RANGE:
        raise CatalogError(f"--range: more than {MAX_RANGE:,} cards; activate it in parts")
    return first, last


def _last4s(first: str, last: str) -> list[str]:
    """The last 4 digits a PAN in the range can have (its account numbers with their check digits)."""
    out = set()
    for n in range(int(first[:-1]), int(last[:-1]) + 1):
        partial = f"{n:0{len(first) - 1}d}"
        out.add((partial + issue.luhn_digit(partial))[-4:])
    return sorted(out)


async def _batch_cards(conn: Any, batch: str) -> list[dict[str, Any]]:
    rows = await conn.fetch("SELECT id, state FROM cards WHERE issue_batch = $1 ORDER BY id", batch)
    if not rows:
        raise CatalogError(f"no cards in issue batch {batch} (`payswitch inventory report` lists batches)")
    return [dict(r) for r in rows]


async def _range_candidates(conn: Any, first: str, last: str) -> list[dict[str, Any]]:
    return [
        dict(r)
        for r in await conn.fetch(
            """SELECT id, state, pan_enc FROM cards
               WHERE left(pan_masked, 6) = $1 AND length(pan_masked) = $2
                 AND right(pan_masked, 4) = ANY($3::text[])
               ORDER BY id""",
            first[:6],
            len(first),
            _last4s(first, last),
        )
    ]


@dataclass
class Activation:
    selected: int  # cards the batch or range holds
    dry_run: bool
    activated: list[int] = field(default_factory=list)  # (dry run: would be activated)
    refused: list[tuple[int, str]] = field(default_factory=list)  # card id, why


async def select(
    pool: Any, crypto: IssuerCrypto | None, *, batch: str | None = None, pan_range: str | None = None
) -> list[dict[str, Any]]:
    """The cards of an issue batch, or of a PAN range (decrypted by the HSM and compared)."""
    if (batch is None) == (pan_range is None):
        raise CatalogError("give --batch or --range (one of them)")
    if batch is not None:
        cards: list[dict[str, Any]] = await pool.run(_batch_cards, batch)
        return cards
    assert pan_range is not None
    first, last = parse_range(pan_range)
    if crypto is None:
        raise CatalogError("--range needs the HSM (to compare the card numbers stored encrypted)")
    out = []
    for c in await pool.run(_range_candidates, first, last):
        pan = await crypto.decrypt_pan(c.pop("pan_enc"))
        if len(pan) == len(first) and first <= pan <= last:
            out.append(c)
    if not out:
        raise CatalogError("no cards in that range")
    return out


async def activate(
    pool: Any,
    crypto: IssuerCrypto | None,
    *,
    batch: str | None = None,
    pan_range: str | None = None,
    dry_run: bool = False,
    yes: bool = False,
    today: dt.date | None = None,
    actor: str | None = None,
) -> Activation:
    """Activate every inventory card of an issue batch or a PAN range (gift cards get their face value,
    as `card activate` does: host.issue.activate_card). Cards not in inventory, or past their expiry,
    are listed with why. More than CONFIRM_ABOVE cards need ``yes`` (unless a dry run)."""
    cards = await select(pool, crypto, batch=batch, pan_range=pan_range)
    result = Activation(len(cards), dry_run)
    stock = [c["id"] for c in cards if c["state"] == "inventory"]
    for c in cards:
        if c["state"] != "inventory":
            result.refused.append((c["id"], f"{c['state']}, not in inventory"))
    if dry_run:
        result.activated = stock
        return result
    if len(stock) > CONFIRM_ABOVE and not yes:
        raise CatalogError(f"{len(stock):,} cards would be activated: give --yes (or --dry-run to list them)")
    limiter = trio.CapacityLimiter(_CONCURRENCY)

    async def one(card_id: int) -> None:
        async with limiter:
            try:
                await issue.activate_card(pool, card_id, today, actor=actor)
            except CatalogError as exc:
                result.refused.append((card_id, str(exc)))
            else:
                result.activated.append(card_id)

    async with trio.open_nursery() as nursery:
        for cid in stock:
            nursery.start_soon(one, cid)
    result.activated.sort()
    result.refused.sort()
    return result
