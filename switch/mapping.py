"""Pure translation between the POS and H2H dialects, and the small helpers both sides need.

Messages are pyiso8583-style dicts (``"t"`` the MTI, field numbers as string keys; b/hex fields as
bytes). Nothing here does I/O, so every rule is unit-tested directly.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

from hsm_sim.client import account_from_pan
from ops.localtime import year_nearest
from specs import tlv
from specs.catalogue import OFFLINE_TYPE_CODE, answer_mti, rrn_prefix

Message = dict[str, Any]

# Fields of a POS response that may be kept in the journal and replayed for a duplicate: never the
# PAN, tracks, PIN block, keys or MAC. DE55 of a response is the issuer's answer (tag 91: ARPC || ARC,
# no secret): a retransmitted chip request gets it again, so the card can authenticate the issuer.
REPLAYABLE = frozenset(
    (
        "55",
        "t",
        "3",
        "4",
        "11",
        "12",
        "13",
        "15",
        "25",
        "32",
        "37",
        "38",
        "39",
        "41",
        "42",
        "44",
        "49",
        "54",
        "60",
        "61",
        "63",
    )
)

# POS financial request fields carried to the host.
_CARRIED = ("3", "4", "14", "22", "25", "41", "42", "49")

FINANCIAL_MTIS = frozenset({"0100", "0200", "0220"})


def response_mti(mti: str) -> str:
    """The MTI answering ``mti`` (0200 -> 0210, 0421 -> 0430, 0410 -> 0410): specs.catalogue.answer_mti."""
    if len(mti) != 4 or not mti.isdigit():
        return "0000"
    return answer_mti(mti)


def pan_of(msg: Message) -> str | None:
    """The PAN from DE2, else from track 2 (DE35) before the separator."""
    pan = msg.get("2")
    if isinstance(pan, str) and pan:
        return pan
    track = msg.get("35")
    if isinstance(track, str) and track:
        return track.replace("D", "=").split("=", 1)[0] or None
    return None


# The HSM's 12N account field of a PAN: one definition, in the HSM client.
account12 = account_from_pan


@dataclass(frozen=True, slots=True)
class De60:
    type_code: str
    batch: str
    network_code: str
    rest: str

    @property
    def batch_no(self) -> int:
        return int(self.batch) if self.batch.isdigit() else -1


def parse_de60(value: Any) -> De60:
    return _parse_de60(value if isinstance(value, str) else "")


@functools.lru_cache(maxsize=8192)
def _parse_de60(text: str) -> De60:
    # DE60 values repeat (same type code, batch and network code) so parses are cached.
    text = text.ljust(11, "0")
    return De60(text[0:2], text[2:8], text[8:11], text[11:])


def de60(type_code: str, batch_no: int, network_code: str, rest: str = "") -> str:
    return f"{type_code}{batch_no:06d}{network_code}{rest}"


# --- transaction classification ---------------------------------------------------------------------


def txn_type(msg: Message) -> str:
    """A stable name for metrics and the journal, from MTI, DE3, DE25 and 60.3 (pos-dialect.md)."""
    de60_value = msg.get("60")
    network = de60_value[8:11] if isinstance(de60_value, str) else ""
    if is_offline(msg):
        return "offline"
    return _txn_type(str(msg.get("t", "")), str(msg.get("3", ""))[:2], str(msg.get("25", "00")), network)


@functools.lru_cache(maxsize=256)
def _txn_type(mti: str, pc: str, cond: str, network: str) -> str:
    if mti in ("0800", "0810"):
        return "sign-on"
    if mti in ("0820", "0830"):
        return "echo" if network == "301" else "sign-off"
    if mti in ("0500", "0510"):
        return "settlement"
    if mti in ("0320", "0330"):
        return "batch-upload"
    if mti in ("0400", "0410", "0420", "0421", "0430"):
        return "reversal"
    if mti in ("0100", "0110"):
        return "pre-auth-void" if pc == "20" else "pre-auth"
    if mti in ("0220", "0230"):
        return "refund"
    if mti in ("0200", "0210"):
        if pc == "31":
            return "balance"
        if pc == "21":
            return "top-up"
        if pc == "20":
            return "void"
        if pc == "96":
            return "pin-change"  # [project convention] specs/README.md, "PIN change"
        if pc == "00":
            return "completion" if cond == "06" else "purchase"
    return "other"


def is_offline(msg: Message) -> bool:
    """An offline sale's advice: 0220 (or its 0221/0230), DE3 000000, 60.1 36 (specs/README.md,
    "Offline sales" [project convention])."""
    de60_value = msg.get("60")
    return (
        str(msg.get("t", ""))[:3] == "022"
        and msg.get("3") == "000000"
        and isinstance(de60_value, str)
        and de60_value[:2] == OFFLINE_TYPE_CODE
    )


def is_debit(kind: str) -> bool:
    # an offline sale the terminal approved is a debit of its batch once its advice is approved
    return kind in ("purchase", "completion", "offline")


def is_credit(kind: str) -> bool:
    return kind == "refund"


# --- clocks and references --------------------------------------------------------------------------


class _Clock:
    """Formatted clock fields, recomputed once per second (strftime costs ~10 µs a call).

    The local fields (DE12, DE13, the RRN's day and hour) are the programme's wall clock
    (``clearing.timezone``, set by ``set_local_zone`` when the switch starts): the clearing file reads
    them in that zone and a terminal's receipt prints them with its offset. Unset: the process's zone.
    """

    __slots__ = ("_second", "de7", "de12", "de13", "rrn_prefix", "zone")

    def __init__(self) -> None:
        self._second = -1
        self.de7 = self.de12 = self.de13 = self.rrn_prefix = ""
        self.zone: ZoneInfo | None = None

    def at(self, now: float | None) -> _Clock:
        second = int(time.time() if now is None else now)
        if second != self._second:
            utc = time.gmtime(second)
            zone = self.zone
            if zone is None:
                local = time.localtime(second)
            else:
                local = datetime.fromtimestamp(second, zone).timetuple()
            self.de7 = time.strftime("%m%d%H%M%S", utc)
            self.de12 = time.strftime("%H%M%S", local)
            self.de13 = time.strftime("%m%d", local)
            self.rrn_prefix = rrn_prefix(local.tm_year, local.tm_yday, local.tm_hour)
            self._second = second
        return self


_CLOCK = _Clock()


def set_local_zone(timezone: str | None) -> None:
    """DE12/DE13 (and the RRN) in ``timezone`` from now on (None: the process's zone); the switch
    calls it at start with clearing.timezone."""
    _CLOCK.zone = None if timezone is None else ZoneInfo(timezone)
    _CLOCK._second = -1


def transmission_time(now: float | None = None) -> str:
    """DE7: MMDDhhmmss in UTC."""
    return _CLOCK.at(now).de7


def local_time(now: float | None = None) -> tuple[str, str]:
    """(DE12 hhmmss, DE13 MMDD) in local time."""
    clock = _CLOCK.at(now)
    return clock.de12, clock.de13


def local_time_of(de7: str, now: float | None = None) -> tuple[str, str] | None:
    """(DE12, DE13) of the instant a DE7 names (MMDDhhmmss UTC, the year nearest ``now``), in the local
    time :func:`local_time` gives: the terminal local time of a request the switch sent with that DE7
    (``pos_to_h2h`` takes both from one clock reading), so its reversal carries the original's (the H2H
    contract: DE12/13 are the local time at the terminal). None for a DE7 that is not one."""
    reference = time.time() if now is None else now
    best = year_nearest(de7, datetime.fromtimestamp(reference, UTC))
    # in the zone and clock the original's DE12/13 were made with
    return None if best is None else local_time(best.timestamp())


def rrn(stan: int, now: float | None = None) -> str:
    """RRN: last digit of the year, day of year, hour, then the 6-digit link STAN (12 characters)."""
    return f"{_CLOCK.at(now).rrn_prefix}{stan:06d}"


# --- POS -> H2H -------------------------------------------------------------------------------------


def pos_to_h2h(
    req: Message,
    *,
    stan: int,
    de7: str,
    rrn_value: str,
    acquirer_id: str,
    pin_block: bytes | None,
    new_pin_block: bytes | None = None,
    mcc: str | None = None,
    merchant_name: str | None = None,
    now: float | None = None,
) -> Message:
    """The upstream request for a POS financial request (0100/0200/0220). ``new_pin_block``: a PIN
    change's new PIN block, already under the link's ZPK, sent as H2H DE48 in hex (specs/README.md)."""
    out: Message = {"t": req["t"]}
    pan = pan_of(req)
    if pan:
        out["2"] = pan
    for f in _CARRIED:
        if f in req:
            out[f] = req[f]
    out["7"] = de7
    out["11"] = f"{stan:06d}"
    out["12"], out["13"] = local_time(now)
    if mcc:
        out["18"] = mcc
    out["32"] = acquirer_id
    if "35" in req:
        out["35"] = str(req["35"]).replace("D", "=")
    out["37"] = rrn_value
    if merchant_name:
        out["43"] = merchant_name[:40]
    if pin_block is not None:
        out["52"] = pin_block
    if new_pin_block is not None:
        out["48"] = new_pin_block.hex().upper()
    elif carries_chip(req):
        # H2H has no DE55: the terminal's chip data goes up as hex in DE48 (specs/README.md, "Chip data")
        out["48"] = chip_de48(req["55"])
    if "60" in req:
        out["60"] = str(req["60"])
    if "61" in req:
        # Voids, refunds and completions name their original by POS batch + STAN (+ date); the host
        # receives that in DE60 after the terminal's own DE60, separated by '/'.
        out["60"] = f"{req.get('60', '')}/{req['61']}"
    if is_offline(req):
        # An offline advice reports a sale made earlier: the sale's own local time (not the switch's
        # clock) and the approval code the terminal gave it (specs/README.md, "Offline sales").
        if "12" in req and "13" in req:
            out["12"], out["13"] = str(req["12"]), str(req["13"])
        if "38" in req:
            out["38"] = str(req["38"])
    if "37" in req:
        # A void, refund, pre-auth void or completion names its original by RRN (POS DE37); the
        # upstream request carries it in DE102, since DE37 is this request's own new RRN.
        out["102"] = str(req["37"]).strip()
    return out


# POS DE55 is b..255, so its hex (510 characters) always fits H2H DE48 (ans..999).
CHIP_MAX_BYTES = 255


def carries_chip(req: Message) -> bool:
    """Whether the upstream request of POS ``req`` carries its DE55 (in H2H DE48): any request with chip
    data but a PIN change, whose DE48 is the new PIN block (a PIN change carries no chip data up)."""
    return isinstance(req.get("55"), bytes | bytearray) and not str(req.get("3", "")).startswith("96")


def chip_de48(de55: bytes | bytearray) -> str:
    """H2H DE48 of a chip request or answer: the BER-TLV bytes as upper-case hex [project convention]."""
    return bytes(de55).hex().upper()


def chip_answer(h2h_de48: Any) -> bytes | None:
    """POS DE55 of the answer from the issuer's H2H DE48 (hex of BER-TLV: tag 91 [and 8A]); None when
    it is absent or not that (not hex, not TLV, longer than DE55 allows): the terminal is then answered
    without DE55, as by an issuer that sends no issuer authentication data."""
    if not isinstance(h2h_de48, str) or not h2h_de48:
        return None
    try:
        data = bytes.fromhex(h2h_de48)
        tlv.decode(data)
    except (ValueError, tlv.TlvError):  # TlvError is a ValueError; both named for the reader
        return None
    if len(data) > CHIP_MAX_BYTES or len(h2h_de48) != 2 * len(data):
        return None
    return data


def original_data(mti: str, stan: str, de7: str, acquirer_id: str, forwarding_id: str = "") -> str:
    """DE90: original MTI n4, STAN n6, DE7 n10, acquirer id n11, forwarding id n11."""
    return f"{mti}{stan}{de7}{acquirer_id.rjust(11, '0')}{forwarding_id.rjust(11, '0')}"


# --- H2H -> POS -------------------------------------------------------------------------------------


def pos_balance(h2h_de54: Any, currency: str = "156") -> str | None:
    """POS DE54 (`10 02 156 C n12`) from the H2H balances: the available (02) amount."""
    if not isinstance(h2h_de54, str):
        return None
    entries = [h2h_de54[i : i + 20] for i in range(0, len(h2h_de54), 20)]
    chosen = next((e for e in entries if e[2:4] == "02"), entries[0] if entries else "")
    if len(chosen) != 20:
        return None
    return f"1002{chosen[4:7] or currency}{chosen[7]}{chosen[8:20]}"


def pos_response(
    req: Message,
    *,
    code: str,
    rrn_value: str | None = None,
    auth_id: str | None = None,
    acquirer_id: str | None = None,
    settlement_date: str | None = None,
    balance: str | None = None,
    now: float | None = None,
) -> Message:
    """A POS response (without DE64) answering ``req`` with response code ``code``."""
    out: Message = {"t": response_mti(str(req.get("t", "")))}
    for f in ("2", "3", "4", "11", "25", "41", "42", "49", "60", "61"):
        if f in req:
            out[f] = req[f]
    out["12"], out["13"] = local_time(now)
    if settlement_date:
        out["15"] = settlement_date
    if acquirer_id:
        out["32"] = acquirer_id
    if rrn_value:
        out["37"] = rrn_value
    if auth_id and code == "00":
        out["38"] = auth_id
    out["39"] = code
    if balance and code == "00":
        out["54"] = balance
    if str(req.get("t", "")) in FINANCIAL_MTIS:
        out["63"] = "CUP"
    return out


def replayable(resp: Message) -> Message:
    """The part of a POS response stored in the journal for duplicates."""
    return {k: v for k, v in resp.items() if k in REPLAYABLE}
