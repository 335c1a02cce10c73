"""The one error type the settlement job raises for operator-facing problems (str() is one line)."""

from __future__ import annotations


class SettlementError(Exception):
    """A file or run that cannot be settled; the message says which and why, in one line."""
