"""What the switch asks of the HSM, in its own words, and the adapter onto ``hsm_sim.client``.

The switch never holds a clear key or PIN: working keys are generated under the terminal's TMK and
kept under the LMK; MACs and PIN translations happen inside the HSM. ``HsmRefused`` carries the HSM
error code (e.g. 20 bad PIN block, 01 verification failure); ``HsmUnavailable`` means no answer.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

from hsm_sim.client import HsmClient, HsmCommandError, HsmError, h2h_mac_command


class HsmRefused(Exception):
    def __init__(self, command: str, code: str) -> None:
        super().__init__(f"HSM {command} answered error {code}")
        self.command = command
        self.code = code


class HsmUnavailable(Exception):
    pass


@dataclass(frozen=True)
class WorkingKey:
    under_lmk: str
    under_tmk: bytes
    check_value: bytes  # first 4 bytes of the clear key's encryption of zeros


# Key types of the working keys a terminal gets at sign-on (hsm-commands.md): PIK = TPK, MAK = TAK,
# TDK = data key.
KEY_TYPES = {"pik": "002", "mak": "003", "tdk": "00A"}


class SwitchHsm(Protocol):
    async def working_key(self, scheme: str, kind: str, tmk: str) -> WorkingKey:
        """A new PIK/MAK/TDK (``kind``) under the LMK and under ``tmk`` (3des: X/Z export; sm4: WI)."""
        ...

    async def pos_mac(self, scheme: str, mak: str, data: bytes) -> bytes:
        """The 8 ASCII characters of the UnionPay POS MAC (MU) over ``data``."""
        ...

    async def translate_pin(
        self,
        src_scheme: str,
        src_key_type: str,
        src_key: str,
        dst_scheme: str,
        zpk: str,
        block: bytes,
        account: str,
    ) -> bytes:
        """PIN block from a terminal PIK (``002``) or an acquirer ZPK (``001``) to the link ``zpk``."""
        ...

    async def pos_mac_and_translate_pin(
        self,
        scheme: str,
        mak: str,
        data: bytes,
        pik: str,
        dst_scheme: str,
        zpk: str,
        block: bytes,
        account: str,
    ) -> tuple[bytes | HsmRefused, bytes | HsmRefused]:
        """``pos_mac`` over ``data`` and the PIN block from the terminal ``pik`` to the link ``zpk``,
        sent together; a refusal of either comes back as an ``HsmRefused`` value."""
        ...

    async def link_mac(self, scheme: str, zak: str, data: bytes) -> bytes:
        """8-byte H2H MAC (X9.19 for 3des, SM4 ISO 9797-1 alg 1 for sm4) over ``data``."""
        ...

    async def verify_link_mac(self, zak: str, data: bytes, mac: bytes) -> bool: ...

    async def link_macs(self, zak: str, data: list[bytes]) -> list[bytes | None]:
        """``link_mac`` over each of ``data`` in one HSM exchange; None where the HSM refused one."""
        ...

    async def verify_link_macs(self, zak: str, items: list[tuple[bytes, bytes]]) -> list[bool]:
        """``verify_link_mac`` of each (data, mac) in one HSM exchange; a refusal is False."""
        ...

    def key_changing(self, zpk: str) -> bool:
        """Whether a key change of the link ``zpk`` is under way (translations to it are being held)."""
        ...


@contextlib.contextmanager
def _client_errors() -> Iterator[None]:
    """The client's errors as the switch's: a refusal (an HSM error code) or an unreachable HSM."""
    try:
        yield
    except HsmCommandError as exc:
        raise HsmRefused(exc.command, exc.code) from None
    except HsmError as exc:
        raise HsmUnavailable(str(exc)) from None


class ClientHsm:
    """``SwitchHsm`` on ``hsm_sim.client.HsmClient`` (pipelined, pooled connections)."""

    def __init__(self, client: HsmClient) -> None:
        self.client = client

    async def working_key(self, scheme: str, kind: str, tmk: str) -> WorkingKey:
        key_type = KEY_TYPES[kind]
        with _client_errors():
            if scheme == "sm4":
                key = await self.client.generate_sm4_key(key_type, under=tmk, under_tmk=True)
            elif kind == "mak":  # the 3DES profile's MAK is a single-length DES key (scheme Z)
                key = await self.client.generate_key(
                    key_type, "Z", under=tmk, under_tmk=True, export_scheme="Z"
                )
            else:
                key = await self.client.generate_key(
                    key_type, "U", under=tmk, under_tmk=True, export_scheme="X"
                )
        assert key.under_kek is not None
        under_tmk = key.under_kek[1:] if key.under_kek[:1] in ("X", "U") else key.under_kek
        return WorkingKey(key.under_lmk, bytes.fromhex(under_tmk), bytes.fromhex(key.check_value[:8]))

    async def pos_mac(self, scheme: str, mak: str, data: bytes) -> bytes:
        with _client_errors():
            return await self.client.pos_mac(mak, data)

    async def translate_pin(
        self,
        src_scheme: str,
        src_key_type: str,
        src_key: str,
        dst_scheme: str,
        zpk: str,
        block: bytes,
        account: str,
    ) -> bytes:
        with _client_errors():
            if src_scheme == "3des" and dst_scheme == "3des":
                if src_key_type == "002":
                    out = await self.client.translate_pin_tpk(src_key, zpk, block.hex().upper(), account)
                else:
                    out = await self.client.translate_pin_zpk(src_key, zpk, block.hex().upper(), account)
            else:
                out = await self.client.translate_pin(
                    src_key, zpk, block.hex().upper(), account, src_key_type=src_key_type
                )
        return bytes.fromhex(out.pin_block)

    async def pos_mac_and_translate_pin(
        self,
        scheme: str,
        mak: str,
        data: bytes,
        pik: str,
        dst_scheme: str,
        zpk: str,
        block: bytes,
        account: str,
    ) -> tuple[bytes | HsmRefused, bytes | HsmRefused]:
        with _client_errors():
            mac, pin = await self.client.pos_mac_and_translate_pin(
                mak, data, pik, zpk, block.hex().upper(), account, src_key_type="002"
            )
        return (
            HsmRefused(mac.command, mac.code) if isinstance(mac, HsmCommandError) else mac,
            HsmRefused(pin.command, pin.code)
            if isinstance(pin, HsmCommandError)
            else bytes.fromhex(pin.pin_block),
        )

    async def link_mac(self, scheme: str, zak: str, data: bytes) -> bytes:
        with _client_errors():
            return bytes.fromhex((await self.client.h2h_mac(zak, data))[:16])

    async def verify_link_mac(self, zak: str, data: bytes, mac: bytes) -> bool:
        with _client_errors():
            return await self.client.verify_h2h_mac(zak, data, mac.hex().upper())

    async def link_macs(self, zak: str, data: list[bytes]) -> list[bytes | None]:
        with _client_errors():
            replies = await self.client.request_many([h2h_mac_command(zak, d) for d in data])
        return [bytes.fromhex(r.fields[:16].decode()) if r.error == "00" else None for r in replies]

    async def verify_link_macs(self, zak: str, items: list[tuple[bytes, bytes]]) -> list[bool]:
        with _client_errors():
            commands = [h2h_mac_command(zak, d, m.hex().upper()) for d, m in items]
            replies = await self.client.request_many(commands)
        return [r.error == "00" for r in replies]

    def key_changing(self, zpk: str) -> bool:
        return False  # key changes are KeyChangeGate's (switch.upstream), which wraps this
