"""The issuer's side of chip and contactless cards (issue 19 items 1 and 2; host/README.md "Chip and
contactless"): chip data from H2H DE48, the ARQC checked and the ARPC made in the HSM, and the rules.

How a chip request goes (specs/README.md, "Chip data on H2H"):

- **parse** (host.h2h): entry mode (DE22) 05x (contact chip) or 07x (contactless) with H2H DE48 = the
  terminal's DE55 as hex: decoded with ``specs.tlv``; bad hex or TLV is answered 30.
- **verify** (host.service, before the batch, as a PIN is verified): the card's product says the chip's
  algorithm and holds its IMK-AC; the HSM's KW checks the ARQC (9F26) over ``specs.tlv.arqc_data`` for
  the card's key (PAN, PSN from 5F34 else ``00``) and ATC (9F36) and makes the ARPC for ARC ``00`` at
  once. The result (``Arqc``) travels with the request.
- **check** (host.ledger, after the card's state, before the PIN): the rules below.
- **answer** (host.service, after the batch): H2H DE48 of the 0210 = hex of TLV ``91`` (ARPC || ARC)
  and ``8A`` (ARC); a decline's ARPC is made with its own DE39 as ARC (one more HSM exchange, rare).

=====================  ===========================================================================
chip data missing      05x/07x sale (purchase, pre-auth) of a chip product without complete chip data
                       (ARQC_TAGS, 9F26 of 8 bytes, 9F27): 30 ``chip_data_missing`` (the message lacks
                       what its own entry mode says it carries: a terminal's fault, not the card's)
ARQC wrong             05 ``arqc_failed`` (nothing posted, no ARPC: the cryptogram is not the card's)
amount not the card's  9F02 (covered by the ARQC) not DE4: 05 ``arqc_amount`` (a cryptogram for one
                       amount cannot authorize another)
ARQC not verifiable    HSM unavailable or no IMK-AC: 96 ``chip_unverified`` (as a PIN: retry later)
ATC replayed           ATC not above the card's last verified one: 05 ``atc_replayed`` (a replayed or
                       cloned cryptogram); a verified ATC is kept even when the request is declined
                       later (the cryptogram is spent either way)
fallback               swipe or keyed sale (DE22 02x/01x) of a chip product: 57 ``chip_fallback``
                       when the product says ``decline``; approved and flagged ``chip_fallback``
                       (auth_flags, shown by ``card history``) when it says ``flag``. Not a
                       card-not-present API purchase (81x) nor a payment code (03x)
contactless no CVM     07x sale with a verified ARQC, amount <= no_cvm_limit and the card's no-CVM
                       sum + amount <= no_cvm_cumulative_limit: no PIN needed, even on a product
                       that requires one; any other 07x sale needs the PIN (55 ``pin_missing``),
                       even on a product that does not
counters               an approved no-CVM sale adds to cards.no_cvm_amount / no_cvm_count; any
                       approved request whose PIN verified resets both to 0
=====================  ===========================================================================

A card of a product without a chip (``chip = 'none'``) is what it always was: chip data it sends is
ignored (there is no key to check it with) and so it never gets the no-CVM allowance.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from host.model import CardState, Decision, Pin, Rc, Request, Txn
from hsm_sim.client import HsmClient, HsmCommandError, HsmError
from ops.logs import get_logger
from specs import tlv

log = get_logger(__name__)

# DE22's first two digits (specs/contracts/pos-dialect.md): where the card data came from.
CONTACT, CONTACTLESS, SWIPE, KEYED = "05", "07", "02", "01"
CHIP_ENTRY = frozenset({CONTACT, CONTACTLESS})
FALLBACK_ENTRY = frozenset({SWIPE, KEYED})
SALES = frozenset({Txn.PURCHASE, Txn.PREAUTH})  # what a chip card pays with a cryptogram
REQUIRED_TAGS = (*tlv.ARQC_TAGS, "9F26", "9F27")
ARC_APPROVED = b"00"
FALLBACK_FLAG = "chip_fallback"


class ChipDataError(ValueError):
    """Chip data that cannot be read (bad hex, bad BER-TLV): the request is answered 30."""


class Arqc(StrEnum):
    NONE = "none"  # not checked: no chip data, or the card's product has no chip (or no such card)
    OK = "ok"  # the HSM verified it
    BAD = "bad"  # the HSM says it is not the card's
    ERROR = "error"  # could not be checked (HSM unavailable, no IMK-AC)


@dataclass
class Chip:
    """A request's chip data (the terminal's DE55) and what the HSM said of its cryptogram."""

    tags: dict[str, bytes]
    result: Arqc = Arqc.NONE
    arpc: bytes | None = None  # made with ARC "00" as the ARQC was verified

    @property
    def complete(self) -> bool:
        t = self.tags
        return all(k in t for k in REQUIRED_TAGS) and len(t["9F26"]) == 8 and len(t["9F36"]) == 2

    @property
    def atc(self) -> int | None:
        value = self.tags.get("9F36")
        return int.from_bytes(value, "big") if value is not None and len(value) == 2 else None

    @property
    def amount(self) -> int | None:
        """9F02, the amount the card authorized (n12: 6 BCD bytes), in minor units; None if not BCD."""
        text = self.tags.get("9F02", b"").hex()
        return int(text) if text.isdigit() else None

    @property
    def psn(self) -> str:
        """The PAN sequence number from 5F34 (n2, one BCD byte), else ``00`` (common.md convention 2)."""
        value = self.tags.get("5F34")
        if value is None or len(value) != 1:
            return "00"
        text = value.hex()
        return text if text.isdigit() else "00"


def entry(req: Request) -> str:
    """DE22's first two digits (``""`` when the request had none)."""
    return req.entry_mode[:2]


