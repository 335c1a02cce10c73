"""Merchant payables in the host ledger, made the way the host makes them (loads and purchases posted by
host.ledger.Ledger), so settlement has something to settle from and `ledger check` stays green."""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from typing import Any

from host.catalog import NewCard, ProductSpec, add_merchant, add_product, insert_cards
from host.ledger import Ledger
from host.model import Rc, Request, Txn, request_key

_seq = itertools.count(1)
BIG = 10**11


async def seed_payables(conn: Any, amounts: Mapping[str, int], *, parts: tuple[int, ...] = (0,),
                        acquirer: str = "48881111") -> dict[str, int]:
    """Create each merchant (if the host does not know it) and post purchases crediting it ``amount``
    in all, spread over cards in ``parts``; returns merchant -> host merchants.id."""
    n = next(_seq)
    bin_ = f"{699000 + n}"
    product = f"SEED{n}"
    await add_product(conn, ProductSpec(product, "reloadable", max_balance=BIG, per_txn_limit=BIG,
                                        daily_amount_limit=BIG, daily_count_limit=100_000,
                                        pin_required=False, max_balance_anonymous=BIG), bin_, 16)
    cards = await insert_cards(
        conn, product,
        [NewCard(f"seed{n}:{p}", "enc", f"{bin_}******{p:04d}", "1234", p) for p in parts],
        state="active")
    ids: dict[str, int] = {}
    for merchant in amounts:
        found = await conn.fetchval("SELECT id FROM merchants WHERE merchant_id = $1", merchant)
        ids[merchant] = found or await add_merchant(conn, merchant, merchant, "5812", acquirer_id=acquirer)
    ledger = Ledger()
    k = 0
    for card in cards:
        load = Request(f"admin:seed{n}:{card}", "0200", Txn.ADMIN_LOAD, amount=sum(amounts.values()),
                       currency="156", card_id=card)
        assert [d.code for d in await ledger.post_batch(conn, [load])] == [Rc.APPROVED]
    for merchant, amount in amounts.items():
        left = amount
        for i, card in enumerate(cards):
            share = left if i == len(cards) - 1 else amount // len(cards)
            left -= share
            if share <= 0:
                continue
            k += 1
            stan, transmitted = f"{k:06d}", f"1125{n:02d}{k:04d}"
            req = Request(request_key(acquirer, transmitted, stan, "TSEED", "0200"), "0200", Txn.PURCHASE,
                          acquirer_id=acquirer, stan=stan, transmitted=transmitted, terminal_id="TSEED",
                          merchant_id=merchant, rrn=f"{n:04d}{k:08d}", amount=share, currency="156",
                          card_id=card)
            decisions = await ledger.post_batch(conn, [req])
            assert [d.code for d in decisions] == [Rc.APPROVED], decisions
    return ids
