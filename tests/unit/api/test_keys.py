from __future__ import annotations

from pathlib import Path

import pytest

from attune.api.keys import (
    RateLimiter,
    ReadKeys,
    TokenBucket,
    create_read_key,
    ensure_read_key,
    load_read_keys,
)
from attune.config import AttuneConfig, ConfigError, RateLimitConfig


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_token_bucket() -> None:
    clock = Clock()
    bucket = TokenBucket(rate_per_s=2.0, burst=3, clock=clock)
    assert [bucket.take() for _ in range(3)] == [0.0, 0.0, 0.0]  # the burst
    # empty: one token comes back after 1 / rate = 0.5 s
    assert bucket.take() == pytest.approx(0.5)
    clock.now = 0.25  # half a token back: 0.25 s to wait
    assert bucket.take() == pytest.approx(0.25)
    clock.now = 0.5
    assert bucket.take() == 0.0
    clock.now = 100.0  # a long pause banks at most `burst` tokens
    assert [bucket.take() for _ in range(4)][-1] == pytest.approx(0.5)


def test_rate_limiter_per_key_limits() -> None:
    clock = Clock()
    limiter = RateLimiter(
        RateLimitConfig(rate_per_s=10, burst=1),
        {"tight": RateLimitConfig(rate_per_s=1, burst=2)},
        clock,
    )
    assert [limiter.check("tight") for _ in range(3)] == [0.0, 0.0, pytest.approx(1.0)]
    # other keys have their own bucket with the default limit (burst 1, then 1/10 s)
    assert limiter.check("web") == 0.0
    assert limiter.check("web") == pytest.approx(0.1)
    assert limiter.check("ios") == 0.0


def _cfg(tmp_path: Path) -> AttuneConfig:
    base = AttuneConfig()
    return base.model_copy(update={"paths": base.paths.model_copy(update={"var_dir": tmp_path})})


def test_read_keys_file(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    assert load_read_keys(cfg) == {}
    key = create_read_key(cfg, "web")
    assert key.startswith("rk_")
    path = tmp_path / "secrets" / "read_keys.yaml"
    assert path.stat().st_mode & 0o777 == 0o600
    assert key not in path.read_text()  # only its digest is stored
    keys = ReadKeys(cfg)
    assert keys.name_for(key) == "web"
    assert keys.name_for(key + "x") is None
    # a local client keeps its own plain key: the same key on every call, in its 0600 file
    demo = ensure_read_key(cfg, "demo")
    assert ensure_read_key(cfg, "demo") == demo
    assert (tmp_path / "secrets" / "clients" / "read_keys.demo.key").stat().st_mode & 0o777 == 0o600
    # "web" was shown once, to the operator: a client asking for it gets a new key
    rotated = ensure_read_key(cfg, "web")
    assert rotated != key
    fresh = ReadKeys(cfg)
    assert fresh.name_for(rotated) == "web" and fresh.name_for(key) is None
    with pytest.raises(ConfigError, match="letters, digits"):
        create_read_key(cfg, "bad name")


def test_a_key_created_after_start_is_found(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    clock = Clock()
    keys = ReadKeys(cfg, clock)
    clock.now = 5.0
    key = create_read_key(cfg, "late")
    assert keys.name_for(key) == "late"
