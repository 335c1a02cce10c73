"""The two wire dialects as data: pyiso8583 specifications plus a few extra keys.

Every field is a plain pyiso8583 field spec (``data_enc``, ``len_enc``, ``len_type``, ``max_len``,
``len_count``, ``left_pad``/``right_pad``, ``desc``), so ``iso8583.encode(doc, spec_for(...))`` works
and serves as the byte-for-byte oracle in the tests. pyiso8583 ignores unknown keys; these extra keys
carry the contract rules it cannot express, and the fast codec (``specs.codec``) and the docs
(``specs.docs``) are compiled from them:

``kind``
    ``n`` digits only; ``z`` track data (digits and ``=``; on the BCD wire ``=`` is the nibble ``D``);
    ``an`` letters, digits, space; ``ans`` printable ASCII; ``b`` raw bytes (value is ``bytes``);
    ``hex`` bytes carried as upper-case hexadecimal ASCII (value is ``bytes``, H2H DE52/DE128).
``format``
    the contract's notation, for the docs.
``pad``
    fixed an/ans: the encoder right-pads a shorter value with this character.
``secret``
    how tools show the field: ``pan`` masked, ``pin``/``track``/``key``/``chip`` length only.

Fixed n fields are right-aligned (``left_pad`` "0") except POS DE22 (left-aligned, ``right_pad``);
variable n and z fields are left-aligned (``right_pad``). BCD lengths of n/z count nibbles
(``len_count`` "nibbles"), other lengths count bytes.
"""

from __future__ import annotations

from typing import Any, Literal

FieldSpec = dict[str, Any]
Spec = dict[str, FieldSpec]

Dialect = Literal["pos", "h2h"]
Profile = Literal["3des", "sm4"]
DIALECTS: tuple[Dialect, ...] = ("pos", "h2h")
PROFILES: tuple[Profile, ...] = ("3des", "sm4")


# --- POS: BCD numerics, binary bitmap, BCD lengths --------------------------------------------------

def _pos_n(digits: int, desc: str, *, align: str = "right", **extra: Any) -> FieldSpec:
    pad = "left_pad" if align == "right" else "right_pad"
    return {"data_enc": "b", "len_enc": "bcd", "len_type": 0, "max_len": digits, "len_count": "nibbles",
            pad: "0", "kind": "n", "format": f"n{digits}", "desc": desc, **extra}


def _pos_nvar(max_digits: int, ll: int, desc: str, *, kind: str = "n", **extra: Any) -> FieldSpec:
    return {"data_enc": "b", "len_enc": "bcd", "len_type": (ll + 1) // 2, "max_len": max_digits,
            "len_count": "nibbles", "right_pad": "0", "kind": kind,
            "format": f"{kind}..{max_digits} {'L' * ll}", "desc": desc, **extra}


def _pos_text(kind: str, length: int, desc: str, **extra: Any) -> FieldSpec:
    return {"data_enc": "ascii", "len_enc": "bcd", "len_type": 0, "max_len": length, "kind": kind,
            "pad": " ", "format": f"{kind}{length}", "desc": desc, **extra}


def _pos_textvar(kind: str, max_len: int, ll: int, desc: str, **extra: Any) -> FieldSpec:
    return {"data_enc": "ascii", "len_enc": "bcd", "len_type": (ll + 1) // 2, "max_len": max_len,
            "kind": kind, "format": f"{kind}..{max_len} {'L' * ll}", "desc": desc, **extra}


def _pos_b(length: int, desc: str, **extra: Any) -> FieldSpec:
    return {"data_enc": "b", "len_enc": "bcd", "len_type": 0, "max_len": length, "kind": "b",
            "format": f"b{length}", "desc": desc, **extra}


def _pos_bvar(max_len: int, ll: int, desc: str, **extra: Any) -> FieldSpec:
    return {"data_enc": "b", "len_enc": "bcd", "len_type": (ll + 1) // 2, "max_len": max_len, "kind": "b",
            "format": f"b..{max_len} {'L' * ll}", "desc": desc, **extra}


_NO_HEADER: FieldSpec = {"data_enc": "ascii", "len_enc": "ascii", "len_type": 0, "max_len": 0,
                         "desc": "no header (the POS TPDU and header are framing, see specs.framing)"}

