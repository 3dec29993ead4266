"""Read keys of the personalization API and their per-key rate limits.

Read keys live in ``api.read_keys_file`` (``var/secrets/read_keys.yaml``, mode 0600) as key
name -> ``sha256:<hex>`` of the key: the key itself is printed once, by ``attune keys
create-read NAME``, and never stored by the API (:mod:`attune.secrets` explains why an unsalted
SHA-256 of a 192-bit random key is enough). A file of the old format (plain keys) is rewritten
hashed the first time it is read, with a log line, and its keys keep working. A request presents
its key as ``Authorization: Bearer <key>`` or ``X-Read-Key: <key>``; the API compares SHA-256
digests in constant time and never logs a key, only its name.

Local clients that must present a read key (the demo, the retrain smoke test, the benchmarks)
call :func:`ensure_read_key`, which keeps their plain key in their own 0600 file under
``secrets/clients/``.

Each key name has a token bucket (:class:`TokenBucket`): ``rate_per_s`` tokens a second up to
``burst``; a request takes one token or gets 429 with ``Retry-After`` (whole seconds until a
token is back). ``api.key_rate_limits`` gives a key its own limit, the others share the default
``api.rate_limit`` (each with its own bucket). Buckets live in the API process.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

from attune.config import AttuneConfig, RateLimitConfig
from attune.secrets import HashedKeys, client_key, create_hashed_key, load_key_digests

KEY_PREFIX = "rk_"


def read_keys_path(cfg: AttuneConfig) -> Path:
    return cfg.paths.resolve(cfg.api.read_keys_file)


def load_read_keys(cfg: AttuneConfig) -> dict[str, str]:
    """``{key name: sha256:<hex> of its read key}`` (empty when the file does not exist yet);
    a plain-text file of the old format is rewritten hashed."""
    return load_key_digests(read_keys_path(cfg), "read")


def create_read_key(cfg: AttuneConfig, name: str) -> str:
    """Create or rotate the read key ``name`` and return it (only its digest is stored)."""
    return create_hashed_key(read_keys_path(cfg), "read", name)


def ensure_read_key(cfg: AttuneConfig, name: str = "demo") -> str:
    """``name``'s plain read key for a local client (demo, smoke test, benchmark), kept in its
    own 0600 file; created (or rotated) when that file is missing or out of date."""
    return client_key(read_keys_path(cfg), "read", name)


class ReadKeys(HashedKeys):
    """The read-key index, re-read when the file changes (checked at most once a second)."""

    def __init__(self, cfg: AttuneConfig, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(read_keys_path(cfg), "read", clock)


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
