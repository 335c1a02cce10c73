"""PIN set by an app under the issuer's SM2 key, and PIN reset (issue 16 item 6 b and reset).

No clear PIN exists outside the HSM on either path:

- **Set** (``set_pin_sm2``): the app encrypts its PIN block under the issuer's SM2 public key
  (``issuer_key``: made by the HSM's SK on first use, the private key only under the LMK, table
  ``issuer_sm2_keys``); the HSM's SP decrypts it and returns the PVV, the PIN under the LMK and the
  app's freshness stamp (specs/hsm-conventions.md). The host accepts the stamp only within
  ``STAMP_WINDOW`` seconds of now (``STAMP_AHEAD`` ahead, for the app's clock) and only when it is later
  than the card's ``pin_stamp`` (the last PIN set or reset), so a ciphertext cannot be used twice or
  replayed to put an older PIN back.
- **Reset** (``reset_pin``): JA draws a new random PIN inside the HSM, DG its PVV; a new PIN-mailer
  file (host.issue.write_mailer: the PAN under the mailer key, the PIN under the LMK, one card), with the
  producer's header line when a producer is named (the issue batch does not record one).

Both store ``cards.pvv`` and ``cards.pin_lmk`` (kept current: a renewal onto a new PAN keeps the PIN from
it), clear the PIN tries, set ``pin_stamp`` and record a ``card_events`` row (``pin_set`` /
``pin_reset``, from and to the card's state) in one transaction, under the card's row lock, after the
HSM's work; the reset's mailer file is written before it and removed when it does not commit. That
row (who, when, which action) is the record of the change: these functions do not log, as the CLI
prints its own summary (a service calling them later logs what it does). A
change of ``pvv`` moves ``host_catalog.version`` (migration 0018), so a running host forgets the PIN
data it cached at its next poll. Refused in one line for a card that is closed, lost, stolen, expired
or past its expiry date.
"""

from __future__ import annotations

import base64
import datetime as dt
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from host import card_events
from host.catalog import CatalogError
from host.issue import mailer_header, write_mailer
from host.keys import IssuerCrypto
from host.producers import ExportedMailerKey
from host.rules import yymm
from hsm_sim.client import HsmCommandError, account_from_pan
from ops.actor import cli_actor

STAMP_WINDOW = 300  # seconds an app's SM2 PIN block stays acceptable after it was made
STAMP_AHEAD = 60  # seconds an app's clock may run ahead of ours
RESET_PIN_LENGTH = 6  # as issuance draws them
REFUSED_STATES = frozenset({"closed", "lost", "stolen", "expired"})
CIPHERTEXT_BYTES = 113  # C1 (65) ‖ C3 (32) ‖ C2 (16): specs/hsm-conventions.md
KEY_NAME = "pin"

# What an SP error code means for the operator (and the app behind them).
_SP_ERRORS = {
    "01": "the SM2 block does not decrypt under the issuer's key (another key, or altered)",
    "15": f"the SM2 block is not an SM2 ciphertext of a PIN block ({CIPHERTEXT_BYTES} bytes C1‖C3‖C2, "
    "C1 a point on the curve)",
    "20": "the SM2 block does not hold a format-0 PIN block for this card",
    "24": "the PIN in the SM2 block is not 4 to 12 digits",
}


class PinError(CatalogError):
    """A PIN set or reset refused; str() is the one line for the operator."""


# -- the issuer's SM2 key ------------------------------------------------------------------------
# DER of SubjectPublicKeyInfo's algorithm: id-ecPublicKey (1.2.840.10045.2.1), sm2p256v1
# (1.2.156.10197.1.301), as GM/T 0010 and OpenSSL write an SM2 public key.
_SPKI_PREFIX = bytes.fromhex("3059301306072A8648CE3D020106082A811CCF5501822D034200")


