"""Digits typed by a person or sent by a client: ASCII 0-9, the one check of text that becomes a number.

``str.isdigit`` is true of "¹", "³", "٣" and hundreds of other Unicode digits, and a regular
expression's ``\\d`` matches them too; ``int()`` refuses some ("¹" raises) and reads others as numbers
("٣" is 3). So an id, a cursor, a count or a PIN from outside is checked here, never with a bare
``isdigit()``: ``is_digits("042")`` is True, ``is_digits("4²")`` and ``is_digits("")`` are False;
``row_number("1042")`` is 1042 and ``row_number("9" * 19)`` is None (a bigint holds every 18-digit
number, so a cursor that passes never overflows a query's parameter). Text already decoded from the
wire as ASCII (the codec's fields, an HSM command) needs none of this.
"""

from __future__ import annotations

ROW_NUMBER_DIGITS = 18  # the longest number every PostgreSQL bigint column takes


def is_digits(text: str) -> bool:
    """One or more ASCII digits 0-9 and nothing else."""
    return text.isascii() and text.isdigit()


def row_number(text: str) -> int | None:
    """``text`` as a row id or a page cursor: 1 to 18 ASCII digits, else None."""
    return int(text) if len(text) <= ROW_NUMBER_DIGITS and is_digits(text) else None
