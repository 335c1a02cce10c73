"""`payswitch hsm ...`: init (LMK file), serve, form-key (key ceremony), kcv, diag.

form-key, kcv and diag talk to the running HSM over TCP (config ``hsm.host``/``hsm.port``): clear
components go only to the HSM, and nothing secret is printed or logged.
"""

from __future__ import annotations

import re
from functools import partial
from pathlib import Path

import click
import trio

from hsm_sim import lmk as lmk_mod
from hsm_sim.client import HsmClient, HsmError
from ops.cli import AppContext, configure_logging, pass_app
from ops.logs import get_logger

log = get_logger(__name__)

_KEY_TYPE = re.compile(r"[0-9][0-9A-Ea-e]{2}")


@click.group()
def hsm() -> None:
    """Software HSM: LMK file, the service, key ceremony."""


def _lmk_path(app: AppContext, lmk_file: str | None) -> Path:
    return Path(lmk_file or app.config.hsm.lmk_file)


@hsm.command()
@click.option("--lmk-file", metavar="FILE", help="Where to write the LMK file (default: hsm.lmk_file).")
@click.option("--test-lmk", is_flag=True, help="Write the published test LMK set instead of new keys.")
@pass_app
def init(app: AppContext, lmk_file: str | None, test_lmk: bool) -> None:
    """Generate the LMKs (3DES and SM4) into a new file with mode 0600; never overwrites."""
    path = _lmk_path(app, lmk_file)
    lmk = lmk_mod.Lmk.test_set() if test_lmk else lmk_mod.Lmk.generate()
    try:
        lmk_mod.create_file(path, lmk)
    except lmk_mod.LmkFileError as exc:
        raise click.ClickException(str(exc)) from None
    cv = lmk.check_value().hex().upper()
    app.emit(
        {"lmk_file": str(path), "check_value": cv, "test": test_lmk},
        f"LMK file {path} created (mode 0600){' with the TEST LMK set' if test_lmk else ''}; "
        f"LMK check value {cv}",
    )


def load_lmk(path: Path, test_lmk: bool) -> lmk_mod.Lmk:
    """The test set, else the LMK file, created at first start when it does not exist yet.

    A file that group or others may read is refused, not repaired: whoever could read it may already
    hold every key under it, which a chmod does not undo; the operator decides (as ssh refuses a
    private key file with loose permissions, and a payShield keeps its LMKs only on smart cards)."""
    if test_lmk:
        log.warning("test_lmk_in_use", detail="published test LMK set: every key under it is public")
        return lmk_mod.Lmk.test_set()
    if not path.exists():
        lmk_mod.create_file(path, lmk_mod.Lmk.generate())
        log.info("lmk_file_created", lmk_file=str(path))
    elif not lmk_mod.file_is_private(path):
        raise lmk_mod.LmkFileError(
            f"LMK file {path} is open to group or others (mode {lmk_mod.file_mode(path):04o}): "
            f"if nobody else read it, `chmod 600 {path}`; else make new LMKs and re-encrypt the keys"
        )
    lmk = lmk_mod.load_file(path)
    if lmk.test:
        log.warning("test_lmk_in_use", lmk_file=str(path), detail="the file holds the published test LMK set")
    return lmk