@dataclass(frozen=True)
class IssuerSm2Key:
    public_key: str  # 04 ‖ x ‖ y, 130H
    check_value: str  # 16H: SM3 of the public key, leftmost 8 bytes
    private_lmk: str = field(repr=False)  # P+96H: under the LMK, only the HSM can use it

    def pem(self) -> str:
        der = _SPKI_PREFIX + bytes.fromhex(self.public_key)
        body = base64.encodebytes(der).decode("ascii").replace("\n", "")
        lines = [body[i : i + 64] for i in range(0, len(body), 64)]
        return "-----BEGIN PUBLIC KEY-----\n" + "\n".join(lines) + "\n-----END PUBLIC KEY-----\n"

    def public(self) -> dict[str, str]:
        """What an app is given: never the private key, not even under the LMK."""
        return {
            "curve": "sm2p256v1",
            "public_key": self.public_key,
            "check_value": self.check_value,
            "pem": self.pem(),
            "ciphertext": "C1C3C2",
            "plaintext": "ISO 9564 format-0 PIN block (8 bytes) + UTC seconds since 1970 (8, big-endian)",
        }


async def _load_key(conn: Any) -> IssuerSm2Key | None:
    row = await conn.fetchrow(
        "SELECT private_lmk, public_key, check_value FROM issuer_sm2_keys WHERE name = $1", KEY_NAME
    )
    return None if row is None else IssuerSm2Key(row["public_key"], row["check_value"], row["private_lmk"])


async def _store_key(conn: Any, private_lmk: str, public_key: str, check_value: str) -> IssuerSm2Key:
    """Insert unless another process got there first; the key the table now holds."""
    await conn.execute(
        """INSERT INTO issuer_sm2_keys (name, private_lmk, public_key, check_value)
           VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING""",
        KEY_NAME,
        private_lmk,
        public_key,
        check_value,
    )
    key = await _load_key(conn)
    assert key is not None
    return key


async def issuer_key(pool: Any, crypto: IssuerCrypto) -> IssuerSm2Key:
    """The issuer's SM2 key pair for PIN encryption, generated in the HSM (SK) the first time."""
    key: IssuerSm2Key | None = await pool.run(_load_key)
    if key is None:
        pair = await crypto.hsm.generate_sm2_key()
        key = await pool.run(_store_key, pair.private_key, pair.public_key, pair.check_value)
    return key


# -- set and reset -------------------------------------------------------------------------------
@dataclass(frozen=True)
class PinChanged:
    card_id: int
    action: str  # pin_set / pin_reset
    state: str
    mailer: Path | None = None  # reset: the new PIN mailer


async def _card(conn: Any, card_id: int) -> dict[str, Any]:
    row = await conn.fetchrow(
        """SELECT c.id, c.state, c.expiry, c.pan_enc, c.pan_masked, c.pvki, p.code AS product
           FROM cards c JOIN products p ON p.id = c.product_id WHERE c.id = $1""",
        card_id,
    )
    if row is None:
        raise PinError(f"no card {card_id}")
    return dict(row)


def _refusal(card_id: int, state: str, expiry: str, today: dt.date, verb: str) -> str | None:
    if state in REFUSED_STATES:
        return f"card {card_id} is {state}: its PIN cannot be {verb}"
    if expiry < yymm(today):
        return f"card {card_id} is past its expiry {expiry}: its PIN cannot be {verb}"
    return None


def parse_block(text: str) -> bytes:
    """The app's SM2 ciphertext from hex (spaces allowed), checked for its length only."""
    try:
        data = bytes.fromhex(text)
    except ValueError:
        raise PinError("the SM2 block is not hexadecimal") from None
    if len(data) != CIPHERTEXT_BYTES:
        raise PinError(f"the SM2 block is {len(data)} bytes, not {CIPHERTEXT_BYTES} (C1‖C3‖C2 of a PIN)")
    return data


async def _store(
    conn: Any,
    card_id: int,
    action: str,
    pvv: str,
    pin_lmk: str,
    stamp: int,
    today: dt.date,
    actor: str,
    newer_than_last: bool,
) -> str:
    """The new PIN's PVV and LMK form on the card, tries cleared, the event; the card's state."""
    async with conn.transaction():
        row = await conn.fetchrow(
            "SELECT state, expiry, pin_stamp FROM cards WHERE id = $1 FOR UPDATE", card_id
        )
        if row is None:
            raise PinError(f"no card {card_id}")
        verb = "set" if action == "pin_set" else "reset"
        refusal = _refusal(card_id, row["state"], row["expiry"], today, verb)
        if refusal:
            raise PinError(refusal)
        if newer_than_last and row["pin_stamp"] is not None and stamp <= row["pin_stamp"]:
            raise PinError(
                f"card {card_id}: the SM2 block is not newer than the card's last PIN set or reset "
                "(used already, or replayed)"
            )
        await conn.execute(
            """UPDATE cards SET pvv = $2, pin_lmk = $3, pin_tries = 0, pin_stamp = $4, updated_at = now()
               WHERE id = $1""",
            card_id,
            pvv,
            pin_lmk,
            stamp,
        )
        await card_events.record(conn, card_id, row["state"], row["state"], action, actor=actor)
    return str(row["state"])


