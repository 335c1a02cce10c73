"""The simulated chip card: its keys, its transaction counter, the DE55 it builds, the ARPC it checks.

A real chip card is personalised with its own master key for application cryptograms (MK-AC), derived
by the issuer from its IMK-AC (EMV option A, ``hsm_sim.emv.card_master_key``); the issuer's key never
leaves the HSM and the card's never leaves the chip. For each transaction the card raises its
application transaction counter (ATC), derives the session key of that ATC and computes the ARQC over
the terminal's data (``specs.tlv.arqc_data``: the values of ``ARQC_TAGS``). The issuer answers with
tag 91 = ARPC ‖ ARC, and the card checks it ("issuer authentication"): only the issuer, holding the
IMK, can form it.

A cloned card (``ChipCard.cloned``) is what a skimmer can copy: the PAN, expiry and track data, never
the chip's key. Its cryptograms are made under another key, so the issuer's ARQC check fails.

The ATC must only ever go up for a card, across runs and terminals (the host refuses an ATC it has
seen: ``atc_replayed``), so it lives in one small sealed file beside the terminal states
(``var/pos/chip-atc.json``), keyed by a hash of the PAN and PSN (no PAN in it even once unsealed), and
taken under a file lock so two terminals never use the same ATC.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import secrets
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any, Literal

from hsm_sim.crypto import set_odd_parity
from hsm_sim.emv import ALGORITHMS, Algorithm, arpc, arqc, card_master_key, session_key
from pos.sealed import SealError, read_sealed, write_sealed
from specs.catalogue import floor_limit_for, parse_floor_table
from specs.tlv import ARQC_TAGS, Tlv, TlvError, arqc_data, as_dict, decode, encode

ATC_FILE = Path("var/pos/chip-atc.json")
MAX_ATC = 0xFFFF
# Entry modes (DE22 positions 1-2) of a card read by its chip.
CONTACT = "05"
CONTACTLESS = "07"
# The no-CVM limit of contactless (Quick Pay) when the terminal has no floor table from its sign-on:
# the products' default (host migration 0026), 300 yuan in fen.
DEFAULT_NO_CVM_LIMIT = 30000
# Track 2 equivalent: service code 220 (international, IC chip: a swipe of it is a fallback) and
# five digits of discretionary data.
SERVICE_CODE = "220"
DISCRETIONARY = "00000"
# What the terminal sends about itself and the card's application, fixed for the simulator.
AIP = bytes.fromhex("7C00")  # SDA, DDA, cardholder verification, terminal risk management, issuer auth.
AID = bytes.fromhex("A000000333010101")  # UnionPay debit/prepaid application
TERMINAL_CAPABILITIES = bytes.fromhex("E0E1C8")  # keyed, stripe, chip; online PIN, signature, no CVM
TERMINAL_TYPE = bytes.fromhex("22")  # attended, merchant's, online with offline capability
APP_VERSION = bytes.fromhex("0030")  # PBOC 3.0
CVM_ONLINE_PIN = bytes.fromhex("420302")  # enciphered PIN verified online; condition 03; successful
CVM_NONE = bytes.fromhex("1F0302")  # no CVM required
CID_ARQC = b"\x80"
COUNTRY = CURRENCY = bytes.fromhex("0156")
TVR_CLEAN = bytes(5)
# Cryptogram version numbers in the issuer application data (simulator's choice, one per algorithm).
CVN: dict[Algorithm, int] = {"3des": 0x01, "sm4": 0x04}

IssuerAuth = Literal["verified", "failed", "absent"]


class ChipError(ValueError):
    """The card cannot take part (ATC exhausted, its counter file unreadable); str() says why."""


@dataclass(frozen=True, repr=False)
class ChipCard:
    pan: str
    expiry: str  # YYMM
    psn: str  # PAN sequence number, 2 digits
    algorithm: Algorithm
    mk_ac: bytes  # the card's own master key (16 bytes), as personalised

    def __repr__(self) -> str:  # never the PAN or the key
        return f"ChipCard({self.algorithm}, psn {self.psn})"

    @classmethod
    def personalise(
        cls, algorithm: Algorithm, imk_ac: bytes, pan: str, expiry: str, psn: str = "01"
    ) -> ChipCard:
        """The card as the issuer personalises it: its MK-AC derived from the IMK-AC."""
        return cls(pan, expiry, psn, algorithm, card_master_key(algorithm, imk_ac, pan, psn))

    @classmethod
    def from_entry(cls, entry: Mapping[str, Any]) -> ChipCard | None:
        """The chip of a demo card entry (``pos.demo``: ``chip``, ``psn``, ``mk_ac``); None without one."""
        algorithm = entry.get("chip")
        if algorithm not in ALGORITHMS or not entry.get("mk_ac"):
            return None
        alg: Algorithm = "3des" if algorithm == "3des" else "sm4"
        return cls(
            str(entry["pan"]),
            str(entry["expiry"]),
            str(entry.get("psn", "00")),
            alg,
            bytes.fromhex(str(entry["mk_ac"])),
        )

    def cloned(self) -> ChipCard:
        """A copy with everything a skimmer reads (PAN, expiry, PSN, track) but not the chip's key."""
        fake = hashlib.sha256(b"payswitch cloned chip " + self.pan.encode() + self.mk_ac).digest()[:16]
        return ChipCard(
            self.pan,
            self.expiry,
            self.psn,
            self.algorithm,
            set_odd_parity(fake) if self.algorithm == "3des" else fake,
        )

    @property
    def track2(self) -> str:
        """The track 2 equivalent data (DE35 of a chip read, as for a swipe)."""
        return f"{self.pan}={self.expiry}{SERVICE_CODE}{DISCRETIONARY}"

    @property
    def de23(self) -> str:
        """DE23, card sequence number (n3)."""
        return self.psn.zfill(3)

    def session_key(self, atc: bytes) -> bytes:
        return session_key(self.algorithm, self.mk_ac, atc)

    @property
    def ref(self) -> str:
        """This card's name in the ATC file: a hash of PAN and PSN (the file holds no PAN)."""
        return hashlib.sha256(f"payswitch chip atc {self.pan} {self.psn}".encode()).hexdigest()[:32]


