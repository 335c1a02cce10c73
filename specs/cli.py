"""`payswitch iso`: decode and encode messages of either dialect, for people.

    payswitch iso decode 0200702404C0...            # the message (MTI onwards), hex
    payswitch iso decode --framed 006C6000...        # with LEN (+ TPDU and header on POS)
    payswitch iso encode '{"t": "0800", "11": "000001", ...}'   # binary fields as hex strings
    payswitch --json iso decode ...                  # machine-readable, same masking

PANs are masked; PIN blocks, tracks and keys are shown as a length only; chip data (POS DE55, H2H DE48
of a chip request or answer) is decoded tag by tag, its PAN masked and track equivalents as a length.
"""

from __future__ import annotations

import binascii
import json
import sys
from typing import Any

import click

from ops.cli import AppContext, pass_app
from specs.codec import Codec, codec_for
from specs.dialects import DIALECTS, PROFILES
from specs.errors import DecodeError, EncodeError, FrameError
from specs.framing import (
    DEFAULT_HEADER,
    DEFAULT_TPDU,
    PosFrame,
    frame,
    h2h_splitter,
    pos_splitter,
)
from specs.pretty import chip_lines, render, safe_fields, transaction_name

_dialect = click.option("--dialect", type=click.Choice(DIALECTS), default="pos", show_default=True,
                        help="Message dialect.")
_profile = click.option("--profile", type=click.Choice(PROFILES), default="3des", show_default=True,
                        help="Key profile (DE52 size).")
_framed = click.option("--framed", is_flag=True,
                       help="Input/output includes LEN (+ TPDU and header for POS).")


@click.group()
def iso() -> None:
    """Decode and encode ISO 8583 messages of the POS and H2H dialects."""


def _arg_text(value: str) -> str:
    return sys.stdin.read() if value == "-" else value


@iso.command()
@click.argument("hex_text", metavar="HEX")
@_dialect
@_profile
@_framed
@pass_app
def decode(app: AppContext, hex_text: str, dialect: str, profile: str, framed: bool) -> None:
    """Decode HEX (whitespace allowed; - reads standard input) and print it field by field."""
    cleaned = "".join(_arg_text(hex_text).split())
    try:
        raw = binascii.a2b_hex(cleaned)
    except (binascii.Error, ValueError):
        raise click.ClickException("HEX is not an even number of hexadecimal digits") from None
    codec = codec_for(dialect, profile)
    info: dict[str, Any] = {}
    lines: list[str] = []
    if framed:
        raw = _unframe(raw, dialect, info, lines)
    try:
        msg = codec.decode(raw)
    except DecodeError as exc:
        raise click.ClickException(f"cannot decode: {exc}") from None
    info.update({"dialect": dialect, "profile": profile, "transaction": transaction_name(codec, msg),
                 "fields": safe_fields(codec, msg)})
    chip = chip_lines(codec, msg)
    if chip:  # tag by tag, PAN masked and tracks hidden (specs.tlv.describe)
        info["chip"] = chip
    app.emit(info, "\n".join([*lines, render(codec, msg)]))


def _unframe(raw: bytes, dialect: str, info: dict[str, Any], lines: list[str]) -> bytes:
    splitter = pos_splitter() if dialect == "pos" else h2h_splitter()
    try:
        bodies = splitter.feed(raw)
    except FrameError as exc:
        raise click.ClickException(f"bad frame: {exc}") from None
    if len(bodies) != 1 or splitter.pending:
        raise click.ClickException(
            f"expected exactly one frame, found {len(bodies)} and {splitter.pending} extra bytes")
    body = bodies[0]
    if dialect == "h2h":
        return body
    try:
        pf = PosFrame.parse(body)
    except DecodeError as exc:
        raise click.ClickException(f"cannot decode: {exc}") from None
    info.update({"tpdu": pf.tpdu.hex().upper(), "header": pf.header.hex().upper()})
    lines.append(f"{'TPDU':<6} {pf.tpdu.hex().upper():<34} header {pf.header.hex().upper()}")
    return pf.message


@iso.command()
@click.argument("json_text", metavar="JSON")
@_dialect
@_profile
@_framed
@click.option("--tpdu", default=DEFAULT_TPDU.hex().upper(), show_default=True,
              help="POS TPDU with --framed (hex).")
@click.option("--header", default=DEFAULT_HEADER.hex().upper(), show_default=True,
              help="POS header with --framed (hex).")
@pass_app
def encode(app: AppContext, json_text: str, dialect: str, profile: str, framed: bool, tpdu: str,
           header: str) -> None:
    """Encode a JSON object {"t": MTI, "2": ..., ...} (binary fields as hex; - reads standard input)."""
    try:
        doc = json.loads(_arg_text(json_text))
    except json.JSONDecodeError as exc:
        raise click.ClickException(f"JSON is not valid: {exc.msg} at line {exc.lineno}") from None
    if not isinstance(doc, dict):
        raise click.ClickException("JSON must be an object of field number -> value")
    codec = codec_for(dialect, profile)
    msg = _from_json(codec, doc)
    try:
        raw = codec.encode(msg)
    except EncodeError as exc:
        raise click.ClickException(f"cannot encode: {exc}") from None
    if framed:
        if dialect == "pos":
            prefix = _hex_option("--tpdu", tpdu, 5) + _hex_option("--header", header, 6)
            raw = frame(prefix + raw)
        else:
            raw = frame(raw)
    wire = raw.hex().upper()
    app.emit({"hex": wire, "length": len(raw), "fields": safe_fields(codec, msg)},
             f"{wire}\n\n{render(codec, msg)}")


def _hex_option(name: str, value: str, size: int) -> bytes:
    try:
        data = bytes.fromhex(value)
    except ValueError:
        data = b""
    if len(data) != size:
        raise click.ClickException(f"{name} must be {size} bytes of hex")
    return data


def _from_json(codec: Codec, doc: dict[str, Any]) -> dict[str, Any]:
    """JSON values -> codec values: hex strings for binary fields, numbers as digit strings."""
    msg: dict[str, Any] = {}
    for key, value in doc.items():
        kind = codec.spec.get(key, {}).get("kind") if key != "t" else "n"
        if kind in ("b", "hex") and isinstance(value, str):
            try:
                msg[key] = bytes.fromhex(value)
            except ValueError:
                raise click.ClickException(f"field {key}: binary fields are given as hex") from None
        elif isinstance(value, int) and not isinstance(value, bool):
            size = codec.spec.get(key, {}).get("max_len", 0)
            fixed = codec.spec.get(key, {}).get("len_type") == 0
            msg[key] = str(value).zfill(size if fixed else 0)
        else:
            msg[key] = value
    return msg
