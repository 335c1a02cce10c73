"""Payment codes (issue 16 item 7): one-time numeric codes that pay like a card number.

A cardholder's app (today: ``payswitch card code CARD``) asks for a code; the merchant scans its QR code
and sends it as DE2 with POS entry mode ``03x`` (QR, a project convention of the POS dialect); the
switch routes it by its prefix like a PAN; the host resolves it to its card and lets it pay once.

Format (specs/README.md, "Payment codes"): 18 digits = the card's BIN (its ``bin_ranges`` prefix, 6 to
11 digits, so the switch's BIN routes send it to the card's issuer) + random digits (``secrets``) + a
Luhn check digit (a mis-keyed code is caught as a mis-keyed PAN is). A code is told apart from a PAN by
the entry mode alone: DE2 of a ``03x`` request is always a code, of any other entry mode always a PAN.
So even a BIN whose PANs are 18 digits long is unambiguous; and a drawn code whose hash is a card's
PAN hash, or another code's (used or not), is drawn again, so a code is never a card number we issued.

Stored: only the HSM's keyed hash of the digits (the PAN lookup hash, ``IssuerCrypto.pan_hash``, not
cached: a code is seen once), the masked form (first 6 + last 4, like a PAN), the card, created /
expires (``host.payment_code_seconds``, default 60), the optional cap and, once used, the key of the
request that used it. The clear code is returned to the caller for the cardholder's screen only; it is
a bearer credential for its minute and is never logged (``ops.logs.mask_pan``).

Rules (decided in the posting batch, host.ledger, in the transaction that posts):
- a purchase or pre-auth by code consumes it: the batch's read locks the code row (``lock``, FOR
  UPDATE), the decision checks it (``refusal``), the batch's write marks it used by the request's key
  (``mark_used``). Two requests with one code: one is approved, the other declined
  ``payment_code_used``; a retransmission (same request key) gets the first answer and consumes nothing
  (it is a duplicate before any rule runs). A declined attempt (51, 61, a frozen card ...) does not
  consume it: nothing was paid, and the customer may retry with the same code while it lives.
- used: 05 ``payment_code_used``; expired: 54 ``payment_code_expired``; amount above its cap: 61
  ``payment_code_cap``; unknown: 14 ``card_unknown``; a balance inquiry or top-up by code: 12
  ``payment_code_txn`` (a code pays; it does not show a balance to the merchant).
- voids, refunds, completions and pre-auth voids by code (the original's DE2 is the used code) only
  resolve it to its card, used or expired, and consume nothing; reversals find their original by DE90.
  A voided or reversed code purchase does not give the code back: a code pays once.
- no PIN: a code was made in the authenticated app (host.rules.check_pin); a PIN block sent with a
  code is not verified.
"""

from __future__ import annotations

import datetime as dt
import io
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import segno

from host.catalog import CatalogError
from host.issue import luhn_digit, luhn_ok
from host.keys import IssuerCrypto
from host.model import Request, Txn
from host.rules import yymm
from ops.files import write_bytes_atomic
from ops.logs import mask_pan
from specs.catalogue import PAYMENT_CODE_LENGTH, QR_ENTRY_MODE

CODE_LENGTH = PAYMENT_CODE_LENGTH  # 18
ENTRY_MODE = QR_ENTRY_MODE  # POS / H2H DE22 positions 1-2: QR (project convention, pos-dialect.md)
PAYS = frozenset({Txn.PURCHASE, Txn.PREAUTH})  # what a code pays (and is consumed by)
REFERS = frozenset({Txn.VOID, Txn.REFUND, Txn.COMPLETION, Txn.PREAUTH_VOID, Txn.REVERSAL})
DRAWS = 20  # codes drawn before giving up (a collision is a 1 in 10^6..10^11 event per draw)


def is_code_entry(entry_mode: object) -> bool:
    """Whether DE22 says DE2 is a payment code (entry mode 03x)."""
    return isinstance(entry_mode, str) and entry_mode[:2] == ENTRY_MODE


def draw(bin_prefix: str) -> str:
    """A new code's digits: the BIN, random digits, the Luhn check digit (18 in all)."""
    random_len = CODE_LENGTH - len(bin_prefix) - 1
    if random_len < 6:
        raise CatalogError(f"BIN {bin_prefix} is too long for an {CODE_LENGTH}-digit payment code")
    partial = bin_prefix + f"{secrets.randbelow(10**random_len):0{random_len}d}"
    return partial + luhn_digit(partial)


def well_formed(code: str) -> bool:
    return len(code) == CODE_LENGTH and luhn_ok(code)


@dataclass
class PaymentCode:
    """A code row as the posting batch locked it; ``used_key`` is set as the batch consumes it."""

    id: int
    card_id: int
    expires_at: dt.datetime
    max_amount: int | None
    used_key: str | None


@dataclass(frozen=True)
class NewCode:
    code: str  # clear, for the cardholder's screen only: never stored or logged
    id: int
    card_id: int
    masked: str
    created_at: dt.datetime
    expires_at: dt.datetime
    max_amount: int | None
    currency: str


