"""`payswitch cardholder ...`: Cardholders: register, find, update, KYC decisions, close."""

from __future__ import annotations

import click


@click.group()
def cardholder() -> None:
    """Cardholders: register, find, update, KYC decisions, close."""
