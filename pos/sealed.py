"""Sealed files: the simulator's stand-in for a terminal's secure element, encrypted at rest.

The terminal state files (TMK, working keys), ``demo-cards.json`` (PANs, PINs) and ``load-pool.json``
(TMKs, PANs, PINs) are written only through ``write_sealed`` and read only through ``read_sealed``.
A sealed file is ``MAGIC``, a 12-byte random nonce, then the JSON document under AES-256-GCM with the
file's name as associated data: a byte changed, a file renamed (a pool passed off as a state file) or
a file sealed under another key is refused, never half-read.

The file key is 32 random bytes, hex, in ``$XDG_CONFIG_HOME/payswitch/pos-seal.key`` (else
``~/.config/payswitch/pos-seal.key``), created mode 0600 on first use; ``PAYSWITCH_POS_SEAL_KEY_FILE``
names another file (tests, CI, a scratch system). It lives outside the checkout on purpose: a copied
or published ``var/`` holds nothing readable. Why a file key and not a key in the HSM: the simulator
is a terminal, a client of the switch, and a terminal's secure element does not ask the acquirer's
HSM for its own keys; the files are also read when no HSM runs (``pos show``, ``load`` setup,
bench/e2e before the services).

A plain JSON file from a checkout before sealing is read once and rewritten sealed in place.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import stat
import sys
import tempfile
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ops.files import write_bytes_atomic

MAGIC = b"payswitch-sealed-v1\n"
NONCE_BYTES = 12
KEY_ENV = "PAYSWITCH_POS_SEAL_KEY_FILE"
KEY_NAME = "pos-seal.key"

# (key file, inode, mtime) -> key: a state file is saved after every request; one stat, not one read.
_keys: dict[tuple[str, int, int], bytes] = {}


class SealError(Exception):
    """A sealed file or the seal key cannot be used; str() is one line naming the file."""


def key_path() -> Path:
    """Where the file key is: the override, else the user's config folder (never the checkout)."""
    override = os.environ.get(KEY_ENV)
    if override:
        return Path(override)
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "payswitch" / KEY_NAME


def write_sealed(path: Path, obj: Any, key_file: Path | None = None) -> None:
    """Seal ``obj`` (JSON data) into ``path``, whole or not at all, mode 0600; creates the key if absent."""
    key = _key(key_file or key_path(), create=True)
    nonce = secrets.token_bytes(NONCE_BYTES)
    body = AESGCM(key).encrypt(nonce, json.dumps(obj, separators=(",", ":")).encode(), _aad(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(path, MAGIC + nonce + body, mode=0o600)


def read_sealed(path: Path, key_file: Path | None = None) -> Any:
    """The JSON data sealed in ``path``. FileNotFoundError when there is none (callers say what to
    run); SealError when it cannot be opened. A plain JSON file is rewritten sealed, then returned."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise SealError(f"cannot read {path}: {exc.strerror}") from None
    if not raw.startswith(MAGIC):
        return _migrate(path, raw, key_file)
    kf = key_file or key_path()
    if not kf.exists():
        raise SealError(f"{path} is sealed under a key that is not here ({kf} is missing)")
    key = _key(kf, create=False)
    nonce, body = raw[len(MAGIC) : len(MAGIC) + NONCE_BYTES], raw[len(MAGIC) + NONCE_BYTES :]
    try:
        clear = AESGCM(key).decrypt(nonce, body, _aad(path))
        return json.loads(clear)
    except (InvalidTag, ValueError):
        # InvalidTag says nothing more on purpose: changed, renamed and another key look the same.
        raise SealError(
            f"{path} does not open under the seal key {kf}: changed, renamed, or sealed under another key"
        ) from None


def _migrate(path: Path, raw: bytes, key_file: Path | None) -> Any:
    """A file from before sealing: plain JSON. Sealed in place so its clear copy is gone."""
    try:
        obj = json.loads(raw)
    except ValueError:
        raise SealError(f"cannot read {path}: neither a sealed file nor JSON") from None
    try:
        write_sealed(path, obj, key_file)
    except OSError as exc:
        raise SealError(f"{path} holds clear card data and cannot be sealed: {exc.strerror}") from None
    print(f"payswitch: {path} was plain JSON (an earlier checkout); it is sealed now", file=sys.stderr)
    return obj


def _aad(path: Path) -> bytes:
    return MAGIC + path.name.encode()


def _key(path: Path, *, create: bool) -> bytes:
    try:
        st = path.stat()
    except FileNotFoundError:
        if not create:
            raise SealError(f"no seal key at {path}") from None
        _create_key(path)
        st = path.stat()
    except OSError as exc:
        raise SealError(f"cannot use the seal key {path}: {exc.strerror}") from None
    if stat.S_IMODE(st.st_mode) & 0o077:
        mode = f"{stat.S_IMODE(st.st_mode):04o}"
        raise SealError(f"the seal key {path} is open to other users (mode {mode}): chmod 600 {path}")
    cached = _keys.get((str(path), st.st_ino, st.st_mtime_ns))
    if cached is not None:
        return cached
    try:
        key = bytes.fromhex(path.read_text().strip())
    except OSError as exc:
        raise SealError(f"cannot read the seal key {path}: {exc.strerror}") from None
    except ValueError:
        key = b""
    if len(key) != 32:
        raise SealError(f"the seal key {path} is damaged (not 64 hex digits)")
    _keys[(str(path), st.st_ino, st.st_mtime_ns)] = key
    return key


def _create_key(path: Path) -> None:
    """A new key, mode 0600, published by link(): two first writers never see half a key, and the
    second keeps the first one's (os.link refuses to replace)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_bytes(32).hex() + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        with contextlib.suppress(FileExistsError):
            os.link(tmp, path)
    except OSError as exc:
        raise SealError(f"cannot create the seal key {path}: {exc.strerror}") from None
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
