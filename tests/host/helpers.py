"""Shared set-up for the host tests: a programme (product, merchant, cards), request builders, and the
admin CLI run through click's runner."""

from __future__ import annotations

import hashlib
import itertools
import json
from pathlib import Path
from typing import Any

from click.testing import CliRunner, Result

from host import catalog
from host.model import Pin, Request, Txn, request_key
from ops.cli import cli

ACQ = "48880000"
MERCHANT = "898330160120001"
TERMINAL = "T0000001"
_stan = itertools.count(1)


def fake_hash(pan: str) -> str:
    """Engine tests do not need the HSM: any stable function of the PAN stands in for its keyed hash."""
    return hashlib.sha256(pan.encode()).hexdigest()[:16].upper()


async def programme(conn: Any, *, cards: int = 3, code: str = "GIFT", **product: Any) -> list[str]:
    """A product, one merchant with a terminal, and active cards; returns their PANs (test data only)."""
    spec = catalog.ProductSpec(
        code=code, kind=product.pop("kind", "reloadable"), pin_required=False, **product
    )
    bin_prefix = f"62{abs(hash(code)) % 10000:04d}"
    await catalog.add_product(conn, spec, bin_prefix)
    if await conn.fetchval("SELECT count(*) FROM merchants WHERE merchant_id = $1", MERCHANT) == 0:
        await catalog.add_merchant(conn, MERCHANT, "Canteen", "5812", acquirer_id=ACQ)
    parts = await catalog.partitions(conn)
    pans = [f"{bin_prefix}{i:012d}" for i in range(1, cards + 1)]
    await catalog.insert_cards(
        conn,
        code,
        [
            catalog.NewCard(
                fake_hash(p),
                "ENC" + fake_hash(p),
                p[:6] + "*" * (len(p) - 10) + p[-4:],
                "1234",
                int(fake_hash(p), 16) % parts,
            )
            for p in pans
        ],
        state="active",
    )
    return pans


def req(
    txn: Txn,
    pan: str | None,
    amount: int = 0,
    *,
    mti: str | None = None,
    stan: str | None = None,
    rrn: str | None = None,
    **kw: Any,
) -> Request:
    mti = mti or {
        Txn.PREAUTH: "0100",
        Txn.PREAUTH_VOID: "0100",
        Txn.REFUND: "0220",
        Txn.REVERSAL: "0400",
    }.get(txn, "0200")
    stan = stan or f"{next(_stan) % 1_000_000:06d}"
    de7 = kw.pop("transmitted", "1125101010")
    return Request(
        key=request_key(ACQ, de7, stan, TERMINAL, mti),
        mti=mti,
        txn=txn,
        acquirer_id=ACQ,
        stan=stan,
        transmitted=de7,
        terminal_id=TERMINAL,
        merchant_id=kw.pop("merchant_id", MERCHANT),
        rrn=rrn or f"5330{stan}00",
        amount=amount,
        currency="156",
        pan_hash=fake_hash(pan) if pan else None,
        pin=kw.pop("pin", Pin.NONE),
        **kw,
    )


def reversal_of(orig: Request, *, stan: str | None = None, **kw: Any) -> Request:
    r = req(Txn.REVERSAL, kw.pop("pan", None), orig.amount, mti=kw.pop("mti", "0400"), stan=stan, **kw)
    r.original_key = orig.key
    r.original_mti = orig.mti
    return r


# -- the admin CLI ---------------------------------------------------------------------------------
def cli_env(root: Path, db_url: str, hsm_env: dict[str, str]) -> dict[str, str]:
    """Environment for `payswitch` commands: an empty config file, the test database and HSM, and a
    PIN-mailer folder under ``root``."""
    (root / "empty.toml").write_text("")
    return {
        "PAYSWITCH_CONFIG": str(root / "empty.toml"),
        "PAYSWITCH_DATABASE_URL": db_url,
        "PAYSWITCH_HOST_MAILER_DIR": str(root / "mailers"),
        **hsm_env,
    }


def run(env: dict[str, str], *args: str, input: str | None = None) -> Result:
    return CliRunner().invoke(cli, list(args), env=env, input=input, catch_exceptions=False)


def ok(env: dict[str, str], *args: str, input: str | None = None) -> Any:
    """The command's --json output; it must exit 0."""
    result = run(env, "--json", *args, input=input)
    assert result.exit_code == 0, result.output
    # the prompts (not the hidden values) come before the JSON document
    return json.loads(result.output if input is None else result.output[result.output.index("{") :])
