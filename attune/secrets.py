"""Secrets on local disk: the pseudonymization key and the write, read and admin keys (hashed).

Secrets never live in the config or the repository. The config names files under ``var/``
(git-ignored); this module creates them with mode 0600 on first use and reads them. In
production the same files are mounted from a secret store. Nothing here logs a secret.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import logging
import math
import os
import secrets
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import yaml

from attune.config import AttuneConfig, ConfigError

DEMO_SOURCE = "demo"


def _write_private(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.replace(tmp, path)


def pseudonym_key(cfg: AttuneConfig) -> bytes:
    """The HMAC key for user ids; 32 random bytes created on first use.

    Losing or rotating this key changes every pseudonym, which disconnects users from their
    history: back it up with the lake.
    """
    path = cfg.paths.resolve(cfg.privacy.pseudonym_key_file)
    if not path.exists():
        _write_private(path, secrets.token_hex(32).encode())
    key = path.read_bytes().strip()
    if len(key) < 32:
        raise ConfigError(f"pseudonym key in {path} is shorter than 32 bytes; use a longer key")
    return key


def airflow_secrets(cfg: AttuneConfig) -> tuple[Path, dict[str, str]]:
    """The local Airflow's admin password and signing keys, generated once (mode 0600).

    Returns the credentials file (``airflow.credentials_file``: ``{user: password}``, the
    format of Airflow's simple auth manager, which reads it directly) and the signing keys
    (``jwt_secret``, ``secret_key``, ``fernet_key``) from the file beside it.
    """
    import base64
    import json

    creds = cfg.paths.resolve(cfg.airflow.credentials_file)
    users: dict[str, str] = json.loads(creds.read_text()) if creds.exists() else {}
    if cfg.airflow.admin_user not in users:
        users[cfg.airflow.admin_user] = secrets.token_urlsafe(18)
        _write_private(creds, (json.dumps(users, indent=2) + "\n").encode())
    keys_path = creds.with_name(creds.stem + "-signing.json")
    if not keys_path.exists():
        fresh = {
            "jwt_secret": secrets.token_hex(32),
            "secret_key": secrets.token_hex(32),
            "fernet_key": base64.urlsafe_b64encode(secrets.token_bytes(32)).decode(),
        }
        _write_private(keys_path, (json.dumps(fresh, indent=2) + "\n").encode())
    keys: dict[str, str] = json.loads(keys_path.read_text())
    return creds, {"password": users[cfg.airflow.admin_user], **keys}


def profile_key(cfg: AttuneConfig) -> bytes:
    """The AES-256 key (32 bytes) that encrypts personal profile fields in the lake.

    Stored hex-encoded in ``privacy.profile_key_file`` and created on first use. Losing it makes
    the encrypted traits unreadable: back it up with the lake (but never next to it).
    """
    path = cfg.paths.resolve(cfg.privacy.profile_key_file)
    if not path.exists():
        _write_private(path, secrets.token_hex(32).encode())
    text = path.read_bytes().strip()
    try:
        key = bytes.fromhex(text.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        raise ConfigError(
            f"profile key in {path} is not hex; it must hold 64 hex digits (32 bytes)"
        ) from None
    if len(key) != 32:
        raise ConfigError(
            f"profile key in {path} is {len(key)} bytes; AES-256 needs 32 (64 hex digits)"
        )
    return key


class Pseudonymizer:
    """Keyed HMAC-SHA256 of user ids: stable per key, not reversible without it."""

    def __init__(self, key: bytes, length: int = 32) -> None:
        self._key = key
        self._length = length
        self._cache: dict[str, str] = {}

    def __call__(self, user_id: str) -> str:
        hit = self._cache.get(user_id)
        if hit is None:
            digest = hmac.new(self._key, user_id.encode(), hashlib.sha256).hexdigest()
            hit = digest[: self._length]
            if len(self._cache) > 200_000:  # bound memory; a cache, not a table
                self._cache.clear()
            self._cache[user_id] = hit
        return hit


def _keys_path(cfg: AttuneConfig) -> Path:
    return cfg.paths.resolve(cfg.collector.write_keys_file)


def load_write_keys(cfg: AttuneConfig) -> dict[str, str]:
    """``{source: sha256:<hex> of its write key}`` from the write-keys file (empty when there is
    none yet); a file of the old format (plain keys) is rewritten hashed, with a log line."""
    return load_key_digests(_keys_path(cfg), "write")


def create_write_key(cfg: AttuneConfig, source: str) -> str:
    """Create or rotate ``source``'s write key and return it (only its digest is stored)."""
    return create_hashed_key(_keys_path(cfg), "write", source)


def ensure_write_key(cfg: AttuneConfig, source: str = DEMO_SOURCE) -> str:
    """``source``'s plain write key for a local client (the demo, replay), kept in its own 0600
    client file; created (or rotated) when that file is missing or out of date."""
    return client_key(_keys_path(cfg), "write", source)


def cmd_create_key(cfg: AttuneConfig, args: argparse.Namespace) -> int:
    key = create_write_key(cfg, args.source)
    # The one place a key is shown: to the operator who asked for it, on stdout.
    print(key)
    return 0


# -- hashed keys: write, read and admin keys -------------------------------------------------
#
# A keys file maps key names to ``sha256:<hex digest>`` of the key, never the key itself: the
# plain key is shown once, to whoever created it. Keys are 24 random bytes (192 bits, from
# ``secrets.token_urlsafe``), so an unsalted SHA-256 is enough: nobody can guess a preimage of a
# 192-bit random value, and a salt or a slow KDF only protects low-entropy secrets such as
# passwords. The fast, unsalted digest also lets a presented key be hashed once and compared with
# every stored digest in constant time (:class:`KeyDigestIndex`).
#
# A process that must present a key (the demo, the retrain smoke test, the dashboard, the
# benchmarks) keeps its plain key in its own client file (mode 0600, ``clients/`` beside the keys
# file): :func:`client_key` creates the key when that file is missing or no longer matches.

DIGEST_PREFIX = "sha256:"
KEY_PREFIXES = {"write": "wk_", "read": "rk_", "admin": "ak_"}

log = logging.getLogger(__name__)


def key_digest(key: str) -> str:
    """``sha256:<hex>`` of ``key``: what a keys file stores in place of the key."""
    return DIGEST_PREFIX + hashlib.sha256(key.encode()).hexdigest()


def hash_plain_keys(keys: dict[str, str]) -> tuple[dict[str, str], list[str]]:
    """``keys`` with every plain-text key replaced by its digest, and the names that were plain
    (the old format of the read-keys file held the keys themselves)."""
    plain = sorted(name for name, value in keys.items() if not value.startswith(DIGEST_PREFIX))
    return {n: v if n not in plain else key_digest(v) for n, v in keys.items()}, plain


def _is_digest(value: str) -> bool:
    hexdigest = value.removeprefix(DIGEST_PREFIX)
    return len(hexdigest) == 64 and all(c in "0123456789abcdef" for c in hexdigest)


def _check_key_name(scope: str, name: str) -> None:
    if not name or not name.replace("-", "").replace("_", "").isalnum():
        raise ConfigError(f"{scope} key name {name!r}: use letters, digits, '-' and '_' only")


def load_key_digests(path: Path, scope: str) -> dict[str, str]:
    """``{key name: sha256:<hex>}`` of the ``scope`` keys file ``path`` (empty when missing).

    A file of the old format (plain keys) is rewritten hashed on first read, with a log line;
    the keys stay valid, only their plain text leaves the disk.
    """
    if not path.exists():
        return {}
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in data.items()
    ):
        raise ConfigError(
            f"{path} must map {scope} key names to '{DIGEST_PREFIX}<hex>' digests (strings); "
            f"fix the file or delete it and create the keys again"
        )
    digests, plain = hash_plain_keys(data)
    bad = sorted(n for n, d in digests.items() if not _is_digest(d))
    if bad:
        raise ConfigError(
            f"{path}: {', '.join(bad)} must be '{DIGEST_PREFIX}' and 64 hex digits; fix the file "
            f"or delete those lines and create the keys again"
        )
    if plain:
        _write_private(path, yaml.safe_dump(digests, sort_keys=True).encode())
        log.warning(
            "rewrote %d plain-text %s key(s) in %s as sha256 digests (%s); the keys stay valid",
            len(plain),
            scope,
            path,
            ", ".join(plain),
        )
    return digests


