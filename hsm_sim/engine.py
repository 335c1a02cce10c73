"""The command table and one request → one response, independent of any transport.

``Engine.execute(body)`` takes a frame body (header, command code, fields; LEN removed) and returns the
response body: same header, response code (command code with its second character advanced), error
code, and fields only when the error code is 00. Unknown command → ``ZZ`` + ``68``; any field that
does not parse → ``15``. No exception escapes ``execute``: an unexpected one is logged (type only:
request fields may hold secrets) and answered ``15``.
"""

from __future__ import annotations

from collections.abc import Callable

from hsm_sim import cmd_data, cmd_emv, cmd_keys, cmd_mac, cmd_pin, cmd_sm2
from hsm_sim.errors import INVALID_INPUT, OK, UNKNOWN_COMMAND, HsmFault
from hsm_sim.fields import Reader
from hsm_sim.keys import KeyStore
from hsm_sim.lmk import Lmk
from ops.logs import get_logger

log = get_logger(__name__)

Handler = Callable[[KeyStore, Reader], bytes]

COMMANDS: dict[bytes, Handler] = {
    b"NC": cmd_keys.nc,
    b"B2": cmd_keys.b2,
    b"A0": cmd_keys.a0,
    b"A4": cmd_keys.a4,
    b"A6": cmd_keys.a6,
    b"A8": cmd_keys.a8,
    b"BU": cmd_keys.bu,
    b"WI": cmd_keys.wi,
    b"WK": cmd_keys.wk,
    b"SV": cmd_keys.sv,
    b"ST": cmd_keys.st,
    b"CA": cmd_pin.ca,
    b"CC": cmd_pin.cc,
    b"DG": cmd_pin.dg,
    b"EC": cmd_pin.ec,
    b"JA": cmd_pin.ja,
    b"BA": cmd_pin.ba,
    b"W8": cmd_pin.w8,
    b"WV": cmd_pin.wv,
    b"WC": cmd_pin.wc,  # [project convention] PIN change: specs/hsm-conventions.md
    b"M6": cmd_mac.m6,
    b"M8": cmd_mac.m8,
    b"MU": cmd_mac.mu,
    b"WM": cmd_mac.wm,
    b"M0": cmd_data.m0,
    b"M2": cmd_data.m2,
    b"SK": cmd_sm2.sk,  # [project convention] SM2 key pair for app PIN set: specs/hsm-conventions.md
    b"SP": cmd_sm2.sp,  # [project convention] PIN under SM2 -> PVV and PIN under LMK
    b"KW": cmd_emv.kw,  # [project convention] verify ARQC / generate ARPC: specs/hsm-conventions.md
}

RESPONSE_CODES: dict[bytes, bytes] = {c: c[:1] + bytes([c[1] + 1]) for c in COMMANDS}
MAX_BODY = 0xFFFF


class Engine:
    def __init__(self, lmk: Lmk, header_length: int = 4) -> None:
        self.keys = KeyStore(lmk)
        self.lmk = lmk
        self.header_length = header_length

    def execute(self, body: bytes) -> tuple[bytes, str, str]:
        """(response body, command label, error code). ``body`` is at least header + 2 bytes."""
        h = self.header_length
        header = body[:h]
        command = body[h : h + 2]
        handler = COMMANDS.get(command)
        if handler is None:
            return header + b"ZZ" + UNKNOWN_COMMAND.encode(), "unknown", UNKNOWN_COMMAND
        response = RESPONSE_CODES[command]
        label = command.decode()
        try:
            fields = handler(self.keys, Reader(body, h + 2))
        except HsmFault as fault:
            return header + response + fault.code.encode(), label, fault.code
        except Exception as exc:  # a bug must not take the service down; never log the request
            log.error("command_failed", command=label, error=type(exc).__name__)
            return header + response + INVALID_INPUT.encode(), label, INVALID_INPUT
        out = header + response + b"00" + fields
        if len(out) > MAX_BODY:
            return header + response + b"80", label, "80"
        return out, label, OK
