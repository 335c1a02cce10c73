"""Administrative postings (not network requests): loads by an operator, through the same engine."""

from __future__ import annotations

import uuid
from typing import Any

from host.ledger import Ledger
from host.model import Decision, Request, Txn

_LOAD_MESSAGES = {
    "61": "above the product's maximum balance",
    "57": "this product cannot be loaded",
    "05": "the card is not active",
    "14": "the card is closed or unknown",
    "41": "the card is reported lost",
    "43": "the card is reported stolen",
    "54": "the card has expired",
    "13": "invalid amount",
}


async def admin_load(pool: Any, card_id: int, amount: int, reference: str | None = None) -> Decision:
    """Credit a card from the issuer's funding account of its partition (the issuer's float).

    ``reference`` makes the load idempotent: the same reference twice loads once.
    """
    key = "admin:" + (reference or uuid.uuid4().hex)
    req = Request(
        key=key, mti="0000", txn=Txn.ADMIN_LOAD, acquirer_id="admin", card_id=card_id, amount=amount
    )
    decisions: list[Decision] = await pool.run(Ledger().post_batch, [req])
    return decisions[0]


def load_refusal(code: str) -> str:
    return _LOAD_MESSAGES.get(code, f"refused with response code {code}")