def create_hashed_key(path: Path, scope: str, name: str) -> str:
    """Create or rotate the ``scope`` key ``name`` in ``path``; the plain key is returned, only
    its digest is stored."""
    _check_key_name(scope, name)
    digests = load_key_digests(path, scope)
    key = KEY_PREFIXES[scope] + secrets.token_urlsafe(24)
    digests[name] = key_digest(key)
    _write_private(path, yaml.safe_dump(digests, sort_keys=True).encode())
    return key


def client_key_path(path: Path, name: str) -> Path:
    """Where a client of the ``path`` keys file keeps the plain key ``name`` (mode 0600)."""
    return path.parent / "clients" / f"{path.stem}.{name}.key"


def client_key(path: Path, scope: str, name: str) -> str:
    """The plain ``scope`` key ``name`` of a local client (demo, smoke test, dashboard,
    benchmark), from its client file; created (or rotated) when that file is missing or its
    key is no longer the one ``path`` holds."""
    _check_key_name(scope, name)
    own = client_key_path(path, name)
    if own.exists():
        key = own.read_text().strip()
        if load_key_digests(path, scope).get(name) == key_digest(key):
            return key
    key = create_hashed_key(path, scope, name)
    _write_private(own, (key + "\n").encode())
    return key


class KeyDigestIndex:
    """Looks a presented key up among stored digests in constant time per key; returns the key
    name or None."""

    def __init__(self, digests: dict[str, str]) -> None:
        self._by_digest = {
            bytes.fromhex(d.removeprefix(DIGEST_PREFIX)): name for name, d in digests.items()
        }

    def __len__(self) -> int:
        return len(self._by_digest)

    def name_for(self, presented: str) -> str | None:
        digest = hashlib.sha256(presented.encode()).digest()
        found = None
        for known, name in self._by_digest.items():
            if hmac.compare_digest(known, digest):
                found = name
        return found


