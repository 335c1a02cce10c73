"""Personal data at rest: ID numbers, phone numbers, e-mail addresses and bank account numbers.

None of them is stored in clear (issue 16). Each value is kept as three things, all made here:

- ``enc``: HSM M0 CBC under the ``pii_data`` key (``iv hex:ciphertext hex``, as PANs are under
  ``pan_data``); only the HSM turns it back (``reveal``), for an operator who needs it;
- ``hash``: the HSM's keyed hash (X9.19 MAC, 16H, under the ``pii_index`` key) of ``<kind>:<normalised
  value>``, for lookup and de-duplication; the kind prefix keeps a phone number and a bank account
  with the same digits apart; without the HSM a dump cannot be searched by guessing;
- ``masked``: what people see (``mask``): phone ``138****5678``, e-mail ``a***@example.com``, an ID
  number or bank account ``**************1234`` (last 4).

Values are normalised before hashing (``normalise``), so ``+86 138-0013-8000`` and ``13800138000`` find
the same cardholder, and ``Alice@Example.com`` the same e-mail.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from host.keys import IssuerCrypto

Kind = Literal["id_number", "phone", "email", "bank_account"]
KINDS: tuple[Kind, ...] = ("id_number", "phone", "email", "bank_account")


class PiiError(ValueError):
    """A value that is not a valid one of its kind; str() says which and why (no value in it)."""


@dataclass(frozen=True)
class Sealed:
    enc: str
    hash: str
    masked: str


def normalise(kind: Kind, value: str) -> str:
    """The canonical form hashed and stored; raises PiiError naming the kind (never the value)."""
    v = value.strip()
    if kind == "phone":
        digits = re.sub(r"[\s()-]", "", v)
        if digits.startswith("+86"):
            digits = digits[3:]
        elif digits.startswith("0086"):
            digits = digits[4:]
        if not re.fullmatch(r"\+?[0-9]{5,15}", digits):
            raise PiiError("a phone number is 5 to 15 digits (an optional + and country code)")
        return digits
    if kind == "email":
        v = v.lower()
        if not re.fullmatch(r"[^@\s]{1,64}@[^@\s]+\.[^@\s]+", v) or len(v) > 254:
            raise PiiError("an e-mail address looks like name@example.com")
        return v
    if kind == "id_number":
        v = re.sub(r"\s", "", v).upper()
        if not re.fullmatch(r"[0-9A-Z()-]{4,32}", v):
            raise PiiError("an ID number is 4 to 32 letters and digits")
        return v
    digits = re.sub(r"[\s-]", "", v)
    if not re.fullmatch(r"[0-9]{8,34}", digits):
        raise PiiError("a bank account number is 8 to 34 digits")
    return digits


def mask(kind: Kind, canonical: str) -> str:
    """What an operator sees of a normalised value."""
    if kind == "phone":
        return canonical[:3] + "*" * max(len(canonical) - 7, 1) + canonical[-4:]
    if kind == "email":
        local, _, domain = canonical.partition("@")
        return f"{local[0]}***@{domain}"
    return "*" * (len(canonical) - 4) + canonical[-4:]


async def lookup_hash(crypto: IssuerCrypto, kind: Kind, value: str) -> str:
    """The keyed hash a stored value of ``kind`` is found by (raises PiiError for an invalid value)."""
    canonical = normalise(kind, value)
    return await crypto.hsm.generate_mac(
        crypto.keys.pii_index, f"{kind}:{canonical}".encode(), algorithm=3, size=16, key_type="003"
    )


async def seal(crypto: IssuerCrypto, kind: Kind, value: str) -> Sealed:
    """Encrypt, hash and mask one value (raises PiiError for an invalid value)."""
    canonical = normalise(kind, value)
    enc = await crypto.encrypt_pan(canonical, crypto.keys.pii_data)
    return Sealed(enc, await lookup_hash(crypto, kind, canonical), mask(kind, canonical))


async def reveal(crypto: IssuerCrypto, enc: str) -> str:
    """The clear value of ``enc`` (M2 through the HSM): for the caller's output only, never logged."""
    return await crypto.decrypt_pan(enc, crypto.keys.pii_data)
