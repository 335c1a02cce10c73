"""Card issuance: PANs in the product's BIN, PINs and PVVs through the HSM, and the PIN-mailer file.

PAN: BIN + random serial + Luhn check digit (random so that card numbers are not guessable from one
another); the HSM's keyed hash must be new, else another serial is drawn.

PIN: ``JA`` draws a random PIN inside the HSM and returns it under the LMK (``L``+32H); ``DG`` turns that
into the PVV stored on the card. No clear PIN exists outside the HSM. ``--pin`` (a chosen PIN, for demos
and tests) is put under the LMK by the HSM's ``BA`` (encrypt a clear PIN), so it works under any LMK.

PIN mailer: a JSON-lines file (mode 0600) for the card producer with, per card, the card id, masked
PAN, expiry, the PAN encrypted under the ``mailer`` data key (M0, CBC, random IV) and the PIN under
the LMK as JA returned it. That is the form a PIN-mailer print HSM (sharing the issuer's LMK, as the
mailer printers attached to an issuer's HSM do) prints from; the mailer key reaches the producer by
key export under a ZMK (A8 / ST, host.producers). Neither the clear PAN nor the clear PIN is in the file.

With a producer (``card issue --producer NAME``) the PANs are encrypted under the mailer key of that
producer's scheme and the file starts with a header line ``{"record": "header", "producer", "scheme",
"mailer_key_under_zmk", "mailer_key_check_value", "zmk_check_value", "product", "batch", "cards"}``:
the mailer key under the producer's ZMK and its check value (6H), which the producer imports (A6 / SV)
to decrypt the ``pan_under_mailer_key`` fields (M2 CBC; ``IV hex:ciphertext hex``, the PAN's ASCII
digits zero-padded to the block). Without a producer there is no header line.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from host import catalog
from host.keys import IssuerCrypto
from host.producers import ExportedMailerKey
from hsm_sim.client import account_from_pan
from ops.digits import is_digits
from ops.logs import mask_pan

# The published payShield test LMK pair 02-03 (hsm-commands.md): the PIN pair, public test data.
_TEST_PIN_PAIR = bytes.fromhex("20202020202020203131313131313131")


def luhn_digit(partial: str) -> str:
    total = 0
    for i, ch in enumerate(reversed(partial)):
        d = int(ch)
        if i % 2 == 0:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return str((10 - total % 10) % 10)


def luhn_ok(pan: str) -> bool:
    return is_digits(pan) and luhn_digit(pan[:-1]) == pan[-1]


def new_pan(bin_prefix: str, length: int) -> str:
    serial_len = length - len(bin_prefix) - 1
    serial = f"{secrets.randbelow(10**serial_len):0{serial_len}d}"
    partial = bin_prefix + serial
    return partial + luhn_digit(partial)


def pin_under_test_lmk(pin: str) -> str:
    """``L``+32H for a chosen PIN under the published test LMK (demo and tests only)."""
    from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
    from cryptography.hazmat.primitives.ciphers import Cipher, modes

    if not (is_digits(pin) and 4 <= len(pin) <= 12):
        raise ValueError("a PIN is 4 to 12 digits")
    block = bytes.fromhex(pin + "F" * (32 - len(pin)))
    enc = Cipher(TripleDES(_TEST_PIN_PAIR + _TEST_PIN_PAIR[:8]), modes.ECB()).encryptor()
    return "L" + (enc.update(block) + enc.finalize()).hex().upper()


@dataclass(frozen=True)
class IssuedCard:
    card_id: int
    pan: str
    expiry: str
    masked: str
    form: str = "physical"  # physical or virtual, as issue_cards decided (the caller's, else the product's)


async def issue_cards(
    pool: Any,
    crypto: IssuerCrypto,
    product_code: str,
    count: int,
    *,
    pin: str | None = None,
    activate: bool = False,
    mailer_dir: Path | None = None,
    batch: str | None = None,
    concurrency: int = 64,
    producer: ExportedMailerKey | None = None,
    today: dt.date | None = None,
    form: str | None = None,
    owner_known: bool = False,
    actor: str | None = None,
) -> tuple[list[IssuedCard], Path | None]:
    """Issue ``count`` cards; returns them (with clear PANs, for the caller's output only) and the mailer.

    ``form``: physical or virtual (default: the product's). A virtual card (issue 16 item 7) is active
    at once and has no PIN mailer: it pays by payment code (host.payment_codes), which needs no PIN, so
    its PIN is the random one JA draws inside the HSM that nobody is told (kept under the LMK in
    cards.pin_lmk; a PIN set or reset gives the cardholder one). It is issued to a cardholder only:
    ``owner_known`` says the caller gives the cards to one (host.cardholders.issue_to).

    ``producer``: the mailer key as exported to that producer; the PANs go under that key and the
    export goes into the mailer file's header line. ``today``: the programme's business date (the
    validity counts from its month; host.business_day.business_today), else the UTC date. ``actor``:
    who issues them (their card_events rows; default the CLI's).
    """
    today = today or dt.datetime.now(dt.UTC).date()
    product = await pool.run(catalog.product, product_code)
    if product["bin"] is None:
        raise catalog.CatalogError(f"product {product_code} has no BIN range")
    form = form or product["form"]
    if form == "virtual" and not owner_known:
        raise catalog.CatalogError(
            f"product {product_code}: a virtual card is issued to a cardholder (give --cardholder)"
        )
    partitions = await pool.run(catalog.partitions)
    batch = batch or dt.datetime.now(dt.UTC).strftime("%Y%m%d%H%M%S") + f"-{secrets.token_hex(2)}"
    if pin is not None and not (is_digits(pin) and 4 <= len(pin) <= 12):
        raise ValueError("a PIN is 4 to 12 digits")
    # The LMK PIN form does not bind the account, so one BA serves every card of the batch.
    fixed_pin = await crypto.hsm.encrypt_pin(pin, "0" * 12) if pin is not None else None
    made: list[tuple[str, catalog.NewCard, dict[str, str]]] = []
    seen: set[str] = set()
    limiter = trio.CapacityLimiter(concurrency)
    mailer_key = producer.mailer_key if producer is not None else crypto.keys.mailer

    async def one() -> None:
        async with limiter:
            made.append(
                await draw_card(
                    pool, crypto, product, partitions, seen=seen, pin_lmk=fixed_pin, mailer_key=mailer_key
                )
            )

    async with trio.open_nursery() as nursery:
        for _ in range(count):
            nursery.start_soon(one)
    ids = await pool.run(
        lambda conn: catalog.insert_cards(
            conn, product_code, [m[1] for m in made], batch, "inventory", today, actor, form=form
        )
    )
    expiry = catalog.expiry_for(today, product["validity_months"])  # the one insert_cards stored
    cards = [
        IssuedCard(cid, pan, expiry, card.pan_masked, form)
        for cid, (pan, card, _) in zip(ids, made, strict=True)
    ]
    mailer = None
    if mailer_dir is not None and form == "physical":  # a virtual card's PIN is mailed to nobody
        mailer = write_mailer(
            mailer_dir,
            batch,
            product_code,
            expiry,
            [(c.card_id, c.masked, m[2]) for c, m in zip(cards, made, strict=True)],
            header=mailer_header(producer, product_code, batch, len(cards)) if producer else None,
        )
    if activate or form == "virtual":
        for c in cards:
            await activate_card(pool, c.card_id, actor=actor)
    return cards, mailer


async def draw_card(
    pool: Any,
    crypto: IssuerCrypto,
    product: Any,
    partitions: int,
    *,
    seen: set[str] | None = None,
    pin_lmk: str | None = None,
    mailer_key: str | None = None,
) -> tuple[str, catalog.NewCard, dict[str, str]]:
    """One new card of ``product`` (a host.catalog.product row), all its secrets through the HSM: a PAN
    in the BIN whose keyed hash is free (not in the cards, nor in ``seen``: the batch so far), the PIN
    under the LMK (``pin_lmk``: that PIN, e.g. BA's chosen one or a renewal's kept one; else a new random
    one by JA) and its PVV for this PAN (DG), the PAN under the data key and under ``mailer_key``.

    Returns the clear PAN (for the caller's output only), the row to insert (the PIN under the LMK kept
    on it, cards.pin_lmk) and the PIN-mailer secrets (PAN under the mailer key, PIN under the LMK)."""
    seen = set() if seen is None else seen
    for _attempt in range(20):
        pan = new_pan(product["bin"], product["pan_length"])
        h = await crypto.pan_hash(pan)
        if h in seen or await pool.run(_hash_taken, h):
            continue
        seen.add(h)
        break
    else:
        raise catalog.CatalogError("could not draw a free PAN in the BIN range (range full?)")
    if pin_lmk is None:
        pin_lmk, pvv = await crypto.new_pin(pan)
    else:
        pvv = await crypto.hsm.generate_pvv(crypto.keys.pvk, pin_lmk, account_from_pan(pan), "1")
    pan_enc = await crypto.encrypt_pan(pan)
    mailer_pan = await crypto.encrypt_pan(pan, mailer_key or crypto.keys.mailer)
    card = catalog.NewCard(h, pan_enc, mask_pan(pan), pvv, int(h, 16) % partitions, pin_lmk=pin_lmk)
    return pan, card, {"pan_enc": mailer_pan, "pin_lmk": pin_lmk}


async def _hash_taken(conn: Any, pan_hash: str) -> bool:
    return bool(await conn.fetchval("SELECT 1 FROM cards WHERE pan_hash = $1", pan_hash))


def mailer_header(producer: ExportedMailerKey, product: str, batch: str, cards: int) -> dict[str, Any]:
    """The header line for a producer: its name and the mailer key under its ZMK, never a clear key."""
    return {
        "record": "header",
        **producer.public(),
        "product": product,
        "batch": batch,
        "cards": cards,
    }


def write_mailer(
    folder: Path,
    batch: str,
    product: str,
    expiry: str,
    rows: list[tuple[int, str, dict[str, str]]],
    header: dict[str, Any] | None = None,
) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"mailer_{product}_{batch}.jsonl"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        if header is not None:
            fh.write(json.dumps(header) + "\n")
        for card_id, masked, secret in rows:
            fh.write(
                json.dumps(
                    {
                        "card_id": card_id,
                        "pan_masked": masked,
                        "expiry": expiry,
                        "pan_under_mailer_key": secret["pan_enc"],
                        "pin_under_lmk": secret["pin_lmk"],
                    }
                )
                + "\n"
            )
    return path


async def activate_card(
    pool: Any, card_id: int, today: dt.date | None = None, *, actor: str | None = None
) -> None:
    """inventory -> active; a fixed-amount (gift) card is loaded with its face value on activation,
    unless it replaces a card (host.replace): the old card's balance is its money, even when none.
    ``today`` (the business date): refused for a card that is not in inventory or is past its expiry."""
    await pool.run(
        lambda conn: catalog.set_card_state(
            conn, card_id, "active", action="activate", today=today, actor=actor
        )
    )
    info = await pool.run(_face_value, card_id)
    if info:
        from host.admin import admin_load

        d = await admin_load(pool, card_id, info, f"face-value:{card_id}")
        if d.code != "00":
            raise catalog.CatalogError(f"card {card_id}: face value not loaded (response {d.code})")


async def _face_value(conn: Any, card_id: int) -> int:
    value = await conn.fetchval(
        """SELECT p.initial_amount FROM cards c JOIN products p ON p.id = c.product_id
           JOIN accounts a ON a.id = c.account_id
           WHERE c.id = $1 AND p.kind = 'fixed_amount' AND a.credits_posted = 0
             AND NOT EXISTS (SELECT 1 FROM cards o WHERE o.replaced_by = c.id)""",
        card_id,
    )
    return int(value or 0)
