"""`payswitch api link set|show`: the keys of the API's H2H link to the switch (table ``api_link``).

The same ZPK and ZAK (under the LMK) as the switch's inbound link for ``api.institution_id`` (``switch
link add api --direction in --institution-id ...``; ``demo seed`` makes both). A running ``api serve``
takes a change over within seconds (api.acquirer.run). ``show`` prints check values, never keys.
"""

from __future__ import annotations

import re
from typing import Any

import click

from api.acquirer import LinkKeys, keys_set_by, read_keys, set_keys
from host.cli import _run
from ops.actor import cli_actor
from ops.cli import AppContext, pass_app
from ops.localtime import format_local, iso_local
from ops.pgpool import PgPool

_KEY = re.compile(r"^[US][0-9A-F]{32}$")


@click.group()
def link() -> None:
    """The API's link to the switch: set its keys, show their check values."""


@link.command("set")
@click.option("--scheme", type=click.Choice(["3des", "sm4"]), required=True, help="Key scheme of the link.")
@click.option("--zpk", required=True, help="Link PIN key under the LMK (U+32H or S+32H).")
@click.option("--zak", default=None, help="Link MAC key under the LMK (DE128 on every request).")
@pass_app
def link_set(app: AppContext, scheme: str, zpk: str, zak: str | None) -> None:
    """Set the link's keys (the switch's `api` inbound link must have the same)."""
    for name, value in (("--zpk", zpk), ("--zak", zak)):
        if value is not None and not _KEY.match(value.upper()):
            raise click.ClickException(f"{name} must be a key under the LMK: U or S and 32 hex digits")
    want = "S" if scheme == "sm4" else "U"
    if any(v is not None and v.upper()[0] != want for v in (zpk, zak)):
        raise click.ClickException(f"a {scheme} link's keys start with {want}")

    async def work(pool: PgPool) -> None:
        await pool.run(set_keys, scheme, zpk.upper(), zak.upper() if zak else None, cli_actor())

    _run(app, work)
    app.emit({"link": "api", "scheme": scheme, "mac": zak is not None},
             f"API link keys set ({scheme}, {'MAC' if zak else 'no MAC'});"
             " `api link show` shows their check values")


@link.command("show")
@pass_app
def link_show(app: AppContext) -> None:
    """The link's scheme, the keys' check values and when they were set."""

    async def work(pool: PgPool, crypto: Any) -> dict[str, Any] | None:
        keys: LinkKeys | None = await pool.run(read_keys)
        if keys is None:
            return None
        row = await pool.run(keys_set_by)
        zpk_cv = await crypto.hsm.check_value(keys.zpk, "001")
        zak_cv = await crypto.hsm.check_value(keys.zak, "008") if keys.zak else None
        return {"scheme": keys.scheme, "zpk_check": zpk_cv, "zak_check": zak_cv, "set_at": row["set_at"],
                "actor": row["actor"]}

    shown = _run(app, work, hsm=True)
    if shown is None:
        raise click.ClickException("no API link keys yet: `payswitch api link set` (or `demo seed`)")
    tz = app.config.clearing.timezone
    data = {**shown, "set_at": iso_local(shown["set_at"], tz),
            "institution_id": app.config.api.institution_id}
    app.emit(data, "\n".join([
        f"API link to the switch (DE32 {app.config.api.institution_id}, {shown['scheme']})",
        f"  ZPK check  {shown['zpk_check']}",
        f"  ZAK check  {shown['zak_check'] or '- (no MAC)'}",
        f"  set        {format_local(shown['set_at'], tz)} by {shown['actor']}",
    ]))