@hsm.command()
@click.option("--listen", metavar="ADDR", help="Bind address (default: hsm.listen).")
@click.option("--port", type=int, help="TCP port (default: hsm.port).")
@click.option("--metrics-port", type=int, help="/metrics port, 0 = off (default: hsm.metrics_port).")
@click.option("--lmk-file", metavar="FILE", help="LMK file (default: hsm.lmk_file).")
@click.option("--test-lmk/--no-test-lmk", default=None, help="Use the published test LMK set.")
@pass_app
def serve(
    app: AppContext,
    listen: str | None,
    port: int | None,
    metrics_port: int | None,
    lmk_file: str | None,
    test_lmk: bool | None,
) -> None:
    """Run the HSM service until SIGTERM or Ctrl-C."""
    from hsm_sim.engine import Engine
    from hsm_sim.server import serve as serve_async
    from ops.guard import GuardLimits
    from ops.metrics import serve_metrics

    configure_logging(app, "hsm")
    cfg = app.config.hsm
    use_test = cfg.test_lmk if test_lmk is None else test_lmk
    try:
        lmk = load_lmk(_lmk_path(app, lmk_file), use_test)
    except lmk_mod.LmkFileError as exc:
        raise click.ClickException(str(exc)) from None
    log.info("lmk_loaded", check_value=lmk.check_value().hex().upper(), test_lmk=lmk.test)
    try:
        serve_metrics("hsm", cfg.metrics_port if metrics_port is None else metrics_port, cfg.metrics_listen)
    except OSError as exc:
        raise click.ClickException(f"cannot open the HSM metrics port: {exc.strerror}") from None
    engine = Engine(lmk, cfg.header_length)
    limits = GuardLimits(
        cfg.max_connections, cfg.max_per_source, float(cfg.idle_timeout_s), float(cfg.frame_timeout_s)
    )
    try:
        trio.run(
            partial(serve_async, engine, listen or cfg.listen, cfg.port if port is None else port,
                    limits=limits)
        )
    except OSError as exc:
        raise click.ClickException(f"cannot listen on port {port or cfg.port}: {exc.strerror}") from None
    log.info("hsm_stopped")


def _client(app: AppContext) -> HsmClient:
    return HsmClient.from_config(app.config.hsm)


def _check_key_type(key_type: str) -> str:
    if not _KEY_TYPE.fullmatch(key_type):
        raise click.ClickException(f"--type {key_type}: expected a key type code such as 000, 002, 00A")
    return key_type.upper()


@hsm.command("form-key")
@click.option("--type", "key_type", required=True, help="Key type code, e.g. 000 ZMK, 002 TMK.")
@click.option("--components", type=click.IntRange(2, 9), required=True, help="Number of components.")
@click.option(
    "--scheme",
    type=click.Choice(["U", "T", "S"]),
    default="U",
    show_default=True,
    help="U double-length 3DES, T triple-length 3DES, S SM4.",
)
@pass_app
def form_key(app: AppContext, key_type: str, components: int, scheme: str) -> None:
    """Key ceremony: read clear components (not echoed), print the key under LMK and its check value."""
    key_type = _check_key_type(key_type)
    size = 48 if scheme == "T" else 32
    parts = []
    for i in range(1, components + 1):
        value = click.prompt(f"Component {i} ({size} hex)", hide_input=True, confirmation_prompt=True)
        value = value.strip().replace(" ", "").upper()
        if len(value) != size or not re.fullmatch(r"[0-9A-F]+", value):
            raise click.ClickException(f"component {i}: expected {size} hex characters")
        parts.append(value)

    async def run() -> tuple[str, str]:
        async with _client(app) as client:
            if scheme == "S":
                key = await client.form_sm4_key(key_type, parts)
            else:
                key = await client.form_key(key_type, parts, scheme)
            return key.under_lmk, key.check_value

    try:
        under_lmk, cv = trio.run(run)
    except HsmError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        parts.clear()
    app.emit(
        {"key_under_lmk": under_lmk, "check_value": cv, "key_type": key_type},
        f"key under LMK  {under_lmk}\ncheck value    {cv[:6]}  ({cv})",
    )


@hsm.command()
@click.argument("key")
@click.option("--type", "key_type", required=True, help="Key type code of KEY, e.g. 002.")
@pass_app
def kcv(app: AppContext, key: str, key_type: str) -> None:
    """Check value of KEY (a key under LMK), computed by the running HSM (BU)."""
    key_type = _check_key_type(key_type)

    async def run() -> str:
        async with _client(app) as client:
            return await client.check_value(key.strip(), key_type)

    try:
        cv = trio.run(run)
    except HsmError as exc:
        raise click.ClickException(str(exc)) from None
    app.emit({"check_value": cv}, f"{cv[:6]}  ({cv})")


@hsm.command()
@pass_app
def diag(app: AppContext) -> None:
    """Ask the running HSM for its LMK check value and firmware version (NC)."""

    async def run() -> tuple[str, str]:
        async with _client(app) as client:
            d = await client.diagnostics()
            return d.lmk_check_value, d.firmware

    try:
        cv, firmware = trio.run(run)
    except HsmError as exc:
        raise click.ClickException(str(exc)) from None
    app.emit({"lmk_check_value": cv, "firmware": firmware}, f"LMK check value {cv}  firmware {firmware}")


__all__ = ["hsm"]