class WriteKeyIndex(KeyDigestIndex):
    """The collector's write-key index: source names by digest."""

    def source_for(self, presented: str) -> str | None:
        return self.name_for(presented)


class HashedKeys:
    """The index of one keys file, re-read when the file changes (checked on an unknown key, at
    most once a second, so a key created after start-up works within a second)."""

    def __init__(self, path: Path, scope: str, clock: Callable[[], float] = time.monotonic) -> None:
        self.path = path
        self.scope = scope
        self._clock = clock
        self._mtime: float | None = None
        self._checked = -math.inf
        self._index = KeyDigestIndex({})
        self.reload()

    def reload(self) -> None:
        try:
            mtime: float | None = self.path.stat().st_mtime
        except FileNotFoundError:
            mtime = None
        if mtime != self._mtime:
            self._index = KeyDigestIndex(load_key_digests(self.path, self.scope))
            # a migration rewrote the file: remember the new mtime, not the old one
            self._mtime = self.path.stat().st_mtime if self.path.exists() else None

    def name_for(self, presented: str) -> str | None:
        name = self._index.name_for(presented)
        if name is None and self._clock() - self._checked >= 1.0:
            self._checked = self._clock()
            self.reload()
            name = self._index.name_for(presented)
        return name


def admin_keys_path(cfg: AttuneConfig) -> Path:
    return cfg.paths.resolve(cfg.api.admin_keys_file)


def create_admin_key(cfg: AttuneConfig, name: str) -> str:
    """Create or rotate the admin key ``name`` (``/metrics``, ``/docs``, ``/openapi.json`` of
    the collector and the API) and return it; only its digest is stored."""
    return create_hashed_key(admin_keys_path(cfg), "admin", name)


def ensure_admin_key(cfg: AttuneConfig, name: str) -> str:
    """The plain admin key of the local client ``name`` (dashboard, tests), kept in its client
    file; created when missing."""
    return client_key(admin_keys_path(cfg), "admin", name)


def presented_key(headers: Mapping[str, str], header: str) -> str | None:
    """The key a request presents: ``header`` (e.g. ``x-admin-key``), else an
    ``Authorization: Bearer`` token; None when there is neither."""
    key = headers.get(header)
    if key is None:
        scheme, _, token = headers.get("authorization", "").partition(" ")
        key = token.strip() if scheme.lower() == "bearer" else None
    return key or None


def admin_refusal(
    presented: str | None,
    admin: Callable[[str], str | None],
    other: Callable[[str], str | None],
    other_scope: str,
) -> tuple[int, str] | None:
    """Why a request to an admin endpoint (``/metrics``, ``/docs``, ``/openapi.json``) is
    refused, as (status, message), or None when ``presented`` is an admin key. 401: no key, or
    a key nobody knows; 403: a valid key of ``other_scope`` (the service's own read or write
    key), which is no admin key."""
    how = (
        "send 'Authorization: Bearer <admin key>' or 'X-Admin-Key'; create one with "
        "`attune keys create-admin NAME`"
    )
    if presented is None:
        return 401, f"missing admin key: {how}"
    if admin(presented) is not None:
        return None
    if other(presented) is not None:
        return 403, f"a {other_scope} key cannot read admin endpoints (/metrics, /docs): {how}"
    return 401, f"unknown admin key: {how}"


def cmd_create_admin_key(cfg: AttuneConfig, args: argparse.Namespace) -> int:
    """``attune keys create-admin NAME``: print a new admin key (the one time it is shown)."""
    print(create_admin_key(cfg, args.name))
    return 0