def parse(de48: Any, entry_mode: str) -> Chip | None:
    """The chip data of a 05x/07x request (H2H DE48 = hex of the POS DE55); None for other entry modes
    or without DE48. Raises ChipDataError for bad hex or TLV."""
    if entry_mode[:2] not in CHIP_ENTRY or de48 is None:
        return None
    text = de48 if isinstance(de48, str) else ""
    if not text or len(text) % 2:
        raise ChipDataError("DE48 is not chip data (hex of the terminal's DE55)")
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        raise ChipDataError("DE48 is not chip data (hex of the terminal's DE55)") from None
    try:
        return Chip(tlv.as_dict(tlv.decode(raw)))
    except tlv.TlvError as exc:
        raise ChipDataError(f"DE48 chip data: {exc}") from None


# -- the HSM's part (host.service) ------------------------------------------------------------------
async def card_key(conn: Any, pan_hash: str) -> tuple[str, str | None] | None:
    """The chip algorithm and IMK-AC of the card's product; None when the card is unknown or its
    product has no chip."""
    row = await conn.fetchrow(
        "SELECT p.chip, p.imk_ac FROM cards c JOIN products p ON p.id = c.product_id WHERE c.pan_hash = $1",
        pan_hash,
    )
    if row is None or row["chip"] == "none":
        return None
    return row["chip"], row["imk_ac"]


async def verify(hsm: HsmClient, imk: str | None, pan: str, chip: Chip) -> None:
    """Check the ARQC and make the ARPC for ARC ``00`` (sets ``chip.result`` and ``chip.arpc``).
    Incomplete chip data stays NONE (the rules say chip_data_missing for a sale)."""
    if not chip.complete:
        return
    if imk is None:
        log.warning("chip product without IMK-AC: ARQC not verifiable (payswitch product chip-key)")
        chip.result = Arqc.ERROR
        return
    t = chip.tags
    try:
        chip.arpc = await hsm.verify_arqc(
            imk, pan, chip.psn, t["9F36"], tlv.arqc_data(t), t["9F26"], arc=ARC_APPROVED
        )
    except HsmCommandError as exc:
        if exc.code == "01":  # the ARQC does not verify
            chip.result = Arqc.BAD
            return
        log.info("ARQC not verified", error=repr(exc))
        chip.result = Arqc.ERROR
        return
    except (HsmError, ValueError) as exc:
        log.info("ARQC not verified", error=repr(exc))
        chip.result = Arqc.ERROR
        return
    chip.result = Arqc.OK


async def answer_fields(hsm: HsmClient, imk: str | None, pan: str, chip: Chip, code: str) -> dict[str, str]:
    """H2H DE48 of the response to a verified chip request: hex of TLV 91 (ARPC || ARC) and 8A (ARC).
    An approval uses the ARPC made with the verification; a decline's is made now with its DE39 as the
    ARC. Empty (no DE48) when the ARQC was not verified, or the decline's ARPC could not be made."""
    if chip.result is not Arqc.OK or imk is None:
        return {}
    arc = code.encode("ascii")
    arpc = chip.arpc if arc == ARC_APPROVED else None
    if arpc is None:
        t = chip.tags
        try:
            arpc = await hsm.arpc(imk, pan, chip.psn, t["9F36"], t["9F26"], arc)
        except (HsmError, ValueError) as exc:
            log.info("ARPC not made; answered without it", error=repr(exc))
            return {}
    return {"48": response_tlv(arpc, arc).hex().upper()}


