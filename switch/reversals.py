"""What the switch knows of an original, for both channels (POS terminals and inbound acquirers).

Two rules live here so that ``switch/pos.py`` and ``switch/acquirer.py`` apply them the same way:

- **A retransmission is the same request again.** The retransmission key (POS: batch + STAN + MTI;
  H2H: DE32 + DE7 + DE11 + DE41 + MTI) says "the same request"; the :class:`Fingerprint` (amount, DE3,
  PAN) says whether it really is. A key that matches with another amount, PAN or processing code, or a
  financial request replayed after a reversal named it, is answered 94 (duplicate transmission), never
  the first answer again: that answer was for another request, or for one that no longer stands.
- **A reversal reaches upstream exactly once** (:func:`reverse`): the original's outcome is awaited
  (it may still be in flight upstream when its reversal arrives on another connection), then, if the
  issuer approved it and nothing reversed it yet, the H2H 0400 is written ahead and sent; an issuer that
  does not confirm gets a reversal advice through store-and-forward. The original is marked reversed
  in the same step without a checkpoint between the test and the mark, so two reversals never undo it
  twice. The reversal's sender gets 00 either way: from then on the switch owns the reversal.

A reversal naming an original the switch has not seen is journaled (the channel keeps its key) and
the late original with that key is declined 05 without going upstream, as the host does (see the
channels and switch/README.md).
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import trio

from ops.logs import mask_pan
from switch.links import OutboundLink
from switch.mapping import Message, original_data, pan_of, transmission_time
from switch.upstream import Upstream

# The PAN's hash is keyed per process: it lives in memory only and a memory dump gives no PAN without
# the key (an unkeyed hash of a PAN is a short brute force). Rows loaded from the journal compare by
# masked PAN instead.
_PAN_KEY = secrets.token_bytes(16)


@dataclass(frozen=True, slots=True)
class Fingerprint:
    """Amount, DE3 and PAN of a request: what a retransmission must repeat (never the clear PAN)."""

    amount: int | None
    proc_code: str | None
    pan_masked: str | None
    pan_hash: bytes | None = None  # this process's keyed hash; None for a row loaded from the journal

    @classmethod
    def of(cls, msg: Message) -> Fingerprint:
        pan = pan_of(msg)
        value = msg.get("4")
        amount = int(value) if isinstance(value, str) and value.isdigit() else None
        proc = msg.get("3")
        return cls(
            amount,
            str(proc) if proc is not None else None,
            mask_pan(pan) if pan else None,
            hashlib.blake2b(pan.encode(), key=_PAN_KEY, digest_size=8).digest() if pan else None,
        )

    def same(self, other: Fingerprint) -> bool:
        if (self.amount or 0) != (other.amount or 0) or (self.proc_code or "") != (other.proc_code or ""):
            return False
        if self.pan_hash is not None and other.pan_hash is not None:
            return self.pan_hash == other.pan_hash
        return self.pan_masked == other.pan_masked


class Original(Protocol):
    """A channel's record of an original request (``sessions.Entry``, ``acquirer._Seen``)."""

    done: trio.Event  # set once its outcome is known
    reversed: bool  # a reversal named it (the switch owns undoing it if it was approved)
    saf_queued: bool  # a reversal advice for it is durable in switch_saf


@dataclass(slots=True)
class Sent:
    """The H2H 0400 that :func:`reverse` sent, and how long the issuer took."""

    request: Message
    host_seconds: float


def upstream_reversal(
    reversal: Message, original: Message, link: OutboundLink, institution_id: str, *, pan: bool
) -> Message:
    """The H2H 0400 for ``original`` (the upstream request as it was sent on ``link``), from the
    incoming ``reversal``: its DE3/4/41/42/49 (and PAN when ``pan``), the switch's DE7, link STAN and
    DE32, the original's DE37 and DE12/13 (the terminal local time of what is reversed, which the
    clearing file reports), the reason in DE39, and DE90 naming the upstream original."""
    request: Message = {"t": "0400"}
    for f in ("3", "4", "41", "42", "49"):
        if f in reversal:
            request[f] = reversal[f]
    number = pan_of(reversal) if pan else None
    if number:
        request["2"] = number
    request["7"] = transmission_time()
    request["11"] = f"{link.next_stan():06d}"
    request["32"] = institution_id
    for f in ("12", "13", "37"):
        if f in original:
            request[f] = original[f]
    request["39"] = str(reversal.get("39", "98"))[:2] or "98"
    request["90"] = original_data(
        str(original["t"]), str(original["11"]), str(original["7"]), str(original.get("32", institution_id))
    )
    return request


async def reverse(
    upstream: Upstream,
    original: Original,
    approved: Callable[[], tuple[OutboundLink, Message] | None],
    build: Callable[[OutboundLink, Message], Message],
    write_ahead: Callable[[OutboundLink, Message], trio.Event],
) -> Sent | None:
    """Reverse ``original`` upstream once; None when nothing had to go upstream.

    ``approved()`` is asked after the original's outcome is known: the link and upstream request of an
    issuer approval (None: declined, never sent, or its link is gone). ``build`` makes the H2H 0400 from
    it; ``write_ahead`` records that 0400 (the channel's journal columns) and returns the event set
    once it is durable, before its bytes leave.
    """
    await original.done.wait()
    target = None if original.reversed or original.saf_queued else approved()
    original.reversed = True  # no checkpoint since the test above: a second reversal finds it marked
    if target is None:
        return None
    link, sent_original = target
    request = build(link, sent_original)
    await write_ahead(link, request).wait()
    outcome = await upstream.send(link, request, reverse_on_timeout=False)
    code = None if outcome.answer is None else str(outcome.answer.get("39", ""))
    if code not in ("00", "25"):  # 25: nothing left to undo upstream
        # Not confirmed upstream: the switch takes responsibility through store-and-forward.
        await upstream.reverse(link, sent_original, "98")
        original.saf_queued = True
    return Sent(request, outcome.host_seconds)
