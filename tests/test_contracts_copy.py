"""specs/contracts/ is a byte-for-byte copy of the fixed wire contracts in ../shared/contract/.

The contracts live beside the checkout (`../shared/contract/` relative to the repository root); the
copy makes them readable from the repository alone. CI runs from a clean clone in a sibling folder of
`shared/`, so the check runs there too; `PAYSWITCH_CONTRACT_DIR` names the folder when it is elsewhere.
A clone with no contract folder anywhere skips, saying so: the copy is then all there is to read.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
COPY = ROOT / "specs" / "contracts"


def _originals() -> Path | None:
    named = os.environ.get("PAYSWITCH_CONTRACT_DIR")
    if named:
        return Path(named)
    beside = ROOT.parent / "shared" / "contract"
    return beside if beside.is_dir() else None


def test_copy_is_identical_to_the_contracts() -> None:
    originals = _originals()
    if originals is None:
        beside = ROOT.parent / "shared" / "contract"
        pytest.skip(f"no {beside} and no PAYSWITCH_CONTRACT_DIR: nothing to compare the copy with")
    assert originals.is_dir(), f"PAYSWITCH_CONTRACT_DIR={originals} is not a folder"
    want = {p.name: p.read_bytes() for p in originals.iterdir() if p.is_file()}
    have = {p.name: p.read_bytes() for p in COPY.iterdir() if p.is_file()}
    assert sorted(have) == sorted(want), f"specs/contracts/ holds {sorted(have)}, {originals} {sorted(want)}"
    differ = [name for name in want if have[name] != want[name]]
    assert not differ, f"specs/contracts/ differs from {originals} in {differ}: copy them again (cp)"


def test_the_copy_is_there() -> None:
    """Also without the originals: the four contracts the code cites are readable from the repository."""
    names = {p.name for p in COPY.glob("*.md")}
    assert {"pos-dialect.md", "h2h-dialect.md", "hsm-commands.md", "clearing-file.md"} <= names
