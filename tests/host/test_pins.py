"""PIN set by an app under the issuer's SM2 key (gmssl makes the ciphertext from the public key the host
prints) and PIN reset with a new mailer, against the real HSM, PostgreSQL and a running host over H2H."""

from __future__ import annotations

import datetime as dt
import json
import time
from pathlib import Path
from typing import Any

import pytest
import trio
from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives.ciphers import Cipher, modes
from gmssl.sm2 import CryptSM2

from host import directory, pins
from host.check import run_checks
from hsm_sim import pin as pinblock
from hsm_sim.client import account_from_pan
from tests.host.harness import PIN, Harness, message, pin_block, programme, running_host
from tests.host.helpers import cli_env, ok, run

TODAY = dt.date.today()
_TEST_PIN_PAIR = bytes.fromhex("20202020202020203131313131313131")  # test LMK pair 02-03 (public)


def app_block(public_key: str, pan: str, new_pin: str, stamp: float | None = None) -> bytes:
    """What an app sends: gmssl's SM2 (C1C3C2) of the format-0 block + its UTC seconds, C1 with 04."""
    plain = pinblock.encode(new_pin, account_from_pan(pan)) + int(stamp or time.time()).to_bytes(8, "big")
    g = CryptSM2(private_key=None, public_key="", mode=1)
    g.public_key = public_key[2:].lower()  # x ‖ y (set directly: the constructor's lstrip("04") quirk)
    ct: bytes = g.encrypt(plain)
    return b"\x04" + ct


def clear_pin_under_test_lmk(pin_lmk: str) -> str:
    """The test side only: the published test LMK opens a PIN under LMK."""
    dec = Cipher(TripleDES(_TEST_PIN_PAIR + _TEST_PIN_PAIR[:8]), modes.ECB()).decryptor()
    return (dec.update(bytes.fromhex(pin_lmk[1:])) + dec.finalize()).hex().upper().rstrip("F")


async def _rc(h: Harness, pan: str, pin_digits: str) -> str:
    c = h.client
    fields: dict[str, Any] = {"52": pin_block(pan, pin_digits)}
    return str((await c.request(message(c, pan, 100, **fields)))["39"])


async def _pin_data_forgotten() -> None:
    await trio.sleep(1.5)  # the host's catalogue poll (1 s) sees cards.pvv moved (migration 0018)


