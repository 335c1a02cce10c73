"""The terminal's own state file: what a real terminal keeps in its secure element and flash.

One sealed JSON document per terminal (default ``var/pos/<terminal id>.json``; ``pos.sealed``: AES-GCM
under a file key kept outside the checkout, mode 0600) because it holds the terminal master key and
the working keys, written atomically (temporary file in the same folder, fsync, rename) so a crash
never leaves half a file. Keys are never printed: ``summary()`` gives what a person may see (check
values, not keys).

Besides keys it holds the trace number (STAN, 000001-999999, wrapping), the batch number given at
sign-on (60.2), a pending reversal (the original request of an unanswered transaction, sent before
the next transaction as a real terminal does), and the journal of approved transactions of the
current batch (plus the last closed batch, so a refund can still find its original). Journal PANs are
stored encrypted under the TMK (``pan_enc``) next to their masked form: the full PAN is needed again
only for the 0320 batch upload. Offline sales (pos.offline): the floor table of the last sign-on and the
sales approved offline whose advice is still to be answered (``OfflineSale``, PAN sealed the same way).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from hsm_sim.crypto import zero_pad
from ops.logs import mask_pan
from pos.crypto import SCHEMES, KeyCipher, Scheme, WorkingKeys, check_value
from pos.sealed import SealError, read_sealed, write_sealed

STATE_VERSION = 1
DEFAULT_DIR = Path("var/pos")


class StateError(Exception):
    """The state file is missing, unreadable or inconsistent; str() says what to do."""


@dataclass
class JournalEntry:
    """An approved financial transaction of a batch (what the 0500 totals and the 0320 upload need)."""

    kind: str  # purchase, completion, refund, void, topup, preauth, preauth_void
    stan: str
    batch: str
    amount: int  # minor units
    pan_masked: str
    pan_enc: str  # "PAN=YYMM" under the TMK, hex (see TerminalState.seal_pan)
    rrn: str
    auth_id: str
    date: str  # MMDD of the transaction (DE13 of the response)
    time: str  # hhmmss
    orig_stan: str = ""  # for void / refund / completion / preauth_void: the original's STAN
    reversed: bool = False
    voided: bool = False
    refunded: int = 0  # amount refunded so far against this entry
    by_code: bool = False  # paid with a payment code (entry mode 03x): its void/refund is sent the same way


@dataclass
class OfflineSale:
    """A sale approved offline under the floor limit (pos.offline), kept until its advice (0220, 60.1
    36) is answered: then it enters the journal as kind "offline". The PAN is sealed as in the journal;
    no PIN and no track data are kept (the advice is sent keyed, with the sale's entry mode)."""

    stan: str  # the sale's own STAN: DE11 and DE61 of its advice, every time it is sent
    batch: str  # the batch it was made in (DE61's batch)
    amount: int  # minor units
    pan_masked: str
    pan_enc: str  # "PAN=YYMM" under the TMK, hex (TerminalState.seal_pan)
    entry: str  # DE22's first two digits as read: 01 keyed, 02 swipe, 05 chip, 07 contactless
    date: str  # MMDD, the terminal's local time of the sale (DE13 of the advice)
    time: str  # hhmmss (DE12)
    approval: str  # the terminal's offline approval code (DE38, 6 an)
    de55: str = ""  # chip data of the sale (TC), hex; "" when not chip
    attempts: int = 0  # advices sent so far
    last_code: str = ""  # the last answer's DE39 ("" none yet; "no answer")


@dataclass
class TerminalState:
    terminal_id: str
    merchant_id: str
    scheme: Scheme
    host: str
    port: int
    tmk: str  # hex, clear: the terminal's secure-element stand-in
    stan: int = 0  # last STAN used
    batch: str = "000001"
    signed_on: bool = False
    pik: str = ""
    mak: str = ""
    tdk: str = ""
    tpdu_dest: str = "0001"  # NII, 4 hex digits
    tpdu_src: str = "0000"
    version: str = "310000"  # header software version, 6 BCD digits
    pending_reversal: dict[str, Any] | None = None  # the unanswered request, as a message dict
    last_approved: dict[str, Any] | None = None  # reversal form of the last approved financial request
    journal: list[JournalEntry] = field(default_factory=list)
    previous: list[JournalEntry] = field(default_factory=list)  # last closed batch
    # Offline sales (pos.offline): the floor table of the last sign-on (0810 DE48 digits, "" = none: no
    # offline sales), the sales whose advice is still to be answered, and those the issuer refused.
    floor_table: str = ""
    offline: list[OfflineSale] = field(default_factory=list)
    offline_refused: list[OfflineSale] = field(default_factory=list)
    path: Path | None = field(default=None, compare=False, repr=False)

    def __repr__(self) -> str:
        return f"TerminalState({self.terminal_id}, {self.scheme}, batch {self.batch}, stan {self.stan:06d})"

    # -- keys ------------------------------------------------------------------------------------
    def tmk_cipher(self) -> KeyCipher:
        return KeyCipher(self.scheme, bytes.fromhex(self.tmk))

    def working_keys(self) -> WorkingKeys:
        if not (self.signed_on and self.pik and self.mak):
            raise StateError(f"terminal {self.terminal_id} has not signed on: run `payswitch pos signon`")
        return WorkingKeys(
            self.scheme, bytes.fromhex(self.pik), bytes.fromhex(self.mak), bytes.fromhex(self.tdk)
        )

    def set_working_keys(self, keys: WorkingKeys, batch: str) -> None:
        self.pik, self.mak, self.tdk = keys.pik.hex().upper(), keys.mak.hex().upper(), keys.tdk.hex().upper()
        self.signed_on = True
        if batch != self.batch:
            self.close_batch(batch)

    def require_sign_on(self) -> None:
        self.signed_on = False
        self.pik = self.mak = self.tdk = ""

    # -- counters --------------------------------------------------------------------------------
    def next_stan(self) -> str:
        self.stan = self.stan % 999_999 + 1
        return f"{self.stan:06d}"

    def close_batch(self, next_batch: str) -> None:
        """Archive the current journal and start ``next_batch``."""
        if self.journal:
            self.previous = self.journal
        self.journal = []
        self.batch = next_batch

    # -- PANs in the journal ---------------------------------------------------------------------
    def seal_pan(self, pan: str) -> str:
        """Encrypt "PAN" or "PAN=YYMM" under the TMK for the journal (length byte, zero padding)."""
        plain = bytes([len(pan)]) + pan.encode("ascii")
        tmk = self.tmk_cipher()
        return tmk.encrypt(zero_pad(plain, tmk.block)).hex().upper()

    def open_pan(self, sealed: str) -> str:
        return self.open_card(sealed)[0]

    def open_card(self, sealed: str) -> tuple[str, str]:
        """(PAN, expiry YYMM or "") of a journal entry."""
        clear = self.tmk_cipher().decrypt(bytes.fromhex(sealed))
        pan, _, expiry = clear[1 : 1 + clear[0]].decode("ascii").partition("=")
        return pan, expiry

    def mark_reversed(self, stan: str) -> None:
        """A reversal of ``stan`` was answered: out of the batch, and its effect on its original undone."""
        for entry in self.journal:
            if entry.stan == stan and not entry.reversed:
                entry.reversed = True
                original = self.find(entry.orig_stan) if entry.orig_stan else None
                if original is not None:
                    if entry.kind in ("void", "preauth_void"):
                        original.voided = False
                    elif entry.kind == "refund":
                        original.refunded -= entry.amount

    def storable(self, msg: dict[str, Any]) -> dict[str, Any]:
        """A message (reversal form: no bytes fields but DE64) as JSON data with the PAN sealed."""
        out = {k: v for k, v in msg.items() if not isinstance(v, bytes | bytearray)}
        if "2" in out:
            out["2"] = {"sealed": self.seal_pan(str(out["2"]))}
        return out

    def restore(self, stored: dict[str, Any]) -> dict[str, Any]:
        msg = dict(stored)
        if isinstance(msg.get("2"), dict):
            msg["2"] = self.open_pan(msg["2"]["sealed"])
        return msg

    def find(self, stan: str) -> JournalEntry | None:
        stan = stan.zfill(6)
        for entry in reversed(self.journal + self.previous):
            if entry.stan == stan:
                return entry
        return None

    def summary(self) -> dict[str, Any]:
        """What may be shown: no keys, no PANs."""
        data: dict[str, Any] = {
            "terminal_id": self.terminal_id,
            "merchant_id": self.merchant_id,
            "scheme": self.scheme,
            "switch": f"{self.host}:{self.port}",
            "signed_on": self.signed_on,
            "batch": self.batch,
            "stan": f"{self.stan:06d}",
            "journal_entries": len(self.journal),
            "pending_reversal": self.pending_reversal is not None,
            "offline_pending": len(self.offline),
            "tmk_check_value": check_value(self.scheme, bytes.fromhex(self.tmk)).hex().upper(),
        }
        if self.signed_on:
            data["working_key_check_values"] = self.working_keys().check_values()
        return data


def default_path(terminal_id: str, directory: Path = DEFAULT_DIR) -> Path:
    return directory / f"{terminal_id}.json"


def new_state(
    terminal_id: str, merchant_id: str, scheme: str, tmk_hex: str, host: str, port: int
) -> TerminalState:
    if scheme not in SCHEMES:
        raise StateError(f"key scheme must be one of {', '.join(SCHEMES)}, not {scheme!r}")
    if not (1 <= len(terminal_id) <= 8 and terminal_id.isprintable()):
        raise StateError("a terminal id is 1 to 8 printable characters")
    if not (1 <= len(merchant_id) <= 15 and merchant_id.isprintable()):
        raise StateError("a merchant id is 1 to 15 printable characters")
    try:
        tmk = bytes.fromhex(tmk_hex)
    except ValueError:
        raise StateError("the TMK must be 32 hex digits") from None
    if len(tmk) != 16:
        raise StateError("the TMK must be 32 hex digits (16 bytes, double length)")
    return TerminalState(
        terminal_id=terminal_id,
        merchant_id=merchant_id,
        scheme=scheme,
        host=host,
        port=port,
        tmk=tmk.hex().upper(),
    )


def load(path: Path) -> TerminalState:
    try:
        raw = read_sealed(path)
    except FileNotFoundError:
        raise StateError(f"no terminal state at {path}: create it with `payswitch pos init`") from None
    except SealError as exc:
        raise StateError(
            f"{exc}; replace it with `payswitch pos init --force` (a demo terminal: "
            "`payswitch demo seed` replaces it)"
        ) from None
    try:
        if raw.pop("state_version") != STATE_VERSION:
            raise StateError(f"terminal state {path} has an unknown version")
        journal = [JournalEntry(**e) for e in raw.pop("journal")]
        previous = [JournalEntry(**e) for e in raw.pop("previous")]
        offline = [OfflineSale(**e) for e in raw.pop("offline", [])]  # absent: a file from before
        refused = [OfflineSale(**e) for e in raw.pop("offline_refused", [])]
        state = TerminalState(
            **raw, journal=journal, previous=previous, offline=offline, offline_refused=refused
        )
    except (KeyError, TypeError, AttributeError) as exc:
        raise StateError(f"terminal state {path} is damaged ({exc.__class__.__name__})") from None
    if state.scheme not in SCHEMES:
        raise StateError(f"terminal state {path} has an unknown key scheme")
    state.path = path
    return state


def save(state: TerminalState, path: Path | None = None) -> Path:
    """Seal and write atomically, mode 0600 (the document holds the TMK and working keys)."""
    target = path or state.path
    if target is None:
        raise StateError("no path for the terminal state")
    target.parent.mkdir(parents=True, exist_ok=True)
    data = asdict(state)
    data.pop("path")
    data["state_version"] = STATE_VERSION
    try:
        write_sealed(target, data)
    except SealError as exc:
        raise StateError(str(exc)) from None
    state.path = target
    return target


def masked(pan: str) -> str:
    return mask_pan(pan)