async def set_pin_sm2(
    pool: Any,
    crypto: IssuerCrypto,
    card_id: int,
    block: bytes,
    *,
    today: dt.date,
    actor: str | None = None,
    now: float | None = None,
) -> PinChanged:
    """A PIN an app encrypted under the issuer's SM2 public key becomes the card's PIN."""
    actor = actor or cli_actor()
    card = await pool.run(_card, card_id)
    refusal = _refusal(card_id, card["state"], card["expiry"], today, "set")
    if refusal:
        raise PinError(refusal)
    key = await issuer_key(pool, crypto)
    account = account_from_pan(await crypto.decrypt_pan(card["pan_enc"]))
    try:
        got = await crypto.hsm.sm2_pin_to_pvv(
            key.private_lmk, crypto.keys.pvk, block, account, str(card["pvki"])
        )
    except HsmCommandError as exc:
        if exc.code in _SP_ERRORS:
            raise PinError(f"card {card_id}: {_SP_ERRORS[exc.code]}") from None
        raise
    clock = time.time() if now is None else now
    if not clock - STAMP_WINDOW <= got.stamp <= clock + STAMP_AHEAD:
        made = dt.datetime.fromtimestamp(got.stamp, dt.UTC).isoformat() if 0 <= got.stamp < 2**37 else "?"
        raise PinError(
            f"card {card_id}: the SM2 block was made at {made}, not within the last {STAMP_WINDOW} s "
            "(an app makes a new one for each PIN set)"
        )
    state = await pool.run(
        _store, card_id, "pin_set", got.pvv, got.pin_under_lmk, got.stamp, today, actor, True
    )
    return PinChanged(card_id, "pin_set", state)


async def reset_pin(
    pool: Any,
    crypto: IssuerCrypto,
    card_id: int,
    *,
    mailer_dir: Path,
    today: dt.date,
    producer: ExportedMailerKey | None = None,
    actor: str | None = None,
    now: float | None = None,
) -> PinChanged:
    """A new random PIN (JA) and PVV (DG), and a new PIN mailer for it."""
    actor = actor or cli_actor()
    card = await pool.run(_card, card_id)
    refusal = _refusal(card_id, card["state"], card["expiry"], today, "reset")
    if refusal:
        raise PinError(refusal)
    pan = await crypto.decrypt_pan(card["pan_enc"])
    pin_lmk, pvv = await crypto.new_pin(pan, RESET_PIN_LENGTH, str(card["pvki"]))
    mailer_key = producer.mailer_key if producer is not None else crypto.keys.mailer
    clock = time.time() if now is None else now
    batch = f"pinreset-{card_id}-{dt.datetime.fromtimestamp(clock, dt.UTC):%Y%m%d%H%M%S}"
    secret = {"pan_enc": await crypto.encrypt_pan(pan, mailer_key), "pin_lmk": pin_lmk}
    header = mailer_header(producer, card["product"], batch, 1) if producer is not None else None
    try:
        rows = [(card_id, card["pan_masked"], secret)]
        path = write_mailer(mailer_dir, batch, card["product"], card["expiry"], rows, header)
    except FileExistsError:
        raise PinError(f"card {card_id}: a PIN mailer for this second exists already; try again") from None
    except OSError as exc:
        raise PinError(f"PIN mailer folder {mailer_dir}: {exc.strerror}") from None
    try:
        # The reset's time as the stamp: an app's block made before the reset cannot undo it.
        state = await pool.run(
            _store, card_id, "pin_reset", pvv, pin_lmk, int(clock), today, actor, False
        )
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return PinChanged(card_id, "pin_reset", state, path)
