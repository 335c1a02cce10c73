"""Every payswitch process runs with the tuned garbage collector (ops.runtime)."""

from __future__ import annotations

import subprocess
import sys

from ops.runtime import THRESHOLDS

PROBE = """
import gc, sys
from ops.cli import main
sys.argv = ["payswitch", "--help"]
try:
    main()
except SystemExit:
    pass
print("thresholds", gc.get_threshold(), "frozen", gc.get_freeze_count() > 0)
"""


def test_cli_entry_point_tunes_the_collector() -> None:
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True).stdout
    assert f"thresholds {THRESHOLDS} frozen True" in out