POS_BASE: Spec = {
    "h": _NO_HEADER,
    "t": {"data_enc": "b", "len_enc": "ascii", "len_type": 0, "max_len": 2, "kind": "n",
          "format": "n4 BCD", "desc": "Message type indicator"},
    "p": {"data_enc": "b", "len_enc": "ascii", "len_type": 0, "max_len": 8, "kind": "b",
          "format": "b8", "desc": "Bitmap (primary only)"},
    "2": _pos_nvar(19, 2, "Primary account number", secret="pan"),
    "3": _pos_n(6, "Processing code"),
    "4": _pos_n(12, "Amount, minor units (fen)"),
    "11": _pos_n(6, "Terminal trace number (STAN)"),
    "12": _pos_n(6, "Local time hhmmss"),
    "13": _pos_n(4, "Local date MMDD"),
    "14": _pos_n(4, "Expiry YYMM"),
    "15": _pos_n(4, "Settlement date MMDD"),
    "22": _pos_n(3, "Entry mode (left-aligned)", align="left"),
    "23": _pos_n(3, "Card sequence number"),
    "25": _pos_n(2, "Condition code"),
    "26": _pos_n(2, "PIN capture code"),
    "32": _pos_nvar(11, 2, "Acquiring institution id"),
    "35": _pos_nvar(37, 2, "Track 2", kind="z", secret="track"),
    "36": _pos_nvar(104, 3, "Track 3", kind="z", secret="track"),
    "37": _pos_text("an", 12, "Retrieval reference number"),
    "38": _pos_text("an", 6, "Authorization id"),
    "39": _pos_text("an", 2, "Response code"),
    "41": _pos_text("ans", 8, "Terminal id"),
    "42": _pos_text("ans", 15, "Merchant id"),
    "44": _pos_textvar("an", 25, 2, "Issuer id [0:11], acquirer id [11:22]"),
    "48": _pos_nvar(322, 3, "Batch totals (0500) / batch upload records (0320)"),
    "49": _pos_text("an", 3, "Currency code"),
    "52": _pos_b(8, "PIN block", secret="pin"),
    "53": _pos_n(16, "Security related control information"),
    "54": _pos_textvar("an", 20, 3, "Balance"),
    "55": _pos_bvar(255, 3, "Chip data (BER-TLV)", secret="chip"),
    "60": _pos_nvar(17, 3, "60.1 type, 60.2 batch, 60.3 network code [, 60.4, 60.5]"),
    "61": _pos_nvar(29, 3, "Original batch + STAN [+ date MMDD]"),
    "62": _pos_bvar(512, 3, "Working keys (sign-on response)", secret="key"),
    "63": _pos_textvar("ans", 163, 3, "Operator (request) / card organisation (response)"),
    "64": _pos_b(8, "MAC"),
}


# --- H2H: ASCII throughout, hex bitmaps with a secondary bitmap ----------------------------------------

def _h_n(digits: int, desc: str, **extra: Any) -> FieldSpec:
    return {"data_enc": "ascii", "len_enc": "ascii", "len_type": 0, "max_len": digits, "kind": "n",
            "format": f"n{digits}", "desc": desc, **extra}


def _h_var(kind: str, max_len: int, ll: int, desc: str, **extra: Any) -> FieldSpec:
    return {"data_enc": "ascii", "len_enc": "ascii", "len_type": ll, "max_len": max_len, "kind": kind,
            "format": f"{kind}..{max_len} {'L' * ll}", "desc": desc, **extra}


def _h_text(kind: str, length: int, desc: str, **extra: Any) -> FieldSpec:
    return {"data_enc": "ascii", "len_enc": "ascii", "len_type": 0, "max_len": length, "kind": kind,
            "pad": " ", "format": f"{kind}{length}", "desc": desc, **extra}


def _h_hex(chars: int, desc: str, **extra: Any) -> FieldSpec:
    return {"data_enc": "ascii", "len_enc": "ascii", "len_type": 0, "max_len": chars, "kind": "hex",
            "format": f"{chars} hex chars", "desc": desc, **extra}


_H2H_BITMAP: FieldSpec = {"data_enc": "ascii", "len_enc": "ascii", "len_type": 0, "max_len": 16,
                          "kind": "hex", "format": "16 hex chars"}

