"""The issuer's cryptography, all of it done by the HSM: PAN lookup hash, PAN encryption, PINs.

Keys (all under the LMK, in the ``host_keys`` table, created on first use by ``ensure_keys``):

- ``pan_index`` (TAK, 003): the PAN lookup hash is the HSM's X9.19 MAC (M6, 16H) of the PAN's ASCII
  digits under this key. A keyed hash, so a database dump cannot be brute-forced over the small PAN
  space without the HSM; deterministic, so it is a unique index. The clear key never leaves the HSM, so
  the host cannot compute the hash itself: it asks the HSM once per PAN and keeps the answer in memory
  for the life of the process (a PAN -> hash map; the PANs are those the host is seeing in requests
  anyway). 64 bits: a collision is caught by the unique index at issue time and the PAN redrawn.
- ``pan_data`` (data key, 00A): the PAN at rest is M0 CBC with a random IV (``iv hex : ciphertext hex``),
  PAN ASCII zero-padded to the block; only ``M2`` can turn it back, for an operator with HSM access.
- ``pvk`` (002): Visa PVV generation (DG) at issue and verification (EC / WV) of the link's PIN block.
- ``mailer`` (data key, 00A, 3DES) and ``mailer_sm4`` (data key, 00A, SM4): encrypt the PAN in the
  PIN-mailer file for the card producer (the file also carries the PIN under the LMK as JA returns it;
  see host.issue). The producer gets the key of its scheme under its ZMK (A8 / ST, host.producers).
- ``pii_index`` (TAK, 003) and ``pii_data`` (data key, 00A): the same two roles for a cardholder's ID
  number, phone, e-mail and bank account (host.pii). Keys of their own, so a PAN hash and a phone hash
  never share a key.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from hsm_sim.client import HsmClient, account_from_pan

HASH_CACHE_LIMIT = 2_000_000  # about 250 MB at most; a clear costs one HSM call per PAN again

KEY_TYPES = {
    "pan_index": "003",
    "pan_data": "00A",
    "pvk": "002",
    "mailer": "00A",
    "mailer_sm4": "00A",
    "pii_index": "003",
    "pii_data": "00A",
}
SM4_KEYS = frozenset({"mailer_sm4"})  # generated with WI (``S`` key); the others with A0 (``U``)


@dataclass(frozen=True)
class IssuerKeys:
    pan_index: str
    pan_data: str
    pvk: str
    mailer: str
    mailer_sm4: str
    pii_index: str  # keyed hash of personal data (host.pii), as pan_index is of PANs
    pii_data: str  # personal data at rest (host.pii), as pan_data is the PAN's


async def generate_missing(
    hsm: HsmClient, existing: dict[str, tuple[str, str]]
) -> dict[str, tuple[str, str]]:
    """Keys (key under LMK, check value) to add for every name in KEY_TYPES not yet in ``existing``."""
    out = {}
    for name, key_type in KEY_TYPES.items():
        if name not in existing:
            if name in SM4_KEYS:
                key = await hsm.generate_sm4_key(key_type)
            else:
                key = await hsm.generate_key(key_type, "U")
            out[name] = (key.under_lmk, key.check_value)
    return out


def keys_from(rows: dict[str, tuple[str, str]]) -> IssuerKeys:
    return IssuerKeys(**{name: rows[name][0] for name in KEY_TYPES})


class IssuerCrypto:
    """HSM operations on PANs and PINs, with the per-process PAN -> hash cache."""

    def __init__(self, hsm: HsmClient, keys: IssuerKeys) -> None:
        self.hsm = hsm
        self.keys = keys
        self._hashes: dict[str, str] = {}

    def cached_hash(self, pan: str) -> str | None:
        return self._hashes.get(pan)

    async def pan_hash(self, pan: str, *, cache: bool = True) -> str:
        """The PAN's keyed hash. ``cache=False`` for a one-time payment code (host.payment_codes), hashed
        the same way but never again after its one use: kept, it would only crowd out the PANs."""
        h = self._hashes.get(pan)
        if h is None:
            h = await self.hsm.generate_mac(
                self.keys.pan_index, pan.encode(), algorithm=3, size=16, key_type="003"
            )
            if not cache:
                return h
            if len(self._hashes) >= HASH_CACHE_LIMIT:  # PANs of cards we do not have must not grow it
                self._hashes.clear()
            self._hashes[pan] = h
        return h

    async def encrypt_pan(self, pan: str, key: str | None = None) -> str:
        block = 16 if (key or self.keys.pan_data).startswith("S") else 8  # SM4 or 3DES
        iv = os.urandom(block)
        data = pan.encode()
        data += b"\0" * (-len(data) % block)
        ct = await self.hsm.encrypt_data(key or self.keys.pan_data, data, iv=iv)
        return f"{iv.hex().upper()}:{ct.hex().upper()}"

    async def decrypt_pan(self, token: str, key: str | None = None) -> str:
        """The clear text of ``encrypt_pan``'s token (under ``key``, default the PAN data key)."""
        iv_hex, ct_hex = token.split(":")
        clear = await self.hsm.decrypt_data(
            key or self.keys.pan_data, bytes.fromhex(ct_hex), iv=bytes.fromhex(iv_hex)
        )
        return clear.rstrip(b"\0").decode()

    async def new_pin(self, pan: str, length: int = 6, pvki: str = "1") -> tuple[str, str]:
        """(PIN under LMK, PVV) for a new random PIN: JA then DG. No clear PIN exists outside the HSM."""
        account = account_from_pan(pan)
        pin_lmk = await self.hsm.random_pin(account, length)
        pvv = await self.hsm.generate_pvv(self.keys.pvk, pin_lmk, account, pvki)
        return pin_lmk, pvv

    async def verify_pin(self, zpk: str, pin_block: bytes, pan: str, pvki: int, pvv: str) -> bool:
        """EC (3DES link ZPK) or WV (SM4 link ZPK, ``S`` prefix): the client picks by the key."""
        return await self.hsm.verify_pin(
            zpk, self.keys.pvk, pin_block.hex().upper(), account_from_pan(pan), str(pvki), pvv
        )


async def load_keys(conn: Any) -> dict[str, tuple[str, str]]:
    rows = await conn.fetch("SELECT name, key_lmk, check_value FROM host_keys")
    return {r["name"]: (r["key_lmk"], r["check_value"]) for r in rows}


async def store_keys(conn: Any, new: dict[str, tuple[str, str]]) -> dict[str, tuple[str, str]]:
    """Insert new keys unless another process got there first; return what the table now holds."""
    for name, (key, cv) in new.items():
        await conn.execute(
            "INSERT INTO host_keys (name, key_lmk, check_value) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
            name,
            key,
            cv,
        )
    return await load_keys(conn)
