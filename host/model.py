"""What the posting engine works on: requests as the host understands them, and its decisions.

The H2H layer (host.h2h) turns a decoded message into a ``Request``; the engine (host.ledger) turns a
batch of requests into ``Decision``s inside one database transaction.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # host.controls imports the catalogue, which imports this module
    from host.chip import Chip  # host.chip imports this module
    from host.controls import Effective, Spend


class Txn(StrEnum):
    BALANCE = "balance"
    PURCHASE = "purchase"
    TOPUP = "topup"
    VOID = "void"
    REFUND = "refund"
    PREAUTH = "preauth"
    PREAUTH_VOID = "preauth_void"
    COMPLETION = "completion"
    REVERSAL = "reversal"
    EXPIRY = "expiry"  # the hold-expiry sweeper, not a network request
    ADMIN_LOAD = "admin_load"  # `payswitch card load`, not a network request
    ADMIN_UNLOAD = "admin_unload"  # `payswitch card unload`: card -> cash-out payable
    FORFEIT = "forfeit"  # `payswitch card close --forfeit`: card -> breakage income, card closed
    REPLACEMENT = "replacement"  # `payswitch card replace`: old card -> new card (host.replace)
    PIN_CHANGE = "pin_change"  # at a terminal (specs/README.md "PIN change"): no money moves
    OFFLINE = "offline"  # an offline sale's advice (host.offline): posted even beyond the balance


# Transactions that must create exactly one transfer when approved.
FINANCIAL = frozenset(
    {
        Txn.PURCHASE,
        Txn.TOPUP,
        Txn.VOID,
        Txn.REFUND,
        Txn.PREAUTH,
        Txn.PREAUTH_VOID,
        Txn.COMPLETION,
        Txn.ADMIN_LOAD,
        Txn.ADMIN_UNLOAD,
        Txn.FORFEIT,
        Txn.OFFLINE,
    }
)

# Marker stored (as txn) for an original that was reversed before it arrived: the late original then
# finds this row under its own key and gets its declining answer, like any duplicate.
TOMBSTONE = "reversed_before_arrival"


class Pin(StrEnum):
    NONE = "none"  # no PIN block in the request
    OK = "ok"  # the HSM verified it against the PVV
    BAD = "bad"  # the HSM says it does not match
    ERROR = "error"  # the HSM could not verify (format, key, unavailable)


class Rc:
    """Response codes used by the host (the contract's list)."""

    APPROVED = "00"
    INVALID_MERCHANT = "03"
    DO_NOT_HONOUR = "05"
    INVALID_TXN = "12"
    INVALID_AMOUNT = "13"
    INVALID_CARD = "14"
    ORIGINAL_NOT_FOUND = "25"
    FORMAT_ERROR = "30"
    LOST = "41"
    STOLEN = "43"
    INSUFFICIENT_FUNDS = "51"
    EXPIRED = "54"
    BAD_PIN = "55"
    NOT_PERMITTED_CARD = "57"
    NOT_PERMITTED_TERMINAL = "58"
    AMOUNT_LIMIT = "61"
    ORIGINAL_AMOUNT = "64"
    FREQUENCY_LIMIT = "65"
    PIN_TRIES = "75"
    DUPLICATE_TRANSMISSION = "94"
    SYSTEM_ERROR = "96"


@dataclass
class Request:
    """One authorization request, already parsed and with its PIN verified (or not) by the HSM."""

    key: str  # acquirer:DE7:DE11:DE41:MTI, see request_key()
    mti: str  # normalised: 0221 -> 0220, 0421 -> 0420
    txn: Txn
    acquirer_id: str = ""
    stan: str = "000000"
    transmitted: str = "0000000000"
    terminal_id: str = ""
    merchant_id: str = ""  # DE42, spaces stripped
    proc_code: str = ""
    rrn: str = ""
    local_time: str = ""
    amount: int = 0
    currency: str = ""
    pan_hash: str | None = None
    card_id: int | None = None  # known already (sweeper, CLI); else found by pan_hash
    expiry: str | None = None  # YYMM from DE14 or the track
    pin: Pin = Pin.NONE
    original_key: str | None = None  # reversals: key of the original (from DE90)
    original_mti: str | None = None
    original_rrn: str | None = None  # void, refund, completion, pre-auth void: DE37 of the original
    actual_amount: int | None = None  # partial reversal (DE95): what the original really came to
    hold_key: str | None = None  # sweeper: the pending transfer to expire
    actor: str = ""  # an operator's request: who, for the card_events it writes (default: the CLI's)
    replacing: Replacing | None = None  # Txn.REPLACEMENT: the new card and what becomes of the old one
    # DE22 03x: DE2 was a payment code, this its keyed hash (host.payment_codes); card_id is its card.
    payment_code: str | None = None
    # Txn.PIN_CHANGE, filled by host.service from the HSM's WC when the old PIN verified (pin OK): the
    # new PIN's PVV and the new PIN under the LMK, and the PVV the old PIN was verified against (the
    # batch approves only while the card still has that one: a change in between makes it wrong).
    new_pvv: str | None = None
    new_pin_lmk: str | None = None
    verified_pvv: str | None = None
    # From the programme's own API link (DE32 = api.institution_id, h2h.parse ``programme_id``): a load's
    # funding reference (DE102, kept in auth_requests.reference), and a card-not-present purchase (DE22
    # 81x) that the API's client authenticated, so no PIN is asked (specs/README.md "API payments and loads").
    reference: str | None = None
    card_not_present: bool = False
    # Txn.OFFLINE (host.offline): the terminal's own approval code (DE38), kept as the auth id.
    offline_auth_id: str | None = None
    # Chip and contactless (host.chip): DE22 as it came; the chip data of a 05x/07x request (H2H DE48)
    # with the HSM's verdict on its ARQC; an approved request's flags (auth_flags: chip_fallback).
    entry_mode: str = ""
    chip: Chip | None = None
    flags: tuple[str, ...] = ()


@dataclass(frozen=True)
class Replacing:
    """What a replacement request (host.replace) asks of the engine besides moving the money."""

    new_card_id: int  # issued just before, in inventory, same product
    old_to: str  # what the old card becomes: lost, stolen or closed
    new_to: str  # inventory (a physical card, activated when it arrives) or active (virtual)
    reason: str  # lost, stolen, damaged, expiring
    states_from: tuple[str, ...]  # the old card's states the reason allows (checked under the lock)


@dataclass
class Decision:
    code: str
    auth_id: str = ""
    balance_field: str = ""  # DE54
    duplicate: bool = False
    posted: bool = False
    # Why it was declined: a key of host.rules.REASONS (auth_requests.reason); "" when approved.
    reason: str = ""


@dataclass(frozen=True)
class Product:
    id: int
    code: str
    kind: str
    currency: str
    max_balance: int
    per_txn_limit: int
    daily_amount_limit: int
    daily_count_limit: int
    pin_required: bool
    allowed_mccs: tuple[str, ...] | None
    allowed_groups: tuple[str, ...] | None
    offline_floor_limit: int = 0  # fen: the most a terminal approves offline (host.offline; 0 = never)
    # Chip (host.chip, host migration 0026): the chip's algorithm ('none', '3des', 'sm4'), a swipe or
    # keyed sale of its cards ('decline' or 'flag'), the contactless no-CVM limits (fen).
    chip: str = "none"
    chip_fallback: str = "decline"
    no_cvm_limit: int = 30_000
    no_cvm_cumulative_limit: int = 100_000


@dataclass(frozen=True)
class Merchant:
    id: int
    merchant_id: str
    mcc: str
    group_code: str | None
    currency: str
    state: str
    accounts: dict[int, int] = field(default_factory=dict)  # partition -> merchant account id


@dataclass
class CardState:
    """A card row and its account row, locked for the batch; the engine edits it as it decides."""

    card_id: int
    account_id: int
    product: Product
    state: str
    expiry: str
    part: int
    uses_left: int | None
    pin_tries: int
    day: object  # datetime.date | None: the business date the day's counters are for (host.business_day)
    day_amount: int
    day_count: int
    debits_pending: int
    debits_posted: int
    credits_pending: int
    credits_posted: int
    card_dirty: bool = False  # PIN tries or uses left changed (the cards row)
    counters_dirty: bool = False  # the day's amount or count changed (the account row)
    # The product's maximum balance for the card's KYC tier (host.kyc: its cardholder's kyc_level,
    # anonymous without one or under AML review); None: no tier cap (a CardState made without one, as
    # rule tests do).
    tier_max_balance: int | None = None
    # Spend controls (host.controls): the card's and its product's merged (None: none set, the common
    # case), and its week / month / lifetime / merchant-group sums (None: a CardState made without the
    # batch's read, as rule tests do).
    controls: Effective | None = None
    spend: Spend | None = None
    # Offline advices (host.offline): the card's offline_receivable account (None until first needed)
    # and what it is owed (fen; > 0 blocks online spending until a top-up or load repays it).
    receivable_id: int | None = None
    receivable_due: int = 0
    # Chip (host.chip): no-CVM sales since the last PIN verified, the last verified ATC (None: none yet);
    # chip_dirty: one of them changed (written by the batch's own statement, host.chip.write).
    no_cvm_amount: int = 0
    no_cvm_count: int = 0
    last_atc: int | None = None
    chip_dirty: bool = False

    @property
    def balance(self) -> int:
        """Ledger balance: what the cardholder owns, holds included."""
        return self.credits_posted - self.debits_posted

    @property
    def available(self) -> int:
        return self.credits_posted - self.debits_posted - self.debits_pending


def normalise_mti(mti: str) -> str:
    """A repeat advice (0221, 0421) is the same request as the first one (0220, 0420)."""
    if len(mti) == 4 and mti[3] == "1":
        return mti[:3] + "0"
    return mti


def request_key(acquirer_id: str, transmitted: str, stan: str, terminal_id: str, mti: str) -> str:
    """The duplicate-detection key: DE32 + DE7 + DE11 + DE41 + MTI, per the H2H contract."""
    return f"{acquirer_id.lstrip('0') or '0'}:{transmitted}:{stan}:{terminal_id.strip()}:{normalise_mti(mti)}"
