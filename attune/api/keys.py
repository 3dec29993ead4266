"""Read keys of the personalization API and their per-key rate limits.

Read keys live in ``api.read_keys_file`` (``var/secrets/read_keys.yaml``, mode 0600): key name
-> key. A request presents its key as ``Authorization: Bearer <key>`` or ``X-Read-Key: <key>``;
the API compares SHA-256 digests in constant time (:class:`attune.secrets.WriteKeyIndex` does
exactly that for any name -> key map) and never logs a key, only its name.

Each key name has a token bucket (:class:`TokenBucket`): ``rate_per_s`` tokens a second up to
``burst``; a request takes one token or gets 429 with ``Retry-After`` (whole seconds until a
token is back). ``api.key_rate_limits`` gives a key its own limit, the others share the default
``api.rate_limit`` (each with its own bucket). Buckets live in the API process.
"""

from __future__ import annotations

import argparse
import math
import secrets
import time
from collections.abc import Callable
from pathlib import Path

import yaml

from attune.config import AttuneConfig, ConfigError, RateLimitConfig
from attune.secrets import WriteKeyIndex, _write_private

KEY_PREFIX = "rk_"


def read_keys_path(cfg: AttuneConfig) -> Path:
    return cfg.paths.resolve(cfg.api.read_keys_file)


def load_read_keys(cfg: AttuneConfig) -> dict[str, str]:
    """``{key name: read key}`` (empty when the file does not exist yet)."""
    path = read_keys_path(cfg)
    if not path.exists():
        return {}
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in data.items()
    ):
        raise ConfigError(f"{path} must map key names to read keys (strings)")
    return data


def create_read_key(cfg: AttuneConfig, name: str) -> str:
    """Create or rotate the read key ``name`` and return it."""
    if not name or not name.replace("-", "").replace("_", "").isalnum():
        raise ConfigError(f"read key name {name!r}: use letters, digits, '-' and '_' only")
    keys = load_read_keys(cfg)
    keys[name] = KEY_PREFIX + secrets.token_urlsafe(24)
    _write_private(read_keys_path(cfg), yaml.safe_dump(keys, sort_keys=True).encode())
    return keys[name]


def ensure_read_key(cfg: AttuneConfig, name: str = "demo") -> str:
    """``name``'s read key, created when missing (demo, tests, benchmark)."""
    return load_read_keys(cfg).get(name) or create_read_key(cfg, name)


class ReadKeys:
    """The read-key index, re-read when the file changes (checked at most once a second)."""

    def __init__(self, cfg: AttuneConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self.path = read_keys_path(cfg)
        self._cfg = cfg
        self._clock = clock
        self._mtime: float | None = None
        self._checked = -math.inf
        self._index = WriteKeyIndex({})
        self.reload()

    def reload(self) -> None:
        try:
            mtime = self.path.stat().st_mtime
        except FileNotFoundError:
            mtime = None
        if mtime != self._mtime:
            self._index = WriteKeyIndex(load_read_keys(self._cfg))
            self._mtime = mtime

    def name_for(self, presented: str) -> str | None:
        name = self._index.source_for(presented)
        if name is None and self._clock() - self._checked >= 1.0:
            self._checked = self._clock()
            self.reload()  # a key created after start-up
            name = self._index.source_for(presented)
        return name


class TokenBucket:
    """``rate_per_s`` tokens a second, at most ``burst`` banked; one token per request."""

    def __init__(
        self, rate_per_s: float, burst: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate = rate_per_s
        self.burst = float(burst)
        self._clock = clock
        self._tokens = float(burst)
        self._at = clock()

    def take(self) -> float:
        """0.0 when a token was taken, else the seconds until one will be available."""
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return 0.0
        return (1.0 - self._tokens) / self.rate


class RateLimiter:
    """One bucket per key name, with the limit ``api.key_rate_limits`` gives it."""

    def __init__(
        self,
        default: RateLimitConfig,
        per_key: dict[str, RateLimitConfig],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.default = default
        self.per_key = per_key
        self._clock = clock
        self._buckets: dict[str, TokenBucket] = {}

    def limit_of(self, name: str) -> RateLimitConfig:
        return self.per_key.get(name, self.default)

    def check(self, name: str) -> float:
        """0.0 when ``name`` may make a request now, else seconds to wait."""
        bucket = self._buckets.get(name)
        if bucket is None:
            limit = self.limit_of(name)
            bucket = self._buckets[name] = TokenBucket(limit.rate_per_s, limit.burst, self._clock)
        return bucket.take()


def cmd_create_read_key(cfg: AttuneConfig, args: argparse.Namespace) -> int:
    """``attune keys create-read NAME``: print a new read key (the one time it is shown)."""
    print(create_read_key(cfg, args.name))
    return 0