@dataclass(frozen=True, repr=False)
class ChipRequest:
    """What the card produced for one request: DE55, and what it needs to check the answer."""

    de55: bytes
    atc: bytes
    arqc: bytes


def _bcd(digits: str) -> bytes:
    return bytes.fromhex(digits if len(digits) % 2 == 0 else "0" + digits)


def iad(algorithm: Algorithm) -> bytes:
    """Issuer application data (PBOC style): length 07, key index 01, the CVN, the card verification
    results (03 A0 00 00: ARQC requested, online) and a last byte 01."""
    return bytes([0x07, 0x01, CVN[algorithm], 0x03, 0xA0, 0x00, 0x00, 0x01])


def terminal_data(
    card: ChipCard,
    *,
    atc: bytes,
    amount: int,
    txn_type: str,
    when: date,
    unpredictable: bytes,
) -> dict[str, bytes]:
    """The values of ``ARQC_TAGS`` for one transaction (``txn_type``: DE3's first two digits)."""
    return {
        "9F02": _bcd(f"{amount:012d}"),
        "9F03": bytes(6),
        "9F1A": COUNTRY,
        "95": TVR_CLEAN,
        "5F2A": CURRENCY,
        "9A": _bcd(when.strftime("%y%m%d")),
        "9C": _bcd(txn_type[:2]),
        "9F37": unpredictable,
        "82": AIP,
        "9F36": atc,
        "9F10": iad(card.algorithm),
    }


def build_request(
    card: ChipCard,
    *,
    atc: bytes,
    amount: int,
    txn_type: str,
    when: date,
    unpredictable: bytes | None = None,
    online_pin: bool = True,
) -> ChipRequest:
    """DE55 of a chip request (common convention 1): ``ARQC_TAGS`` in order, then 9F26 (the ARQC),
    9F27 (ARQC), 5F34, 84, 9F33, 9F34, 9F35, 9F09."""
    if len(atc) != 2:
        raise ChipError("the ATC is 2 bytes")
    values = terminal_data(
        card,
        atc=atc,
        amount=amount,
        txn_type=txn_type,
        when=when,
        unpredictable=unpredictable if unpredictable is not None else secrets.token_bytes(4),
    )
    cryptogram = arqc(card.algorithm, card.session_key(atc), arqc_data(values))
    items = [Tlv(tag, values[tag]) for tag in ARQC_TAGS] + [
        Tlv("9F26", cryptogram),
        Tlv("9F27", CID_ARQC),
        Tlv("5F34", _bcd(card.psn.zfill(2)[-2:])),
        Tlv("84", AID),
        Tlv("9F33", TERMINAL_CAPABILITIES),
        Tlv("9F34", CVM_ONLINE_PIN if online_pin else CVM_NONE),
        Tlv("9F35", TERMINAL_TYPE),
        Tlv("9F09", APP_VERSION),
    ]
    return ChipRequest(encode(items), atc, cryptogram)


def check_issuer(card: ChipCard, request: ChipRequest, de55: bytes | None) -> tuple[IssuerAuth, str]:
    """The card's issuer authentication of the answer's DE55: tag 91 = ARPC (8) ‖ ARC (2).

    ("verified", ARC) when the ARPC is the one the issuer alone can form over this request's ARQC;
    ("failed", ARC or "") when it is not or tag 91 is malformed; ("absent", "") without tag 91."""
    if not de55:
        return "absent", ""
    try:
        values = as_dict(decode(bytes(de55)))
    except TlvError:
        return "failed", ""
    data = values.get("91")
    if data is None:
        return "absent", ""
    if len(data) < 10:
        return "failed", ""
    arc_bytes = data[8:10]
    arc = arc_bytes.decode("ascii", errors="replace")
    expected = arpc(card.algorithm, card.session_key(request.atc), request.arqc, arc_bytes)
    return ("verified" if hmac.compare_digest(expected, data[:8]) else "failed"), arc


def no_cvm_limit(floor_table: str, pan: str) -> int:
    """The card's contactless no-CVM limit (fen): its BIN's entry in the floor table of the last
    sign-on (0810 DE48, ``specs.catalogue.parse_floor_table``), else the products' default."""
    try:
        entry = floor_limit_for(parse_floor_table(floor_table), pan)
    except ValueError:
        entry = None
    return entry.no_cvm_limit if entry is not None else DEFAULT_NO_CVM_LIMIT


# -- the ATC, kept across runs ---------------------------------------------------------------------------
@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def next_atc(card: ChipCard, path: Path = ATC_FILE) -> bytes:
    """Raise the card's ATC by one and return it (2 bytes), saved before any request carries it."""
    with _locked(path):
        try:
            counters = read_sealed(path)
        except FileNotFoundError:
            counters = {}
        except SealError as exc:
            raise ChipError(
                f"{exc}: the chip cards' counters are lost (`payswitch demo seed` issues new cards)"
            ) from None
        if not isinstance(counters, dict):
            counters = {}
        atc = int(counters.get(card.ref, 0)) + 1
        if atc > MAX_ATC:
            raise ChipError("the card's transaction counter is exhausted: the card must be replaced")
        counters[card.ref] = atc
        write_sealed(path, counters)
    return atc.to_bytes(2, "big")
