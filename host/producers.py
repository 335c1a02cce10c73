"""Card producers: their ZMKs (under the LMK only) and the mailer key exported under them.

A card producer (the bureau that embosses cards and prints PIN mailers) decrypts the PAN field of the
PIN-mailer file (host.issue) with the issuer's mailer data key. That key reaches it the way keys go
between two HSMs: custodians form a ZMK shared with the producer from clear components (A4 for 3DES,
WK for SM4; each custodian types one component, the HSM XORs them and returns the ZMK under the LMK),
and the mailer key is exported under that ZMK (A8 / ST) with its check value. The producer imports it
into its own HSM (A6 / SV) under the same ZMK, compares the check value, and decrypts with M2.

The mailer key is a data key (00A, TDK/ZEK). The contract's A8 / ST export any key type under a ZMK
(hsm-commands.md lists no export restriction; 00A is also the ZEK, the zone data key that is made to
be exchanged), so the mailer key itself is exported: no second key, no re-encryption of the file.
3DES keys go out in scheme ``U`` (the ZMK with the scheme variants A6, 5A, as payShield exchanges
double-length keys between variant-LMK HSMs); the producer's A6 imports scheme ``U``. A 3DES
producer gets the 3DES ``mailer`` key, an SM4 producer the SM4 ``mailer_sm4`` key (ST exports only an
``S`` key): ``card issue --producer`` encrypts the PANs under the key of that producer's scheme.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from host.catalog import CatalogError
from host.keys import IssuerCrypto

NAME = re.compile(r"^[A-Za-z0-9_.-]{1,32}$")
ZMK_TYPE = "000"
DATA_KEY_TYPE = "00A"
EXPORT_SCHEME = "U"


@dataclass(frozen=True)
class Producer:
    name: str
    scheme: str  # 3des / sm4
    zmk_lmk: str
    zmk_check: str


@dataclass(frozen=True)
class ExportedMailerKey:
    producer: str
    scheme: str
    key_under_zmk: str  # U+32H (3DES) or 32H (SM4)
    check_value: str  # of the mailer key, 16H (shown as its first 6)
    zmk_check_value: str  # of the producer's ZMK, so both sides see they hold the same ZMK
    mailer_key: str  # the mailer key under the LMK, which the PANs are encrypted with (never clear)

    def public(self) -> dict[str, str]:
        """What the producer is given (CLI output, the mailer file's header): never the key under the LMK."""
        return {
            "producer": self.producer,
            "scheme": self.scheme,
            "mailer_key_under_zmk": self.key_under_zmk,
            "mailer_key_check_value": self.check_value[:6],
            "zmk_check_value": self.zmk_check_value[:6],
        }


async def form_zmk(crypto: IssuerCrypto, scheme: str, components: list[str]) -> tuple[str, str]:
    """(ZMK under the LMK, check value) from clear components, XORed inside the HSM (A4 / WK)."""
    from hsm_sim.client import HsmCommandError

    try:
        if scheme == "sm4":
            key = await crypto.hsm.form_sm4_key(ZMK_TYPE, components)
        else:
            key = await crypto.hsm.form_key(ZMK_TYPE, components, "U")
    except HsmCommandError as exc:
        raise CatalogError(f"the HSM refused the ZMK ({exc.code}: parity or format)") from None
    return key.under_lmk, key.check_value


async def export_mailer_key(crypto: IssuerCrypto, producer: Producer) -> ExportedMailerKey:
    """The mailer key of the producer's scheme under its ZMK (A8 / ST) with the key's check value."""
    from hsm_sim.client import HsmCommandError

    mailer = mailer_key_for(crypto, producer.scheme)
    try:
        if producer.scheme == "sm4":
            out = await crypto.hsm.export_sm4_key(DATA_KEY_TYPE, producer.zmk_lmk, mailer)
        else:
            out = await crypto.hsm.export_key(DATA_KEY_TYPE, producer.zmk_lmk, mailer, EXPORT_SCHEME)
    except HsmCommandError as exc:
        raise CatalogError(f"the HSM refused to export the mailer key ({exc.code})") from None
    return ExportedMailerKey(
        producer.name, producer.scheme, out.under_kek, out.check_value, producer.zmk_check, mailer
    )


def mailer_key_for(crypto: IssuerCrypto, scheme: str) -> str:
    return crypto.keys.mailer_sm4 if scheme == "sm4" else crypto.keys.mailer


# -- database ---------------------------------------------------------------------------------------
async def add_producer(conn: Any, name: str, scheme: str, zmk_lmk: str, zmk_check: str) -> int:
    if not NAME.fullmatch(name):
        raise CatalogError("producer name: 1 to 32 letters, digits, '_', '.', '-'")
    pid = await conn.fetchval(
        """INSERT INTO card_producers (name, scheme, zmk_lmk, zmk_check) VALUES ($1, $2, $3, $4)
           ON CONFLICT (name) DO NOTHING RETURNING id""",
        name,
        scheme,
        zmk_lmk,
        zmk_check,
    )
    if pid is None:
        raise CatalogError(f"producer {name} already exists")
    return int(pid)


async def producer(conn: Any, name: str) -> Producer:
    row = await conn.fetchrow(
        "SELECT name, scheme, zmk_lmk, zmk_check FROM card_producers WHERE name = $1", name
    )
    if row is None:
        raise CatalogError(f"no producer {name}")
    return Producer(row["name"], row["scheme"], row["zmk_lmk"], row["zmk_check"])


async def list_producers(conn: Any) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        "SELECT name, scheme, left(zmk_check, 6) AS zmk_check_value FROM card_producers ORDER BY name"
    )
    return [dict(r) for r in rows]