H2H_BASE: Spec = {
    "h": {**_NO_HEADER, "desc": "no header"},
    "t": {"data_enc": "ascii", "len_enc": "ascii", "len_type": 0, "max_len": 4, "kind": "n",
          "format": "n4", "desc": "Message type indicator"},
    "p": {**_H2H_BITMAP, "desc": "Primary bitmap"},
    "1": {**_H2H_BITMAP, "desc": "Secondary bitmap"},
    "2": _h_var("n", 19, 2, "Primary account number", secret="pan"),
    "3": _h_n(6, "Processing code"),
    "4": _h_n(12, "Amount, minor units"),
    "7": _h_n(10, "Transmission date and time MMDDhhmmss (UTC)"),
    "11": _h_n(6, "STAN of the sender on this link"),
    "12": _h_n(6, "Local time hhmmss"),
    "13": _h_n(4, "Local date MMDD"),
    "14": _h_n(4, "Expiry YYMM"),
    "15": _h_n(4, "Settlement date MMDD"),
    "18": _h_n(4, "Merchant category code"),
    "22": _h_n(3, "Entry mode"),
    "25": _h_n(2, "Condition code"),
    "32": _h_var("n", 11, 2, "Acquiring institution id"),
    "33": _h_var("n", 11, 2, "Forwarding institution id"),
    "35": _h_var("z", 37, 2, "Track 2", secret="track"),
    "37": _h_text("an", 12, "Retrieval reference number"),
    "38": _h_text("an", 6, "Authorization id"),
    "39": _h_text("an", 2, "Response code"),
    "41": _h_text("ans", 8, "Terminal id"),
    "42": _h_text("ans", 15, "Merchant id"),
    "43": _h_text("ans", 40, "Merchant name and location"),
    "48": _h_var("ans", 999, 3, "Additional data (key exchange; PIN change: new PIN block; chip data hex)",
                 secret="key"),
    "49": _h_text("an", 3, "Currency code"),
    "52": _h_hex(16, "PIN block under the link ZPK", secret="pin"),
    "54": _h_var("an", 120, 3, "Balances"),
    "60": _h_var("ans", 999, 3, "POS batch number and original POS DE60"),
    "70": _h_n(3, "Network management code"),
    "90": _h_n(42, "Original data: MTI, STAN, DE7, acquirer id, forwarding id"),
    "95": _h_text("an", 42, "Replacement amounts"),
    "100": _h_var("n", 11, 2, "Receiving institution id"),
    "102": _h_var("ans", 28, 2, "Account identification"),
    "128": _h_hex(16, "MAC"),
}


def spec_for(dialect: str, profile: str) -> Spec:
    """The pyiso8583 specification of a dialect ("pos"/"h2h") for a key profile ("3des"/"sm4").

    The profiles differ only in DE52: POS b8 or b16, H2H 16 or 32 hex characters. A fresh dict is
    returned each time (pyiso8583 never mutates specs, but callers may).
    """
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r} (expected one of {', '.join(PROFILES)})")
    if dialect == "pos":
        spec = {k: dict(v) for k, v in POS_BASE.items()}
        if profile == "sm4":
            spec["52"] = _pos_b(16, "PIN block (SM4: format 0 + 8 bytes FF)", secret="pin")
        return spec
    if dialect == "h2h":
        spec = {k: dict(v) for k, v in H2H_BASE.items()}
        if profile == "sm4":
            spec["52"] = _h_hex(32, "PIN block under the link ZPK (SM4: format 0 + 8 bytes FF)",
                                secret="pin")
        return spec
    raise ValueError(f"unknown dialect {dialect!r} (expected one of {', '.join(DIALECTS)})")


# Message types each dialect accepts on decode and produces on encode (requests and responses).
KNOWN_MTIS: dict[str, frozenset[str]] = {
    "pos": frozenset({"0100", "0110", "0200", "0210", "0220", "0230", "0320", "0330", "0400", "0410",
                      "0500", "0510", "0800", "0810", "0820", "0830"}),
    "h2h": frozenset({"0100", "0110", "0200", "0210", "0220", "0221", "0230", "0400", "0410", "0420",
                      "0421", "0430", "0800", "0810"}),
}

# The field whose trailing bytes are the MAC, per dialect.
MAC_FIELD: dict[str, str] = {"pos": "64", "h2h": "128"}


def to_pyiso8583(msg: dict[str, Any], spec: Spec) -> dict[str, str]:
    """A codec message as pyiso8583 wants it: bytes as upper-case hex, ``=`` as ``D`` in BCD tracks,
    short fixed an/ans padded. Keys the spec lacks and None values are dropped."""
    doc: dict[str, str] = {}
    for key, value in msg.items():
        fs = spec.get(key)
        if fs is None or value is None or key in ("p", "1", "h"):
            continue
        if isinstance(value, bytes | bytearray):
            doc[key] = value.hex().upper()
        elif fs.get("kind") == "z" and fs["data_enc"] == "b":
            doc[key] = value.replace("=", "D")
        elif "pad" in fs and len(value) < fs["max_len"]:
            doc[key] = value.ljust(fs["max_len"], fs["pad"])
        else:
            doc[key] = str(value)
    return doc


def from_pyiso8583(doc: dict[str, str], spec: Spec) -> dict[str, Any]:
    """The inverse of :func:`to_pyiso8583` (bitmaps and header dropped)."""
    msg: dict[str, Any] = {}
    for key, value in doc.items():
        if key in ("p", "1", "h"):
            continue
        kind = spec[key].get("kind")
        if key != "t" and kind in ("b", "hex"):
            msg[key] = bytes.fromhex(value)
        elif kind == "z" and spec[key]["data_enc"] == "b":
            msg[key] = value.replace("D", "=")
        else:
            msg[key] = value
    return msg