def response_tlv(arpc: bytes, arc: bytes) -> bytes:
    """The issuer's chip data: 91 = ARPC (8) || ARC (2), 8A = ARC."""
    return tlv.encode({"91": arpc + arc, "8A": arc})


# -- the rules (host.ledger) ------------------------------------------------------------------------
def check(card: CardState, req: Request) -> str | None:
    """The chip rules of one request on a locked card (see the table above); a key of host.rules.REASONS
    or None. Records a verified ATC on the card (``card.chip_dirty``) and flags an allowed fallback."""
    p = card.product
    if p.chip == "none" or req.txn in (Txn.ADMIN_LOAD, Txn.REVERSAL, Txn.PIN_CHANGE):
        return None
    mode = entry(req)
    chip = req.chip
    if mode in CHIP_ENTRY:
        if chip is None or not chip.complete:
            return "chip_data_missing" if req.txn in SALES else None
        if chip.result is Arqc.BAD:
            return "arqc_failed"
        if chip.result is not Arqc.OK:
            return "chip_unverified"
        if chip.amount != req.amount:  # the cryptogram covers 9F02: it authorizes that amount only
            return "arqc_amount"
        atc = chip.atc
        assert atc is not None  # complete: 9F36 is 2 bytes
        if card.last_atc is not None and atc <= card.last_atc:
            return "atc_replayed"
        card.last_atc = atc
        card.chip_dirty = True
        return None
    if mode in FALLBACK_ENTRY and req.txn in SALES and not req.card_not_present and req.payment_code is None:
        if p.chip_fallback != "flag":
            return "chip_fallback"
        req.flags = (FALLBACK_FLAG,)
    return None


def no_cvm(card: CardState, req: Request) -> bool:
    """A contactless sale within the product's no-CVM limits, its cryptogram verified."""
    p = card.product
    return (
        req.chip is not None
        and req.chip.result is Arqc.OK
        and entry(req) == CONTACTLESS
        and req.txn in SALES
        and req.amount <= p.no_cvm_limit
        and card.no_cvm_amount + req.amount <= p.no_cvm_cumulative_limit
    )


def pin_needed(card: CardState, req: Request) -> bool | None:
    """Whether a request without a PIN needs one by the contactless rule: False within the no-CVM limits,
    True for any other contactless sale of a chip product, None when the rule does not apply (the
    product's pin_required decides)."""
    if card.product.chip == "none" or entry(req) != CONTACTLESS or req.txn not in SALES:
        return None
    return not no_cvm(card, req)


def after_decision(card: CardState, req: Request, d: Decision) -> None:
    """The no-CVM counters once a request is decided: an approved no-CVM sale adds to them, an approved
    request whose PIN verified resets them."""
    if d.code != Rc.APPROVED:
        return
    if req.pin is Pin.OK:
        if card.no_cvm_amount or card.no_cvm_count:
            card.no_cvm_amount = card.no_cvm_count = 0
            card.chip_dirty = True
        return
    if req.pin is Pin.NONE and d.posted and card.product.chip != "none" and no_cvm(card, req):
        card.no_cvm_amount += req.amount
        card.no_cvm_count += 1
        card.chip_dirty = True


# The batch's write of the chip counters (host.ledger._write: its own statement, only when a card of
# the batch changed them; most batches have none).
CARDS_SQL = """
UPDATE cards c SET no_cvm_amount = d.amount, no_cvm_count = d.count, last_atc = d.atc, updated_at = now()
FROM unnest($1::bigint[], $2::bigint[], $3::int[], $4::int[]) AS d(id, amount, count, atc)
WHERE c.id = d.id
"""
FLAGS_SQL = """
INSERT INTO auth_flags (key, flags)
SELECT d.key, string_to_array(d.flags, ',') FROM unnest($1::text[], $2::text[]) AS d(key, flags)
"""


async def write(conn: Any, cards: list[CardState], flags: list[tuple[str, tuple[str, ...]]]) -> None:
    """The batch's chip counters and flags, in its transaction (after its auth_requests rows)."""
    if cards:
        await conn.execute(
            CARDS_SQL,
            [c.card_id for c in cards],
            [c.no_cvm_amount for c in cards],
            [c.no_cvm_count for c in cards],
            [c.last_atc for c in cards],
        )
    if flags:
        await conn.execute(FLAGS_SQL, [k for k, _ in flags], [",".join(f) for k, f in flags])
