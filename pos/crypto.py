"""Terminal-side cryptography of the POS dialect: what a real terminal's secure element does.

A terminal holds its keys in clear (the TMK injected at the key ceremony, the working keys it
decrypts from the sign-on answer), so it runs the same algorithms as the HSM on clear keys: this
module is a thin layer over hsm_sim's pure modules (``hsm_sim.crypto``, ``hsm_sim.mac``,
``hsm_sim.pin``, tested there against the contract's vectors and independent implementations) and
the DE62 layouts of ``specs.catalogue``. It adds what a terminal needs on top: the key scheme of the
terminal ("3des" or "sm4"), input checks with ``TerminalCryptoError``, and keys kept out of repr().

- ``KeyCipher``: one clear key's cipher (ECB contexts cached per key by ``hsm_sim.crypto``: the load
  generator sends thousands of MACed requests per second) and ``KeyCipher.pos_mac``, the UnionPay
  POS "ECB" MAC;
- ``unwrap_working_keys``: DE62 of the 0810 decrypted under the TMK, check values verified;
- ``pin_block``: ISO 9564 format 0 (padded with ``FF`` to 16 bytes in the sm4 profile), encrypted
  under the PIK.

Contract: ../shared/contract/pos-dialect.md, sections "Sign-on working keys", "MAC" and "PIN".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from hsm_sim import crypto, mac
from hsm_sim import pin as pin_blocks
from ops.digits import is_digits
from specs import catalogue

Scheme = Literal["3des", "sm4"]
SCHEMES: tuple[Scheme, ...] = ("3des", "sm4")
CHECK_VALUE_BYTES = 4  # what DE62 carries after each key


class TerminalCryptoError(Exception):
    """A key or crypto input is unusable (wrong length, check value mismatch); str() says which."""


def check_value(scheme: Scheme, key: bytes) -> bytes:
    """The 4-byte check value of a clear key (its encryption of one block of zeros, leftmost bytes)."""
    _cipher(scheme, key)  # the key's length checked with the terminal's error
    cv = crypto.des_check_value(key) if scheme == "3des" else crypto.sm4_check_value(key)
    return cv[:CHECK_VALUE_BYTES]


def _cipher(scheme: Scheme, key: bytes) -> crypto.BlockCipher:
    if scheme not in SCHEMES:
        raise TerminalCryptoError(f"unknown key scheme {scheme!r}")
    try:
        return crypto.des(key) if scheme == "3des" else crypto.sm4(key)
    except ValueError as exc:
        raise TerminalCryptoError(f"unusable {scheme} key ({exc})") from None


class KeyCipher:
    """ECB with one clear key. Never repr()s the key."""

    __slots__ = ("_cipher", "block", "scheme")

    def __init__(self, scheme: Scheme, key: bytes) -> None:
        self.scheme = scheme
        self._cipher = _cipher(scheme, key)
        self.block = self._cipher.block_size

    def __repr__(self) -> str:
        return f"KeyCipher({self.scheme}, <key>)"

    def encrypt(self, data: bytes) -> bytes:
        self._whole_blocks(data)
        return self._cipher.encrypt(data)

    def decrypt(self, data: bytes) -> bytes:
        self._whole_blocks(data)
        return self._cipher.decrypt(data)

    def _whole_blocks(self, data: bytes) -> None:
        # An ECB context given a partial block would keep it back silently.
        if len(data) % self.block:
            raise TerminalCryptoError(f"ECB data must be a multiple of {self.block} bytes")

    def pos_mac(self, data: bytes) -> bytes:
        """The 8 ASCII hex characters of the UnionPay POS MAC of ``data`` (MTI through DE63)."""
        return mac.cup_ecb_mac(self._cipher, data)


@dataclass(frozen=True)
class WorkingKeys:
    """Clear working keys from a sign-on. repr() hides them."""

    scheme: Scheme
    pik: bytes
    mak: bytes
    tdk: bytes

    def __repr__(self) -> str:
        return (
            f"WorkingKeys({self.scheme}, pik=<{len(self.pik)}>, mak=<{len(self.mak)}>, tdk=<{len(self.tdk)}>)"
        )

    def check_values(self) -> dict[str, str]:
        """Check values (not secret) of the three keys, hex upper case."""
        return {
            "pik": check_value(self.scheme, self.pik).hex().upper(),
            "mak": check_value(self.scheme, self.mak).hex().upper(),
            "tdk": check_value(self.scheme, self.tdk).hex().upper(),
        }


def unwrap_working_keys(scheme: Scheme, tmk: bytes, de62: bytes) -> WorkingKeys:
    """Decrypt DE62 of an 0810 under the TMK (layouts: ``specs.catalogue.DE62_LAYOUTS``) and verify
    every check value."""
    try:
        wrapped = catalogue.WorkingKeys.parse(scheme, de62)
    except ValueError as exc:
        raise TerminalCryptoError(str(exc)) from None
    tmk_cipher = KeyCipher(scheme, tmk)
    clear: list[bytes] = []
    for name, enc, cv in (
        ("PIK", wrapped.pik, wrapped.pik_cv),
        ("MAK", wrapped.mak, wrapped.mak_cv),
        ("TDK", wrapped.tdk, wrapped.tdk_cv),
    ):
        key = tmk_cipher.decrypt(enc)
        if check_value(scheme, key) != cv:
            raise TerminalCryptoError(f"DE62: {name} check value does not match (wrong TMK?)")
        clear.append(key)
    return WorkingKeys(scheme, clear[0], clear[1], clear[2])


def clear_pin_block(pin: str, pan: str) -> bytes:
    """ISO 9564 format 0 clear PIN block (8 bytes). Never log the result."""
    return pin_blocks.encode(pin, _account(pin, pan))


def pin_block(pik: KeyCipher, pin: str, pan: str) -> bytes:
    """DE52: the format-0 block under the PIK (sm4: followed by 8 bytes FF, one 16-byte block)."""
    account = _account(pin, pan)
    if pik.scheme == "sm4":
        return pik.encrypt(pin_blocks.sm4_encode(pin, account))
    return pik.encrypt(pin_blocks.encode(pin, account))


def _account(pin: str, pan: str) -> str:
    """The PIN block's account number, once the PIN and PAN the terminal was given are checked."""
    if not (4 <= len(pin) <= 12 and is_digits(pin)):
        raise TerminalCryptoError("a PIN is 4 to 12 digits")
    if not (is_digits(pan) and 2 <= len(pan) <= 19):
        raise TerminalCryptoError("the PAN must be digits")
    return pin_blocks.account_from_pan(pan)