# -- making one (the app, `card code`) -------------------------------------------------------------
async def make_code(
    pool: Any,
    crypto: IssuerCrypto,
    card_id: int,
    *,
    seconds: int,
    today: dt.date,
    actor: str,
    max_amount: int | None = None,
) -> NewCode:
    """A new code for an active card (physical or virtual), valid ``seconds``, optionally capped at
    ``max_amount`` minor units; ``today`` is the business date (a card past its expiry month gets none)."""
    if max_amount is not None and max_amount <= 0:
        raise CatalogError("a payment code's cap must be above zero")
    card = await pool.run(_card_for_code, card_id)
    if card is None:
        raise CatalogError(f"no card {card_id}")
    if card["state"] != "active":
        raise CatalogError(f"card {card_id} is {card['state']}: payment codes are made for active cards only")
    if card["expiry"] < yymm(today):
        raise CatalogError(f"card {card_id} is past its expiry {card['expiry']}: it cannot pay")
    if card["bin"] is None:
        raise CatalogError(f"card {card_id}: its product has no BIN range the card's PAN is in")
    for _ in range(DRAWS):
        code = draw(card["bin"])
        h = await crypto.pan_hash(code, cache=False)
        row = await pool.run(_insert, h, mask_pan(code), card_id, seconds, max_amount, actor)
        if row is not None:
            return NewCode(
                code, row["id"], card_id, mask_pan(code), row["created_at"], row["expires_at"], max_amount,
                card["currency"],
            )
    raise CatalogError(f"card {card_id}: no free payment code drawn in {DRAWS} tries")


async def _card_for_code(conn: Any, card_id: int) -> dict[str, Any] | None:
    # The card's own BIN: of its product's ranges, the longest whose first digits (at most the 6 a
    # masked PAN keeps) are the card's.
    row = await conn.fetchrow(
        """SELECT c.state, c.expiry, p.currency,
                  (SELECT b.bin FROM bin_ranges b WHERE b.product_id = c.product_id
                      AND left(b.bin, 6) = left(c.pan_masked, least(6, length(b.bin)))
                   ORDER BY length(b.bin) DESC, b.bin LIMIT 1) AS bin
           FROM cards c JOIN products p ON p.id = c.product_id WHERE c.id = $1""",
        card_id,
    )
    return None if row is None else dict(row)


async def _insert(
    conn: Any, code_hash: str, masked: str, card_id: int, seconds: int, max_amount: int | None, actor: str
) -> Any:
    """The code's row, or None when its hash is taken (by another code, or by a card's PAN)."""
    return await conn.fetchrow(
        """INSERT INTO payment_codes (code_hash, code_masked, card_id, created_at, expires_at, max_amount,
                                      actor)
           SELECT $1, $2, $3, now(), now() + make_interval(secs => $4), $5, $6
           WHERE NOT EXISTS (SELECT 1 FROM cards WHERE pan_hash = $1)
           ON CONFLICT (code_hash) DO NOTHING
           RETURNING id, created_at, expires_at""",
        code_hash,
        masked,
        card_id,
        float(seconds),
        max_amount,
        actor,
    )


def qr_text(code: str) -> str:
    """The code's QR symbol as text for a terminal (segno, Unicode half blocks: no colour codes)."""
    out = io.StringIO()
    segno.make_qr(code).terminal(out=out, compact=True)
    return out.getvalue()


def write_png(code: str, path: Path) -> None:
    """The code's QR symbol as a PNG file, mode 0600 (it is a bearer credential for its minute)."""
    buf = io.BytesIO()
    segno.make_qr(code).save(buf, kind="png", scale=8, border=4)
    write_bytes_atomic(path, buf.getvalue())


# -- the host: resolving and consuming ------------------------------------------------------------
async def resolve(conn: Any, code_hash: str) -> tuple[int, int] | None:
    """(card id, partition) of the code with this hash, used or not, or None (host.service routes the
    request to the card's writer; the batch then locks and checks the code)."""
    row = await conn.fetchrow(
        "SELECT c.id, c.part FROM payment_codes pc JOIN cards c ON c.id = pc.card_id WHERE pc.code_hash = $1",
        code_hash,
    )
    return None if row is None else (row["id"], row["part"])


async def lock(conn: Any, code_hashes: list[str]) -> dict[str, PaymentCode]:
    """The batch's codes, locked until its commit (only the card's writer ever locks a code row)."""
    rows = await conn.fetch(
        """SELECT id, code_hash, card_id, expires_at, max_amount, used_key FROM payment_codes
           WHERE code_hash = ANY($1::text[]) ORDER BY id FOR UPDATE""",
        code_hashes,
    )
    return {
        r["code_hash"]: PaymentCode(r["id"], r["card_id"], r["expires_at"], r["max_amount"], r["used_key"])
        for r in rows
    }


def refusal(code: PaymentCode | None, r: Request, now: dt.datetime) -> str | None:
    """Why request ``r``, made with ``code`` (None: no such code), is declined (a host.rules.REASONS
    key), else None. A purchase or pre-auth then consumes the code when approved (``consume``)."""
    if code is None or code.card_id != r.card_id:
        return "card_unknown"
    if r.txn in REFERS:
        return None
    if r.txn not in PAYS:
        return "payment_code_txn"
    if code.used_key is not None:
        return "payment_code_used"
    if now >= code.expires_at:
        return "payment_code_expired"
    if code.max_amount is not None and r.amount > code.max_amount:
        return "payment_code_cap"
    return None


def consume(code: PaymentCode, r: Request) -> None:
    """Mark the code used by ``r`` in the batch (the next request of the batch sees it used)."""
    code.used_key = r.key


async def mark_used(conn: Any, used: list[PaymentCode], now: dt.datetime) -> None:
    """The batch's write: each consumed code used by its request, in the batch's transaction."""
    await conn.execute(
        """UPDATE payment_codes pc SET used_key = u.key, used_at = $3
           FROM unnest($1::bigint[], $2::text[]) AS u(id, key) WHERE pc.id = u.id""",
        [c.id for c in used],
        [c.used_key for c in used],
        now,
    )
