"""`payswitch aml ...`: AML screening: watch lists, the review queue."""

from __future__ import annotations

import click


@click.group()
def aml() -> None:
    """AML screening: watch lists, the review queue."""
