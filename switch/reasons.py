"""Why the switch itself answered a request as it did: ``switch_journal.reason`` (migration 0008).

The terminal and the acquirer get only the response code on the wire (neither contract has a field for
a reason, and a new one in a response is something an independent terminal could choke on). The switch
keeps its own reason with each journal row it decided here; an answer the issuer decided carries no
reason of the switch's (``issuer`` is shown): the issuer's precise reason stays with the issuer (the
host keeps it in ``auth_requests.reason``; the switch never reads host tables for it).

Response codes where the contract leaves the choice (specs/README.md, "Response codes"): no route for
the card's BIN is 91 with ``no_route``, not 14 (the card number may be perfectly valid; the switch
just has no issuer for it, and a route may be added while it runs); 15 and 92, which CUP uses for it,
are not in the contract's list.
"""

from __future__ import annotations

SWITCH_REASONS: dict[str, str] = {
    "no_route": "no route for the card's BIN",
    "link_down": "the issuer's link is down",
    "upstream_timeout": "the issuer did not answer in time (reversal queued)",
    "upstream_not_signed": "the request to the issuer could not be MACed (HSM)",
    "issuer_answer_invalid": "the issuer answered a code its dialect does not have",
    "mac_failed": "MAC verification failed",
    "batch_differs": "batch number differs from the one given at sign-on",
    "terminal_disabled": "the terminal is disabled at the host (`payswitch terminal enable`)",
    "reversed_first": "its reversal came first",
    "no_card_number": "no card number in the request",
    "pin_format": "the HSM refused the PIN block's format",
    "pin_translation_failed": "the PIN could not be translated (HSM)",
    "pin_not_translated": "the PIN was not translated: not sent",
    "pin_change_blocks": "a PIN change needs the old (DE52) and the new (DE62) PIN block",
    "hsm_unavailable": "the switch's HSM is unavailable",
    "answer_mac_failed": "the answer could not be MACed (approval reversed)",
    "internal_error": "the switch failed on the request",
    "recovered_after_restart": "unanswered when the switch stopped (reversal queued)",
    # offline sales (specs/README.md, "Offline sales"): an advice is repeated, never reversed
    "advice_timeout": "the issuer did not answer the offline advice in time (no reversal: sent again)",
    "offline_advice_fields": "an offline advice needs DE61 with MMDD, DE12/DE13, DE38 and an amount",
    "advice_not_reversible": "an offline advice is never reversed (it is sent again)",
    "advice_recovered_after_restart": "an offline advice unanswered when the switch stopped (no reversal)",
    # the batch upload that posts (specs/README.md, "Batch upload"): a record posted as an advice
    "batch_upload": "posted from the terminal's batch upload (0320) as an offline advice",
}


def describe_switch_reason(reason: str | None) -> str:
    """The reason in words; ``""`` for none (the issuer decided, or nothing to explain)."""
    if not reason:
        return ""
    return SWITCH_REASONS.get(reason, reason.replace("_", " "))
