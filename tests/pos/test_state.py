"""The terminal state file: mode 0600, atomic rewrite, STAN and batch counters, sealed PANs."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from pos import state as state_mod
from pos.crypto import unwrap_working_keys
from pos.state import JournalEntry, StateError

TMK = "0123456789ABCDEFFEDCBA9876543210"
PAN = "6212345678901234567"


def make(tmp_path: Path, scheme: str = "3des") -> state_mod.TerminalState:
    st = state_mod.new_state("T0000001", "898330160120001", scheme, TMK, "127.0.0.1", 8583)
    state_mod.save(st, tmp_path / "T0000001.json")
    return st


def test_file_is_private_and_rewritten_atomically(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        st = make(tmp_path)
    finally:
        os.umask(old)
    path = tmp_path / "T0000001.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    inode = path.stat().st_ino
    st.next_stan()
    state_mod.save(st)
    assert path.stat().st_ino != inode  # a new file renamed over the old one
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["T0000001.json"]  # no temporary left behind


def test_stan_increments_wraps_and_survives_reload(tmp_path: Path) -> None:
    st = make(tmp_path)
    assert [st.next_stan() for _ in range(3)] == ["000001", "000002", "000003"]
    state_mod.save(st)
    again = state_mod.load(tmp_path / "T0000001.json")
    assert again.next_stan() == "000004"
    again.stan = 999_999
    assert again.next_stan() == "000001"


def test_sign_on_keys_and_batch_change_closes_the_journal(tmp_path: Path) -> None:
    st = make(tmp_path)
    with pytest.raises(StateError, match="signon"):
        st.working_keys()
    de62 = bytes.fromhex(
        "524FDC3021F3BA088FADC73C286EA1D4E425ECCD289EC8E772237F20000000000000000092A3A5EE71496EA1E5D22ED1"
        "67BFCD8CF0A8A0685E1DF541"
    )
    keys = unwrap_working_keys("3des", bytes.fromhex(TMK), de62)
    st.journal.append(
        JournalEntry(
            "purchase",
            "000001",
            "000001",
            100,
            "621234*****4567",
            st.seal_pan(PAN),
            "000000000001",
            "A1",
            "1125",
            "101010",
        )
    )
    st.set_working_keys(keys, "000001")
    assert st.batch == "000001" and len(st.journal) == 1
    st.set_working_keys(keys, "000002")  # the switch gave a new batch: the old one is archived
    assert st.batch == "000002" and st.journal == [] and len(st.previous) == 1
    summary = st.summary()
    assert summary["working_key_check_values"] == {"pik": "E425ECCD", "mak": "92A3A5EE", "tdk": "5E1DF541"}
    assert TMK not in repr(summary) and "1023456789ABCDEF" not in repr(summary)
    st.require_sign_on()
    assert not st.signed_on and st.pik == ""


@pytest.mark.parametrize("scheme", ["3des", "sm4"])
def test_pans_are_sealed_in_the_file(tmp_path: Path, scheme: str) -> None:
    st = make(tmp_path, scheme)
    sealed = st.seal_pan(f"{PAN}=3012")
    assert PAN not in sealed and st.open_card(sealed) == (PAN, "3012")
    stored = st.storable({"t": "0400", "2": PAN, "11": "000001", "64": bytes(8)})
    st.pending_reversal = stored
    state_mod.save(st)
    assert PAN.encode() not in (tmp_path / "T0000001.json").read_bytes()
    assert st.restore(state_mod.load(tmp_path / "T0000001.json").pending_reversal or {})["2"] == PAN


def test_bad_files_and_values_are_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(StateError, match="pos init"):
        state_mod.load(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(StateError, match="cannot read"):
        state_mod.load(tmp_path / "bad.json")
    (tmp_path / "odd.json").write_text('{"state_version": 1}')
    with pytest.raises(StateError, match="damaged"):
        state_mod.load(tmp_path / "odd.json")
    with pytest.raises(StateError, match="TMK"):
        state_mod.new_state("T1", "M1", "3des", "ABC", "h", 1)
    with pytest.raises(StateError, match="scheme"):
        state_mod.new_state("T1", "M1", "aes", TMK, "h", 1)
    with pytest.raises(StateError, match="terminal id"):
        state_mod.new_state("T12345678", "M1", "3des", TMK, "h", 1)