def test_pin_set_by_sm2_block_then_purchase(db_url: str, hsm_server: Any, tmp_path: Path) -> None:
    async def main() -> None:
        async with running_host(db_url, hsm_server) as h:
            pan, other, lost = await programme(h, "PINSM2", bin_prefix="621237", pin_required=True)
            cid = await directory.resolve_card(h.pool, h.crypto, pan)
            key = await pins.issuer_key(h.pool, h.crypto)
            assert key == await pins.issuer_key(h.pool, h.crypto)  # made once, then read
            assert key.pem().startswith("-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoEcz1UBgi0DQgAE")
            assert await _rc(h, pan, PIN) == "00"  # the old PIN, now in the host's PIN cache
            assert await _rc(h, pan, "999999") == "55"  # one try used

            block = app_block(key.public_key, pan, "2468")
            done = await pins.set_pin_sm2(h.pool, h.crypto, cid, block, today=TODAY, actor="test:e1")
            assert (done.action, done.state) == ("pin_set", "active")
            await _pin_data_forgotten()
            assert await _rc(h, pan, "2468") == "00"
            assert await _rc(h, pan, PIN) == "55"
            assert await _rc(h, other, PIN) == "00"  # another card keeps its PIN

            row = await h.pool.run(
                lambda conn: conn.fetchrow("SELECT pin_lmk, pin_tries FROM cards WHERE id = $1", cid)
            )
            assert clear_pin_under_test_lmk(row["pin_lmk"]) == "2468"  # cards.pin_lmk kept current
            events = await h.pool.run(
                lambda conn: conn.fetch("SELECT action, actor FROM card_events WHERE card_id = $1", cid)
            )
            assert ("pin_set", "test:e1") in [(e["action"], e["actor"]) for e in events]

            with pytest.raises(pins.PinError, match="not newer"):  # the same block again: a replay
                await pins.set_pin_sm2(h.pool, h.crypto, cid, block, today=TODAY)
            stale = app_block(key.public_key, pan, "1111", time.time() - 3600)
            with pytest.raises(pins.PinError, match="not within the last 300 s"):
                await pins.set_pin_sm2(h.pool, h.crypto, cid, stale, today=TODAY)
            altered = block[:-1] + bytes([block[-1] ^ 1])
            with pytest.raises(pins.PinError, match="does not decrypt under the issuer's key"):
                await pins.set_pin_sm2(h.pool, h.crypto, cid, altered, today=TODAY)
            wrong_card = app_block(key.public_key, other, "1357")  # made for another card's account
            with pytest.raises(pins.PinError, match="format-0 PIN block for this card"):
                await pins.set_pin_sm2(h.pool, h.crypto, cid, wrong_card, today=TODAY)

            # reset: a new random PIN, tries cleared, a mailer with no clear PIN; the old PIN stops working
            assert await _rc(h, pan, "999999") == "55"
            folder = tmp_path / "mailers"
            reset = await pins.reset_pin(h.pool, h.crypto, cid, mailer_dir=folder, today=TODAY)
            assert reset.mailer is not None and reset.mailer.stat().st_mode & 0o777 == 0o600
            (line,) = reset.mailer.read_text().splitlines()
            record = json.loads(line)
            assert set(record) == {"card_id", "pan_masked", "expiry", "pan_under_mailer_key", "pin_under_lmk"}
            new_pin = clear_pin_under_test_lmk(record["pin_under_lmk"])
            assert len(new_pin) == 6 and new_pin not in json.dumps(record) and pan not in json.dumps(record)
            await _pin_data_forgotten()
            tries = "SELECT pin_tries FROM cards WHERE id = $1"
            assert await h.pool.run(lambda conn: conn.fetchval(tries, cid)) == 0
            assert await _rc(h, pan, "2468") == "55"
            assert await _rc(h, pan, new_pin) == "00"
            # a block the app made before the reset cannot undo it
            before = app_block(key.public_key, pan, "2468", time.time() - 5)
            with pytest.raises(pins.PinError, match="not newer"):
                await pins.set_pin_sm2(h.pool, h.crypto, cid, before, today=TODAY)
            reset.mailer.unlink()

            lost_id = await directory.resolve_card(h.pool, h.crypto, lost)
            stolen = "UPDATE cards SET state = 'stolen' WHERE id = $1"
            await h.pool.run(lambda conn: conn.execute(stolen, lost_id))
            with pytest.raises(pins.PinError, match="is stolen: its PIN cannot be reset"):
                await pins.reset_pin(h.pool, h.crypto, lost_id, mailer_dir=folder, today=TODAY)
            with pytest.raises(pins.PinError, match="is stolen: its PIN cannot be set"):
                await pins.set_pin_sm2(
                    h.pool, h.crypto, lost_id, app_block(key.public_key, lost, "2468"), today=TODAY
                )
            assert not list(folder.glob("*"))  # a refused reset leaves no mailer
            failed = [r for r in await h.pool.run(run_checks) if not r.ok]
            assert not failed, failed

    trio.run(main)


def test_cli(db_url: str, hsm_server: Any, tmp_path: Path) -> None:
    env = cli_env(tmp_path, db_url, hsm_server.env)
    ok(env, "product", "add", "PINCLI", "--kind", "reloadable", "--bin", "621238")
    issued = ok(env, "card", "issue", "--product", "PINCLI", "--count", "1", "--pin", "1234", "--activate")
    card_id, pan = issued["cards"][0]["card_id"], issued["cards"][0]["pan"]
    key = ok(env, "card", "pin", "public-key")
    assert key["public_key"].startswith("04") and len(key["public_key"]) == 130
    assert key["curve"] == "sm2p256v1" and "private" not in json.dumps(key).lower()
    human = run(env, "card", "pin", "public-key")
    assert human.exit_code == 0 and key["check_value"] in human.output and "BEGIN PUBLIC KEY" in human.output

    block = app_block(key["public_key"], pan, "8642").hex()
    done = ok(env, "card", "pin", "set", str(card_id), "--sm2-block", block)
    assert done == {"card_id": card_id, "action": "pin_set", "state": "active", "pin_tries": 0}
    for bad, words in [
        (block, "not newer"),
        ("zz", "not hexadecimal"),
        (block[:-2], "is 112 bytes, not 113"),
        (block[:-2] + "00" if not block.endswith("00") else block[:-2] + "01", "does not decrypt"),
        ("04" + "00" * 112, "not an SM2 ciphertext"),
    ]:
        result = run(env, "card", "pin", "set", str(card_id), "--sm2-block", bad)
        assert result.exit_code == 1, result.output
        assert words in result.output and len(result.output.strip().splitlines()) == 1, result.output
    assert run(env, "card", "pin", "set", "999999", "--sm2-block", block).exit_code == 1

    mailers = tmp_path / "reset-mailers"
    out = ok(env, "card", "pin", "reset", str(card_id), "--mailer-dir", str(mailers))
    assert out["action"] == "pin_reset" and Path(out["mailer"]).parent == mailers
    text = Path(out["mailer"]).read_text()
    assert pan not in text and "8642" not in text.replace(json.loads(text)["pin_under_lmk"], "")
    events = ok(env, "card", "events", str(card_id))
    assert [e["action"] for e in events][:2] == ["pin_reset", "pin_set"]
