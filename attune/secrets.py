"""Secrets on local disk: the pseudonymization key and the collector's write keys.

Secrets never live in the config or the repository. The config names files under ``var/``
(git-ignored); this module creates them with mode 0600 on first use and reads them. In
production the same files are mounted from a secret store. Nothing here logs a secret.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import os
import secrets
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
    """``{source: write key}`` from the write-keys file (empty when there is none yet)."""
    path = _keys_path(cfg)
    if not path.exists():
        return {}
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in data.items()
    ):
        raise ConfigError(f"{path} must map source names to write keys (strings)")
    return data


def create_write_key(cfg: AttuneConfig, source: str) -> str:
    """Create or rotate ``source``'s write key and return it."""
    if not source.replace("-", "").replace("_", "").isalnum():
        raise ConfigError(f"source name {source!r}: use letters, digits, '-' and '_' only")
    keys = load_write_keys(cfg)
    keys[source] = "wk_" + secrets.token_urlsafe(24)
    _write_private(_keys_path(cfg), yaml.safe_dump(keys, sort_keys=True).encode())
    return keys[source]


def ensure_write_key(cfg: AttuneConfig, source: str = DEMO_SOURCE) -> str:
    """``source``'s write key, created if it does not exist yet (used by the demo and replay)."""
    return load_write_keys(cfg).get(source) or create_write_key(cfg, source)


class WriteKeyIndex:
    """Looks a presented write key up in constant time per key; returns the source or None."""

    def __init__(self, keys: dict[str, str]) -> None:
        self._by_digest = {hashlib.sha256(k.encode()).digest(): s for s, k in keys.items()}

    def source_for(self, presented: str) -> str | None:
        digest = hashlib.sha256(presented.encode()).digest()
        for known, source in self._by_digest.items():
            if hmac.compare_digest(known, digest):
                return source
        return None


def cmd_create_key(cfg: AttuneConfig, args: argparse.Namespace) -> int:
    key = create_write_key(cfg, args.source)
    # The one place a key is shown: to the operator who asked for it, on stdout.
    print(key)
    return 0
