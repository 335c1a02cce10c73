"""The simulator's secure-element files (terminal state, demo cards, load pool) are sealed at rest:
no clear PAN, PIN or key in their bytes; a changed, renamed or foreign-key file is refused in one line;
a plain JSON file from an earlier checkout is sealed on first read; the key is created 0600."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from click.testing import CliRunner

from ops.cli import cli
from pos import sealed
from pos import state as state_mod
from pos.crypto import WorkingKeys
from pos.load import LoadError, read_pool
from pos.sealed import SealError, read_sealed, write_sealed
from pos.state import StateError

TMK = "0123456789ABCDEFFEDCBA9876543210"
PIK, MAK = "89ABCDEF01234567FEDCBA9876543210", "1122334455667788AABBCCDDEEFF0011"
PAN = "6212345678901234567"
PIN = "480713"  # a PIN that appears nowhere else in these files
POOL = {
    "terminals": [
        {
            "terminal_id": "L0000001",
            "merchant_id": "898330160120001",
            "scheme": "3des",
            "tmk": TMK,
            "host": "127.0.0.1",
            "port": 8583,
        }
    ],
    "cards": [{"pan": PAN, "expiry": "3012", "pin": PIN}],
}


def secrets_in(data: bytes) -> list[str]:
    """Which known clear values ``data`` holds, as text (either case) or as raw key bytes."""
    found = []
    for value in (TMK, PIK, MAK, PAN, PIN):
        if value.encode() in data or value.lower().encode() in data:
            found.append(value)
    for key in (TMK, PIK, MAK):
        if bytes.fromhex(key) in data:
            found.append(f"raw {key}")
    return found


def signed_on_state(path: Path) -> state_mod.TerminalState:
    st = state_mod.new_state("T0000001", "898330160120001", "3des", TMK, "127.0.0.1", 8583)
    st.set_working_keys(WorkingKeys("3des", bytes.fromhex(PIK), bytes.fromhex(MAK), b""), "000001")
    st.pending_reversal = st.storable({"0": "0400", "2": PAN, "4": 1250})
    state_mod.save(st, path)
    return st


def test_state_file_holds_no_clear_key_or_pan_and_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "T0000001.json"
    st = signed_on_state(path)
    assert secrets_in(path.read_bytes()) == []
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again = state_mod.load(path)
    assert (again.tmk, again.pik, again.mak) == (TMK, PIK, MAK)
    assert again.restore(again.pending_reversal or {})["2"] == PAN
    assert again == st


def test_pool_and_cards_hold_no_clear_pan_pin_or_tmk_and_round_trip(tmp_path: Path) -> None:
    pool, cards = tmp_path / "load-pool.json", tmp_path / "demo-cards.json"
    write_sealed(pool, POOL)
    write_sealed(cards, {"cards": [{"name": "alice", "pan": PAN, "expiry": "3012", "pin": PIN}]})
    for path in (pool, cards):
        assert secrets_in(path.read_bytes()) == [], path.name
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert read_sealed(pool) == POOL
    loaded = read_pool(pool)
    assert loaded.terminals[0].tmk == TMK and loaded.cards[0].pin == PIN


def test_a_changed_byte_is_refused_in_one_line(tmp_path: Path) -> None:
    path = tmp_path / "T0000001.json"
    signed_on_state(path)
    data = bytearray(path.read_bytes())
    data[-5] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(StateError) as exc:
        state_mod.load(path)
    message = str(exc.value)
    assert "\n" not in message and str(path) in message and "pos init --force" in message
    with pytest.raises(SealError, match="changed, renamed, or sealed under another key"):
        read_sealed(path)


def test_a_renamed_file_is_refused(tmp_path: Path) -> None:
    """The name is bound in: a load pool cannot be passed off as a terminal state, or the reverse."""
    write_sealed(tmp_path / "load-pool.json", POOL)
    (tmp_path / "load-pool.json").rename(tmp_path / "T0000001.json")
    with pytest.raises(StateError, match="does not open"):
        state_mod.load(tmp_path / "T0000001.json")


def test_another_key_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "load-pool.json"
    write_sealed(path, POOL)
    monkeypatch.setenv(sealed.KEY_ENV, str(tmp_path / "other.key"))
    with pytest.raises(LoadError, match="not here") as exc:  # no key at all where it is looked for
        read_pool(path)
    assert "\n" not in str(exc.value)
    write_sealed(tmp_path / "x.json", {})  # creates other.key
    with pytest.raises(LoadError, match="another key") as exc:
        read_pool(path)
    assert str(tmp_path / "other.key") in str(exc.value) and "demo seed" in str(exc.value)


def test_plain_json_from_an_earlier_checkout_is_sealed_on_first_read(tmp_path: Path) -> None:
    path = tmp_path / "load-pool.json"
    path.write_text(json.dumps(POOL))
    assert read_pool(path).cards[0].pan == PAN
    assert secrets_in(path.read_bytes()) == []
    assert read_sealed(path) == POOL
    garbage = tmp_path / "demo-cards.json"
    garbage.write_bytes(b"\x00not json")
    with pytest.raises(SealError, match="neither a sealed file nor JSON"):
        read_sealed(garbage)


def test_the_key_is_created_0600_in_the_config_folder_and_a_loose_one_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(sealed.KEY_ENV)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    key = tmp_path / "config" / "payswitch" / "pos-seal.key"
    assert sealed.key_path() == key
    old = os.umask(0o022)
    try:
        write_sealed(tmp_path / "var" / "demo-cards.json", {"cards": []})
    finally:
        os.umask(old)
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert len(bytes.fromhex(key.read_text().strip())) == 32
    key.chmod(0o644)
    with pytest.raises(SealError, match="chmod 600"):
        read_sealed(tmp_path / "var" / "demo-cards.json")


def test_pos_commands_answer_a_sealing_problem_in_one_line(tmp_path: Path) -> None:
    path = tmp_path / "T0000001.json"
    path.write_bytes(sealed.MAGIC + b"\x00" * 40)
    r = CliRunner().invoke(cli, ["pos", "show", "--state", str(path)])
    assert r.exit_code == 1, r.output
    assert len(r.output.strip().splitlines()) == 1 and "does not open" in r.output
