"""`payswitch inventory ...`: Card stock: report by product, batch and state; activate a batch or a PAN range."""

from __future__ import annotations

import click


@click.group()
def inventory() -> None:
    """Card stock: report by product, batch and state; activate a batch or a PAN range."""
