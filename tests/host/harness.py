"""A running host for socket tests: real PostgreSQL, the real HSM process, a real TCP listener."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import trio
from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives.ciphers import Cipher, modes

from host import catalog
from host.admin import admin_load
from host.cli import open_crypto
from host.client import H2HClient
from host.issue import issue_cards
from host.keys import IssuerCrypto, load_keys
from host.ledger import SERVER_SETTINGS
from host.service import HostService, load_partitions
from ops import config as config_mod
from ops.pgpool import PgPool

ACQ = "48880000"
MERCHANT = "898330160120001"
TERMINAL = "T3DES001"
ZPK_CLEAR = "0123456789ABCDEFFEDCBA9876543210"  # the contract's worked-example link key
PIN = "123456"


@dataclass
class Harness:
    service: HostService
    pool: PgPool
    crypto: IssuerCrypto
    client: H2HClient
    port: int
    nursery: trio.Nursery

    async def connect(self) -> H2HClient:
        c = await H2HClient.connect("127.0.0.1", self.port)
        await self.nursery.start(c.run_reader)
        return c


@asynccontextmanager
async def running_host(db_url: str, hsm_server: Any, **host: Any) -> AsyncIterator[Harness]:
    cfg = config_mod.defaults()
    cfg = dataclasses.replace(cfg, host=dataclasses.replace(cfg.host, port=0, metrics_port=0, **host),
                              clearing=dataclasses.replace(cfg.clearing, auto_emit=False))  # none in ./var
    with PgPool(
        db_url, min_size=2, max_size=8, role="payswitch_app", server_settings=SERVER_SETTINGS
    ) as pool:
        async with hsm_server.client() as hsm:
            crypto = await open_crypto(pool, hsm)
            service = HostService(
                cfg, pool, hsm, partitions=await pool.run(load_partitions), keys=await pool.run(load_keys)
            )
            service.crypto = crypto
            async with trio.open_nursery() as nursery:
                port = await nursery.start(service.serve)
                client = await H2HClient.connect("127.0.0.1", port)
                await nursery.start(client.run_reader)
                yield Harness(service, pool, crypto, client, port, nursery)
                nursery.cancel_scope.cancel()


async def programme(
    h: Harness, code: str, *, cards: int = 3, load: int = 10_000, bin_prefix: str = "621234", **spec: Any
) -> list[str]:
    """A product on ``bin_prefix``, the merchant, the link ZPK, active cards with PIN 123456 and ``load``."""
    spec.setdefault("pin_required", False)
    kind = spec.pop("kind", "reloadable")
    await h.pool.run(catalog.add_product, catalog.ProductSpec(code=code, kind=kind, **spec), bin_prefix, 19)
    if not await h.pool.run(_has_merchant):
        await h.pool.run(catalog.add_merchant, MERCHANT, "Canteen", "5812", None, ACQ)
        zpk = await h.crypto.hsm.form_key("001", [ZPK_CLEAR, "0" * 32], "U")
        # no DE128 on the test link: declared so (the harness client connects from loopback)
        await h.pool.run(catalog.set_link, ACQ, "3des", None, zpk.under_lmk, zpk.check_value, None, True)
    issued, _ = await issue_cards(h.pool, h.crypto, code, cards, pin=PIN, activate=True)
    for c in issued:
        if load:
            d = await admin_load(h.pool, c.card_id, load)
            assert d.code == "00", d
    return [c.pan for c in issued]


async def _has_merchant(conn: Any) -> bool:
    return bool(await conn.fetchval("SELECT 1 FROM merchants WHERE merchant_id = $1", MERCHANT))


def pin_block(pan: str, pin: str = PIN) -> bytes:
    """ISO 9564 format 0 under the clear link ZPK (test side only)."""
    block = bytes.fromhex(f"0{len(pin):X}{pin}".ljust(16, "F"))
    acct = bytes.fromhex("0000" + pan[:-1][-12:].rjust(12, "0"))
    clear = bytes(a ^ b for a, b in zip(block, acct, strict=True))
    key = bytes.fromhex(ZPK_CLEAR)
    enc = Cipher(TripleDES(key + key[:8]), modes.ECB()).encryptor()
    return enc.update(clear) + enc.finalize()


def message(
    client: H2HClient,
    pan: str | None,
    amount: int | None = None,
    *,
    mti: str = "0200",
    proc: str = "000000",
    cond: str = "00",
    terminal: str = TERMINAL,
    **fields: Any,
) -> dict[str, Any]:
    msg: dict[str, Any] = {
        "t": mti,
        "3": proc,
        "7": client.now_de7(),
        "11": client.next_stan(),
        "12": "101010",
        "13": "1125",
        "22": "011",
        "25": cond,
        "32": ACQ,
        "41": terminal,
        "42": MERCHANT,
        "49": "156",
    }
    msg["37"] = f"53301{msg['11']}0"
    if pan is not None:
        msg["2"] = pan
    if amount is not None:
        msg["4"] = f"{amount:012d}"
    msg.update(fields)
    return msg


def reversal(
    client: H2HClient, original: dict[str, Any], *, mti: str = "0400", **fields: Any
) -> dict[str, Any]:
    msg = message(
        client,
        original.get("2"),
        int(original.get("4", "0")),
        mti=mti,
        proc=original["3"],
        cond=original["25"],
        terminal=original["41"],
        **fields,
    )
    msg["90"] = f"{original['t']}{original['11']}{original['7']}{ACQ.rjust(11, '0')}{'0' * 11}"
    return msg
